"""The sink's daily-report side: topic ``facility-reports`` -> table ``facility_reports``, and
the periodic reconciliation (``sinks.reconcile``) that compares the reports with what the
pipeline received.

Runs inside ``ehb sink`` on two threads of its own: a consumer (group ``<EHB_SINK_GROUP>-reports``)
that upserts each report (of two reports for one facility and day, the one sent last counts)
and a loop that reconciles every ``EHB_REPORTS_RECONCILE_S`` seconds and soon after each
batch of reports or episodes. A report that cannot be right (a malformed facility code, a
negative count) is dead-lettered ``report_invalid`` with its original bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extensions
from confluent_kafka import Producer
from psycopg2.extras import execute_values

from ehb.consumer import Record, RecordConsumer
from ehb.kafka import producer_config
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.dead_letters import bound_dead_letter
from schemas.topics import DEAD_LETTER, FACILITY_REPORTS
from sinks.reconcile import ReconcileLoop, Reconciler

__all__ = ["ReportSink", "report_dead_letter", "report_problem", "write_reports"]

log = logging.getLogger(__name__)

SQL_REPORTS = (
    "INSERT INTO facility_reports AS fr (ma_cskcb, report_day, reported, status, "
    "report_sent_at, reported_at) VALUES %s "
    "ON CONFLICT (ma_cskcb, report_day) DO UPDATE SET reported = EXCLUDED.reported, "
    "status = 'pending', report_sent_at = EXCLUDED.report_sent_at, "
    "reported_at = EXCLUDED.reported_at "
    "WHERE fr.report_sent_at IS NULL OR fr.report_sent_at <= EXCLUDED.report_sent_at"
)
_EARLIEST = date(2000, 1, 1)


def report_problem(report: dict[str, Any], today: date) -> str | None:
    """Why a decoded report cannot be right, or None."""
    code = report["ma_cskcb"]
    if not (len(code) == 5 and code.isascii() and code.isdigit()):
        return f"MA_CSKCB={code!r} is not a 5-digit facility code"
    if report["episodes_sent"] < 0:
        return f"episodes_sent={report['episodes_sent']} is negative"
    day = report["report_date"]
    if not _EARLIEST <= day <= today + timedelta(days=1):
        return f"report_date {day.isoformat()} is not a plausible day"
    return None


def write_reports(conn: psycopg2.extensions.connection, reports: Sequence[dict[str, Any]]) -> int:
    """Upsert reports (the latest ``sent_at`` per facility and day wins); returns rows changed."""
    latest: dict[tuple[str, date], dict[str, Any]] = {}
    for report in reports:
        key = (report["ma_cskcb"], report["report_date"])
        if key not in latest or latest[key]["sent_at"] <= report["sent_at"]:
            latest[key] = report
    now = datetime.now(UTC)
    rows = [
        (code, day, r["episodes_sent"], "pending", r["sent_at"], now)
        for (code, day), r in sorted(latest.items())
    ]
    with conn.cursor() as cur:
        execute_values(cur, SQL_REPORTS, rows, page_size=1000)
        changed = cur.rowcount
    conn.commit()
    return changed


class ReportSink:
    """The two threads; ``start()`` them beside the main sink, ``join()`` after ``stop``."""

    def __init__(
        self,
        settings: Settings,
        connect: Callable[[], psycopg2.extensions.connection],
        codec: AvroCodec,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.stop = stop
        self._connect = connect
        self._conn: psycopg2.extensions.connection | None = None
        self.loop = ReconcileLoop(
            Reconciler(
                codec,
                grace=timedelta(hours=settings.reports_grace_hours),
                window_days=settings.reports_window_days,
            ),
            connect,
            settings.reports_reconcile_s,
        )
        self._dead_letters: Producer | None = None
        self._encode_dead_letter = codec.writer(SUBJECTS.DEAD_LETTER)
        self._encode_report = codec.writer(SUBJECTS.FACILITY_DAILY_REPORT)
        self._threads: list[threading.Thread] = []
        self.reports_written = 0

    def start(self) -> ReportSink:
        for name, target in (
            ("reports-consumer", self._consume),
            ("reports-reconcile", lambda: self.loop.run(self.stop)),
        ):
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def join(self, timeout: float = 15.0) -> None:
        for thread in self._threads:
            thread.join(timeout)

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:  # a dead thread must not go unnoticed
                log.exception("facility reports: %s stopped", threading.current_thread().name)
                raise

        return run

    # -- the consumer ---------------------------------------------------------------------
    def _consume(self) -> None:
        consumer = RecordConsumer(
            self.settings,
            f"{self.settings.sink_group}-reports",
            [FACILITY_REPORTS],
            codec=self.codec,
            subjects=(SUBJECTS.FACILITY_DAILY_REPORT,),
        )
        try:
            consumer.run(
                self._handle,
                batch_size=self.settings.sink_batch_size,
                batch_timeout=self.settings.sink_batch_timeout_s,
                stop=self.stop,
            )
        finally:
            if self._conn is not None:
                self._conn.close()
            if self._dead_letters is not None:
                self._dead_letters.flush(10)

    def _handle(self, records: list[Record]) -> None:
        today = datetime.now(UTC).date()
        good = []
        for record in records:
            problem = report_problem(record.value, today)
            if problem is None:
                good.append(record.value)
            else:
                self._dead_letter(record, problem)
        if self._dead_letters is not None:
            self._dead_letters.flush(30)
        if good:
            self._write(good)
            self.loop.poke()

    def _write(self, reports: list[dict[str, Any]]) -> None:
        delay = 0.2
        while True:  # at-least-once: offsets are committed only after this returns
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                self.reports_written += write_reports(self._conn, reports)
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                log.warning(
                    "PostgreSQL unavailable for facility reports, retrying: %s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
                )
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)

    def _dead_letter(self, record: Record, problem: str) -> None:
        log.warning(
            "invalid facility report %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            problem,
        )
        if self._dead_letters is None:
            self._dead_letters = Producer(producer_config(self.settings))
        dead_letter = bound_dead_letter(
            report_dead_letter(record, problem, self._encode_report, int(time.time() * 1000)),
            self.settings.dead_letter_original_max_bytes,
        )
        code = dead_letter["ma_cskcb"]
        self._dead_letters.produce(
            self.settings.topic(DEAD_LETTER),
            self._encode_dead_letter(dead_letter),
            key=code.encode() if code else None,
        )


def report_dead_letter(
    record: Record, problem: str, encode_report: Callable[[dict[str, Any]], bytes], now_ms: int
) -> dict[str, Any]:
    """The DeadLetter record (reason ``report_invalid``) of a report that cannot be right."""
    code = record.value.get("ma_cskcb")
    return {
        "reason": "report_invalid",
        "message": problem,
        "stage": "sink",
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
        "event_index": None,
        "event_id": None,
        "ma_cskcb": code if isinstance(code, str) else None,
        "schema_id": None,
        "original": encode_report(record.value),
        "published_at": record.timestamp_ms,
        "failed_at": now_ms,
    }
