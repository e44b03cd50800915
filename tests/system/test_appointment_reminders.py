"""The example downstream service (examples/appointment_reminders.py), run as its own process
against a deployment fed by a small simulated city: it receives exactly the appointments the
pipeline produced, and sends one reminder per appointment the pipeline reminded."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.commands.simulate import run_simulation
from ehb.commands.tail import Start, TopicReader
from simulation.simulator import SimulationConfig
from tests.support.fixtures import wait_stable

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "appointment_reminders.py"
REMINDER = re.compile(
    r"^REMINDER appointment=(\S+) facility=(\d{5}) facility_name=\"([^\"]+)\" "
    r"date=(\d{4}-\d\d-\d\dT\d\d:\d\d\+0700) citizen_key=([0-9a-f]{32})$"
)
RECEIVED = re.compile(r"^received (\w+) appointment=(\S+)$")


def topic_appointments(d: Deployment) -> Counter[tuple[str, str]]:
    """(record type, appointment id) of every record in the appointments topic."""
    with TopicReader(d.settings, "appointments", Start("beginning")) as reader:
        records = [
            d.codec.decode(m.value()).record for m in reader.messages(follow=False, idle_s=0.3)
        ]
    return Counter((r["record_type"], r["appointment_id"]) for r in records)


def database_appointments(d: Deployment) -> dict[str, set[str]]:
    rows = d.query("SELECT appointment_id, status, reminded_at IS NOT NULL FROM appointments")
    return {
        "SCHEDULED": {r[0] for r in rows},
        "REMINDER": {r[0] for r in rows if r[2]},
        "KEPT": {r[0] for r in rows if r[1] == "kept"},
        "MISSED": {r[0] for r in rows if r[1] == "missed"},
    }


def test_example_service_receives_exactly_the_appointments(deploy: DeploymentFactory) -> None:
    d = deploy()
    config = SimulationConfig(
        events=600, seed=11, days=45, invalid_share=0.0, appointment_share=0.25
    )
    publisher = d.publisher(batch_size=50, linger_s=5)
    try:
        summary = run_simulation(d.settings, config, publisher=publisher)
    finally:
        publisher.close()
    d.wait_for_events(summary["events_published"])

    # the topic is complete once the sink's tables say what the topic says, and stays so
    # past the partitions' idle time (the last reminders and missed appointments fire then)
    def settled() -> Counter[tuple[str, str]] | None:
        produced = topic_appointments(d)
        in_db = database_appointments(d)
        by_type = {kind: {aid for (k, aid) in produced if k == kind} for kind in in_db}
        return produced if by_type == in_db else None

    produced = wait_stable(
        settled,
        d.settings.partition_idle_s + 2,
        120,
        message="appointments topic = table, for good",
    )
    kinds = Counter(kind for kind, _ in produced.elements())
    assert kinds["SCHEDULED"] >= 10 and kinds["REMINDER"] >= 3, kinds
    print("appointment records of the simulated run:", dict(kinds))

    service = subprocess.Popen(
        [
            sys.executable,
            str(EXAMPLE),
            "--group",
            f"{d.settings.topic_prefix}reminders",
            "--verbose",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=d.children.env(),
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(service.stdout.readline, "")), daemon=True
    )
    reader.start()
    try:
        wait_until(
            lambda: (
                sum(1 for line in lines if line.startswith("received ")) >= sum(produced.values())
            ),
            60,
            message="the service to receive every record",
        )
    finally:
        service.terminate()
        _, stderr = service.communicate(timeout=30)
        reader.join(10)
    assert service.returncode == 0, stderr

    received = Counter(m.groups() for m in map(RECEIVED.match, lines) if m)
    assert received == produced  # exactly: nothing missing, nothing extra
    reminders = [m.groups() for m in map(REMINDER.match, lines) if m]
    assert len(reminders) == sum(1 for line in lines if line.startswith("REMINDER"))
    reminded = [r[0] for r in reminders]
    assert len(reminded) == len(set(reminded))  # one reminder per appointment
    assert set(reminded) == database_appointments(d)["REMINDER"]
    for appointment_id, facility, name, _date, key in reminders:
        assert appointment_id.startswith(facility + ":")
        assert name != "unknown facility"
        assert len(key) == 32
    # pseudonymous: nothing the service printed is a citizen ID
    assert not re.search(r"\b\d{12}\b", "".join(lines))
    assert f"received {sum(produced.values())} appointment records" in stderr
