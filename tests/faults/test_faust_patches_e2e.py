"""The Faust patches (streams/faust_patches.py) against the real broker, database and workers.

* The rebalance race: a worker joins and another is killed while every worker's seek to the
  committed offsets is held for 2 s (``EHB_FAULT_DELAY=worker.perform_seek``) and intake
  batches are slowed: faust-streaming 0.15.3 delivers records fetched from the old position
  during that window, clears them from the queues and commits past them. With the patches,
  nothing is lost. (``EHB_FAUST_PATCHES_DISABLE=in_order_delivery,seek_before_resume,
  no_gap_acks`` on the workers shows the loss: docs/faust-patches.md.)
* An exception inside a batch: the worker stops (exit 70) without acknowledging the batch, and
  the restarted worker processes it: nothing lost.
"""

from __future__ import annotations

import os
import time

import pytest

from ehb.commands.errors import WaitTimeout
from ehb.commands.local import DeploymentFactory, wait_until
from tests.faults.conftest import FaultReport
from tests.faults.harness import (
    LoadProcess,
    Monitor,
    expected_for,
    finish,
    reconcile,
    settle,
    wait_committed,
    worker_owns_partitions,
)

pytestmark = pytest.mark.integration

RACE_ENV = {"EHB_FAULT_DELAY": "worker.perform_seek:2.0,intake.batch_during_seek:0.5"}
if os.environ.get("EHB_FAUST_PATCHES_DISABLE"):  # to show what the patches prevent
    RACE_ENV["EHB_FAUST_PATCHES_DISABLE"] = os.environ["EHB_FAUST_PATCHES_DISABLE"]


def _sizes() -> list[object]:
    full = pytest.param(
        20_000, marks=[pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(900)], id="full"
    )
    return [pytest.param(3000, id="quick"), full]


@pytest.mark.parametrize("events", _sizes())
def test_rebalance_while_the_seek_is_slow(
    deploy: DeploymentFactory, fault_report: FaultReport, events: int
) -> None:
    d = deploy(workers=0, partitions=4)
    first = d.start_worker(extra_env=RACE_ENV)
    expectation = expected_for(events)
    total = len(expectation.outcome)
    monitor = Monitor(d).start()
    load = LoadProcess(d, events=events, rate=events / 10).start()
    try:
        wait_committed(d, monitor, 0.2 * total, 120)
        fault = monitor.fault("a second worker joins (seek held 2 s)")
        second = d.start_worker(wait=False, extra_env=RACE_ENV)
        wait_until(
            lambda: worker_owns_partitions(second),
            120,
            interval=0.25,
            message="the second worker owns partitions",
        )
        fault.ended = time.time()
        wait_committed(d, monitor, 0.5 * total, 120)
        fault = monitor.fault("kill -9 of the first worker (seek held 2 s)")
        d.kill(first)
        third = d.start_worker(wait=False, extra_env=RACE_ENV)
        wait_until(
            lambda: worker_owns_partitions(third),
            120,
            interval=0.25,
            message="the restarted worker owns partitions",
        )
        fault.ended = time.time()
        load.wait(300)
        drained_from = time.monotonic()
        notes = ["EHB_FAULT_DELAY=" + RACE_ENV["EHB_FAULT_DELAY"]]
        try:
            settle(d, total, 120)
        except (AssertionError, WaitTimeout) as exc:  # reconcile anyway: the report
            # says what is missing
            notes.append(str(exc).splitlines()[0][:200])
        drain = time.monotonic() - drained_from
    finally:
        load.stop()
        monitor.stop()
    result = finish(
        reconcile(d, f"rebalance race, seek held 2 s [{events}]", expectation),
        monitor,
        total,
        drain_seconds=drain,
        notes=notes,
    )
    fault_report.add(result)
    assert result.ok, result.failure()


@pytest.mark.parametrize(
    "point",
    [
        "intake.batch_received",
        pytest.param("health_book.batch_received", marks=[pytest.mark.faults, pytest.mark.slow]),
    ],
)
def test_an_exception_in_a_batch_acknowledges_nothing(
    deploy: DeploymentFactory, fault_report: FaultReport, point: str
) -> None:
    d = deploy(workers=0, partitions=4)
    failing = d.start_worker(extra_env={"EHB_FAULT_RAISE": f"{point}:5"})
    expectation = expected_for(2000)
    total = len(expectation.outcome)
    monitor = Monitor(d).start()
    load = LoadProcess(d, events=2000, rate=2000 / 6).start()
    try:
        fault = monitor.fault(f"exception in a batch at {point}")
        wait_until(
            lambda: failing.proc.poll() is not None,
            120,
            interval=0.1,
            message="the worker stops after the exception",
        )
        log = failing.log.read_text()
        assert f"EHB_FAULT_RAISE: {point}" in log
        assert failing.proc.returncode == 70, log[-3000:]
        d.children.children.remove(failing)  # stopped as it should: not a crash to report
        d.start_worker()
        fault.ended = time.time()
        load.wait(120)
        drained_from = time.monotonic()
        settle(d, total, 180)
        drain = time.monotonic() - drained_from
    finally:
        load.stop()
        monitor.stop()
    result = finish(
        reconcile(d, f"exception in a batch at {point}", expectation),
        monitor,
        total,
        drain_seconds=drain,
    )
    fault_report.add(result)
    assert result.ok, result.failure()
