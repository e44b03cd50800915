"""Deterministic crash points: a SIGKILL at every point where a piece of work becomes durable.

For each point of :data:`ehb.faultpoints.POINTS` an isolated deployment runs a rate-limited
load; the process under test (the load's producer, a stream worker or the sink) is started with
``EHB_FAULT_KILL=<point>:<N>`` and kills itself the N-th time it reaches the point, mid-run.
The test waits until it has died there (return code -9 and its log naming the point: a point
that is never reached fails), starts it again without the variable, lets the pipeline settle
and reconciles: every event exactly once (a row or a dead letter), the counters equal to the
tables. A worker point runs with a second, healthy worker (the victim's partitions move to it,
then back to the restarted one); the others with one worker.

``make faults`` runs every point; ``make test`` runs one per kind of process (:data:`QUICK`).
Every run adds a row to the fault report's "Crash points" section.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from ehb import faultpoints
from ehb.commands.local import Deployment, DeploymentFactory, scrape, wait_until
from tests.faults.conftest import FaultReport
from tests.faults.harness import (
    LoadProcess,
    Monitor,
    check_alive,
    expected_for,
    finish,
    reconcile,
    reconcile_nothing,
    settle,
    worker_owns_partitions,
)

pytestmark = pytest.mark.integration

EVENTS = 2000
#: the load is spread over this many seconds, so that every point is reached many times
SPAN_S = 6.0
TIMEOUT = 120.0

#: the process that reaches each point, by the point's prefix
PROCESS = {"producer": "producer", "intake": "worker", "health_book": "worker", "sink": "sink"}

#: N of ``EHB_FAULT_KILL=point:N``: a kill a good way into the run (10-30 % of the events
#: committed), never at the first batch. A rate-limited load sends about one message, and
#: commits its outbox about once, per event; a worker or the sink handles a batch every
#: ~50-100 ms while events flow; the worker group commits offsets once a second.
KILL_AT: dict[str, int] = {
    "producer.outbox_committed": 250,
    "producer.message_acknowledged": 250,
    "producer.outbox_deleted": 30,
    "intake.offsets_committed": 3,
    "health_book.offsets_committed": 3,
}
#: N of the other points, by process
KILL_AT_DEFAULT = {"producer": 250, "worker": 10, "sink": 8}

#: run by ``make test`` too: a point of the sink and of the producer. The worker's points run
#: in ``make faults`` only (each needs a second worker and a rejoin, ~20 s); the worker's
#: kill in ``make test`` is scenario 1's.
QUICK = ("sink.db_committed", "producer.message_acknowledged")


def _points() -> Iterator[Any]:
    for point in faultpoints.POINTS:
        marks = [pytest.mark.faults] if point in QUICK else [pytest.mark.faults, pytest.mark.slow]
        yield pytest.param(point, marks=marks, id=point)


@dataclass
class Victim:
    """The process started with ``EHB_FAULT_KILL``."""

    process: str
    proc: Popen[bytes]
    log: Path


def _committed(d: Deployment) -> int:
    return int(
        d.scalar(
            "SELECT coalesce(sum(value), 0) FROM campaign_counters "
            "WHERE metric IN ('examinations', 'dead_letters')"
        )
    )


def _wait_for_death(d: Deployment, victim: Victim, point: str, kill_at: int, total: int) -> None:
    """Until the victim has exited; fails at once if the run ends with it still alive."""

    def died() -> bool:
        if victim.proc.poll() is not None:
            return True
        check_alive(d)
        if _committed(d) >= total:
            raise AssertionError(
                f"{point} was not reached {kill_at} times while the "
                f"{total} events went through: the {victim.process} is alive"
            )
        return False

    wait_until(died, TIMEOUT, interval=0.02, message=f"the {victim.process} killed at {point}")
    code = victim.proc.returncode
    log = victim.log.read_text(errors="replace")
    assert code == -signal.SIGKILL and f"EHB_FAULT_KILL: {point} reached" in log, (
        f"the {victim.process} exited with {code}, not SIGKILL at {point}; log:\n{log[-3000:]}"
    )


def _lag(d: Deployment) -> str:
    """Where events wait (group, topic, partition: lag), for a run that did not settle."""
    from ehb.kafka import admin_client
    from sinks.lag import pipeline_groups, read_lag

    try:
        lags = read_lag(admin_client(d.settings), pipeline_groups(d.settings), timeout=5)
    except Exception as exc:  # noqa: BLE001 - a diagnostic only
        return f"unknown ({type(exc).__name__})"
    prefix = d.settings.topic_prefix
    return (
        ", ".join(
            f"{p.group.rsplit('-', 1)[-1]} {p.topic.removeprefix(prefix)}[{p.partition}]: {p.lag}"
            for p in lags
            if p.lag
        )
        or "none"
    )


def _workers(d: Deployment) -> str:
    """The live workers' partitions and Faust-patch counters (skips, gaps, stopped)."""
    out = []
    for worker in d.workers:
        if worker.proc.poll() is not None:
            continue
        worker.proc.send_signal(signal.SIGUSR1)  # the worker logs its partitions' state
        try:
            metrics = scrape(worker.metrics_port)
        except OSError:
            out.append(f"{worker.name}: no metrics")
            continue
        shown = {
            k.removeprefix("ehb_worker_"): v
            for k, v in metrics.items()
            if k.startswith(
                ("ehb_worker_assigned_partitions", "ehb_worker_offset_", "ehb_worker_commit_")
            )
        }
        out.append(f"{worker.name}: {shown}")
    return "; ".join(out) or "none alive"


@pytest.mark.parametrize("point", list(_points()))
def test_crash_point(deploy: DeploymentFactory, fault_report: FaultReport, point: str) -> None:
    process = PROCESS[point.split(".", 1)[0]]
    kill_at = KILL_AT.get(point, KILL_AT_DEFAULT[process])
    kill = {"EHB_FAULT_KILL": f"{point}:{kill_at}"}
    d = deploy(workers=0 if process == "worker" else 1, sink=process != "sink")
    if process == "sink":
        d.start_sink(extra_env=kill)
    elif process == "worker":
        d.start_worker(wait=False, extra_env=kill)
        d.start_worker(wait=False)
        # both own partitions before the load starts: no rebalance but the crash's
        wait_until(
            lambda: all(worker_owns_partitions(w) for w in d.workers),
            120,
            interval=0.25,
            message="both workers own partitions",
        )
    expectation = expected_for(EVENTS)
    total = len(expectation.outcome)
    monitor = Monitor(d).start()
    load = LoadProcess(d, events=EVENTS, rate=EVENTS / SPAN_S)
    detail: dict[str, Any] = {
        "point": point,
        "process": process,
        "kill_at": kill_at,
        "durable": faultpoints.POINTS[point],
    }
    try:
        load.start(extra_env=kill if process == "producer" else None)
        assert load.proc is not None
        if process == "producer":
            victim = Victim(process, load.proc, load.log)
        elif process == "sink":
            assert d.sink is not None
            victim = Victim(process, d.sink.proc, d.sink.log)
        else:
            victim = Victim(process, d.workers[0].proc, d.workers[0].log)

        _wait_for_death(d, victim, point, kill_at, total)
        detail["committed_at_kill"] = committed = _committed(d)
        detail["accepted_at_kill"] = load.status().get("accepted")
        assert committed < total, f"the kill at {point} landed after the run: lower N"
        fault = monitor.fault(
            f"SIGKILL of the {process} at {point} (#{kill_at})",
            committed=committed,
            accepted=detail["accepted_at_kill"],
        )
        if process == "producer":
            load.start()
        elif process == "sink":
            d.start_sink()
        else:
            fresh = d.start_worker(wait=False)
        fault.ended = time.time()
        if process == "worker":
            wait_until(
                lambda: worker_owns_partitions(fresh),
                TIMEOUT,
                interval=0.25,
                message="restarted worker joined",
            )
            fault.detail["rejoined_after_s"] = round(time.time() - fault.ended, 1)

        status = load.wait(TIMEOUT)
        drained_from = time.monotonic()
        settle(d, total, TIMEOUT)
        drain = time.monotonic() - drained_from
        monitor.stop()
        result = finish(
            reconcile(d, f"crash point {point}", expectation),
            monitor,
            total,
            drain_seconds=drain,
            notes=[
                f"load: {load.starts} process(es), {status.get('resent', 0)} "
                "events resent from the outbox at the last start"
            ],
        )
        fault_report.add_crash_point(result, **detail)
        assert result.ok, result.failure()
    except BaseException as exc:
        if not any(row["point"] == point for row in fault_report.crash_points):
            monitor.stop()
            try:
                result = reconcile(d, f"crash point {point}", expectation)
            except Exception:  # noqa: BLE001 - the database itself may be what failed
                result = reconcile_nothing(f"crash point {point}", expectation)
            result.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            result.notes.append(f"consumer lag at the failure: {_lag(d)}")
            result.notes.append(f"workers at the failure: {_workers(d)}")
            fault_report.add_crash_point(finish(result, monitor, total, drain_seconds=0), **detail)
        raise
    finally:
        load.stop()
        monitor.stop()
