"""A consumer client for the routed topics: typed records, at-least-once.

This is the API downstream services use (and the PostgreSQL sink itself)::

    from ehb.settings import Settings
    from sinks.consumer import RecordConsumer

    def handle(records):               # a batch of decoded records
        for r in records:
            print(r.topic, r.value["record_type"], r.value["appointment_id"])

    RecordConsumer(Settings(), group="sms-reminders", topics=["appointments"]).run(handle)

* Values are decoded from the Confluent wire format with the registry or the catalog and
  resolved to the newest schema of their subject.
* Offsets are committed only after the handler returns: if the process dies in the handler,
  the batch is delivered again (at-least-once). Make the handler idempotent.
* A value that cannot be decoded is published to the dead-letter topic (stage ``sink``) with
  its reason and position, and skipped; it never stalls the partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from ehb.kafka import consumer_config, producer_config
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.registry import codec_for

__all__ = ["Record", "RecordConsumer"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int
    subject: str
    value: dict[str, Any]


Handler = Callable[[list[Record]], None]


class RecordConsumer:
    """Consume logical topics (``"appointments"``, ...) of the pipeline as typed records."""

    def __init__(
        self,
        settings: Settings,
        group: str,
        topics: Iterable[str],
        *,
        codec: AvroCodec | None = None,
        subjects: Iterable[str] | None = None,
        dead_letter: bool = True,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec or codec_for(settings)
        self.topics = [settings.topic(t) for t in topics]
        self.subjects = frozenset(subjects) if subjects is not None else None
        self._consumer = Consumer(
            consumer_config(settings, group, **(consumer_overrides or {}))
        )
        self._dead_letters = Producer(producer_config(settings)) if dead_letter else None
        self._dead_letter_topic = settings.topic("dead-letter")
        self._encode_dead_letter = self.codec.writer(SUBJECTS.DEAD_LETTER)
        self.assigned: set[tuple[str, int]] = set()
        self.undecodable = 0

    # -- rebalance bookkeeping ----------------------------------------------------------
    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)

    # -- the loop -----------------------------------------------------------------------
    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        messages = self._consumer.consume(max_records, timeout)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", error)
        return good

    def decode(self, messages: Sequence[Message]) -> list[Record]:
        records = []
        for message in messages:
            value = message.value()
            try:
                decoded = self.codec.decode(value, self.subjects)
            except DecodeError as exc:
                self.undecodable += 1
                self._dead_letter(message, exc)
                continue
            records.append(Record(
                message.topic(), message.partition(), message.offset(), message.key(),
                message.timestamp()[1], decoded.subject, decoded.record,
            ))
        if self._dead_letters is not None and self.undecodable:
            self._dead_letters.flush(30)
        return records

    def _dead_letter(self, message: Message, exc: DecodeError) -> None:
        log.warning("undecodable record %s[%d]@%d: %s", message.topic(), message.partition(),
                    message.offset(), exc.reason)
        if self._dead_letters is None:
            return
        now = int(time.time() * 1000)
        self._dead_letters.produce(self._dead_letter_topic, self._encode_dead_letter({
            "reason": exc.reason, "message": exc.message, "stage": "sink",
            "source_topic": message.topic(), "source_partition": message.partition(),
            "source_offset": message.offset(), "event_index": None, "event_id": None,
            "ma_cskcb": None, "schema_id": exc.schema_id, "original": message.value() or b"",
            "published_at": message.timestamp()[1], "failed_at": now,
        }))

    def commit(self, messages: Sequence[Message]) -> None:
        """Commit the offsets after ``messages`` (synchronously)."""
        if not messages:
            return
        highest: dict[tuple[str, int], int] = {}
        for m in messages:
            tp = (m.topic(), m.partition())
            if m.offset() >= highest.get(tp, -1):
                highest[tp] = m.offset()
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a rebalance took the partitions: they are redelivered
            log.warning("offset commit failed (records will be redelivered): %s", exc)

    def run(self, handler: Handler, *, batch_size: int = 1000, batch_timeout: float = 0.2,
            stop: threading.Event | None = None, max_batches: int | None = None) -> None:
        """Call ``handler`` with each batch until ``stop`` is set; commit after it returns."""
        stop = stop or threading.Event()
        self._consumer.subscribe(self.topics, on_assign=self._on_assign,
                                 on_revoke=self._on_revoke)
        batches = 0
        try:
            while not stop.is_set():
                messages = self.poll_batch(batch_size, batch_timeout)
                if not messages:
                    continue
                records = self.decode(messages)
                if records:
                    handler(records)
                self.commit(messages)
                batches += 1
                if max_batches is not None and batches >= max_batches:
                    break
        finally:
            self.close()

    def close(self) -> None:
        try:
            self._consumer.close()
        except RuntimeError:  # already closed
            pass
        if self._dead_letters is not None:
            self._dead_letters.flush(10)
