"""``ehb sink``: the routed topics -> PostgreSQL, with live campaign counters on /metrics."""

from __future__ import annotations

import logging
import threading
from collections import Counter

from prometheus_client import REGISTRY, start_http_server

from ehb.consumer import Record, RecordConsumer
from ehb.db import connect
from ehb.runtime import tune_gc
from ehb.settings import Settings
from schemas import SUBJECTS
from schemas.topics import SINK_TOPICS
from sinks import metrics
from sinks.lag import LagCollector
from sinks.metrics import CampaignCollector
from sinks.migrate import migrate
from sinks.postgres import PostgresWriter
from sinks.reconcile import FacilityReportCollector
from sinks.reports import ReportSink

__all__ = ["run_sink"]

log = logging.getLogger(__name__)

SINK_SUBJECTS = (
    SUBJECTS.HEALTH_BOOK_RECORD,
    SUBJECTS.REFERRAL_RECORD,
    SUBJECTS.APPOINTMENT_RECORD,
    SUBJECTS.DEAD_LETTER,
    SUBJECTS.EPISODE_WITHDRAWN,
)


def run_sink(settings: Settings, stop: threading.Event | None = None) -> None:
    conn = connect(settings, application_name="ehb-sink-migrate")
    try:
        applied = migrate(conn)
    finally:
        conn.close()
    if applied:
        log.info("migrations applied: %s", ", ".join(applied))

    def connect_quickly():  # the writer retries on its own, with backoff
        return connect(settings, timeout=2, application_name="ehb-sink")

    if settings.metrics_port:
        REGISTRY.register(
            CampaignCollector(
                lambda: connect(settings, timeout=2, application_name="ehb-sink-metrics")
            )
        )
        REGISTRY.register(LagCollector(settings, settings.lag_refresh_s).start())
        REGISTRY.register(
            FacilityReportCollector(
                lambda: connect(settings, timeout=2, application_name="ehb-sink-metrics")
            )
        )
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on :%d/metrics", settings.metrics_port)

    writer = PostgresWriter(
        connect_quickly, original_max_bytes=settings.dead_letter_original_max_bytes
    )
    consumer = RecordConsumer(settings, settings.sink_group, SINK_TOPICS, subjects=SINK_SUBJECTS)

    def handle(records: list[Record]) -> None:
        by_topic = Counter(r.topic for r in records)
        for topic, n in by_topic.items():
            metrics.SINK_RECORDS_IN.labels(topic).inc(n)
        writer.write(records)
        reports.loop.poke()  # episodes committed: reconcile the daily reports soon

    log.info("sink consuming %s", ", ".join(consumer.topics))
    stop = stop or threading.Event()
    # facility-reports -> facility_reports, and the periodic reconciliation (sinks.reconcile)
    reports = ReportSink(settings, connect_quickly, consumer.codec, stop).start()
    tune_gc(settings.gc_young_threshold)
    try:
        consumer.run(
            handle,
            batch_size=settings.sink_batch_size,
            batch_timeout=settings.sink_batch_timeout_s,
            stop=stop,
        )
    finally:
        stop.set()
        reports.join()
        writer.close()
