"""The facility side's publisher: examination events -> the ``examinations`` topic.

Events are grouped per facility into ``ExaminationBatch`` messages (up to ``batch_size`` events,
the way a dossier upload carries many episodes), keyed by the facility code so that one
facility's events stay in order on one partition. A facility's batch is also sent once it
spans ``upload_interval`` of event time (facilities upload at least daily), so that batching
never delays an event beyond the worker's allowed lateness. A single event can be published on
its own as an ``ExaminationEvent`` message. The producer is idempotent
(``enable.idempotence``) and never gives up on a message (``message.timeout.ms=0``): a broker
outage is waited out.

Durable: every event is stored in the producer's outbox (``producers.outbox``, SQLite under
``EHB_DATA_DIR/outbox/``) before it is sent, and removed once the broker acknowledged its
message; a publisher that starts with an outbox a crashed one left behind resends its events
first (same event ids: the idempotent sinks keep one row). :meth:`ExaminationPublisher.add`
stages events; they are on disk (accepted) once any batch is sent, on linger, or at
:meth:`~ExaminationPublisher.commit` / :meth:`~ExaminationPublisher.flush`.
"""

from __future__ import annotations

import heapq
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from ehb import faultpoints
from ehb.kafka import producer_config, refused_for_good
from ehb.settings import Settings
from producers.errors import BatchTooLarge
from producers.outbox import EVENT, MESSAGE, Outbox
from schemas import SUBJECTS, AvroCodec
from schemas.errors import EhbError
from schemas.registry import codec_for
from schemas.time import parse_datetime
from schemas.topics import EXAMINATIONS

__all__ = ["BatchTooLarge", "ExaminationPublisher"]

log = logging.getLogger(__name__)

#: the outbox mark naming the topic its events were accepted for
TOPIC_MARK = "topic"

DeliveryCallback = Callable[[KafkaError | None, Message], None]
#: message headers as confluent-kafka's produce() types them
KafkaHeaders = list[tuple[str, str | bytes | None]]


def _avro_long(n: int) -> bytes:
    """Avro's zig-zag varint encoding of a long."""
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class ExaminationPublisher:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: AvroCodec | None = None,
        batch_size: int = 100,
        linger_s: float = 0.2,
        upload_interval: timedelta = timedelta(hours=24),
        producer: Producer | None = None,
        outbox: Outbox | None = None,
        identity: str | None = None,
        durable: bool = True,
    ) -> None:
        self.codec = codec or codec_for(settings)
        self.topic = settings.topic(EXAMINATIONS)
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.upload_interval = upload_interval
        self._opened: dict[str, datetime] = {}
        self._opened_heap: list[tuple[datetime, str]] = []
        # linger 50 ms: a facility's events are not urgent to the millisecond, and fewer,
        # larger record batches are cheaper for every broker (on the embedded broker each
        # stored batch adds to the cost of every later fetch; figures: benchmarks/README.md)
        self._producer = producer or Producer(producer_config(settings, **{"linger.ms": 50}))
        self._encode_batch = self.codec.writer(SUBJECTS.EXAMINATION_BATCH)
        self._encode_event = self.codec.writer(SUBJECTS.EXAMINATION_EVENT)
        self._encode_withdrawal = self.codec.writer(SUBJECTS.EXAMINATION_WITHDRAWAL)
        self._encode_withdrawal_batch = self.codec.writer(SUBJECTS.EXAMINATION_WITHDRAWAL_BATCH)
        # per facility: (outbox seq, the event in the wire format) of the batch being filled
        self._buffers: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        self._last_flush = time.monotonic()
        self.events_queued = 0
        self.events_delivered = 0
        self.messages_delivered = 0
        self.errors: list[str] = []
        self.first_publish: float | None = None
        # full batches waiting for the next outbox commit
        self._ready: list[tuple[str, list[tuple[int, bytes]]]] = []
        self._ready_events = 0
        self._ready_since = 0.0
        self._dispatch_s = min(0.02, linger_s)
        self._last_version = 0
        # messages to send again: (when, key, value, events, headers, callback, outbox seqs)
        self._again: list[
            tuple[
                float,
                bytes,
                bytes,
                int,
                list[tuple[str, bytes]] | None,
                DeliveryCallback | None,
                list[int] | None,
            ]
        ] = []
        self._backoff_s = 0.0
        self._init_outbox(settings, outbox, identity, durable)

    # -- the outbox ---------------------------------------------------------------------
    def _init_outbox(
        self, settings: Settings, outbox: Outbox | None, identity: str | None, durable: bool
    ) -> None:
        if outbox is None and not durable:
            outbox = Outbox.in_memory()
        elif outbox is None:
            # EHB_PRODUCER_ID names one outbox (busy: an error); the command's own name is a
            # family (busy: the next free one, ``simulate.2`` ...)
            directory = settings.state_dir / "outbox"
            sync = settings.outbox_synchronous
            outbox = (
                Outbox.open(directory, settings.producer_id, synchronous=sync)
                if settings.producer_id
                else Outbox.open_first_free(directory, identity or "publisher", synchronous=sync)
            )
        self.outbox = outbox
        held_for = outbox.mark(TOPIC_MARK)
        if held_for not in (None, self.topic) and outbox.recovered_rows:
            outbox.close()
            raise EhbError(
                f"outbox {outbox.path} holds {outbox.recovered_events} events for "
                f"topic {held_for}, not {self.topic}: publish them with that topic "
                "prefix first, or use another EHB_PRODUCER_ID / EHB_DATA_DIR"
            )
        if held_for != self.topic:
            outbox.commit({TOPIC_MARK: self.topic})
        # A batch is composed from its events' stored bytes when the batch schema carries
        # the event schema they were written with (always, unless a deployment mixes them).
        event_entry = self.codec.catalog.latest(SUBJECTS.EXAMINATION_EVENT)
        batch_entry = self.codec.catalog.latest(SUBJECTS.EXAMINATION_BATCH)
        self._event_header = self._encode_event.header  # type: ignore[attr-defined]
        self._batch_header = self._encode_batch.header  # type: ignore[attr-defined]
        self._composable = any(
            r.subject == event_entry.subject and r.version == event_entry.version
            for r in batch_entry.references
        )
        self.resent_events = self._resend()

    def _resend(self) -> int:
        """Produce what a previous producer with this outbox left unacknowledged."""
        if not self.outbox.recovered_rows:
            return 0
        resent = 0
        buffers: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        for row in self.outbox.iter_rows(upto=self.outbox.last_seq):
            buffer = buffers[row.facility]
            if row.kind == MESSAGE:
                if buffer:
                    self._produce_batch(row.facility, buffers.pop(row.facility))
                self._produce(
                    row.facility.encode(), row.body, row.events, row.headers, seqs=[row.seq]
                )
            else:
                buffer.append((row.seq, row.body))
                if len(buffer) >= self.batch_size:
                    self._produce_batch(row.facility, buffers.pop(row.facility))
            resent += row.events
        for facility, buffer in buffers.items():
            if buffer:
                self._produce_batch(facility, buffer)
        log.warning(
            "outbox %s: resending %d events a previous producer left unacknowledged",
            self.outbox.identity,
            resent,
        )
        return resent

    def commit(self, marks: dict[str, str] | None = None) -> None:
        """Make every event added so far durable (accepted), with ``marks`` (source positions)
        in the same transaction; nothing is sent."""
        self.outbox.commit(marks)

    def _compose_batch(self, facility: str, values: list[bytes]) -> bytes:
        """An ExaminationBatch from events in the wire format, without encoding them again."""
        header = self._event_header
        if self._composable and all(v[:5] == header for v in values):
            code = facility.encode()
            return b"".join(
                (
                    self._batch_header,
                    _avro_long(len(code)),
                    code,
                    _avro_long(len(values)),
                    *(v[5:] for v in values),
                    b"\x00",
                )
            )
        events = [self.codec.decode(v, (SUBJECTS.EXAMINATION_EVENT,)).record for v in values]
        return self._encode_batch({"ma_cskcb": facility, "events": events})

    def _produce_batch(self, facility: str, items: list[tuple[int, bytes]]) -> None:
        value = self._compose_batch(facility, [value for _, value in items])
        self._produce(facility.encode(), value, len(items), seqs=[seq for seq, _ in items])

    # -- delivery reports ---------------------------------------------------------------
    def _delivered(
        self, count: int, then: DeliveryCallback | None = None, seqs: list[int] | None = None
    ) -> Any:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self._backoff_s = 0.0  # the broker takes messages again
                self.events_delivered += count
                self.messages_delivered += 1
                if seqs:
                    self.outbox.acknowledge(seqs, count)
                faultpoints.reach("producer.message_acknowledged")
            else:  # the rows stay in the outbox (a next producer would resend them)
                self.errors.append(str(err))
                if not refused_for_good(err):
                    self._send_again(msg, count, then, seqs)
                    return
            if then is not None:
                then(err, msg)

        return on_delivery

    def _send_again(
        self, msg: Message, count: int, then: DeliveryCallback | None, seqs: list[int] | None
    ) -> None:
        """A message the broker could not take now: sent again after a pause (1 s, doubling
        to 30 s while errors go on), by :meth:`poll` and :meth:`flush`."""
        self._backoff_s = min(30.0, self._backoff_s * 2) if self._backoff_s else 1.0
        log.warning(
            "%d events not delivered (%s); sending them again in %.0f s",
            count,
            self.errors[-1],
            self._backoff_s,
        )
        headers = cast(list[tuple[str, bytes]] | None, msg.headers())
        self._again.append(
            (
                time.monotonic() + self._backoff_s,
                msg.key() or b"",
                msg.value() or b"",
                count,
                headers,
                then,
                seqs,
            )
        )

    def _send_due(self) -> None:
        """Send again what is due (see :meth:`_send_again`)."""
        if not self._again:
            return
        now = time.monotonic()
        due = [item for item in self._again if item[0] <= now]
        if not due:
            return
        self._again = [item for item in self._again if item[0] > now]
        for _, key, value, count, headers, then, seqs in due:
            self.events_queued -= count  # counted again by _produce
            self._produce(key, value, count, headers, then, seqs)

    def _produce(
        self,
        key: bytes,
        value: bytes,
        count: int,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
        seqs: list[int] | None = None,
    ) -> None:
        """Send one message; ``seqs``: its rows in the outbox. Without them the message is
        stored as it is first (durable before it is sent, like every event)."""
        if seqs is None:
            seqs = [self.outbox.stage(key.decode(), MESSAGE, count, value, headers)]
        if self.outbox.staged:
            self.outbox.commit()
        if self.first_publish is None:
            self.first_publish = time.time()
        callback = self._delivered(count, on_delivery, seqs)
        while True:
            try:
                # the client's stub wants a list of its wider header type; ours is one
                self._producer.produce(
                    self.topic,
                    value,
                    key,
                    headers=cast(KafkaHeaders | None, headers),
                    on_delivery=callback,
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.events_queued += count
        self.outbox.commit_due()

    # -- publishing ---------------------------------------------------------------------
    def _versioned(self, event: dict[str, Any]) -> dict[str, Any]:
        """``event`` with its sender version (``schemas.episodes``): the caller's, or now in
        microseconds, increasing. Set once, when the event is accepted: the outbox keeps the
        encoded event, so a resend carries the same version and never supersedes a newer one."""
        if event.get("version") is not None:
            return event
        self._last_version = max(time.time_ns() // 1000, self._last_version + 1)
        return {**event, "version": self._last_version}

    def publish_event(self, event: dict[str, Any]) -> None:
        """One event in its own message (ExaminationEvent)."""
        event = self._versioned(event)
        value = self._encode_event(event)
        seq = self.outbox.stage(event["ma_cskcb"], EVENT, 1, value)
        self._produce(event["ma_cskcb"].encode(), value, 1, seqs=[seq])

    def withdraw(
        self,
        ma_cskcb: str,
        ma_lk: str,
        so_cccd: str,
        ly_do: str = "",
        *,
        event_id: str | None = None,
        version: int | None = None,
    ) -> None:
        """Withdraw an episode sent by mistake (an ExaminationWithdrawal message, after the
        facility's events added before it). ``so_cccd`` is the episode's patient."""
        self.send_pending()  # the withdrawal follows what was added before it
        withdrawal = self._versioned(
            {
                "event_id": event_id or str(uuid.uuid4()),
                "ma_cskcb": ma_cskcb,
                "ma_lk": ma_lk,
                "so_cccd": so_cccd,
                "ly_do": ly_do,
                "version": version,
            }
        )
        value = self._encode_withdrawal(withdrawal)
        seq = self.outbox.stage(ma_cskcb, MESSAGE, 1, value)
        self._produce(ma_cskcb.encode(), value, 1, seqs=[seq])

    def publish_withdrawals(
        self,
        facility: str,
        withdrawals: list[dict[str, Any]],
        *,
        max_bytes: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        """All ``withdrawals`` in ONE ExaminationWithdrawalBatch message (a HUYHOSO file),
        like :meth:`publish_batch`."""
        self.send_pending()  # after the events added before them
        versioned = [self._versioned(w) for w in withdrawals]
        value = self._encode_withdrawal_batch({"ma_cskcb": facility, "withdrawals": versioned})
        return self._publish_whole(
            facility, value, len(withdrawals), max_bytes, headers, on_delivery
        )

    def publish_batch(
        self,
        facility: str,
        events: list[dict[str, Any]],
        *,
        max_bytes: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        """All ``events`` in ONE ExaminationBatch message, delivered whole or not at all (a
        dossier file); returns the message's size. :class:`BatchTooLarge` (nothing sent) when
        the encoded batch exceeds ``max_bytes``. ``flush()`` waits for the acknowledgement."""
        versioned = [self._versioned(event) for event in events]
        value = self._encode_batch({"ma_cskcb": facility, "events": versioned})
        return self._publish_whole(facility, value, len(events), max_bytes, headers, on_delivery)

    def _publish_whole(
        self,
        facility: str,
        value: bytes,
        count: int,
        max_bytes: int | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: DeliveryCallback | None,
    ) -> int:
        """One message of ``count`` events, whole or not at all; its size."""
        if max_bytes is not None and len(value) > max_bytes:
            raise BatchTooLarge(len(value), max_bytes)
        self._produce(facility.encode(), value, count, headers, on_delivery)
        return len(value)

    def add(self, event: dict[str, Any]) -> None:
        """Stage an event in the outbox and its facility's batch; full batches are sent at
        once (after the outbox commit that makes their events durable)."""
        event = self._versioned(event)
        facility = event["ma_cskcb"]
        value = self._encode_event(event)
        buffer = self._buffers[facility]
        try:
            admitted = parse_datetime(event["ngay_vao"])
        except (ValueError, TypeError, KeyError):  # invalid events are the worker's to judge
            admitted = None
        opened = self._opened.get(facility)
        if (
            buffer
            and admitted is not None
            and opened is not None
            and (abs(admitted - opened) >= self.upload_interval)
        ):
            self._send_batch(facility)
            buffer = self._buffers[facility]
        if not buffer and admitted is not None:
            self._opened[facility] = admitted
            heapq.heappush(self._opened_heap, (admitted, facility))
        buffer.append((self.outbox.stage(facility, EVENT, 1, value), value))
        if len(buffer) >= self.batch_size:
            self._send_batch(facility)
        if admitted is not None:
            self._send_stale(admitted)
        if self._ready:
            self._dispatch_due()
        if time.monotonic() - self._last_flush >= self.linger_s:
            self.send_pending()

    def add_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.add(event)

    def _send_stale(self, now: datetime) -> None:
        """Send every facility's batch opened ``upload_interval`` (event time) before ``now``:
        a quiet facility still uploads daily, so its events are never held back for long."""
        heap = self._opened_heap
        limit = now - self.upload_interval
        while heap and heap[0][0] <= limit:
            opened, facility = heapq.heappop(heap)
            if self._opened.get(facility) == opened:
                self._send_batch(facility)

    def _send_batch(self, facility: str) -> None:
        self._opened.pop(facility, None)
        items = self._buffers.pop(facility, None)
        if items:
            if not self._ready:
                self._ready_since = time.monotonic()
            self._ready.append((facility, items))
            self._ready_events += len(items)
            self._dispatch_due()

    def _dispatch_due(self) -> None:
        if self._ready and (
            self._ready_events >= 1000 or time.monotonic() - self._ready_since >= self._dispatch_s
        ):
            self._dispatch()

    def _dispatch(self) -> None:
        """Commit the outbox once for the batches that are ready, then send them: one SQLite
        transaction per ~1,000 events (or 20 ms) rather than per batch."""
        self.outbox.commit()
        ready, self._ready, self._ready_events = self._ready, [], 0
        for facility, items in ready:
            self._produce_batch(facility, items)

    def send_pending(self) -> None:
        """Send every partly filled batch (called on linger and before flushing)."""
        for facility in list(self._buffers):
            self._send_batch(facility)
        if self._ready:
            self._dispatch()
        self._last_flush = time.monotonic()

    def flush(self, timeout: float | None = None) -> int:
        """Send pending batches and wait for the broker; returns messages still unacknowledged."""
        self.send_pending()
        self.outbox.commit()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            remaining = int(self._producer.flush(left)) + len(self._again)
            self._send_due()
            if not remaining or (deadline is not None and time.monotonic() >= deadline):
                break
        self.outbox.commit()  # the acknowledged rows are deleted
        return remaining

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)
        self._send_due()
        self.outbox.commit_due()

    def close(self) -> None:
        """Flush and disconnect (before the broker goes away, so nothing is logged)."""
        try:
            self.flush(10)
            self._producer.close()
        finally:
            self.outbox.close()
