"""``ehb replay``: re-process a time range of the input topic into the outputs.

Mechanism: a one-off **replay intake**, beside the running workers. It reads the
``examinations`` messages whose Kafka timestamp is in ``[from, to)`` with its own partition
assignment (no consumer group: the workers' committed offsets are never touched), runs them
through the same stateless stage as the workers (``streams.intake.Intake``: decode, validate
with the *current* rules and facility registry, enrich, key by citizen) and sends the result
where the workers' intake sends it: valid events to ``examinations-by-citizen`` (partitioned
by citizen key, so the running workers' stateful stage applies them, in its own state, as the
single writer of the ``citizens`` table), rejected ones to ``dead-letter``.

Why not the alternatives:

* re-publishing the input range into ``examinations`` would duplicate the input itself (every
  other consumer of the input would see the events twice, and a second replay would replay
  the copies);
* resetting the workers' group offsets needs the workers stopped (an empty group), cannot
  stop at ``--to-time``, and makes the workers redo everything after the time;
* a second worker group would need its own copy of the stateful stage's table, which must
  have one writer.

Same persisted state: the stateful stage is idempotent per event id (a visit, a referral, an
appointment, a book integration is recorded once), every output record carries stable ids,
and the PostgreSQL sink upserts on natural keys and counts only rows really inserted or
changed; dead letters keep their event id or source position. So replaying a range that was
already processed leaves every table and counter unchanged, while events that were rejected
by a rule since fixed now flow into the health book. The replay carries no event-time
progress: it never moves the stateful stage's clock, so replayed events are late events
(referrals and appointments they open may expire or be missed at once, in event time).

Requirements: the workers must be running (or be started later) to apply the replayed
events; the replay must use the workers' ``EHB_CITIZEN_KEY_SECRET`` (else the citizen keys
differ and the replayed events look like new citizens); topics keep the messages for their
retention (``examinations``: 30 days).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from ehb.embedded import resolve_bootstrap
from ehb.exceptions import ServiceUnavailable
from ehb.kafka import consumer_config, position, producer_config, wait_for_broker
from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import AvroCodec
from schemas.errors import EhbError
from schemas.reference import FacilityRegistry
from schemas.registry import codec_for
from schemas.topics import EXAMINATIONS, EXAMINATIONS_BY_CITIZEN
from streams.intake import Intake, IntakeResult, SourceMessage
from streams.routing import IntakeRoutes, route_intake_result

__all__ = ["ReplaySummary", "replay"]

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    from_time: str
    to_time: str
    messages: int = 0
    events: int = 0
    accepted: int = 0
    dead_letters: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    partitions: dict[int, list[int]] = field(default_factory=dict)  # partition -> [first, last]
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "from_time": self.from_time,
            "to_time": self.to_time,
            "dry_run": self.dry_run,
            "messages": self.messages,
            "events": self.events,
            "accepted": self.accepted,
            "dead_letters": self.dead_letters,
            "rejected": dict(sorted(self.rejected.items())),
            "offsets": {
                str(p): f"{first}-{last}" for p, (first, last) in sorted(self.partitions.items())
            },
            "seconds": round(self.seconds, 3),
        }

    def add(self, batch: list[Message], result: IntakeResult) -> None:
        """Count a replayed batch and widen the offset range of each partition."""
        self.messages += len(batch)
        self.events += result.events_in
        self.accepted += result.accepted
        self.dead_letters += len(result.dead_letters)
        for reason, n in result.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + n
        for m in batch:
            _, partition, offset = position(m)
            bounds = self.partitions.setdefault(partition, [offset, offset])
            bounds[0] = min(bounds[0], offset)
            bounds[1] = max(bounds[1], offset)


def _registry(settings: Settings) -> FacilityRegistry:
    from ehb.facilities import initial_registry

    return initial_registry(settings)


class _RangeReader:
    """The input messages with timestamps in [from, to), partition by partition bounds."""

    def __init__(
        self, settings: Settings, topic: str, from_ms: int, to_ms: int, idle_s: float
    ) -> None:
        self.topic, self.from_ms, self.to_ms, self.idle_s = topic, from_ms, to_ms, idle_s
        self._consumer = Consumer(
            consumer_config(
                settings, f"{settings.worker_group}-replay", **{"enable.auto.offset.store": False}
            )
        )
        metadata = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            self._consumer.close()
            raise EhbError(f"topic {topic} does not exist (run `ehb topics`)")
        partitions = sorted(metadata.partitions)
        found = self._consumer.offsets_for_times(
            [TopicPartition(topic, p, from_ms) for p in partitions], timeout=10
        )
        self.ends: dict[int, int] = {}
        starts: list[TopicPartition] = []
        for tp in found:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=10
            )
            if tp.offset < 0 or tp.offset >= high:  # nothing at or after from_ms
                continue
            self.ends[tp.partition] = high
            starts.append(TopicPartition(topic, tp.partition, tp.offset))
        self.next = {tp.partition: tp.offset for tp in starts}
        self.done: set[int] = set()
        self._consumer.assign(starts)

    def batches(self, size: int) -> Any:
        """Lists of in-range messages until every partition is past its range."""
        quiet_since = time.monotonic()
        while len(self.done) < len(self.ends):
            messages = self._consumer.consume(size, 0.5)
            batch: list[Message] = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", error)
                    continue
                _, p, offset = position(message)
                ts = message.timestamp()[1]
                if p in self.done:
                    continue
                self.next[p] = offset + 1
                if ts >= self.to_ms and offset + 1 >= self.ends[p]:
                    self._finish(p)  # past the end offset and the time: this partition is done
                    continue
                if self.from_ms <= ts < self.to_ms:
                    batch.append(message)
            now = time.monotonic()
            if messages:
                quiet_since = now
            elif now - quiet_since >= self.idle_s:
                # Quiet: every partition that reached the end offset seen at the start is
                # done (brokers may report end offsets approximately, hence the quiet time).
                for p, end in self.ends.items():
                    if self.next[p] >= end:
                        self._finish(p)
            if batch:
                yield batch

    def _finish(self, partition: int) -> None:
        if partition not in self.done:
            self.done.add(partition)
            self._consumer.pause([TopicPartition(self.topic, partition)])

    def close(self) -> None:
        self._consumer.close()


def replay(
    settings: Settings,
    from_time: datetime,
    to_time: datetime | None = None,
    *,
    dry_run: bool = False,
    batch_size: int = 500,
    idle_s: float = 1.0,
    codec: AvroCodec | None = None,
    registry: FacilityRegistry | None = None,
    on_batch: Callable[[ReplaySummary], None] | None = None,
) -> ReplaySummary:
    """Re-process the ``examinations`` messages with a timestamp in ``[from_time, to_time)``
    (``to_time`` defaults to now) into ``examinations-by-citizen`` and ``dead-letter``."""
    started = time.monotonic()
    to_time = to_time or datetime.now().astimezone()
    if to_time <= from_time:
        raise EhbError(
            f"--to-time {to_time.isoformat()} is not after --from-time {from_time.isoformat()}"
        )
    _check_internal_topic(settings)
    summary = ReplaySummary(from_time.isoformat(), to_time.isoformat(), dry_run=dry_run)
    codec = codec or codec_for(settings)
    intake = Intake(
        codec,
        registry or _registry(settings),
        CitizenKeyer.from_settings(settings),
        settings.kafka_partitions,
        original_max_bytes=settings.dead_letter_original_max_bytes,
    )
    routes = IntakeRoutes.from_settings(settings, codec)
    sender = None if dry_run else _Sender(settings)
    reader = _RangeReader(
        settings,
        settings.topic(EXAMINATIONS),
        int(from_time.timestamp() * 1000),
        int(to_time.timestamp() * 1000),
        idle_s,
    )
    log.info(
        "replaying %s from %s to %s (%s)",
        reader.topic,
        summary.from_time,
        summary.to_time,
        resolve_bootstrap(settings),
    )
    try:
        for batch in reader.batches(batch_size):
            result = intake.process(
                SourceMessage(m.value(), m.topic(), m.partition(), m.offset(), m.timestamp()[1])
                for m in batch
            )
            summary.add(batch, result)
            if sender is not None:
                # Items only, no intake progress: a replay never moves the event-time clock.
                route_intake_result(result, sender.send, routes)
            if on_batch is not None:
                on_batch(summary)
        if sender is not None:
            sender.flush()
    finally:
        reader.close()
    summary.seconds = time.monotonic() - started
    return summary


def _check_internal_topic(settings: Settings) -> None:
    """The workers' internal topic exists, with the partitions these settings say."""
    admin = wait_for_broker(settings, timeout=10)
    by_citizen = settings.topic(EXAMINATIONS_BY_CITIZEN)
    metadata = admin.list_topics(by_citizen, timeout=10).topics.get(by_citizen)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise EhbError(f"topic {by_citizen} does not exist (run `ehb topics`)")
    if len(metadata.partitions) != settings.kafka_partitions:
        raise EhbError(
            f"{by_citizen} has {len(metadata.partitions)} partitions but "
            f"EHB_KAFKA_PARTITIONS is {settings.kafka_partitions}: use the workers' "
            "settings"
        )


class _Sender:
    """A librdkafka producer that collects delivery errors; ``flush`` raises on any."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(settings))
        self.errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        if partition is None:
            self._producer.produce(topic, value, key=key, on_delivery=self._on_delivery)
        else:
            self._producer.produce(
                topic, value, key=key, partition=partition, on_delivery=self._on_delivery
            )
        self._producer.poll(0)

    def flush(self) -> None:
        while self._producer.flush(30) > 0:
            log.warning("replay: waiting for the broker to acknowledge the outputs")
        if self.errors:
            raise ServiceUnavailable(
                f"{len(self.errors)} replayed messages not delivered: {self.errors[0]}"
            )
