"""A real Prometheus server (Debian's package, loopback only) scrapes a short run's sink; its
HTTP API must report exactly the examinations PostgreSQL holds, and load the alert rules."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ehb.commands.local import DeploymentFactory, wait_until
from ehb.processes import child_setup, free_port
from tests.support import factories as f
from tests.support.prometheus_tools import prometheus_bin  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


class Prometheus:
    def __init__(self, binary: str, workdir: Path, targets: dict[str, str]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target]}]}
                for job, target in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(),
            )

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(  # noqa: S310 - loopback
                f"http://127.0.0.1:{self.port}/-/ready", timeout=2
            ) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def prometheus_server(
    prometheus_bin: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> Iterator[Any]:
    servers: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        server = Prometheus(prometheus_bin, tmp_path, targets)
        servers.append(server)
        wait_until(server.ready, 60, interval=0.2, message="prometheus ready")
        return server

    yield start
    for server in servers:
        server.stop()


def test_prometheus_counts_equal_postgresql(
    deploy: DeploymentFactory, prometheus_server: Any
) -> None:
    d = deploy(partitions=2)
    events = [f.exam(100 + i, registration="74001" if i < 3 else "79005") for i in range(20)]
    events += [f.exam(130, facility="79999"), f.exam(131, ma_benh_chinh="12345")]
    d.publish(events)
    d.wait_for_events(22)
    assert d.sink is not None
    prom = prometheus_server({"ehb-sink": f"127.0.0.1:{d.sink.metrics_port}"})
    rows = d.count("health_book_entries")
    dead = d.count("dead_letters")

    def settled() -> bool:
        return (
            prom.value('up{job="ehb-sink"}') == 1
            and prom.value("sum(ehb_examinations_total)") == rows
            and prom.value("sum(ehb_dead_letters_total)") == dead
        )

    wait_until(settled, 60, interval=0.5, message="Prometheus reports PostgreSQL's counts")
    assert rows == 20 and dead == 2
    out_of_province = d.count("health_book_entries", "scope = 'out_of_province'")
    assert out_of_province == 3
    assert prom.value('ehb_examinations_total{scope="out_of_province"}') == out_of_province
    assert prom.value("sum(ehb_health_books_integrated_total)") == d.count("health_books")
    # the consumer lag of the sink's group is scraped too, and has drained
    lag = wait_until(
        lambda: (
            prom.value(
                f'sum(kafka_consumergroup_lag_sum{{consumergroup="{d.settings.sink_group}"}})'
            )
            == 0
        ),
        30,
        interval=0.5,
        message="sink lag 0 in Prometheus",
    )
    assert lag
    # the server loaded the alert rules without errors
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] in ("ok", "unknown") for r in rules), rules
    assert {r["name"] for r in rules if r["type"] == "alerting"} >= {
        "EhbDeadLetterRateHigh",
        "EhbNoExaminations",
        "EhbConsumerLagGrowing",
        "EhbFacilitySilent",
        "EhbSinkErrors",
        "EhbOutboxBacklogGrowing",
    }
