"""Prometheus metrics of the sink.

The campaign's numbers are exported from ``campaign_counters``, which the sink updates in the
same transaction as the rows they count: the counters equal the tables, across crashes,
redeliveries and several sink processes (each exports the same global value: aggregate with
``max``, not ``sum``). Per-process metrics (latency, rows written, retries) are ordinary
prometheus-client metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "CAMPAIGN_METRICS",
    "CampaignCollector",
    "END_TO_END_LATENCY",
    "REFERRAL_DAYS",
    "SINK_FAILURES",
    "SINK_LAST_COMMIT",
    "SINK_RECORDS_IN",
    "SINK_RETRIES",
    "SINK_ROWS",
]

log = logging.getLogger(__name__)

END_TO_END_LATENCY = Histogram(
    "ehb_end_to_end_latency_seconds",
    "From the facility's publish (Kafka timestamp) to the row committed in PostgreSQL.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
REFERRAL_DAYS = Histogram(
    "ehb_referral_days_to_arrival",
    "Days from a referral letter to the patient's exam at the destination (completed ones).",
    buckets=(0.5, 1, 2, 3, 5, 7, 10, 14, 21, 30),
)
SINK_RECORDS_IN = Counter("ehb_sink_records_in_total", "Records consumed by the sink.", ["topic"])
SINK_ROWS = Counter(
    "ehb_sink_rows_written_total", "Rows inserted or changed by the sink.", ["table"]
)
SINK_FAILURES = Counter(
    "ehb_sink_failures_total", "Records the sink could not write, by reason.", ["reason"]
)
SINK_RETRIES = Counter(
    "ehb_sink_retries_total", "Batches retried because PostgreSQL was unavailable."
)
SINK_LAST_COMMIT = Gauge(
    "ehb_sink_last_commit_timestamp_seconds", "Unix time of the sink's last committed batch."
)

#: metric name in campaign_counters -> (exported name without _total, help, label name)
CAMPAIGN_METRICS: dict[str, tuple[str, str, str | None]] = {
    "examinations": ("ehb_examinations", "Examinations persisted, by scope.", "scope"),
    "health_books_integrated": (
        "ehb_health_books_integrated",
        "Citizens whose health book got its first record.",
        None,
    ),
    "referrals": ("ehb_referrals", "Referral (transfer) letters persisted.", None),
    "referrals_completed": (
        "ehb_referrals_completed",
        "Referrals completed by an exam at the destination.",
        None,
    ),
    "referrals_expired": (
        "ehb_referrals_expired",
        "Referrals whose window passed without an exam at the destination.",
        None,
    ),
    "appointments": ("ehb_appointments", "Follow-up appointments persisted.", None),
    "appointment_reminders": ("ehb_appointment_reminders", "Appointment reminders emitted.", None),
    "appointments_kept": ("ehb_appointments_kept", "Follow-up appointments kept.", None),
    "appointments_missed": ("ehb_appointments_missed", "Follow-up appointments missed.", None),
    "dead_letters": ("ehb_dead_letters", "Inputs dead-lettered, by reason code.", "reason"),
    "referrals_amended": (
        "ehb_referrals_amended",
        "Referrals a newer version of their episode changed.",
        None,
    ),
    "referrals_cancelled": (
        "ehb_referrals_cancelled",
        "Referrals a newer version of their episode no longer has.",
        None,
    ),
    "appointments_rescheduled": (
        "ehb_appointments_rescheduled",
        "Appointments a newer version of their episode moved.",
        None,
    ),
    "appointments_cancelled": (
        "ehb_appointments_cancelled",
        "Appointments a newer version of their episode no longer has.",
        None,
    ),
    "corrections": (
        "ehb_corrections",
        "Versions of an episode recorded after its first (corrections, and older versions "
        "that arrived late).",
        None,
    ),
    "withdrawals": (
        "ehb_withdrawals",
        "Withdrawals of an episode recorded (a facility withdrew an episode sent by mistake).",
        None,
    ),
    "dead_letters_superseded": (
        "ehb_dead_letters_superseded",
        "Dead letters whose episode a later version made accepted.",
        None,
    ),
}
_ALWAYS = {"examinations": ("in_province", "out_of_province")}


class CachedQuery:
    """A query for a scrape-time collector: run on its own autocommit connection, cached for
    ``ttl`` seconds, and answered with the last result while PostgreSQL is away."""

    def __init__(
        self,
        connect: Callable[[], psycopg2.extensions.connection],
        sql: str,
        convert: Callable[[list[tuple[Any, ...]]], Any],
        initial: Any,
        ttl: float = 1.0,
    ) -> None:
        self._connect = connect
        self._sql = sql
        self._convert = convert
        self._conn: psycopg2.extensions.connection | None = None
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached = initial
        self._at = 0.0

    def read(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at < self._ttl:
                return self._cached
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                    self._conn.autocommit = True
                with self._conn.cursor() as cur:
                    cur.execute(self._sql)
                    self._cached = self._convert(cur.fetchall())
                self._at = time.monotonic()
            except psycopg2.Error as exc:  # keep serving the last values while PG is away
                log.debug("scrape query failed: %s", exc)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
            return self._cached


class CampaignCollector(Collector):
    """Reads ``campaign_counters`` at scrape time (cached for ``ttl`` seconds)."""

    def __init__(
        self, connect: Callable[[], psycopg2.extensions.connection], ttl: float = 1.0
    ) -> None:
        self._query = CachedQuery(
            connect,
            "SELECT metric, label, value FROM campaign_counters",
            lambda rows: {(m, lbl): v for m, lbl, v in rows},
            {},
            ttl,
        )

    def read(self) -> dict[tuple[str, str], int]:
        values: dict[tuple[str, str], int] = self._query.read()
        return values

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for metric, (name, doc, label) in CAMPAIGN_METRICS.items():
            family = CounterMetricFamily(name, doc, labels=[label] if label else None)
            if label is None:
                family.add_metric([], values.get((metric, ""), 0))
            else:
                labels = {lbl for (m, lbl) in values if m == metric}
                labels.update(_ALWAYS.get(metric, ()))
                for value in sorted(labels):
                    family.add_metric([value], values.get((metric, value), 0))
            yield family
