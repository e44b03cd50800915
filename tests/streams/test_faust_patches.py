"""Unit tests of the bookkeeping each patch of streams/faust_patches.py changes (no broker).

Real Faust objects where possible: an app that is never started (its consumer does not connect
until then), with the consumer's internal dicts set directly and ``_commit`` replaced.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.streams import Stream
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from prometheus_client import REGISTRY

from ehb import faultpoints
from streams import faust_patches as fp

INSTALLED = fp.install()
TP_IN = TP("in", 0)
#: Faust's own ``_new_offset``, kept by the patch in its closure (itself when not patched)
ORIGINAL_NEW_OFFSET = inspect.getclosurevars(Consumer._new_offset).nonlocals.get(
    "new_offset", Consumer._new_offset
)


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def _run(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a running loop (an app made outside one has mode open a loop it leaks)."""
    return asyncio.run(_call(fn))


_made: list[Consumer] = []


@pytest.fixture(autouse=True)
def _close_thread_loops() -> Iterator[None]:
    """A Faust consumer opens an event loop for its thread at once; it is closed on stop only."""
    yield
    while _made:
        _made.pop()._thread.thread_loop.close()


def _consumer(committed: int | None, acked: list[int], app: faust.App | None = None) -> Consumer:
    consumer = (app or faust.App("t", broker="kafka://127.0.0.1:1")).consumer
    _made.append(consumer)
    if committed is not None:
        consumer._committed_offset[TP_IN] = committed
    consumer._acked[TP_IN] = list(acked)
    consumer._acked_index[TP_IN] = set(acked)
    return consumer


def test_install_applies_every_patch_once() -> None:
    """Without install() Faust runs unpatched; a second install() must not wrap twice."""
    patched = Consumer._new_offset
    assert fp.install() == INSTALLED
    assert set(fp.PATCHES) - {"changelog_real_end", "bulk_recovery"} <= set(INSTALLED)
    assert Consumer._new_offset is patched


# -- no_gap_acks --------------------------------------------------------------------------------
def test_add_gap_acknowledges_nothing() -> None:
    """Faust adds offsets 101..104 to ``_gap``, and ``_new_offset`` merges them as acked."""
    before = _count("ehb_worker_offset_gaps_total", topic="in")

    async def scenario() -> Consumer:
        consumer = _consumer(100, [])
        await consumer._add_gap(TP_IN, 101, 104)
        return consumer

    consumer = asyncio.run(scenario())
    assert not consumer._gap.get(TP_IN)
    assert _count("ehb_worker_offset_gaps_total", topic="in") == before + 1


@pytest.mark.parametrize(
    ("committed", "start", "acked", "faust_says"),
    [
        (100, None, [101, 102], 103),  # one missing message at the head is tolerated by Faust
        (0, None, [1, 2], 3),  # committed 0 is falsy: no head check at all
        (None, 100, [101], 102),  # committed unknown: Faust has nothing to compare with
    ],
)
def test_new_offset_waits_for_the_head(committed, start, acked, faust_says) -> None:
    """Faust commits past an unacknowledged message at the committed offset (see faust_says)."""
    assert _run(lambda: ORIGINAL_NEW_OFFSET(_consumer(committed, acked), TP_IN)) == faust_says
    consumer = _run(lambda: _consumer(committed, acked))
    if start is not None:
        fp._guard(consumer).sought({TP_IN: start})
    assert consumer._new_offset(TP_IN) is None
    assert consumer._acked[TP_IN] == acked


def test_new_offset_with_acknowledged_head() -> None:
    """Faust's answer, unchanged, when the message at the committed offset is acknowledged."""
    consumer = _run(lambda: _consumer(100, [101, 100, 103]))
    assert consumer._new_offset(TP_IN) == 102
    assert consumer._acked[TP_IN] == [103] and consumer._acked_index[TP_IN] == {103}


# -- commit_failure_not_recorded ---------------------------------------------------------------
@pytest.mark.parametrize("committed", [100, None])
def test_failed_commit_is_not_recorded(monkeypatch, committed) -> None:
    """Faust records 103 as committed although the commit failed, and drops 100..102."""
    monkeypatch.setitem(fp.commit_points, "in", "intake.offsets_committed")
    reached: list[str] = []
    monkeypatch.setattr(faultpoints, "reach", reached.append)
    commits: list[tuple[dict[TP, int], bool]] = []
    outcome = False

    async def _commit(offsets) -> bool:
        commits.append((dict(offsets), outcome))
        return outcome

    async def scenario() -> None:
        nonlocal outcome
        consumer = _consumer(committed, [100, 101, 102])
        fp._guard(consumer).sought({TP_IN: 100})
        consumer.assignment = lambda: {TP_IN}
        consumer._commit = _commit
        monkeypatch.setattr(consumer.app.producer, "flush", lambda: _call(lambda: None))
        assert await consumer.commit() is False
        assert consumer._committed_offset.get(TP_IN) == committed
        assert (
            sorted(consumer._acked[TP_IN])
            == [100, 101, 102]
            == sorted(consumer._acked_index[TP_IN])
        )
        assert reached == []
        outcome = True
        assert await consumer.commit() is True
        assert consumer._committed_offset[TP_IN] == 103

    asyncio.run(scenario())
    assert commits == [({TP_IN: 103}, False), ({TP_IN: 103}, True)]
    assert reached == ["intake.offsets_committed"]


# -- in_order_delivery -------------------------------------------------------------------------
class _StandIn:
    """The parts of a Faust consumer DeliveryGuard uses."""

    def __init__(self) -> None:
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: t != "noack"))
        self.seeks: list[tuple[TP, int]] = []

    def _is_changelog_tp(self, tp: TP) -> bool:
        return tp.topic.endswith("-changelog")

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _guard() -> tuple[fp.DeliveryGuard, _StandIn, list[tuple[str, int]]]:
    delivered: list[tuple[str, int]] = []

    async def inner(message):
        delivered.append((message.topic, message.offset))

    consumer = _StandIn()
    return fp.DeliveryGuard(consumer, inner), consumer, delivered


def _msg(offset: int, topic: str = "in") -> SimpleNamespace:
    return SimpleNamespace(topic=topic, tp=TP(topic, 0), offset=offset)


def test_guard_delivers_in_offset_order(monkeypatch) -> None:
    """Faust delivers whatever the fetch returns past its read offset, skips included."""
    guard, consumer, delivered = _guard()
    skips = {
        k: _count("ehb_worker_offset_skips_total", topic="in", kind=k)
        for k in ("fenced", "redelivered", "skip")
    }

    async def scenario() -> None:
        await guard.deliver(_msg(100))  # fenced: no seek yet in this generation
        guard.sought({TP_IN: 100})
        for offset in (100, 101, 100, 105, 106):
            await guard.deliver(_msg(offset))
        assert consumer.seeks == []  # scheduled once (106 came while it was pending)
        await asyncio.sleep(0)
        assert consumer.seeks == [(TP_IN, 102)]
        await guard.deliver(_msg(107))  # fetched before the seek landed: no second seek
        assert consumer.seeks == [(TP_IN, 102)]
        monkeypatch.setattr(fp, "_RESEEK_INTERVAL_S", 0.0)  # the skip persists past it
        await guard.deliver(_msg(108))
        await asyncio.sleep(0)
        assert consumer.seeks == [(TP_IN, 102), (TP_IN, 102)]
        await guard.deliver(_msg(102))

    asyncio.run(scenario())
    assert delivered == [("in", 100), ("in", 101), ("in", 102)]
    assert guard.expected[TP_IN] == 103 and guard.start[TP_IN] == 100
    after = {
        k: _count("ehb_worker_offset_skips_total", topic="in", kind=k) - v for k, v in skips.items()
    }
    assert after == {"fenced": 1, "redelivered": 1, "skip": 4}


@pytest.mark.parametrize("committed", [None, -1001])
def test_guard_without_committed_offset(committed) -> None:
    """Faust delivers from wherever the fetch starts; the guard records that offset as start."""
    guard, _, delivered = _guard()
    guard.sought({TP_IN: committed})
    for offset in (7, 9):  # 9 is a skip: 8 is next once 7 is delivered
        asyncio.run(guard.deliver(_msg(offset)))
    assert delivered == [("in", 7)]
    assert guard.start[TP_IN] == 7 and guard.expected[TP_IN] == 8


def test_guard_passes_unacked_and_changelog_topics() -> None:
    """Faust's behaviour, kept for topics without acks and for changelogs (never fenced)."""
    guard, consumer, delivered = _guard()
    for message in (_msg(5, "noack"), _msg(3, "noack"), _msg(9, "t-changelog")):
        asyncio.run(guard.deliver(message))
    assert delivered == [("noack", 5), ("noack", 3), ("t-changelog", 9)]
    assert guard.expected == {} and consumer.seeks == []


def test_guard_seeks_back_over_records_the_fetch_loop_dropped() -> None:
    """Faust's getmany drops records the client has handed over when their partition is paused
    (or the flow stops) at that moment; with no later record the partition stalls."""
    guard, consumer, delivered = _guard()
    other, fenced = TP("in", 1), TP("in", 2)
    before = _count("ehb_worker_offset_skips_total", topic="in", kind="dropped")

    async def scenario() -> None:
        guard.sought({TP_IN: 95, other: 10})
        await guard.deliver(_msg(95))
        # TP_IN: 96..464 taken from the client and dropped; other: caught up; fenced: seeking
        positions = {TP_IN: 465, other: 10, fenced: 50}
        guard.check_positions(positions)
        guard.check_positions(positions)  # the seek back is pending: not twice
        await asyncio.sleep(0)
        assert consumer.seeks == [(TP_IN, 96)]
        guard.check_positions({TP_IN: 96, other: 10})  # landed: nothing to do
        await guard.deliver(_msg(96))

    asyncio.run(scenario())
    assert consumer.seeks == [(TP_IN, 96)]
    assert delivered == [("in", 95), ("in", 96)]
    assert _count("ehb_worker_offset_skips_total", topic="in", kind="dropped") == before + 1


def test_an_empty_active_set_takes_nothing_from_the_client() -> None:
    """aiokafka's fetched_records takes every partition when Faust's (live) active set is empty:
    ``if partitions and tp not in partitions``."""
    live: set[TP] = set()
    only = fp._OnlyThese(live)
    assert bool(only) and TP_IN not in only
    live.add(TP_IN)
    assert TP_IN in only and list(only) == [TP_IN] and len(only) == 1


def test_read_offsets_seen_through_the_guard() -> None:
    """Faust's read offset is the last offset read, so its fetch loop lets a refetch through."""
    guard, _, _ = _guard()
    other = TP("in", 1)
    read = fp._ReadOffsets(guard, {TP_IN: 99, other: 5})
    guard.sought({TP_IN: 100, other: None})
    assert read[TP_IN] == 100 and read[other] == 5 and read[TP("in", 2)] is None
    guard.fence({TP_IN})
    assert read[TP_IN] == 99


# -- no_ack_on_error ---------------------------------------------------------------------------
def test_take_events_is_patched_and_take_batches_names_the_point() -> None:
    """Faust's take_events has no acked_point (and acks in a finally)."""
    assert "acked_point" in inspect.signature(Stream.take_events).parameters
    calls: list[tuple] = []
    stream = SimpleNamespace(take_events=lambda *a, **kw: calls.append((a, kw)))
    fp.take_batches(stream, 10, 0.5, "intake.batch_acknowledged")
    assert calls == [((10,), {"within": 0.5, "acked_point": "intake.batch_acknowledged"})]


def test_batch_whose_agent_raised_is_not_acknowledged(monkeypatch) -> None:
    """Faust acknowledges a batch in a finally, also when the agent raised while handling it."""
    reached: list[str] = []
    monkeypatch.setattr(faultpoints, "reach", reached.append)

    async def scenario() -> Consumer:
        app = faust.App("t", broker="kafka://127.0.0.1:1")
        app.flow_control.resume()  # an app never started has its flow suspended
        app.topics._acking_topics.add("in")
        consumer = _consumer(None, [], app)
        channel = app.channel()
        stream = app.stream(channel)
        batches: list[list[int]] = []

        async def agent() -> None:
            async for events in stream.take_events(2, within=10, acked_point="x.acked"):
                batches.append([event.message.offset for event in events])
                if len(batches) == 2:
                    raise RuntimeError("the agent failed on this batch")

        task = asyncio.ensure_future(agent())
        while not channel._subscribers:
            await asyncio.sleep(0)
        for offset in range(4):
            message = ConsumerMessage(
                "in",
                0,
                offset,
                0.0,
                0,
                {},
                b"k",
                b"v",
                None,
                generation_id=app.consumer_generation_id,
            )
            message.refcount = 1
            await channel.put(app.create_event(b"k", offset, {}, message))
        with pytest.raises(RuntimeError, match="failed on this batch"):
            await asyncio.wait_for(task, 5)
        await stream.stop()
        assert batches == [[0, 1], [2, 3]]
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer._acked[TP_IN] == [0, 1] and consumer._acked_index[TP_IN] == {0, 1}
    assert reached == ["x.acked"]


# -- EHB_FAUST_PATCHES_DISABLE ------------------------------------------------------------------
def test_enabled_parses_the_disable_list(monkeypatch) -> None:
    """Without the variable every patch is applied."""
    monkeypatch.delenv("EHB_FAUST_PATCHES_DISABLE", raising=False)
    assert all(fp._enabled(name) for name in fp.PATCHES)
    monkeypatch.setenv("EHB_FAUST_PATCHES_DISABLE", "")
    assert all(fp._enabled(name) for name in fp.PATCHES)
    monkeypatch.setenv("EHB_FAUST_PATCHES_DISABLE", " no_gap_acks ,in_order_delivery,,")
    assert [n for n in fp.PATCHES if not fp._enabled(n)] == ["in_order_delivery", "no_gap_acks"]


def test_recovery_never_seeks_below_zero() -> None:
    from collections import Counter as Offsets

    from faust.tables.recovery import Recovery

    fp.install()
    sought: list[dict[TP, int]] = []

    class Client:
        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            sought.append(dict(offsets))

    a, b, c, d = (TP("changelog", p) for p in range(4))
    offsets = Offsets({a: -2, b: -1, c: 41, d: None})  # -2, None: not computed
    asyncio.run(Recovery._seek_offsets(None, Client(), {a, b, c, d}, offsets, "standby"))  # type: ignore[arg-type]
    assert sought == [{a: 0, b: 0, c: 41, d: 0}]


# -- livelock_since_assignment ----------------------------------------------------------------
def test_the_livelock_clock_restarts_at_each_assignment() -> None:
    """Faust's "no event since start" is measured from the last assignment, not from the
    process's start: a rebalance of a long-running worker reports no partition as stuck."""
    from faust.transport.drivers.aiokafka import ConsumerRebalanceListener

    delegated: list[Any] = []

    async def on_partitions_assigned(tps: Any, generation: int) -> None:
        delegated.append((tps, generation))

    thread = SimpleNamespace(
        time_started=0.0,  # the process started long ago
        app=SimpleNamespace(consumer_generation_id=None),
        on_partitions_assigned=on_partitions_assigned,
        _ensure_consumer=lambda: SimpleNamespace(_coordinator=SimpleNamespace(generation=7)),
    )
    before = time.monotonic()
    asyncio.run(ConsumerRebalanceListener(thread).on_partitions_assigned([]))  # type: ignore[arg-type]
    assert thread.time_started >= before
    assert delegated == [(set(), 7)]
