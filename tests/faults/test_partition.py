"""Scenario 11: a worker cut off from the broker (a network partition) while it holds a batch,
for longer than its session timeout, then healed.

The worker runs in a network namespace of its own (``tests/faults/netns.py``), joined to the
host by a veth pair; the scenario's broker (a memory Tansu) listens on the host side of the
pair, and every other process (the second worker, the sink, the load) connects to it there
too. The partitioned worker's health-book batches are held ``HOLD_S`` each
(``EHB_FAULT_DELAY``), so that the link goes down while it has a batch in hand: it processes
the batch and then waits for the broker to acknowledge its outputs. The group expires it and
moves its partitions to the other worker, which rebuilds their state from the changelog and
processes the batch again. When the link comes back the partitioned worker is a zombie: it
still flushes the batch's outputs and changelog records before it learns that it lost the
partitions. The tables must still equal an undisturbed run's, reconciled like every scenario
(nothing lost, nothing duplicated, counters = tables). ``make faults`` runs it with 200,000
events; the reduced version runs in ``make test``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import SecretStr

from ehb.commands.local import (
    LOCAL_SESSION_TIMEOUT_S,
    Child,
    Deployment,
    DeploymentFactory,
    scrape,
    wait_until,
)
from ehb.embedded import EmbeddedKafka
from ehb.settings import Settings
from tests.faults.conftest import FaultReport
from tests.faults.harness import (
    Expectation,
    LoadProcess,
    Monitor,
    check_alive,
    expected_for,
    finish,
    reconcile,
    record_failure,
    settle,
    wait_committed,
)
from tests.faults.netns import Forward, NetnsUnavailable, Veth, veth_namespace
from tests.faults.test_broker_faults import Size

pytestmark = pytest.mark.integration

S11 = "11. a worker cut off from the broker (network partition), then healed"

#: seconds the partitioned worker holds each health-book batch before processing it
HOLD_S = 1.0
PARTITIONS = 4

# outage_s: the least the link stays down (it stays down until the other worker owns every
# partition, whichever is longer); above the session timeout, so that the group expires the
# partitioned worker
FULL = Size(
    "full", int(os.environ.get("EHB_FAULTS_EVENTS", "200000")), outage_s=20, span_s=0, timeout=1200
)
QUICK = Size("quick", 3000, outage_s=2 * LOCAL_SESSION_TIMEOUT_S, span_s=24, timeout=240)


def sizes() -> list[object]:
    full = pytest.param(
        FULL, marks=[pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(2400)], id="full"
    )
    return [pytest.param(QUICK, id="quick"), full]


def _metrics(host: str, child: Child) -> dict[str, float] | None:
    """The worker's /metrics, or None while it cannot be reached."""
    try:
        return scrape(child.metrics_port, host=host)
    except OSError:
        return None


def _assigned(host: str, child: Child) -> float:
    return (_metrics(host, child) or {}).get("ehb_worker_assigned_partitions", 0.0)


def _health_book_messages(metrics: dict[str, float] | None) -> float:
    return (metrics or {}).get('ehb_stage_messages_in_total{stage="health-book"}', 0.0)


@dataclass
class Partitioned:
    """The scenario's deployment: ``local`` on the host, ``zombie`` behind the veth pair."""

    veth: Veth
    d: Deployment
    local: Child
    zombie: Child
    expectation: Expectation
    monitor: Monitor
    load: LoadProcess

    @property
    def total(self) -> int:
        return len(self.expectation.outcome)


@contextlib.contextmanager
def _namespace() -> Iterator[Veth]:
    try:
        cm = veth_namespace()
        veth = cm.__enter__()
    except NetnsUnavailable as exc:
        pytest.skip(f"no network namespace for the partition: {exc}")
    try:
        yield veth
    finally:
        cm.__exit__(None, None, None)


@contextlib.contextmanager
def _run(
    services: Settings, tmp_path: Path, size: Size, report: FaultReport
) -> Iterator[Partitioned]:
    """A namespace and its veth pair, a memory broker on the host side of the pair, a
    deployment with one worker on the host and one in the namespace, the load started; the
    report gets the scenario's row whatever happens."""
    scenario = f"{S11} [{size.name}]"
    with contextlib.ExitStack() as stack:
        veth = stack.enter_context(_namespace())
        broker = EmbeddedKafka(tmp_path / "broker", host=veth.host_addr).start()
        stack.callback(broker.stop)
        assert services.database_url is not None
        factory = DeploymentFactory(
            services.model_copy(
                update={
                    "kafka_bootstrap": broker.bootstrap,
                    "kafka_idempotence": False,
                    "kafka_session_timeout_s": LOCAL_SESSION_TIMEOUT_S,
                }
            ),
            tmp_path / "d",
        )
        stack.callback(factory.close)
        d = factory(workers=1, partitions=PARTITIONS)
        # a worker that exits with an error status is restarted, as compose would
        d.children.supervise()
        # PostgreSQL (loopback) reached through the pair too: the facility registry
        postgres = Forward(veth.host_addr, _address(d.settings.database_url))
        stack.callback(postgres.close)
        # a failed run may leave the link down: up again before the processes are stopped
        stack.callback(veth.heal)
        zombie = d.start_worker(
            wait=False,
            prefix=veth.prefix,
            extra_env={
                "EHB_METRICS_HOST": veth.ns_addr,
                "EHB_DATABASE_URL": _via(d.settings.database_url, postgres),
                "EHB_FAULT_DELAY": f"health_book.batch:{HOLD_S}",
            },
        )
        local = d.workers[0]

        def both_own_partitions() -> bool:
            check_alive(d)
            mine, theirs = _assigned(veth.ns_addr, zombie), _assigned("127.0.0.1", local)
            return mine > 0 and theirs > 0 and mine + theirs >= PARTITIONS

        wait_until(both_own_partitions, 120, interval=0.25, message="both workers own partitions")
        expectation = expected_for(size.events)
        monitor = Monitor(d).start()
        stack.callback(monitor.stop)
        rate = size.events / size.span_s if size.span_s else 0
        load = LoadProcess(d, events=size.events, rate=rate).start()
        stack.callback(load.stop)
        run = Partitioned(veth, d, local, zombie, expectation, monitor, load)
        try:
            yield run
        except BaseException as exc:
            record_failure(report, d, scenario, expectation, monitor, exc)
            raise


def _address(url: SecretStr | None) -> tuple[str, int]:
    assert url is not None
    parts = urlsplit(url.get_secret_value())
    return parts.hostname or "127.0.0.1", parts.port or 5432


def _via(url: SecretStr | None, forward: Forward) -> str:
    """``url`` with its host and port replaced by the relay's."""
    assert url is not None
    parts = urlsplit(url.get_secret_value())
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{forward.host}:{forward.port}" if user else f"{forward.host}:{forward.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.parametrize("size", sizes())
def test_worker_partitioned_then_healed(
    services: Settings, tmp_path: Path, fault_report: FaultReport, size: Size
) -> None:
    with _run(services, tmp_path, size, fault_report) as run:
        d, veth, zombie = run.d, run.veth, run.zombie
        wait_committed(d, run.monitor, 0.25 * run.total, size.timeout)
        # The worker in the namespace lags (it holds each health-book batch HOLD_S): the moment
        # it finishes a batch, the next one is already in its buffer, taken and held.
        held_from = _batch_finished(run, size.timeout)
        fault = run.monitor.fault(
            "network partition of a worker (veth down)", committed=run.monitor.committed
        )
        cut = time.monotonic()
        veth.cut()
        wait_until(
            lambda: _assigned("127.0.0.1", run.local) >= PARTITIONS,
            120,
            interval=0.25,
            message="the other worker owning every partition",
        )
        moved_s = time.monotonic() - cut
        time.sleep(max(0.0, size.outage_s - moved_s))  # the outage itself
        veth.heal()
        healed = time.monotonic()
        fault.ended = time.time()
        fault.detail["partitions_moved_after_s"] = round(moved_s, 1)
        # The zombie: it finishes the batch it held, outputs and changelog, for partitions that
        # are no longer its own
        finished = wait_until(
            lambda: _zombie_finished(veth, zombie, held_from),
            30,
            interval=0.05,
            message="the partitioned worker finishing its held batch after the heal",
        )
        zombie_note = (
            f"zombie: finished {finished[0]:.0f} health-book messages (outputs and changelog "
            f"flushed) {time.monotonic() - healed:.1f} s after the heal, "
            f"{finished[1]:.0f} partitions still assigned in its view"
        )
        status = run.load.wait(size.timeout)
        drained_from = time.monotonic()
        settle(d, run.total, size.timeout)
        drain = time.monotonic() - drained_from
        run.monitor.stop()
        log = zombie.log.read_text(errors="replace")
        state = "running" if zombie.proc.poll() is None else f"exited {zombie.proc.returncode}"
        result = finish(
            reconcile(d, f"{S11} [{size.name}]", run.expectation),
            run.monitor,
            run.total,
            drain_seconds=drain,
            notes=[
                f"load: {status.get('accept_seconds')} s to accept; the partitioned worker "
                f"holds each health-book batch {HOLD_S} s",
                zombie_note,
                f"zombie afterwards: {log.count('UnknownMemberIdError')} commits refused "
                f"(UnknownMemberId); at the end {state}, {zombie.restarts} restarts, owning "
                f"{_assigned(veth.ns_addr, zombie):.0f} of {PARTITIONS} partitions",
            ],
        )
        fault_report.add(result)
        assert result.ok, result.failure()


def _batch_finished(run: Partitioned, timeout: float) -> float:
    """Wait until the worker in the namespace finishes a health-book batch; its count of
    health-book messages then."""
    last: list[float] = []

    def finished() -> float:
        check_alive(run.d)
        value = _health_book_messages(_metrics(run.veth.ns_addr, run.zombie))
        done = bool(last) and value > last[-1] > 0
        last.append(value)
        return value if done else 0.0

    return wait_until(
        finished, timeout, interval=0.02, message="the partitioned worker finishing a batch"
    )


def _zombie_finished(veth: Veth, zombie: Child, held_from: float) -> tuple[float, ...]:
    """(messages finished since ``held_from``, assigned partitions) once it finished some,
    else ()."""
    metrics = _metrics(veth.ns_addr, zombie)
    done = _health_book_messages(metrics) - held_from
    if metrics is None or done <= 0:
        return ()
    return done, metrics.get("ehb_worker_assigned_partitions", 0.0)
