"""The facility side's publisher: examination events -> the ``examinations`` topic.

Events are grouped per facility into ``ExaminationBatch`` messages (up to ``batch_size`` events,
the way a dossier upload carries many episodes), keyed by the facility code so that one
facility's events stay in order on one partition. A facility's batch is also sent once it
spans ``upload_interval`` of event time (facilities upload at least daily), so that batching
never delays an event beyond the worker's allowed lateness. A single event can be published on its own
as an ``ExaminationEvent`` message. The producer is idempotent (``enable.idempotence``) and
never gives up on a message (``message.timeout.ms=0``): a broker outage is waited out.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from ehb.kafka import producer_config
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.registry import codec_for
from streams.validation import parse_datetime

__all__ = ["BatchTooLarge", "ExaminationPublisher"]

log = logging.getLogger(__name__)

DeliveryCallback = Callable[[KafkaError | None, Message], None]


class BatchTooLarge(ValueError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded batch is {size} bytes, more than {limit}")
        self.size = size
        self.limit = limit


class ExaminationPublisher:
    def __init__(self, settings: Settings, *, codec: AvroCodec | None = None,
                 batch_size: int = 100, linger_s: float = 0.2,
                 upload_interval: timedelta = timedelta(hours=24),
                 producer: Producer | None = None) -> None:
        self.codec = codec or codec_for(settings)
        self.topic = settings.topic("examinations")
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.upload_interval = upload_interval
        self._opened: dict[str, datetime] = {}
        self._producer = producer or Producer(producer_config(settings, **{"linger.ms": 10}))
        self._encode_batch = self.codec.writer(SUBJECTS.EXAMINATION_BATCH)
        self._encode_event = self.codec.writer(SUBJECTS.EXAMINATION_EVENT)
        self._buffers: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._last_flush = time.monotonic()
        self.events_queued = 0
        self.events_delivered = 0
        self.messages_delivered = 0
        self.errors: list[str] = []
        self.first_publish: float | None = None

    # -- delivery reports ---------------------------------------------------------------
    def _delivered(self, count: int, then: DeliveryCallback | None = None) -> Any:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                self.events_delivered += count
                self.messages_delivered += 1
            else:
                self.errors.append(str(err))
            if then is not None:
                then(err, msg)
        return on_delivery

    def _produce(self, key: bytes, value: bytes, count: int,
                 headers: list[tuple[str, bytes]] | None = None,
                 on_delivery: DeliveryCallback | None = None) -> None:
        if self.first_publish is None:
            self.first_publish = time.time()
        while True:
            try:
                self._producer.produce(self.topic, value, key, headers=headers,
                                       on_delivery=self._delivered(count, on_delivery))
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)
        self.events_queued += count

    # -- publishing ---------------------------------------------------------------------
    def publish_event(self, event: dict[str, Any]) -> None:
        """One event in its own message (ExaminationEvent)."""
        self._produce(event["ma_cskcb"].encode(), self._encode_event(event), 1)

    def publish_batch(self, facility: str, events: list[dict[str, Any]], *,
                      max_bytes: int | None = None,
                      headers: list[tuple[str, bytes]] | None = None,
                      on_delivery: DeliveryCallback | None = None) -> int:
        """All ``events`` in ONE ExaminationBatch message, delivered whole or not at all (a
        dossier file); returns the message's size. :class:`BatchTooLarge` (nothing sent) when
        the encoded batch exceeds ``max_bytes``. ``flush()`` waits for the acknowledgement."""
        value = self._encode_batch({"ma_cskcb": facility, "events": events})
        if max_bytes is not None and len(value) > max_bytes:
            raise BatchTooLarge(len(value), max_bytes)
        self._produce(facility.encode(), value, len(events), headers, on_delivery)
        return len(value)

    def add(self, event: dict[str, Any]) -> None:
        """Buffer an event in its facility's batch; full batches are sent at once."""
        facility = event["ma_cskcb"]
        buffer = self._buffers[facility]
        try:
            admitted = parse_datetime(event["ngay_vao"])
        except (ValueError, TypeError, KeyError):  # invalid events are the worker's to judge
            admitted = None
        opened = self._opened.get(facility)
        if buffer and admitted is not None and opened is not None and (
                abs(admitted - opened) >= self.upload_interval):
            self._send_batch(facility)
            buffer = self._buffers[facility]
        if not buffer and admitted is not None:
            self._opened[facility] = admitted
        buffer.append(event)
        if len(buffer) >= self.batch_size:
            self._send_batch(facility)
        elif time.monotonic() - self._last_flush >= self.linger_s:
            self.send_pending()

    def add_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self.add(event)

    def _send_batch(self, facility: str) -> None:
        self._opened.pop(facility, None)
        events = self._buffers.pop(facility, None)
        if events:
            value = self._encode_batch({"ma_cskcb": facility, "events": events})
            self._produce(facility.encode(), value, len(events))

    def send_pending(self) -> None:
        """Send every partly filled batch (called on linger and before flushing)."""
        for facility in list(self._buffers):
            self._send_batch(facility)
        self._last_flush = time.monotonic()

    def flush(self, timeout: float | None = None) -> int:
        """Send pending batches and wait for the broker; returns messages still unacknowledged."""
        self.send_pending()
        if timeout is None:
            while self._producer.flush(1.0):
                pass
            return 0
        return int(self._producer.flush(timeout))

    def poll(self, timeout: float = 0) -> None:
        self._producer.poll(timeout)

    def close(self) -> None:
        """Flush and disconnect (before the broker goes away, so nothing is logged)."""
        self.flush(10)
        self._producer.close()
