"""Broker failures, reconciled like the other scenarios: nothing lost, nothing duplicated.

The embedded broker keeps its topics and committed offsets in SeaweedFS (``durable``
storage), so a broker, its object store, or the whole stack can die and come back from the
data directory. Each scenario runs on an embedded stack of its own (store, brokers and, for
scenario 10, PostgreSQL), whose processes it kills with SIGKILL and restarts on the same
ports. ``make faults`` runs them with 200,000 events (``EHB_FAULTS_BROKER_EVENTS``; see
``FULL``); the reduced versions run in ``make test``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from ehb.commands.local import LOCAL_SESSION_TIMEOUT_S, Deployment, DeploymentFactory
from ehb.embedded import DURABLE_LINGER_MS, EmbeddedStack
from ehb.settings import BrokerStorage, Settings
from tests.faults.conftest import FaultReport
from tests.faults.harness import (
    Expectation,
    LoadProcess,
    Monitor,
    drop_connection,
    expected_for,
    finish,
    reconcile,
    record_failure,
    settle,
    wait_committed,
)

pytestmark = pytest.mark.integration

S7 = "7. kill -9 of the durable broker, restarted"
S8 = "8. kill -9 of the broker's object store, restarted"
S9 = "9. one of three brokers killed under load"
S10 = "10. the whole stack killed at once, restarted from its data directory"


@dataclass(frozen=True)
class Size:
    name: str
    events: int
    #: seconds a killed process stays down
    outage_s: float
    #: seconds over which the load is spread (0: as fast as it goes)
    span_s: float
    timeout: float
    #: EHB_OFFSET_HOLE_CONFIRM_S: a kill can leave a hole in offsets, passed after this long
    hole_confirm_s: float = 60.0


#: events of the full broker scenarios, as every other full scenario (docs/reliability.md)
FULL = Size(
    "full",
    int(os.environ.get("EHB_FAULTS_BROKER_EVENTS", "200000")),
    outage_s=10,
    span_s=0,
    timeout=1200,
)
QUICK = Size("quick", 3000, outage_s=2, span_s=8, timeout=240, hole_confirm_s=10)


def sizes() -> list[object]:
    full = pytest.param(
        FULL, marks=[pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(2400)], id="full"
    )
    return [pytest.param(QUICK, id="quick"), full]


@dataclass
class Run:
    """A scenario's deployment on its own stack, its load and its monitor."""

    stack: EmbeddedStack
    d: Deployment
    expectation: Expectation
    monitor: Monitor
    load: LoadProcess

    @property
    def total(self) -> int:
        return len(self.expectation.outcome)


@contextlib.contextmanager
def _run(
    services: Settings,
    tmp_path: Path,
    size: Size,
    name: str,
    report: FaultReport,
    *,
    brokers: int = 1,
    own_database: bool = False,
) -> Iterator[Run]:
    """A durable stack (``brokers`` brokers; its own PostgreSQL when ``own_database``, else
    the session's), a deployment with two workers on it, the load started; at the end the
    report gets the scenario's row whatever happened."""
    stack = EmbeddedStack(
        Settings(
            data_dir=tmp_path / "stack",
            broker_storage=BrokerStorage.DURABLE,
            brokers=brokers,
            kafka_session_timeout_s=LOCAL_SESSION_TIMEOUT_S,
            log_level="INFO",
        )
    )
    info = stack.start()
    updates: dict[str, object] = {
        "kafka_bootstrap": info.bootstrap,
        "offset_hole_confirm_s": size.hole_confirm_s,
        # what local_services gives a durable stack: full batches (docs/embedded.md)
        "kafka_linger_ms": DURABLE_LINGER_MS,
    }
    if own_database:
        updates["database_url"] = SecretStr(info.database_url)
    factory = DeploymentFactory(services.model_copy(update=updates), tmp_path / "d")
    scenario = f"{name} [{size.name}]"
    run: Run | None = None
    try:
        d = factory(workers=2, partitions=4)
        # a worker whose outputs the broker refused stops itself; like compose, restart it
        d.children.supervise()
        expectation = expected_for(size.events)
        monitor = Monitor(d).start()
        rate = size.events / size.span_s if size.span_s else 0
        load = LoadProcess(d, events=size.events, rate=rate).start()
        run = Run(stack, d, expectation, monitor, load)
        yield run
    except BaseException as exc:
        if run is not None:
            record_failure(report, run.d, scenario, run.expectation, run.monitor, exc)
        raise
    finally:
        if run is not None:
            run.load.stop()
            run.monitor.stop()
        factory.close()
        stack.stop()


def _end(run: Run, name: str, size: Size, report: FaultReport, notes: list[str]) -> None:
    """The load's end, the pipeline settled, every event reconciled."""
    status = run.load.wait(size.timeout)
    drained_from = time.monotonic()
    settle(run.d, run.total, size.timeout)
    drain = time.monotonic() - drained_from
    run.monitor.stop()
    result = finish(
        reconcile(run.d, f"{name} [{size.name}]", run.expectation),
        run.monitor,
        run.total,
        drain_seconds=drain,
        notes=[
            f"load: {status.get('accept_seconds')} s to accept, {run.load.starts} process(es), "
            f"{status.get('resent', 0)} events resent from the outbox at the last start",
            *notes,
        ],
    )
    report.add(result)
    assert result.ok, result.failure()


def _outage(
    run: Run, size: Size, what: str, kill: Callable[[], None], start: Callable[[], object]
) -> None:
    """Kill, stay down ``size.outage_s``, start again; the fault in the report."""
    fault = run.monitor.fault(what, seconds=size.outage_s, committed=run.monitor.committed)
    kill()
    time.sleep(size.outage_s)  # the outage itself: nothing to wait for
    start()
    fault.ended = time.time()
    run.stack.write_stack_file()


@pytest.mark.parametrize("size", sizes())
def test_durable_broker_killed_and_restarted(
    services: Settings, tmp_path: Path, fault_report: FaultReport, size: Size
) -> None:
    with _run(services, tmp_path, size, S7, fault_report) as run:
        wait_committed(run.d, run.monitor, 0.3 * run.total, size.timeout)
        drop_connection(run.d)
        broker = run.stack.brokers[0]
        _outage(run, size, "kill -9 of the broker", broker.kill, broker.start)
        _end(run, S7, size, fault_report, [])


@pytest.mark.parametrize("size", sizes())
def test_object_store_killed_and_restarted(
    services: Settings, tmp_path: Path, fault_report: FaultReport, size: Size
) -> None:
    with _run(services, tmp_path, size, S8, fault_report) as run:
        wait_committed(run.d, run.monitor, 0.3 * run.total, size.timeout)
        store = run.stack.store
        assert store is not None
        _outage(run, size, "kill -9 of SeaweedFS", store.kill, store.start)
        _end(run, S8, size, fault_report, [])


@pytest.mark.parametrize("size", sizes())
def test_one_of_three_brokers_killed(
    services: Settings, tmp_path: Path, fault_report: FaultReport, size: Size
) -> None:
    with _run(services, tmp_path, size, S9, fault_report, brokers=3) as run:
        wait_committed(run.d, run.monitor, 0.3 * run.total, size.timeout)
        victim = run.stack.brokers[0]
        fault = run.monitor.fault("kill -9 of broker 1 of 3", committed=run.monitor.committed)
        victim.kill()
        fault.ended = time.time()
        run.stack.write_stack_file()
        _end(run, S9, size, fault_report, ["broker 1 stays down; clients bootstrap to all 3"])


@pytest.mark.parametrize("size", sizes())
def test_whole_stack_killed_and_restarted(
    services: Settings, tmp_path: Path, fault_report: FaultReport, size: Size
) -> None:
    with _run(services, tmp_path, size, S10, fault_report, own_database=True) as run:
        wait_committed(run.d, run.monitor, 0.3 * run.total, size.timeout)
        drop_connection(run.d)
        d = run.d

        def kill_everything() -> None:
            run.load.kill()
            for child in d.children.children:
                if child.proc.poll() is None:
                    d.kill(child)
            run.stack.kill()

        def start_everything() -> None:
            run.stack.start()
            for _ in range(2):
                d.start_worker(wait=False)
            d.start_sink()
            run.load.start()

        _outage(run, size, "kill -9 of every process", kill_everything, start_everything)
        _end(run, S10, size, fault_report, [])
