"""``ehb state migrate-keys``: rewrite the citizens table's JSON-keyed changelog entries under
binary keys (docs/state-store.md, "The encoding").

Workers of this version read both key formats and move a citizen to its binary key whenever
they write it; a citizen nobody has written since keeps its JSON key. This one-off reads the
changelog, partition by partition, to its real end and, for each citizen whose JSON key still
holds a value, writes what a reader sees for it under its binary key (the JSON key's value, or
nothing when a binary value exists already) followed by the JSON key's tombstone: the binary
record first, so that a crash in between leaves both and readers take the binary one. Run
again, it finds nothing left to do.

**With the workers stopped**: a worker writing a citizen while this runs could be overwritten by
the older value read here. Workers restarted afterwards apply the new records to their local
state like any others (from their persisted offset on).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ehb.kafka import consumer_config, position, producer_config
from ehb.settings import Settings
from schemas.topics import changelog_topic

__all__ = ["KeyMigration", "migrate_keys"]

#: (partition, records read in it, its records) after every fetch
Progress = Callable[[int, int, int], None]


@dataclass
class KeyMigration:
    """What a run found and wrote."""

    records: int = 0
    json_citizens: int = 0  # citizens whose JSON key held a value
    rewritten: int = 0  # their value written under the binary key
    tombstoned: int = 0  # JSON keys tombstoned (rewritten ones included)
    per_partition: dict[int, int] = field(default_factory=dict)  # JSON citizens by partition


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    """The real end offset of each partition of ``topic`` (Tansu's ListOffsets reports less)."""
    from confluent_kafka import Consumer, TopicPartition
    from faust.types import TP

    from streams.faust_patches import real_end_offsets

    consumer = Consumer(consumer_config(settings, "ehb-migrate-keys"))
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"no changelog topic {topic}")
        reported = {
            TP(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in sorted(metadata.partitions)
        }
    finally:
        consumer.close()
    real = real_end_offsets(consumer_config(settings, "ehb-migrate-keys-end"), reported)
    return {tp.partition: end for tp, end in real.items()}


def _read_partition(
    settings: Settings, topic: str, partition: int, end: int, progress: Progress
) -> tuple[dict[bytes, bytes], set[bytes], int]:
    """One partition to ``end``: the citizens' JSON keys holding a value (key -> value) and the
    binary keys holding one, as a compacted log would keep them; and the records read."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.state_codec import KEY_FORMAT, decode_key, json_key

    json_live: dict[bytes, bytes] = {}
    binary_live: set[bytes] = set()
    consumer = Consumer(
        {
            **consumer_config(settings, "ehb-migrate-keys"),
            "enable.auto.commit": False,
            "queued.max.messages.kbytes": 16384,
        }
    )
    read = 0
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        last = -1
        idle_until = time.monotonic() + 30
        while last < end - 1:
            messages = consumer.consume(10_000, 0.5)
            if not messages:
                if time.monotonic() > idle_until:
                    raise RuntimeError(f"{topic}[{partition}] ended at {last}, before {end - 1}")
                continue
            idle_until = time.monotonic() + 30
            for message in messages:
                if message.error() is not None:
                    continue
                _, _, offset = position(message)
                if offset >= end:
                    continue
                last = max(last, offset)
                read += 1
                key, value = message.key(), message.value()
                if not key:
                    continue
                if key[:1] == KEY_FORMAT:
                    if value is None:
                        binary_live.discard(key)
                    else:
                        binary_live.add(key)
                elif key[:1] == b'"' and json_key(decode_key(key)) is not None:
                    if value is None:
                        json_live.pop(key, None)
                    else:
                        json_live[key] = value
            progress(partition, read, end)
    finally:
        consumer.close()
    return json_live, binary_live, read


def migrate_keys(
    settings: Settings, *, dry_run: bool = False, progress: Progress | None = None
) -> KeyMigration:
    """Rewrite the remaining JSON-keyed citizens of the changelog (see the module docstring)."""
    from confluent_kafka import Producer

    from streams.state_codec import decode_key, encode_key

    topic = changelog_topic(settings.worker_group)
    ends = _ends(settings, topic)
    result = KeyMigration()
    producer = None if dry_run else Producer(producer_config(settings, **{"linger.ms": 50}))
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(str(error))

    for partition, end in sorted(ends.items()):
        if end <= 0:
            continue
        json_live, binary_live, read = _read_partition(
            settings, topic, partition, end, progress or (lambda *_: None)
        )
        result.records += read
        result.json_citizens += len(json_live)
        result.per_partition[partition] = len(json_live)
        if producer is None:
            continue
        for old, value in json_live.items():
            new = encode_key(decode_key(old))
            if new not in binary_live:  # what a reader sees: the JSON key's value
                _produce(producer, topic, new, value, partition, delivered)
                result.rewritten += 1
            _produce(producer, topic, old, None, partition, delivered)
            result.tombstoned += 1
        json_live.clear()
        left = producer.flush(120)
        if left or failures:
            raise RuntimeError(
                f"{left} changelog records not delivered, {len(failures)} failed "
                f"({failures[:1]}); run the migration again"
            )
    return result


def _produce(
    producer: Any,
    topic: str,
    key: bytes,
    value: bytes | None,
    partition: int,
    delivered: Callable[[Any, Any], None],
) -> None:
    while True:
        try:
            producer.produce(topic, value, key, partition=partition, on_delivery=delivered)
            return
        except BufferError:
            producer.poll(0.05)
