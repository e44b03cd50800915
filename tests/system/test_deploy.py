"""The compose stack, checked without a Docker engine (none runs here): the files parse, every
EHB_* variable is a setting, every image is pinned, host ports don't clash, Prometheus scrapes
every metrics endpoint, Grafana's provisioning points at the dashboards and the datasource."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ehb.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SETTINGS = set(Settings.model_fields)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_services_of_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "schema-registry",
        "postgres",
        "prometheus",
        "grafana",
        "worker",
        "sink",
        "simulator",
        "ehb-init",
        "kafka-init",
    ):
        assert name in services, name
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "ports" not in services["worker"]  # replicas cannot share host ports
    assert "schemas register" in " ".join(services["ehb-init"]["command"])


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag not in ("latest", "main", "master", "edge"), f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", base), base
    assert "pip install ." in dockerfile


def test_every_ehb_variable_is_a_setting(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for variable in _env(service):
            if not variable.startswith("EHB_"):
                continue
            setting = variable[4:].lower()
            setting = setting.removesuffix("_file") if setting not in SETTINGS else setting
            assert setting in SETTINGS, f"{name}: {variable} is not in ehb/settings.py"
        for secret in service.get("secrets", []):
            target = secret["target"] if isinstance(secret, dict) else secret
            if target.startswith("ehb_"):
                assert target[4:] in SETTINGS, f"{name}: secret {target} names no setting"
            assert (secret["source"] if isinstance(secret, dict) else secret) in compose["secrets"]


def test_production_services_get_every_required_secret(compose: dict[str, Any]) -> None:
    for name in ("worker", "sink", "ehb-init"):
        service = compose["services"][name]
        env = _env(service)
        assert env["EHB_ENV"] == "production"
        assert env["EHB_SECRETS_DIR"] == "/run/secrets"
        # secrets come as files, never as variables
        for variable in set(env) - {"EHB_SECRETS_DIR"}:
            assert not re.search("PASSWORD|SECRET|DATABASE_URL", variable), variable
        targets = {s["target"] for s in service["secrets"]}
        assert {
            "ehb_database_url",
            "ehb_citizen_key_secret",
            "ehb_kafka_sasl_password",
        } <= targets, name
    # the sink writes, the workers read, only the one-shot init owns the schema
    sources = {
        n: {s["target"]: s["source"] for s in compose["services"][n]["secrets"]}
        for n in ("worker", "sink", "ehb-init")
    }
    assert sources["sink"]["ehb_database_url"] == "database_url_sink"
    assert sources["worker"]["ehb_database_url"] == "database_url_worker"
    assert sources["ehb-init"]["ehb_database_url"] == "database_url_owner"


def test_secret_files_are_generated_not_committed(compose: dict[str, Any]) -> None:
    generate = (DEPLOY / "secrets" / "generate.sh").read_text()
    for name, secret in compose["secrets"].items():
        path = ROOT / secret["file"]
        assert path.parent == DEPLOY / "secrets", name
        assert path.name in generate, f"{path.name} is not made by generate.sh"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT)
        assert ignored.returncode == 0, f"{path} is not git-ignored"


def test_host_ports_do_not_clash(compose: dict[str, Any]) -> None:
    seen: dict[int, str] = {}
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            parts = str(mapping).split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: {mapping} not loopback"
            host = int(parts[1])
            assert host not in seen, f"host port {host}: {seen.get(host)} and {name}"
            seen[host] = name


def test_dependencies_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            condition = spec["condition"]
            assert condition in (
                "service_healthy",
                "service_completed_successfully",
                "service_started",
            )
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
    for name in (
        "kafka-1",
        "kafka-2",
        "kafka-3",
        "schema-registry",
        "postgres",
        "worker",
        "sink",
        "prometheus",
        "grafana",
    ):
        assert "healthcheck" in services[name], name


def test_kafka_is_a_replicated_scram_cluster(compose: dict[str, Any]) -> None:
    entrypoint = (DEPLOY / "kafka" / "entrypoint.sh").read_text()
    for line in (
        "default.replication.factor=3",
        "min.insync.replicas=2",
        "offsets.topic.replication.factor=3",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "process.roles=broker,controller",
        "auto.create.topics.enable=false",
        "allow.everyone.if.no.acl.found=false",
    ):
        assert line in entrypoint, line
    assert "--add-scram" in entrypoint
    listeners = re.search(r"listener.security.protocol.map=(\S+)", entrypoint).group(1)
    assert all(p.split(":")[1].startswith("SASL_") for p in listeners.split(","))
    voters = {
        _env(compose["services"][f"kafka-{i}"])["KAFKA_CONTROLLER_QUORUM_VOTERS"] for i in (1, 2, 3)
    }
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    env = _env(compose["services"]["sink"])
    assert env["EHB_KAFKA_REPLICATION_FACTOR"] == "3"
    assert env["EHB_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    for script in sorted(DEPLOY.rglob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)


def _targets(prometheus: dict[str, Any]) -> set[tuple[str, int]]:
    found = set()
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            for name in dns["names"]:
                found.add((name, int(dns["port"])))
    return found


def test_prometheus_scrapes_every_metrics_endpoint(
    compose: dict[str, Any], prometheus: dict[str, Any]
) -> None:
    targets = _targets(prometheus)
    services = compose["services"]
    endpoints = {
        (name, int(_env(s)["EHB_METRICS_PORT"]))
        for name, s in services.items()
        if int(_env(s).get("EHB_METRICS_PORT", "0"))
    }
    assert {("worker", 9400), ("sink", 9400), ("simulator", 9400)} <= endpoints
    simulate = services["simulator"]["command"]  # `ehb simulate` serves /metrics when asked
    assert simulate[simulate.index("--metrics-port") + 1] == "9400"
    endpoints |= {("kafka-exporter", 9308), ("postgres-exporter", 9187), ("grafana", 3000)}
    missing = endpoints - targets
    assert not missing, f"not scraped: {missing}"
    for host, _ in targets - {("localhost", 9090)}:
        assert host in services, f"scrape target {host} is no service"
    assert (DEPLOY / "prometheus" / "alerts.yml").exists()
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in mounts


def test_grafana_provisioning(compose: dict[str, Any]) -> None:
    grafana = DEPLOY / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "provisioning/dashboards/ehb.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    dashboard = json.loads((grafana / "dashboards" / "ehb-campaign.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    titles = {p["title"] for p in panels}
    for wanted in (
        "Examinations",
        "Out-of-province examinations",
        "Health books integrated",
        "Referrals",
        "Follow-up appointments",
        "Throughput",
        "End-to-end latency (facility publish -> PostgreSQL commit)",
        "Dead letters by reason",
        "Consumer lag per topic",
        "Facilities reporting",
        "Facilities silent",
        "Outbox backlog",
    ):
        assert wanted in titles, wanted
