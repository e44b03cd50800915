"""The consumer client for the routed topics: typed records, at-least-once.

This is the public API for downstream services (the PostgreSQL sink uses it too)::

    from ehb.settings import Settings
    from schemas.records import AppointmentRecord
    from ehb.consumer import Record, RecordConsumer

    def handle(records: list[Record[AppointmentRecord]]) -> None:   # one batch
        for r in records:
            print(r.value["record_type"], r.value["appointment_id"], r.value["appointment_at"])

    with RecordConsumer(Settings(), group="sms-reminders", topics=["appointments"]) as consumer:
        consumer.run(handle)            # until stop is set, or Ctrl-C

``examples/appointment_reminders.py`` is a complete service built on it.

* **Topics** are logical names (``"appointments"``); the settings add ``EHB_TOPIC_PREFIX``.
  The group is the service's own consumer group: a new group starts from the beginning of
  the topics (``auto.offset.reset=earliest``), an existing one where it left off.
* **Decoding**: values are in the Confluent wire format; the codec resolves the schema id with
  the schema registry when ``EHB_SCHEMA_REGISTRY_URL`` is set, else with the catalog
  (``schemas/catalog.json``), and resolves the writer's schema to the newest version of its
  subject. Records are plain dicts typed by :mod:`schemas.records` (timestamps are aware UTC
  datetimes).
* **At least once**: offsets are committed (synchronously) only after the handler returns.
  If the handler raises, nothing of the batch is committed, the exception propagates and the
  consumer closes: the batch is delivered again to the next consumer of the group. A
  rebalance or a crash can also redeliver a batch. Make the handler idempotent (every record
  carries stable ids: ``event_id``, ``referral_id``/``appointment_id`` + ``record_type``).
* **Undecodable values** (not our wire format, unknown schema id, a schema this topic does
  not carry, a corrupt body) are published to the ``dead-letter`` topic (stage ``sink``, with
  the reason code, the position and the original bytes, at most
  ``EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES`` of them with the full length and SHA-256) and skipped:
  one bad record never stalls a partition. ``dead_letter=False`` only logs and skips them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from prometheus_client import Counter

from ehb import faultpoints
from ehb.continuity import ContiguousOffsets
from ehb.exceptions import ServiceUnavailable
from ehb.kafka import consumer_config, first_offset_at, position, producer_config
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.dead_letters import bound_dead_letter
from schemas.registry import codec_for
from schemas.topics import DEAD_LETTER

__all__ = ["Handler", "Record", "RecordConsumer"]

log = logging.getLogger(__name__)

#: times the committed offsets of newly assigned partitions are asked for (10 s each)
COMMITTED_READ_ATTEMPTS = 6

OFFSET_SKIPS = Counter(
    "ehb_consumer_offset_skips_total",
    "Records a fetch returned past offsets it skipped; not handled, the partition is read "
    "again from the first skipped offset.",
    ["topic"],
)


V = TypeVar("V")


@dataclass(slots=True)
class Record(Generic[V]):
    """One decoded Kafka record. ``value`` is typed by :mod:`schemas.records` for our subjects."""

    topic: str  #: full topic name (with the prefix)
    partition: int
    offset: int
    key: bytes | None
    timestamp_ms: int  #: Kafka timestamp (when it was produced), epoch milliseconds
    subject: str  #: the schema subject, e.g. ``vn.ehb.AppointmentRecord``
    value: V

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    @property
    def key_text(self) -> str | None:
        """The key as text (our keys are UTF-8: citizen key or facility code)."""
        return None if self.key is None else self.key.decode("utf-8", "replace")


#: What :meth:`RecordConsumer.run` calls with each batch of decoded records.
Handler = Callable[[list[Record[Any]]], None]


class RecordConsumer:
    """Consume logical topics (``"appointments"``, ...) of the pipeline as typed records.

    ``subjects`` restricts the schemas accepted (others are dead-lettered as
    ``unexpected_schema``); ``codec`` defaults to the registry's ids when EHB_SCHEMA_REGISTRY_URL
    is set, else the catalog's; ``consumer_overrides``
    are librdkafka settings (e.g. ``{"auto.offset.reset": "latest"}``).
    """

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
        self._consumer = Consumer(consumer_config(settings, group, **(consumer_overrides or {})))
        self._dead_letters = (
            Producer({**producer_config(settings), "on_delivery": self._on_dead_letter})
            if dead_letter
            else None
        )
        self._dead_letter_errors: list[str] = []
        self._dead_letter_topic = settings.topic(DEAD_LETTER)
        self._encode_dead_letter = self.codec.writer(SUBJECTS.DEAD_LETTER)
        self.assigned: set[tuple[str, int]] = set()
        self.undecodable = 0
        self._earliest = consumer_config(settings, group, **(consumer_overrides or {})).get(
            "auto.offset.reset"
        ) in ("earliest", "smallest", "beginning")
        probe_config = consumer_config(settings, "ehb-first-offset")
        self.continuity = ContiguousOffsets(
            probe=lambda partition, offset: first_offset_at(probe_config, *partition, offset),
            confirm_s=settings.offset_hole_confirm_s,
        )

    # -- rebalance bookkeeping ----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.continuity.start(self._starts(consumer, partitions))

    def _starts(
        self, consumer: Consumer, partitions: list[TopicPartition]
    ) -> dict[tuple[str, int], int | None]:
        """Where each assigned partition starts: its committed offset; for a new group that
        reads from the beginning, the log's start; else unknown (the first record sets it).

        The committed offsets are asked for until the coordinator answers: with an unknown
        start, a fetch that skipped the first batch (Tansu, see ``ehb.continuity``) would go
        unnoticed and be committed past. After ``COMMITTED_READ_ATTEMPTS`` the error
        propagates (the consumer fails, its supervisor restarts it)."""
        starts: dict[tuple[str, int], int | None] = {}
        for attempt in range(1, COMMITTED_READ_ATTEMPTS + 1):
            try:  # the call fails, or one partition's answer does
                committed = consumer.committed(partitions, timeout=10)
                error = next((p.error for p in committed if p.error is not None), None)
            except KafkaException as exc:
                error = exc.args[0]
            if error is None:
                break
            if attempt == COMMITTED_READ_ATTEMPTS:
                raise KafkaException(error)
            log.warning(
                "committed offsets unavailable at assignment (attempt %d): %s", attempt, error
            )
        for p in committed:
            start: int | None = p.offset if p.offset >= 0 else None
            if start is None and self._earliest:
                try:
                    start = consumer.get_watermark_offsets(p, timeout=5, cached=False)[0]
                except Exception:  # noqa: BLE001
                    start = None
            starts[(p.topic, p.partition)] = start
        return starts

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.continuity.forget((p.topic, p.partition) for p in partitions)

    # -- the loop -----------------------------------------------------------------------
    def poll_batch(self, max_records: int, timeout: float) -> list[Message]:
        """The next records of each partition, in offset order without a gap: a record past
        a skipped offset is left out and the partition sought back to the skipped offset."""
        messages = self._consumer.consume(max_records, timeout)
        good = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
                continue
            topic, partition, offset = position(message)
            take, seek_to = self.continuity.admit((topic, partition), offset)
            if take:
                good.append(message)
            elif seek_to is not None:
                OFFSET_SKIPS.labels(topic).inc()
                log.warning(
                    "%s[%d]: offset %d fetched while %d is next; reading again from %d",
                    topic,
                    partition,
                    offset,
                    seek_to,
                    seek_to,
                )
                self._seek(topic, partition, seek_to)
        for (topic, partition), offset in self.continuity.due_seeks():
            self._seek(topic, partition, offset)
        return good

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        try:
            self._consumer.seek(TopicPartition(topic, partition, offset))
        except Exception as exc:  # noqa: BLE001 - the next skip seeks again
            log.warning("seek of %s[%d] failed: %s", topic, partition, exc)

    def decode(self, messages: Sequence[Message]) -> list[Record[Any]]:
        """Decode a batch; undecodable values are dead-lettered (and flushed) and left out."""
        records: list[Record[Any]] = []
        failed = 0
        for message in messages:
            value = message.value()
            try:
                decoded = self.codec.decode(value, self.subjects)
            except DecodeError as exc:
                failed += 1
                self._dead_letter(message, exc)
                continue
            records.append(
                Record(
                    *position(message),
                    message.key(),
                    message.timestamp()[1],
                    decoded.subject,
                    decoded.record,
                )
            )
        self.undecodable += failed
        if self._dead_letters is not None and failed:
            # delivered before the offsets are committed: a dead letter is never lost
            while self._dead_letters.flush(30) > 0:
                log.warning("dead letters not delivered yet; waiting for the broker")
            if self._dead_letter_errors:  # failed for good: nothing of the batch is committed
                raise ServiceUnavailable(
                    f"{len(self._dead_letter_errors)} dead letters not delivered: "
                    f"{self._dead_letter_errors[0]}"
                )
        return records

    def _on_dead_letter(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._dead_letter_errors.append(str(err))

    def _dead_letter(self, message: Message, exc: DecodeError) -> None:
        log.warning(
            "undecodable record %s[%d]@%d: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            exc.reason,
        )
        if self._dead_letters is None:
            return
        now = int(time.time() * 1000)
        self._dead_letters.produce(
            self._dead_letter_topic,
            self._encode_dead_letter(
                bound_dead_letter(
                    {
                        "reason": exc.reason,
                        "message": exc.message,
                        "stage": "sink",
                        "source_topic": message.topic(),
                        "source_partition": message.partition(),
                        "source_offset": message.offset(),
                        "event_index": None,
                        "event_id": None,
                        "ma_cskcb": None,
                        "schema_id": exc.schema_id,
                        "original": message.value() or b"",
                        "published_at": message.timestamp()[1],
                        "failed_at": now,
                    },
                    self.settings.dead_letter_original_max_bytes,
                )
            ),
        )

    def commit(self, messages: Sequence[Message]) -> None:
        """Commit the offsets after ``messages`` (synchronously)."""
        if not messages:
            return
        highest: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = position(m)
            if offset >= highest.get((topic, partition), -1):
                highest[(topic, partition)] = offset
        offsets = [TopicPartition(t, p, o + 1) for (t, p), o in highest.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except Exception as exc:  # a rebalance took the partitions: they are redelivered
            log.warning("offset commit failed (records will be redelivered): %s", exc)
        else:
            faultpoints.reach("sink.offsets_committed")

    def run(
        self,
        handler: Handler,
        *,
        batch_size: int = 1000,
        batch_timeout: float = 0.2,
        stop: threading.Event | None = None,
        max_batches: int | None = None,
    ) -> None:
        """Call ``handler`` with each batch until ``stop`` is set; commit after it returns.

        Blocks; returns when ``stop`` is set (check it from a signal handler or another
        thread) or after ``max_batches`` batches, and closes the consumer. An exception from
        the handler propagates after closing, with the batch uncommitted.
        """
        stop = stop or threading.Event()
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
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

    def __enter__(self) -> RecordConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Leave the group and flush pending dead letters; idempotent."""
        try:
            self._consumer.close()
        except RuntimeError:  # already closed
            pass
        if self._dead_letters is not None:
            self._dead_letters.flush(10)
