"""Consumer lag of the pipeline's consumer groups, exported like the established exporters.

``kafka_consumergroup_lag{consumergroup, topic, partition}`` is the partition's end offset
(high watermark) minus the group's committed offset, and ``kafka_consumergroup_lag_sum
{consumergroup, topic}`` its sum per topic: the names and labels of kafka_exporter, so that
existing dashboards and alerts work unchanged. A partition the group has never committed
counts from the partition's first retained offset (the groups start at ``earliest``), so a
stopped consumer shows all its unread records as lag.

The sink process serves these on its /metrics (``sinks.runner``); ``ehb lag`` prints them.
Offsets are read by a background thread every ``interval`` seconds, never during a scrape:
a slow broker cannot make /metrics slow. Several sinks export the same values: aggregate with
``max``, not ``sum``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ehb.kafka import admin_client
from ehb.settings import Settings
from schemas.topics import EXAMINATIONS, EXAMINATIONS_BY_CITIZEN, FACILITY_REPORTS, SINK_TOPICS

__all__ = [
    "GroupTopics",
    "LagCollector",
    "PartitionLag",
    "lag_table",
    "pipeline_groups",
    "read_lag",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupTopics:
    group: str
    topics: tuple[str, ...]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int  # -1: never committed
    end: int
    lag: int


def pipeline_groups(settings: Settings) -> list[GroupTopics]:
    """The worker's and the sink's consumer groups with the topics each consumes."""
    return [
        GroupTopics(
            settings.worker_group,
            (settings.topic(EXAMINATIONS), settings.topic(EXAMINATIONS_BY_CITIZEN)),
        ),
        GroupTopics(settings.sink_group, tuple(settings.topic(t) for t in SINK_TOPICS)),
        GroupTopics(f"{settings.sink_group}-reports", (settings.topic(FACILITY_REPORTS),)),
    ]


def _partitions(
    admin: AdminClient, topics: tuple[str, ...], timeout: float
) -> list[TopicPartition]:
    metadata = admin.list_topics(timeout=timeout).topics
    return [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata
        for p in sorted(metadata[topic].partitions)
    ]


def read_lag(
    admin: AdminClient, groups: list[GroupTopics], timeout: float = 10.0
) -> list[PartitionLag]:
    """Committed and end offsets of every partition the groups consume (a few requests)."""
    wanted = {g.group: _partitions(admin, g.topics, timeout) for g in groups}
    every = {(tp.topic, tp.partition) for tps in wanted.values() for tp in tps}
    if not every:
        return []
    ends_f = admin.list_offsets(
        {TopicPartition(t, p): OffsetSpec.latest() for t, p in every}, request_timeout=timeout
    )
    starts_f = admin.list_offsets(
        {TopicPartition(t, p): OffsetSpec.earliest() for t, p in every}, request_timeout=timeout
    )
    ends = {(tp.topic, tp.partition): f.result().offset for tp, f in ends_f.items()}
    starts = {(tp.topic, tp.partition): f.result().offset for tp, f in starts_f.items()}
    out: list[PartitionLag] = []
    for group, tps in wanted.items():
        if not tps:
            continue
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, tps)], request_timeout=timeout
        )
        committed = {
            (tp.topic, tp.partition): tp.offset for tp in futures[group].result().topic_partitions
        }
        for tp in tps:
            key = (tp.topic, tp.partition)
            offset = committed.get(key, -1)
            offset = offset if offset >= 0 else -1  # librdkafka: -1001 = none
            # An end below the committed offset is a broker's stale answer (Tansu reports the
            # start of the newest batch + 1 as the end): the group cannot be ahead of the log.
            end = max(0, ends[key], offset)
            base = offset if offset >= 0 else max(0, starts[key])
            out.append(PartitionLag(group, tp.topic, tp.partition, offset, end, max(0, end - base)))
    return out


class LagCollector(Collector):
    """Refreshes lag in a daemon thread; ``collect`` serves the last reading."""

    def __init__(
        self, settings: Settings, interval: float = 5.0, groups: list[GroupTopics] | None = None
    ) -> None:
        self.settings = settings
        self.interval = interval
        self.groups = groups or pipeline_groups(settings)
        self._lock = threading.Lock()
        self._last: list[PartitionLag] = []
        self._last_ok = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin: AdminClient | None = None

    def refresh(self) -> list[PartitionLag]:
        if self._admin is None:
            self._admin = admin_client(self.settings)
        lag = read_lag(self._admin, self.groups, timeout=max(2.0, self.interval * 2))
        with self._lock:
            self._last = lag
            self._last_ok = time.time()
        return lag

    def start(self) -> LagCollector:
        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh()
                except (KafkaException, RuntimeError, ValueError) as exc:
                    log.debug("consumer lag not refreshed: %s", exc)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=loop, name="consumer-lag", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            lag, last_ok = list(self._last), self._last_ok
        per_partition = GaugeMetricFamily(
            "kafka_consumergroup_lag",
            "End offset minus the group's committed offset, per partition (uncommitted: "
            "from the first retained offset).",
            labels=["consumergroup", "topic", "partition"],
        )
        current = GaugeMetricFamily(
            "kafka_consumergroup_current_offset",
            "The group's committed offset (-1: none).",
            labels=["consumergroup", "topic", "partition"],
        )
        per_topic = GaugeMetricFamily(
            "kafka_consumergroup_lag_sum",
            "Consumer lag summed over a topic's partitions.",
            labels=["consumergroup", "topic"],
        )
        sums: dict[tuple[str, str], int] = {}
        for p in lag:
            labels = [p.group, p.topic, str(p.partition)]
            per_partition.add_metric(labels, p.lag)
            current.add_metric(labels, p.committed)
            sums[(p.group, p.topic)] = sums.get((p.group, p.topic), 0) + p.lag
        for (group, topic), value in sorted(sums.items()):
            per_topic.add_metric([group, topic], value)
        yield per_partition
        yield current
        yield per_topic
        updated = GaugeMetricFamily(
            "ehb_consumer_lag_last_refresh_timestamp_seconds",
            "Unix time the consumer-lag metrics were last read from the broker (0: never).",
        )
        updated.add_metric([], last_ok)
        yield updated


def lag_table(settings: Settings) -> list[PartitionLag]:
    """One reading for ``ehb lag`` (no background thread)."""
    return read_lag(admin_client(settings), pipeline_groups(settings))
