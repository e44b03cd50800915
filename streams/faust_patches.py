"""Every change this project makes to faust-streaming's behaviour, with the reason for each.

faust-streaming 0.15.3 loses messages silently in ways a kill-and-reconcile test finds
(docs/faust-patches.md has a minimal reproduction of each). The worker relies on one
invariant instead: *the messages of an input partition reach the agents exactly in offset
order, from the committed offset on, and an offset is committed only once every message
before it was processed*. The patches below enforce it; :func:`install` applies them once per
process, before the app starts. Each has a name (``PATCHES``) and a test in
``tests/streams/test_faust_patches.py``; ``EHB_FAUST_PATCHES_DISABLE=name,...`` turns named
patches off (for the tests that show what each one prevents; never in production).

``in_order_delivery``
    Faust's fetch loop (``Consumer._drain_messages``) hands messages to the agents' queues and
    keeps its own "read offset" to drop refetched messages. After a rebalance, records fetched
    from the old position can be delivered while the seek to the committed offset is pending,
    the queues are then cleared (``flow_control.resume()``, ``clear_on_resume=True``) and the
    read offset, moved past them, drops their refetch as "already read". This patch wraps the
    delivery callback: per input partition it knows the next offset to deliver (the committed
    offset after each seek) and delivers only that one. An older offset is dropped (already
    delivered), a partition with no seek yet in this generation is fenced (dropped until the
    seek), and a newer offset is a skip: it is dropped, logged, counted
    (``ehb_worker_offset_skips_total``) and the partition is sought back to the offset it
    expects (again at most once a second while the skip persists: nothing past a missing
    offset is ever delivered, so nothing past it is committed). Faust's read offsets are seen
    through the guard, so its fetch loop drops exactly what the guard has delivered. Records
    can also be lost before the guard: Faust's ``getmany`` drops those the client already
    handed over when their partition is not active at that moment (flow stopped, generation
    changed, or taken because the active set was empty: aiokafka then takes every partition,
    see ``_OnlyThese``). The client is given a view in which an empty set means none, and each
    time the fetch loop asks for more records, a partition whose client position is past the
    guard's next offset is sought back to it (``kind="dropped"``): a later record would show
    the loss as a skip, but when the dropped records were the partition's last none comes.
``seek_before_resume``
    ``Recovery.on_recovery_completed`` / ``_resume_streams`` resume the stream partitions
    *before* awaiting ``perform_seek()``. Here: seek first, then clear the queues, then resume
    the partitions and the flow.
``no_gap_acks``
    A jump in offsets (``Consumer._add_gap``) is recorded by Faust as acknowledged, and
    ``_new_offset`` merges it into the committed range. Our topics have contiguous offsets (no
    transactions, no compaction on the input topics): a jump is a bug elsewhere, so nothing is
    acknowledged for it; it is logged and counted. ``_new_offset`` also tolerates one missing
    message at the head of the acknowledged offsets (``min(acked) - committed > 1``) and none
    when the committed offset is 0 or unknown; here no commit passes an unacknowledged head.
``no_ack_on_error``
    ``Stream.take_events`` acknowledges the buffered events in a ``finally`` (also when the
    agent raised while handling them), so Faust commits past a batch that failed. Here the
    events are acknowledged only when the agent asks for the next batch, and an agent that
    raises stops the worker (``fail_stop``) without acknowledging its batch.
``commit_failure_not_recorded``
    ``Consumer._commit_offsets`` records offsets as committed even when the commit failed; the
    next acknowledgements below them are then ignored. Here a failed commit leaves the committed
    offsets as they were and the acknowledged offsets ready for the next commit.
``no_negative_seek``
    Recovery seeks a standby changelog partition to the offset it computed and maps only
    ``-1`` to 0; an offset it could not compute (None, or below -1) reaches aiokafka's
    ``seek``, whose ``ValueError`` crashes the worker (3 runs of 50 in the fault suite's loop,
    when a rebalance restarted recovery). Here such an offset reads the partition from its
    start.
``changelog_real_end``
    Recovery reads a changelog partition up to the high watermark of ListOffsets. Tansu reports
    the start of the newest record batch + 1 there, so recovery stopped before the end of the
    last batch and the worker restarted on stale state. Here the end is read: the records from
    the reported end on are fetched and the real end is the last offset + 1 (on Apache Kafka
    that is the same number).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Sequence
from enum import Enum
from typing import Any, Final, cast

from faust import App
from faust.streams import Stream, _tracks_buffer_agen
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.types import TP, EventT

try:
    from faust.types.tuples import ack_lock
except ImportError:  # pragma: no cover - faust-streaming before the lock
    ack_lock = contextlib.nullcontext()  # type: ignore[assignment]
from mode import Seconds
from mode.utils.futures import notify
from prometheus_client import Counter

from ehb import faultpoints
from ehb.continuity import HOLE_CONFIRM_S, HoleWatch

__all__ = [
    "PATCHES",
    "commit_points",
    "fail_stop",
    "install",
    "real_end_offsets",
    "seek_pending",
    "take_batches",
]

log = logging.getLogger(__name__)

PATCHES = (
    "in_order_delivery",
    "seek_before_resume",
    "no_gap_acks",
    "no_ack_on_error",
    "commit_failure_not_recorded",
    "changelog_real_end",
    "no_negative_seek",
    "bulk_recovery",
    "livelock_since_assignment",
)

#: topic -> crash point reached after a successful commit of its offsets (set by the app)
commit_points: dict[str, str] = {}

OFFSET_SKIPS = Counter(
    "ehb_worker_offset_skips_total",
    "Messages of an input partition that arrived out of order (a skip forward, a refetch of "
    "an already delivered offset, or before the partition's seek) and were not delivered.",
    ["topic", "kind"],
)
OFFSET_GAPS = Counter(
    "ehb_worker_offset_gaps_total",
    "Jumps in offsets seen by Faust's fetch loop; never acknowledged (our topics are contiguous).",
    ["topic"],
)
COMMIT_FAILURES = Counter(
    "ehb_worker_commit_failures_total", "Offset commits of the worker group that failed."
)

#: (topic, partition, offset) -> offset of the broker's first record at or after it (None:
#: none); set by :func:`install`, used to tell a hole in the log from a skip of the client
_first_offset: Callable[[str, int, int], int | None] | None = None
#: seconds stuck at a skip before the broker is asked about a hole (set by :func:`install`)
_hole_confirm_s = HOLE_CONFIRM_S

_RESEEK_INTERVAL_S = 1.0
_FAIL_STOP_GRACE_S = 5.0
#: exit status of a worker stopped by fail_stop (EX_SOFTWARE)
EXIT_AGENT_FAILED = 70
_installed: set[str] = set()


def _enabled(name: str) -> bool:
    disabled = {n.strip() for n in os.environ.get("EHB_FAUST_PATCHES_DISABLE", "").split(",")}
    return name not in disabled


_seeks_pending = 0


def seek_pending() -> bool:
    """A seek of the stream partitions to their committed offsets is under way."""
    return _seeks_pending > 0


def _instrument_seek() -> None:
    """Not a change of behaviour: the ``worker.perform_seek`` delay point, and
    :func:`seek_pending` (the fault suite slows batches while a seek is pending)."""
    perform_seek = Consumer.perform_seek

    async def perform_seek_(self: Consumer) -> None:
        global _seeks_pending
        _seeks_pending += 1
        try:
            await faultpoints.adelay("worker.perform_seek")
            await perform_seek(self)
        finally:
            _seeks_pending -= 1

    Consumer.perform_seek = perform_seek_  # type: ignore[method-assign]


def install(
    real_end: Callable[[dict[TP, int]], dict[TP, int]] | None = None,
    first_offset: Callable[[str, int, int], int | None] | None = None,
    hole_confirm_s: float = HOLE_CONFIRM_S,
    bulk_read: BulkRead | None = None,
) -> list[str]:
    """Apply every enabled patch (once per process); returns the names applied.

    ``real_end``: reads the real end offsets of changelog partitions (``real_end_offsets``
    bound to the settings); without it ``changelog_real_end`` is not applied.
    ``first_offset``: the broker's first record at or after an offset (``first_offset_at``
    bound to the settings); without it a hole in an input partition's log stalls it.
    ``hole_confirm_s``: ``EHB_OFFSET_HOLE_CONFIRM_S``.
    ``bulk_read``: reads changelog records into RocksDB partition databases
    (``streams.state_store.read_changelog`` bound to the settings); without it
    ``bulk_recovery`` is not applied.
    """
    global _first_offset, _hole_confirm_s
    _hole_confirm_s = hole_confirm_s
    if first_offset is not None:
        _first_offset = first_offset
    if "instrument_seek" not in _installed:
        faust_version()
        _instrument_seek()
        _installed.add("instrument_seek")
    for name, apply in (
        ("in_order_delivery", _patch_in_order_delivery),
        ("seek_before_resume", _patch_seek_before_resume),
        ("no_gap_acks", _patch_no_gap_acks),
        ("no_ack_on_error", _patch_no_ack_on_error),
        ("commit_failure_not_recorded", _patch_commit_failure_not_recorded),
        ("no_negative_seek", _patch_no_negative_seek),
        ("livelock_since_assignment", _patch_livelock_since_assignment),
    ):
        if name not in _installed and _enabled(name):
            apply()
            _installed.add(name)
    if (
        real_end is not None
        and "changelog_real_end" not in _installed
        and _enabled("changelog_real_end")
    ):
        _patch_changelog_real_end(real_end)
        _installed.add("changelog_real_end")
    if bulk_read is not None and "bulk_recovery" not in _installed and _enabled("bulk_recovery"):
        _patch_bulk_recovery(bulk_read)
        _installed.add("bulk_recovery")
    return sorted(_installed)


def faust_version() -> str:
    from importlib.metadata import version

    found = version("faust-streaming")
    if found != "0.15.3":
        log.warning(
            "faust-streaming %s: the patches in streams/faust_patches.py were written "
            "and tested for 0.15.3",
            found,
        )
    return found


# -- in_order_delivery ------------------------------------------------------------------------
class _Fence(Enum):
    """A partition whose next offset is unknown until its seek completes."""

    FENCED = "fenced"


_FENCED: Final = _Fence.FENCED


class DeliveryGuard:
    """The next offset to deliver, per input partition, for one consumer."""

    def __init__(self, consumer: Consumer, inner: Callable[[Any], Any]) -> None:
        self.consumer = consumer
        self.inner = inner
        #: tp -> next offset to deliver (None: start unknown, anything is next); absent: fenced
        self.expected: dict[TP, int | None] = {}
        #: tp -> first offset of this generation (for the commit-side head check)
        self.start: dict[TP, int] = {}
        #: tp -> (offset sought back to, monotonic time); a seek is pending when time is None
        self._seeking: dict[TP, tuple[int, float | None]] = {}
        #: partitions stuck at one offset, and the holes in their logs
        self.holes = HoleWatch(_hole_confirm_s)

    def _guarded(self, topic: str) -> bool:
        consumer = self.consumer
        return bool(consumer.app.topics.acks_enabled_for(topic)) and not consumer._is_changelog_tp(
            TP(topic, 0)
        )

    async def deliver(self, message: Any) -> Any:
        if not self._guarded(message.topic):
            return await self.inner(message)
        tp, offset = message.tp, message.offset
        expected = self.expected.get(tp, _FENCED)
        if expected is _FENCED:
            OFFSET_SKIPS.labels(message.topic, "fenced").inc()
            return None
        if expected is None or offset == expected:
            if expected is None:
                self.start[tp] = offset
            self.expected[tp] = offset + 1
            return await self.inner(message)
        if offset < expected:
            OFFSET_SKIPS.labels(message.topic, "redelivered").inc()
            return None
        if await self._is_hole(tp, expected, offset):
            OFFSET_SKIPS.labels(message.topic, "hole").inc()
            self._ack_hole(tp, expected, offset)
            self.expected[tp] = offset + 1
            return await self.inner(message)
        OFFSET_SKIPS.labels(message.topic, "skip").inc()
        self._skip(tp, expected, offset)
        return None

    async def _is_hole(self, tp: TP, expected: int, offset: int) -> bool:
        """``offset`` is the first record after a hole in the log that starts at ``expected``
        (``ehb.continuity.HoleWatch``: stuck there long enough, then asked of the broker)."""
        holes, key = self.holes, (tp.topic, tp.partition)
        probe = _first_offset
        if probe is not None and holes.due(key, expected):
            loop = asyncio.get_running_loop()
            try:
                first = await loop.run_in_executor(None, probe, tp.topic, tp.partition, expected)
            except Exception as exc:  # noqa: BLE001 - unanswered: asked again later
                log.warning("first offset of %s[%d] unknown: %r", tp.topic, tp.partition, exc)
                first = None
            holes.record(key, expected, first)
        return holes.hole(key, expected, offset)

    def _ack_hole(self, tp: TP, start: int, end: int) -> None:
        """Acknowledge the offsets ``start``..``end - 1`` that the log does not hold, so that
        commits pass them."""
        log.warning(
            "input partition %s[%d]: the log holds no record from %d to %d (a hole the broker "
            "left); delivering from %d",
            tp.topic,
            tp.partition,
            start,
            end - 1,
            end,
        )
        consumer = self.consumer
        with ack_lock:
            acked_index = consumer._acked_index[tp]
            acked = consumer._acked[tp]
            for offset in range(start, end):
                if offset not in acked_index:
                    acked_index.add(offset)
                    acked.append(offset)

    def _skip(self, tp: TP, expected: int, offset: int) -> None:
        """``offset`` arrived while ``expected`` was next: seek back (at most once a second)."""
        at, when = self._seeking.get(tp, (None, 0.0))
        now = time.monotonic()
        if at == expected and (when is None or now - when < _RESEEK_INTERVAL_S):
            return  # a seek back is pending or just landed: what arrives now was fetched before
        log.error(
            "input partition %s[%d]: offset %d arrived while %d is next; not delivered, "
            "seeking back to %d",
            tp.topic,
            tp.partition,
            offset,
            expected,
            expected,
        )
        self._seeking[tp] = (expected, None)
        asyncio.ensure_future(self._seek_back(tp, expected))

    async def _seek_back(self, tp: TP, offset: int) -> None:
        try:
            await self.consumer.seek(tp, offset)
        except Exception as exc:  # noqa: BLE001 - the next skip or rebalance seeks again
            log.warning("seek of %s[%d] to %d failed: %r", tp.topic, tp.partition, offset, exc)
        if self._seeking.get(tp, (None, None))[0] == offset:
            self._seeking[tp] = (offset, time.monotonic())

    def check_positions(self, positions: dict[TP, int]) -> None:
        """Called by the fetch loop before it takes the next records, when every record it took
        before has been delivered or dropped: an input partition whose fetch position is past
        the next offset to deliver lost records between the client and the guard. Faust's
        ``getmany`` drops the records it has already taken from the client when their
        partition is not active at that moment, the flow stops or the generation changes;
        the client's position has moved past them. A later record would show the gap as a
        skip; when the dropped records were the partition's last, none comes and the partition
        stalls. Seek back instead."""
        for tp, expected in self.expected.items():
            position = positions.get(tp)
            if expected is None or position is None or position <= expected:
                continue
            if tp in self._seeking and self._seeking[tp][1] is None:
                continue  # a seek back is pending
            OFFSET_SKIPS.labels(tp.topic, "dropped").inc()
            log.warning(
                "input partition %s[%d]: fetched up to %d but %d is next to deliver (records "
                "dropped by the fetch loop); seeking back to %d",
                tp.topic,
                tp.partition,
                position,
                expected,
                expected,
            )
            self._seeking[tp] = (expected, None)
            asyncio.ensure_future(self._seek_back(tp, expected))

    def fence(self, tps: set[TP]) -> None:
        """No delivery from ``tps`` until they are sought (a rebalance started)."""
        for tp in tps:
            self.expected.pop(tp, None)
            self.start.pop(tp, None)
            self._seeking.pop(tp, None)
        self.holes.forget((tp.topic, tp.partition) for tp in tps)

    def sought(self, committed: dict[TP, int | None]) -> None:
        """``tps`` are at their committed offsets: deliver from there."""
        if committed:
            log.info(
                "input partitions sought, next offsets: %s",
                ", ".join(
                    f"{tp.topic}[{tp.partition}]={offset}"
                    for tp, offset in sorted(committed.items())
                ),
            )
        for tp, offset in committed.items():
            known = offset if offset is not None and offset >= 0 else None
            self.expected[tp] = known
            self._seeking.pop(tp, None)
            if known is not None:
                self.start[tp] = known
            else:
                self.start.pop(tp, None)


class _ReadOffsets(defaultdict[TP, int | None]):
    """Faust's read offsets, seen through the guard: the fetch loop drops what the guard has
    delivered and nothing else (its own value goes stale when a skipped message is read)."""

    def __init__(self, guard: DeliveryGuard, data: Any) -> None:
        super().__init__(lambda: None, data)
        self.guard = guard

    def __getitem__(self, tp: TP) -> int | None:
        expected = self.guard.expected.get(tp, _FENCED)
        if expected is _FENCED or expected is None:
            return super().__getitem__(tp)
        return expected


def describe(consumer: Consumer) -> str:
    """The consumer's view of its input partitions, for an operator (``kill -USR1``)."""
    guard = guard_of(consumer)
    assignment = consumer.assignment()
    active = consumer._get_active_partitions()
    lines = [f"flow active {consumer.flow_active}; assigned {len(assignment)}"]
    for tp in sorted(assignment):
        if consumer._is_changelog_tp(tp):
            continue
        expected = guard.expected.get(tp, "fenced") if guard is not None else "-"
        state = (
            "active"
            if tp in active
            else "paused"
            if tp in consumer._paused_partitions
            else "buffered"
            if tp in consumer._buffered_partitions
            else "not fetched"
        )
        lines.append(
            f"  {tp.topic}[{tp.partition}] {state}, next to deliver {expected}, "
            f"committed {consumer._committed_offset.get(tp)}, "
            f"acked {len(consumer._acked.get(tp, ()))}, "
            f"highwater {consumer.highwater(tp)}"
        )
    return "\n".join(lines)


def _dump_on_signal(consumer: Consumer) -> None:
    def dump(*_: Any) -> None:
        try:
            log.warning("partition state (SIGUSR1):\n%s", describe(consumer))
        except Exception as exc:  # noqa: BLE001 - a diagnostic must never stop the worker
            log.warning("partition state unavailable: %r", exc)
        _dump_allocations()

    with contextlib.suppress(ValueError):  # not the main thread: no handler
        signal.signal(signal.SIGUSR1, dump)


def _dump_allocations(top: int = 25) -> None:
    """With ``PYTHONTRACEMALLOC`` set: the largest live allocation sites (code locations and
    sizes, never values)."""
    import tracemalloc

    if not tracemalloc.is_tracing():
        return
    stats = tracemalloc.take_snapshot().statistics("lineno")[:top]
    log.warning("largest live allocations (SIGUSR1):\n%s", "\n".join(str(stat) for stat in stats))


def guard_of(consumer: Consumer) -> DeliveryGuard | None:
    return getattr(consumer, "_ehb_guard", None)


def _guard(consumer: Consumer) -> DeliveryGuard:
    guard = guard_of(consumer)
    if guard is None:
        guard = DeliveryGuard(consumer, consumer.callback)
        consumer._ehb_guard = guard  # type: ignore[attr-defined]
        _dump_on_signal(consumer)
    return guard


def fetch_positions(consumer: Consumer) -> dict[TP, int]:
    """The aiokafka client's fetch positions (the next offset it hands to Faust), read from
    the consumer thread's state ({} for another driver or before the client started)."""
    try:
        assignment = consumer._thread._consumer._subscription.subscription.assignment  # type: ignore[attr-defined]
        positions = {}
        for tp in assignment.tps:
            state = assignment.state_value(tp)
            if state.has_valid_position:
                positions[TP(tp.topic, tp.partition)] = state.position
        return positions
    except AttributeError:
        return {}


class _OnlyThese:
    """Faust's active partitions (a set it keeps changing) as the client thread's
    ``fetched_records`` reads them: ``if partitions and tp not in partitions`` takes *every*
    partition when the set is empty, which it becomes while a wait is under way (recovery done,
    every partition paused until the seek). Here an empty set means none."""

    def __init__(self, tps: set[TP]) -> None:
        self.tps = tps

    def __bool__(self) -> bool:
        return True

    def __contains__(self, tp: object) -> bool:
        return tp in self.tps

    def __iter__(self) -> Any:
        return iter(list(self.tps))

    def __len__(self) -> int:
        return len(self.tps)


def _patch_in_order_delivery() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    thread_getmany = AIOKafkaConsumerThread.getmany

    async def getmany_only_active(
        self: AIOKafkaConsumerThread, active_partitions: set[TP] | None, timeout: float
    ) -> Any:
        if active_partitions is None:  # a client-only app: every partition
            return await thread_getmany(self, active_partitions, timeout)
        return await thread_getmany(self, _OnlyThese(active_partitions), timeout)  # type: ignore[arg-type]

    AIOKafkaConsumerThread.getmany = getmany_only_active  # type: ignore[method-assign]
    drain = Consumer._drain_messages
    revoked = Consumer.on_partitions_revoked
    assigned = Consumer.on_partitions_assigned
    perform_seek = Consumer.perform_seek

    async def _drain_messages(self: Consumer, fetcher: Any) -> None:
        guard = _guard(self)
        if self.callback != guard.deliver:
            guard.inner = self.callback
            self.callback = guard.deliver
        if not isinstance(self._read_offset, _ReadOffsets):
            self._read_offset = _ReadOffsets(guard, self._read_offset)
        getmany = type(self).getmany.__get__(self)

        def getmany_(timeout: float) -> Any:
            # Faust's loop calls getmany once it has handled every record of the last call
            if self.flow_active:
                guard.check_positions(fetch_positions(self))
            return getmany(timeout=timeout)

        self.getmany = getmany_  # type: ignore[method-assign]
        await drain(self, fetcher)

    async def on_partitions_revoked(self: Consumer, revoked_tps: set[TP]) -> None:
        _guard(self).fence(set(revoked_tps))
        await revoked(self, revoked_tps)

    async def on_partitions_assigned(
        self: Consumer, assigned_tps: set[TP], generation_id: int = 0
    ) -> None:
        _guard(self).fence(set(assigned_tps))
        await assigned(self, assigned_tps, generation_id)

    async def perform_seek_(self: Consumer) -> None:
        guard = _guard(self)
        streams = {tp for tp in self.assignment() if not self._is_changelog_tp(tp)}
        guard.fence(streams)  # what is delivered while the seek is pending is dropped
        await perform_seek(self)
        # the offsets as stored, not through _ReadOffsets.__getitem__ (dict.get bypasses it)
        read_offsets = self._read_offset
        assert isinstance(read_offsets, dict)  # faust's defaultdict, wrapped by the guard
        starts = {tp: dict.get(read_offsets, tp) for tp in streams}
        fresh = [tp for tp, offset in starts.items() if offset is None]
        if fresh:
            # No committed offset: start at the beginning, explicitly, so that the guard knows
            # the first offset (otherwise a restarted worker may fetch nothing from such
            # partitions: docs/reliability.md, Limits).
            earliest = await self.earliest_offsets(*fresh)
            for tp in fresh:
                start = earliest.get(tp) or 0
                await self._seek(tp, start)
                starts[tp] = start
        guard.sought(starts)

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    Consumer.on_partitions_revoked = on_partitions_revoked  # type: ignore[method-assign]
    Consumer.on_partitions_assigned = on_partitions_assigned  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek_  # type: ignore[method-assign]


# -- seek_before_resume -----------------------------------------------------------------------
def _patch_seek_before_resume() -> None:
    async def seek_then_resume(self: Recovery, generation_id: int) -> bool:
        """Seek the stream partitions, then clear queues, resume partitions and flow."""
        # faust's own App and Consumer: the patch uses their private state
        app = cast(App, self.app)
        consumer = cast(Consumer, app.consumer)
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return False
        streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        consumer.pause_partitions(streams)
        consumer._buffered_partitions.difference_update(streams)
        if assignment:
            self.log.info("Seek stream partitions to committed offsets.")
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        self.completed.set()
        app.flow_control.resume()  # clears the queues: nothing of these partitions is in them
        consumer.resume_partitions(streams)
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        log.info(
            "stream partitions resumed: %d; active %d, paused %d, buffered %d",
            len(streams),
            len(consumer._get_active_partitions()),
            len(consumer._paused_partitions),
            len(consumer._buffered_partitions),
        )
        return True

    async def _resume_streams(self: Recovery, generation_id: int = 0) -> None:
        await self.app.on_rebalance_complete.send()
        if not await seek_then_resume(self, generation_id):
            return
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def on_recovery_completed(self: Recovery, generation_id: int = 0) -> None:
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if not await seek_then_resume(self, generation_id):
            return
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    Recovery._resume_streams = _resume_streams  # type: ignore[method-assign]
    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]


# -- no_gap_acks ------------------------------------------------------------------------------
def _patch_no_gap_acks() -> None:
    new_offset = Consumer._new_offset

    logged: dict[TP, int] = {}

    async def _add_gap(self: Consumer, tp: TP, offset_from: int, offset_to: int) -> None:
        OFFSET_GAPS.labels(tp.topic).inc()
        if logged.get(tp) == offset_from:
            return  # the same skip, one message further: logged once (the metric counts all)
        logged[tp] = offset_from
        log.warning(
            "offsets %d..%d of %s[%d] skipped by the fetch loop; not acknowledged",
            offset_from,
            offset_to,
            tp.topic,
            tp.partition,
        )

    def _new_offset(self: Consumer, tp: TP) -> int | None:
        acked = self._acked[tp]
        if acked:
            base = self._committed_offset[tp]
            if base is None:
                guard = guard_of(self)
                base = guard.start.get(tp) if guard is not None else None
            if base is not None and min(acked) > base:
                return None  # the message at the committed offset is not processed yet
        return new_offset(self, tp)

    Consumer._add_gap = _add_gap  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset  # type: ignore[method-assign]


# -- no_ack_on_error --------------------------------------------------------------------------
def _patch_no_ack_on_error() -> None:
    async def take_events(
        self: Stream[Any], max_: int, within: Seconds, acked_point: str | None = None
    ) -> AsyncGenerator[Sequence[EventT[Any]], None]:
        """``Stream.take_events``, acknowledging a batch only when the next one is asked for.

        ``acked_point``: the crash point reached once a batch is acknowledged.
        """
        buffer: list[Any] = []
        events: list[EventT[Any]] = []
        buffer_full = asyncio.Event()
        buffer_consumed = asyncio.Event()
        buffer_consuming: asyncio.Future[Any] | None = None
        enable_acks = self.enable_acks

        async def add_to_buffer(value: Any) -> Any:
            nonlocal buffer_consuming
            try:
                if buffer_consuming is not None:
                    try:
                        await buffer_consuming
                    finally:
                        buffer_consuming = None
                buffer.append(value)
                event = self.current_event
                if event is None:
                    raise RuntimeError("Take buffer found current_event is None")
                events.append(event)
                if len(buffer) >= max_:
                    buffer_full.set()
                    buffer_consumed.clear()
                    await self.wait(buffer_consumed)  # type: ignore[arg-type]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        self.enable_acks = False
        self.add_processor(add_to_buffer)
        self._enable_passive(aiter(self.channel))  # type: ignore[arg-type]
        try:
            while not self.should_stop:
                await self.wait_for_stopped(buffer_full, timeout=within)  # type: ignore[arg-type]
                if not buffer:
                    continue
                buffer_consuming = self.loop.create_future()
                handled = False
                try:
                    yield list(events)
                    handled = True  # the agent asked for the next batch
                finally:
                    if handled:
                        for event in events:
                            await self.ack(event)
                        if acked_point:
                            faultpoints.reach(acked_point)
                    buffer.clear()
                    events.clear()
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
        finally:
            self.enable_acks = enable_acks
            self._processors.remove(add_to_buffer)

    Stream.take_events = _tracks_buffer_agen(take_events)  # type: ignore[method-assign]


def take_batches(
    stream: Any, max_: int, within: float, acked_point: str
) -> AsyncGenerator[Sequence[EventT[Any]], None]:
    """``stream.take_events``, naming the crash point reached once a batch is acknowledged."""
    if "no_ack_on_error" in _installed:
        return stream.take_events(max_, within=within, acked_point=acked_point)
    return stream.take_events(max_, within=within)


async def fail_stop(agent: Any, exc: BaseException) -> None:
    """An agent raised while handling a batch: stop the worker without acknowledging it.

    The batch stays unacknowledged (``no_ack_on_error``), so its offsets are never committed;
    the worker exits non-zero and a restart processes the batch again.
    """
    log.critical(
        "agent %s failed on a batch, stopping the worker without acknowledging it: %s: %s",
        getattr(agent, "name", agent),
        type(exc).__name__,
        exc,
    )
    app = agent.app
    app._ehb_failed = exc  # read by `ehb worker` for its exit code
    # Faust's shutdown can hang (a stop waiting on a stream forever): exit regardless.
    watchdog = threading.Timer(_FAIL_STOP_GRACE_S, _exit_now)
    watchdog.daemon = True
    watchdog.start()
    await app.crash(exc)


def _exit_now() -> None:
    log.critical("the worker did not stop within %.0f s; exiting", _FAIL_STOP_GRACE_S)
    logging.shutdown()
    os._exit(EXIT_AGENT_FAILED)


# -- commit_failure_not_recorded --------------------------------------------------------------
def _patch_commit_failure_not_recorded() -> None:
    commit_offsets = Consumer._commit_offsets

    async def _commit_offsets(
        self: Consumer, offsets: Any, start_new_transaction: bool = True
    ) -> bool:
        before = {tp: self._committed_offset.get(tp) for tp in offsets}
        did_commit = await commit_offsets(
            self, offsets, start_new_transaction=start_new_transaction
        )
        if not did_commit:
            assignment = self.assignment()
            if any(tp in assignment for tp in offsets):
                COMMIT_FAILURES.inc()
            guard = guard_of(self)
            for tp, offset in offsets.items():
                old = before[tp]
                if old is None:
                    self._committed_offset.pop(tp, None)
                else:
                    self._committed_offset[tp] = old
                start = old if old is not None else (guard.start.get(tp) if guard else None)
                if start is None or tp not in assignment:
                    continue
                # the offsets _new_offset took out of the acknowledged list, back in
                again = [o for o in range(start, offset) if o not in self._acked_index[tp]]
                self._acked[tp].extend(again)
                self._acked_index[tp].update(again)
            return False
        for topic in {tp.topic for tp in offsets}:
            point = commit_points.get(topic)
            if point:
                faultpoints.reach(point)
        return True

    Consumer._commit_offsets = _commit_offsets  # type: ignore[method-assign]


# -- no_negative_seek -------------------------------------------------------------------------
def _patch_no_negative_seek() -> None:
    seek_offsets = Recovery._seek_offsets

    async def _seek_offsets(
        self: Recovery, consumer: Any, tps: set[TP], offsets: Any, title: str
    ) -> None:
        unknown = {tp: offsets[tp] for tp in tps if offsets[tp] is None or offsets[tp] < -1}
        if unknown:
            log.warning("recovery (%s) asked to seek to %s: reading from the start", title, unknown)
            offsets = type(offsets)({**offsets, **dict.fromkeys(unknown, -1)})
        await seek_offsets(self, consumer, tps, offsets, title)

    Recovery._seek_offsets = _seek_offsets  # type: ignore[method-assign]


# -- livelock_since_assignment ----------------------------------------------------------------
def _patch_livelock_since_assignment() -> None:
    """Faust's livelock detector (every 2.5 commit intervals) logs an ERROR for each partition
    whose stream has had no event "since start" once the consumer has run for
    ``stream_processing_timeout`` (300 s). Its record of events is cleared at each rebalance,
    but "start" stays the process's start: after any rebalance of a worker up for 5 min, every
    partition with a backlog is reported stuck until its first event arrives (eight ERRORs at
    a standby takeover in ``make bench-state``). The clock restarts at each assignment."""
    from faust.transport.drivers.aiokafka import ConsumerRebalanceListener

    assigned = ConsumerRebalanceListener.on_partitions_assigned

    async def on_partitions_assigned(self: ConsumerRebalanceListener, tps: Any) -> None:
        self._thread.time_started = time.monotonic()
        await assigned(self, tps)

    ConsumerRebalanceListener.on_partitions_assigned = on_partitions_assigned  # type: ignore[method-assign,assignment]


# -- changelog_real_end -----------------------------------------------------------------------
def real_end_offsets(
    consumer_config: dict[str, Any], reported: dict[TP, int], timeout: float = 10.0
) -> dict[TP, int]:
    """The real end offset of each partition: read from the reported end on until none is left.

    ``reported``: tp -> high watermark from ListOffsets (0 for an empty partition). The records
    from ``reported - 1`` on are fetched; the real end is the last offset read + 1.
    """
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka import KafkaError, TopicPartition

    from ehb.kafka import position

    ends = {tp: hw for tp, hw in reported.items()}
    todo = {tp: hw for tp, hw in reported.items() if hw and hw > 0}
    if not todo:
        return ends
    consumer = KafkaConsumer(
        {
            **consumer_config,
            "group.id": "ehb-changelog-end",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "latest",
        }
    )
    try:
        consumer.assign([TopicPartition(tp.topic, tp.partition, hw - 1) for tp, hw in todo.items()])
        pending = set(todo)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is not None:  # an error of no partition has no topic
                    if error.code() == KafkaError._PARTITION_EOF:
                        topic, partition, _ = position(message)
                        pending.discard(TP(topic, partition))
                    continue
                topic, partition, offset = position(message)
                tp = TP(topic, partition)
                ends[tp] = max(ends[tp], offset + 1)
        if pending:
            log.warning(
                "real end of %d changelog partitions not confirmed in %.0fs; using what was read",
                len(pending),
                timeout,
            )
    finally:
        consumer.close()
    return ends


def _patch_changelog_real_end(real_end: Callable[[dict[TP, int]], dict[TP, int]]) -> None:
    build_highwaters = Recovery._build_highwaters

    async def _build_highwaters(
        self: Recovery, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await build_highwaters(self, consumer, tps, destination, title)
        reported = {tp: destination[tp] + 1 for tp in tps if destination.get(tp) is not None}
        if not reported:
            return
        loop = asyncio.get_running_loop()
        ends = await loop.run_in_executor(None, real_end, reported)
        for tp, end in ends.items():
            if end - 1 > destination[tp]:
                log.info(
                    "changelog %s[%d]: real end %d (ListOffsets said %d)",
                    tp.topic,
                    tp.partition,
                    end,
                    reported[tp],
                )
                destination[tp] = end - 1

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]


# -- bulk_recovery ----------------------------------------------------------------------------
#: (tp -> (database, offset key, first, last offset), budget s, cancelled) -> tp -> last written
BulkRead = Callable[[dict[TP, tuple[Any, bytes, int, int]], float, threading.Event], dict[TP, int]]
#: seconds of bulk reading per recovery step: each step Faust runs under a timeout of
#: ``broker_request_timeout`` (90 s) and a step that overruns it stops the recovery service
BULK_BUDGET_S = 60.0


async def _bulk_catch_up(
    recovery: Recovery, tps: set[TP], offsets: Any, highwaters: Any, bulk_read: BulkRead
) -> None:
    """Read the active changelog partitions of rocksdict stores from their persisted offset to
    their real end in bulk, then let Faust's recovery go on from there (usually: nothing)."""
    todo: dict[TP, tuple[Any, bytes, int, int]] = {}
    for tp in tps:
        table = recovery.tp_to_table.get(tp)
        store: Any = getattr(table, "data", None)
        if not getattr(store, "use_rocksdict", False):
            continue
        start = (offsets.get(tp) if offsets.get(tp) is not None else -1) + 1
        end = highwaters.get(tp)
        if end is None or start > end:
            continue
        todo[tp] = (store._db_for_partition(tp.partition), store.offset_key, start, end)
    if not todo:
        return
    started = time.monotonic()
    cancelled = threading.Event()
    loop = asyncio.get_running_loop()
    try:
        written = await loop.run_in_executor(None, bulk_read, todo, BULK_BUDGET_S, cancelled)
    finally:
        cancelled.set()  # a rebalance cancelled the step: the thread stops at its next record
    records = 0
    for tp, last in written.items():
        records += last - todo[tp][2] + 1
        offsets[tp] = max(offsets.get(tp) if offsets.get(tp) is not None else -1, last)
    seconds = time.monotonic() - started
    log.info(
        "bulk recovery: %d changelog records of %d partitions in %.1fs (%.0f/s); left to "
        "Faust's recovery: %d",
        records,
        len(written),
        seconds,
        records / seconds if seconds > 0 else 0.0,
        sum(max(0, todo[tp][3] - offsets[tp]) for tp in todo),
    )


def _patch_bulk_recovery(bulk_read: BulkRead) -> None:
    build_highwaters = Recovery._build_highwaters
    build_offsets = Recovery._build_offsets

    async def _build_highwaters(
        self: Recovery, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await build_highwaters(self, consumer, tps, destination, title)
        if title == "active":
            await _bulk_catch_up(self, tps, self.active_offsets, destination, bulk_read)

    async def _build_offsets(
        self: Recovery, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await build_offsets(self, consumer, tps, destination, title)
        if title == "active":
            await _bulk_catch_up(self, tps, destination, self.active_highwaters, bulk_read)

    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]
