"""Prometheus metrics of the stream worker: per stage, items in, items out, failures, and the
time of the last processed batch. Labels are bounded: stage names, topic names, reason codes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ASSIGNED_PARTITIONS",
    "BATCH_SECONDS",
    "EVENTS_IN",
    "EVENTS_OUT",
    "FAILURES",
    "LAST_PROCESSED",
    "MESSAGES_IN",
    "REGISTRY_FACILITIES",
    "count_batch",
]

MESSAGES_IN = Counter(
    "ehb_stage_messages_in_total", "Kafka messages consumed by a stage.", ["stage"]
)
EVENTS_IN = Counter("ehb_stage_events_in_total", "Examination events entering a stage.", ["stage"])
EVENTS_OUT = Counter(
    "ehb_stage_records_out_total", "Records a stage emitted, by output topic.", ["stage", "topic"]
)
FAILURES = Counter(
    "ehb_stage_failures_total",
    "Events a stage rejected (sent to the dead-letter topic), by reason code.",
    ["stage", "reason"],
)
LAST_PROCESSED = Gauge(
    "ehb_stage_last_processed_timestamp_seconds",
    "Unix time of the last batch a stage finished.",
    ["stage"],
)
BATCH_SECONDS = Histogram(
    "ehb_stage_batch_duration_seconds",
    "Time to process and flush one batch.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ASSIGNED_PARTITIONS = Gauge(
    "ehb_worker_assigned_partitions",
    "Partitions of the examinations topic assigned to this worker.",
)
REGISTRY_FACILITIES = Gauge(
    "ehb_worker_registry_facilities", "Facilities in the worker's registry (last refresh)."
)


def count_batch(
    stage: str,
    *,
    messages: int,
    events_in: int,
    records_out: Mapping[str, int],
    started: float,
    failures: Mapping[str, int] | None = None,
) -> None:
    """Count a batch a stage finished: ``records_out`` by output topic, ``failures`` by reason
    code, ``started`` from ``time.perf_counter()``."""
    MESSAGES_IN.labels(stage).inc(messages)
    EVENTS_IN.labels(stage).inc(events_in)
    for topic, count in records_out.items():
        EVENTS_OUT.labels(stage, topic).inc(count)
    for reason, count in (failures or {}).items():
        FAILURES.labels(stage, reason).inc(count)
    LAST_PROCESSED.labels(stage).set(time.time())
    BATCH_SECONDS.labels(stage).observe(time.perf_counter() - started)
