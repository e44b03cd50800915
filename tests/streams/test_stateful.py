"""Stateful streams on the real broker and PostgreSQL: the same input gives the same final state
with one worker, with two workers in one group, and with a worker killed (SIGKILL) mid-run and
restarted (its table recovered from the changelog)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.settings import Settings
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ
from simulation.simulator import CitySimulator, SimulationConfig
from streams.validation import Validator
from tests.support.fixtures import wait_stable

pytestmark = pytest.mark.integration

EVENTS = 3000
CONFIG = SimulationConfig(events=EVENTS, seed=11, days=90, invalid_share=0.01)


def _events() -> list[dict[str, Any]]:
    return list(CitySimulator(CONFIG).events())


def expected_citizens(events: list[dict[str, Any]]) -> set[str]:
    """Citizen IDs of the events the validator accepts."""
    validator = Validator(FacilityRegistry.from_reference())
    now = datetime.now(VN_TZ)
    return {e["so_cccd"] for e in events if validator.validate(e, now) is None}


def snapshot(d: Deployment) -> dict[str, Any]:
    return {
        "entries": d.count("health_book_entries"),
        "books": [(k,) for (k,) in d.query("SELECT citizen_key FROM health_books ORDER BY 1")],
        "referrals": d.query(
            "SELECT referral_id, status, arrival_event_id FROM referrals ORDER BY 1"
        ),
        "appointments": d.query(
            "SELECT appointment_id, status, reminded_at IS NOT NULL, "
            "visit_event_id FROM appointments ORDER BY 1"
        ),
        "dead_letters": Counter(r for (r,) in d.query("SELECT reason FROM dead_letters")),
        "counters": d.query("SELECT metric, label, value FROM campaign_counters ORDER BY 1, 2"),
    }


def settle(d: Deployment, timeout: float = 180) -> dict[str, Any]:
    """Wait until every event is accounted for and the state has stopped changing for longer
    than ``partition_idle_s`` (the last timers fire only then: a shorter wait of 3 s once
    returned the state from just before, and the comparison with the reference failed)."""
    d.wait_for_events(EVENTS, timeout)
    return wait_stable(
        lambda: snapshot(d),
        d.settings.partition_idle_s + 3,
        timeout,
        interval=1.0,
        message="a stable final state",
    )


def assert_same_state(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal, or a readable difference (what only one side has)."""
    problems = []
    for key in expected:
        a, e = actual[key], expected[key]
        if a == e:
            continue
        if isinstance(e, list):
            only_a = sorted(set(map(tuple, a)) - set(map(tuple, e)), key=str)[:10]
            only_e = sorted(set(map(tuple, e)) - set(map(tuple, a)), key=str)[:10]
            problems.append(f"{key}: only actual {only_a}; only expected {only_e}")
        else:
            problems.append(f"{key}: actual {a!r} != expected {e!r}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def reference(
    services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The final state of one worker that ran undisturbed, its table in memory."""
    factory = DeploymentFactory(services, Path(tmp_path_factory.mktemp("reference")))
    try:
        d = factory(state_store="memory")
        d.publish(_events())
        state = settle(d)
        yield state
    finally:
        factory.close()


def test_reference_run_exercises_every_decision(reference: dict[str, Any]) -> None:
    statuses = Counter(s for _, s, _ in reference["referrals"])
    assert statuses["completed"] > 0 and statuses["expired"] > 0
    appointment_statuses = Counter(s for _, s, _, _ in reference["appointments"])
    assert appointment_statuses["kept"] > 0 and appointment_statuses["missed"] > 0
    assert any(reminded for _, _, reminded, _ in reference["appointments"])
    # integration counted once per citizen however many exams follow: exactly the distinct
    # citizens among the valid events of the input
    counters = dict(((m, lbl), v) for m, lbl, v in reference["counters"])
    assert counters[("health_books_integrated", "")] == len(reference["books"])
    assert len(reference["books"]) == len(expected_citizens(_events()))
    assert reference["entries"] > len(reference["books"])


def test_two_workers_give_the_same_result_as_one(
    deploy: DeploymentFactory, reference: dict[str, Any]
) -> None:
    d = deploy(workers=2)
    d.publish(_events())
    assert_same_state(settle(d), reference)


def test_worker_killed_and_restarted_gives_the_same_result(
    deploy: DeploymentFactory, reference: dict[str, Any]
) -> None:
    d = deploy(workers=0)
    d.start_worker(instance_id="worker-a")
    d.publish(_events())
    wait_until(
        lambda: d.count("health_book_entries") >= EVENTS // 3,
        120,
        message="a third of the events persisted",
    )
    d.kill(d.workers[0])
    killed_at = time.monotonic()
    d.start_worker(wait=False, instance_id="worker-a")  # the same static member comes back
    ready = d.wait_for_workers() + (time.monotonic() - killed_at)
    print(f"worker ready {ready:.1f}s after the SIGKILL")  # noqa: T201 - shown with -s
    assert_same_state(settle(d), reference)
