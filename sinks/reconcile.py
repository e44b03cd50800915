"""Daily-report reconciliation: what each facility says it sent per day against what the
pipeline received, in table ``facility_reports``.

**Which day an episode belongs to**: the day of its discharge ``NGAY_RA``, in Vietnam time.
That is when the standard has the facility send the episode, it is part of the data (so the
figures are the same however late or often the data is replayed), and the facility's own
report counts the same way (``FacilityDailyReport.report_date``).

**Received** for (facility, day): the distinct episodes (``MA_LK``) of that facility with
``NGAY_RA`` on that day that reached PostgreSQL, accepted (``health_book_entries``: triggers
append per-statement counts to ``facility_day_count_deltas``, which each run folds into
``facility_day_counts``) or dead-lettered at validation (``dead_letters``: the episode is
decoded once from the dead letter's original bytes into ``dead_letter_episodes``; an episode
dead-lettered and later accepted counts once). Messages that could not be decoded at all name
no facility or day and are not counted; neither are events whose ``NGAY_RA`` is not a date.

**When a day has passed**: ``EHB_REPORTS_GRACE_HOURS`` after the end of the day (Vietnam
time), by the wall clock. Until then a day's rows are ``pending``; afterwards ``ok``,
``mismatch`` (reported <> received) or ``silent`` (an active facility of the registry sent no
report). The days reconciled run from the first day any facility reported (the obligation is
met from then on) to the newest day any report or episode names, at most
``EHB_REPORTS_WINDOW_DAYS`` back: a replayed year is reconciled over its own days, not up to
today. Every run recomputes all of them, so late episodes and resent reports always count.

**Where it runs**: in ``ehb sink`` (``sinks.reports``), every ``EHB_REPORTS_RECONCILE_S``
seconds and soon after each batch of reports or episodes (``ReconcileLoop``), in one
transaction under an advisory lock (several sinks: one reconciles at a time, the others skip
that round). Re-running it is harmless: every figure is recomputed from the tables.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extensions
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg2.extras import execute_values

from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.time import VN_TZ, parse_datetime
from sinks.metrics import CachedQuery

__all__ = [
    "FacilityReportCollector",
    "ReconcileResult",
    "Reconciler",
    "STATUSES",
    "episode_of_dead_letter",
    "last_passed_day",
]

log = logging.getLogger(__name__)

STATUSES = ("pending", "ok", "mismatch", "silent")
_LOCK_ID = 0x0EB_0002
_DECODE_CHUNK = 2000

SQL_NEW_DEAD_LETTERS = (
    "SELECT d.dead_letter_id, d.ma_cskcb, d.original FROM dead_letters d "
    "WHERE d.stage = 'validate' AND NOT EXISTS "
    "(SELECT 1 FROM dead_letter_episodes e WHERE e.dead_letter_id = d.dead_letter_id) "
    "LIMIT %s"
)
#: deltas -> facility_day_counts (a SECURITY DEFINER function: the sinks' role cannot DELETE)
SQL_FOLD_DELTAS = "SELECT facility_day_counts_fold()"
SQL_BOUNDS = (
    "SELECT (SELECT min(report_day) FROM facility_reports WHERE reported IS NOT NULL),"
    " greatest((SELECT max(report_day) FROM facility_reports WHERE reported IS NOT NULL),"
    " (SELECT max(episode_day) FROM facility_day_counts WHERE accepted > 0),"
    " (SELECT max(episode_day) FROM dead_letter_episodes))"
)
_STATUS = """CASE WHEN {row}.report_day > %(passed)s THEN 'pending'
                  WHEN {row}.reported IS NULL THEN 'silent'
                  WHEN {row}.reported = EXCLUDED.received THEN 'ok'
                  ELSE 'mismatch' END"""
SQL_RECONCILE = f"""
WITH days AS (
    SELECT generate_series(%(first)s::date, %(newest)s::date, interval '1 day')::date AS day
),
dead AS (  -- dead-lettered episodes, unless the same episode was accepted since
    SELECT e.ma_cskcb, e.episode_day AS day, count(DISTINCT e.ma_lk) AS n
      FROM dead_letter_episodes e
     WHERE e.episode_day BETWEEN %(first)s AND %(newest)s
       AND e.ma_cskcb IS NOT NULL AND e.ma_lk IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM health_book_entries h
                        WHERE h.ma_cskcb = e.ma_cskcb AND h.ma_lk = e.ma_lk)
     GROUP BY 1, 2
),
received AS (
    SELECT ma_cskcb, day, sum(n)::integer AS n FROM (
        SELECT ma_cskcb, episode_day AS day, accepted AS n FROM facility_day_counts
         WHERE episode_day BETWEEN %(first)s AND %(newest)s
        UNION ALL
        SELECT ma_cskcb, day, n FROM dead
    ) both_kinds GROUP BY 1, 2
),
keys AS (
    SELECT ma_cskcb, report_day AS day FROM facility_reports
     WHERE report_day BETWEEN %(first)s AND %(newest)s
    UNION
    SELECT f.code, d.day FROM facilities f CROSS JOIN days d
     WHERE f.active AND d.day <= %(passed)s
)
INSERT INTO facility_reports AS fr (ma_cskcb, report_day, received, status, reconciled_at)
SELECT k.ma_cskcb, k.day, coalesce(r.n, 0),
       CASE WHEN k.day > %(passed)s THEN 'pending' ELSE 'silent' END, clock_timestamp()
  FROM keys k LEFT JOIN received r ON r.ma_cskcb = k.ma_cskcb AND r.day = k.day
 ORDER BY k.ma_cskcb, k.day
ON CONFLICT (ma_cskcb, report_day) DO UPDATE SET
    received = EXCLUDED.received,
    status = {_STATUS.format(row="fr")},
    reconciled_at = EXCLUDED.reconciled_at
WHERE fr.received <> EXCLUDED.received OR fr.status <> {_STATUS.format(row="fr")}
"""


def last_passed_day(now: datetime, grace: timedelta) -> date:
    """The newest day (Vietnam time) whose end plus ``grace`` lies before ``now``."""
    return (now.astimezone(VN_TZ) - grace).date() - timedelta(days=1)


def episode_of_dead_letter(
    codec: AvroCodec, original: bytes
) -> tuple[str | None, str | None, date | None]:
    """(MA_CSKCB, MA_LK, day of NGAY_RA) of the examination event a dead letter carries."""
    try:
        event = codec.decode(original, (SUBJECTS.EXAMINATION_EVENT,)).record
    except DecodeError:
        return None, None, None
    facility = event.get("ma_cskcb")
    ma_lk = event.get("ma_lk")
    try:
        day = parse_datetime(event.get("ngay_ra") or "").date()
    except (ValueError, TypeError):
        day = None
    return facility, ma_lk, day


@dataclass(frozen=True)
class ReconcileResult:
    skipped: bool = False
    dead_letters_decoded: int = 0
    days: tuple[date, ...] = ()
    rows: int = 0


class Reconciler:
    def __init__(
        self,
        codec: AvroCodec,
        *,
        grace: timedelta = timedelta(hours=12),
        window_days: int = 400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.codec = codec
        self.grace = grace
        self.window = timedelta(days=window_days)
        self.clock = clock

    def run(self, conn: psycopg2.extensions.connection) -> ReconcileResult:
        """One reconciliation, in one transaction; skipped while another sink runs one."""
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_xact_lock(%s)", (_LOCK_ID,))
                locked = cur.fetchone()
                assert locked is not None  # a SELECT without FROM returns one row
                if not locked[0]:
                    conn.rollback()
                    return ReconcileResult(skipped=True)
                cur.execute(SQL_FOLD_DELTAS)
                decoded = self._decode_dead_letters(cur)
                passed = last_passed_day(datetime.fromtimestamp(self.clock(), VN_TZ), self.grace)
                first, newest = self._bounds(cur)
                days: tuple[date, ...] = ()
                rows = 0
                if first is not None and newest is not None and first <= newest:
                    cur.execute(SQL_RECONCILE, {"first": first, "newest": newest, "passed": passed})
                    rows = cur.rowcount
                    days = tuple(
                        first + timedelta(days=i) for i in range((newest - first).days + 1)
                    )
            conn.commit()
        except BaseException:
            with contextlib.suppress(psycopg2.Error):  # keep the original error
                conn.rollback()
            raise
        return ReconcileResult(False, decoded, days, rows)

    def _decode_dead_letters(self, cur: psycopg2.extensions.cursor) -> int:
        total = 0
        while True:
            cur.execute(SQL_NEW_DEAD_LETTERS, (_DECODE_CHUNK,))
            rows = cur.fetchall()
            if not rows:
                return total
            episodes = []
            for dead_letter_id, facility, original in rows:
                event_facility, ma_lk, day = episode_of_dead_letter(self.codec, bytes(original))
                episodes.append((dead_letter_id, event_facility or facility, ma_lk, day))
            execute_values(
                cur,
                "INSERT INTO dead_letter_episodes (dead_letter_id, ma_cskcb, "
                "ma_lk, episode_day) VALUES %s ON CONFLICT DO NOTHING",
                episodes,
            )
            total += len(rows)
            if len(rows) < _DECODE_CHUNK:
                return total

    def _bounds(self, cur: psycopg2.extensions.cursor) -> tuple[date | None, date | None]:
        """First and newest day to reconcile: from the first report received (the obligation
        to report is met from then on) to the newest day any report or episode names, at most
        ``window_days`` back."""
        cur.execute(SQL_BOUNDS)
        bounds = cur.fetchone()
        assert bounds is not None  # a SELECT without FROM returns one row
        first, newest = bounds
        if first is None or newest is None:
            return None, None
        return max(first, newest - self.window), newest


class ReconcileLoop:
    """Runs the reconciler every ``interval`` seconds, and soon after ``poke()`` (new reports,
    or episodes the sink just committed), but never busier than one run per ``MIN_GAP_S`` nor
    more than ``MAX_DUTY`` of the time: a year of data takes a few hundred milliseconds."""

    MIN_GAP_S = 1.0
    MAX_DUTY = 0.1

    def __init__(
        self,
        reconciler: Reconciler,
        connect: Callable[[], psycopg2.extensions.connection],
        interval: float,
    ) -> None:
        self.reconciler = reconciler
        self._connect = connect
        self.interval = interval
        self._poked = threading.Event()
        self._conn: psycopg2.extensions.connection | None = None
        self.runs = 0
        self.last_duration = 0.0

    def poke(self) -> None:
        self._poked.set()

    def once(self) -> ReconcileResult | None:
        started = time.monotonic()
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            result = self.reconciler.run(self._conn)
        except psycopg2.Error as exc:  # PostgreSQL away: try again next round
            log.warning(
                "facility report reconciliation failed: %s",
                str(exc).strip().splitlines()[0] if str(exc).strip() else exc,
            )
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            return None
        finally:
            self.last_duration = time.monotonic() - started
        self.runs += 1
        if result.days:
            log.debug(
                "reconciled %d days (%d rows, %d dead letters decoded) in %.3fs",
                len(result.days),
                result.rows,
                result.dead_letters_decoded,
                self.last_duration,
            )
        return result

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.once()
                finished = time.monotonic()
                gap = min(self.interval, max(self.MIN_GAP_S, self.last_duration / self.MAX_DUTY))
                deadline = finished + self.interval
                while not stop.is_set() and time.monotonic() < deadline:
                    if self._poked.is_set() and time.monotonic() >= finished + gap:
                        break
                    stop.wait(0.1)
                self._poked.clear()
        finally:
            if self._conn is not None:
                self._conn.close()


SQL_GAUGES = """
WITH latest AS (SELECT max(report_day) AS day FROM facility_reports WHERE status <> 'pending')
SELECT (SELECT day FROM latest),
       count(*) FILTER (WHERE report_day = (SELECT day FROM latest) AND reported IS NOT NULL),
       count(*) FILTER (WHERE report_day = (SELECT day FROM latest) AND status = 'silent'),
       count(*) FILTER (WHERE report_day = (SELECT day FROM latest) AND status = 'mismatch'),
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'ok'),
       count(*) FILTER (WHERE status = 'mismatch'),
       count(*) FILTER (WHERE status = 'silent')
  FROM facility_reports
"""


class FacilityReportCollector(Collector):
    """Gauges of the reconciliation, read from ``facility_reports`` at scrape time (cached for
    ``ttl`` seconds). Facility codes stay in PostgreSQL: the labels are only statuses."""

    def __init__(
        self, connect: Callable[[], psycopg2.extensions.connection], ttl: float = 1.0
    ) -> None:
        self._query = CachedQuery(
            connect, SQL_GAUGES, lambda rows: rows[0] if rows else None, None, ttl
        )

    def read(self) -> tuple[Any, ...] | None:
        result: tuple[Any, ...] | None = self._query.read()
        return result

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        if values is None:
            return
        day, reporting, silent, mismatches, *by_status = values
        day_ts = (
            datetime(day.year, day.month, day.day, tzinfo=VN_TZ).timestamp()
            if day is not None
            else 0
        )
        yield GaugeMetricFamily(
            "ehb_facility_reports_latest_day_timestamp_seconds",
            "Start (Vietnam time) of the newest day that has passed and been reconciled; the "
            "three gauges below are for that day.",
            value=day_ts,
        )
        yield GaugeMetricFamily(
            "ehb_facilities_reporting",
            "Facilities whose daily report for the newest passed day arrived.",
            value=reporting,
        )
        yield GaugeMetricFamily(
            "ehb_facilities_silent",
            "Active facilities of the registry without a daily report for the newest passed day.",
            value=silent,
        )
        yield GaugeMetricFamily(
            "ehb_facility_report_mismatches",
            "Facilities whose daily report for the newest "
            "passed day disagrees with the episodes received.",
            value=mismatches,
        )
        family = GaugeMetricFamily(
            "ehb_facility_report_days",
            "Facility-days in facility_reports, by reconciliation status (all days).",
            labels=["status"],
        )
        for status, count in zip(STATUSES, by_status, strict=True):
            family.add_metric([status], count)
        yield family
