"""Recovery reads a changelog to its real end (streams.faust_patches ``changelog_real_end``).

Tansu answers ListOffsets with the start of a partition's newest record batch + 1, so Faust's
recovery, which reads up to that number, stopped inside the last batch of the changelog.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from faust.types import TP

from ehb.kafka import consumer_config, create_topics, producer_config
from ehb.settings import Settings
from schemas.topics import EXAMINATIONS
from streams.faust_patches import real_end_offsets

pytestmark = pytest.mark.integration


def _write_in_one_batch(settings: Settings, topic: str, records: int) -> None:
    producer = Producer(
        producer_config(settings, **{"linger.ms": 1000, "batch.num.messages": records * 2})
    )
    for n in range(records):
        producer.produce(topic, value=str(n).encode(), key=str(n % 7).encode(), partition=0)
    assert producer.flush(30) == 0


@pytest.mark.parametrize("records", [1, 500])
def test_real_end_offsets_reads_past_the_reported_high_watermark(
    services: Settings, records: int
) -> None:
    settings = services.model_copy(
        update={"topic_prefix": f"t{uuid.uuid4().hex[:7]}.", "kafka_partitions": 2}
    )
    create_topics(settings)
    topic = settings.topic(EXAMINATIONS)
    _write_in_one_batch(settings, topic, records)
    config = consumer_config(settings, "test-real-end")
    probe = Consumer(config)
    try:
        _low, reported = probe.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        probe.close()
    assert 1 <= reported <= records  # Tansu: the newest batch's start + 1; Kafka: records

    ends = real_end_offsets(config, {TP(topic, 0): reported, TP(topic, 1): 0})

    assert ends == {TP(topic, 0): records, TP(topic, 1): 0}
