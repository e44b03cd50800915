"""The PostgreSQL sink: routed records -> tables, idempotently, one transaction per batch.

* Every table is upserted on its natural key, so a redelivered record leaves exactly one row.
* The campaign counters (``campaign_counters``) are incremented in the same transaction, by
  the rows that were really inserted or really changed state, so the Prometheus counters the
  sink exports always equal what the tables hold, across crashes and redeliveries.
* PostgreSQL down: the transaction is retried with backoff until it commits; the caller
  commits Kafka offsets only after :meth:`PostgresWriter.write` returns.
* A record the database refuses (a constraint, or a value that cannot become a row) is
  isolated by halving the batch under savepoints; it is written to ``dead_letters`` (reason
  ``db_rejected``) and the rest of the batch flows.
* A dead letter's row keeps at most ``original_max_bytes`` of its original (with the full
  original's length and SHA-256) and bounded texts (``schemas.dead_letters``), whatever the
  input: an over-long event id would otherwise break the primary key's index.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2.extras import execute_values

from ehb import faultpoints
from ehb.consumer import Record
from ehb.exceptions import ServiceUnavailable
from schemas import SUBJECTS
from schemas.dead_letters import DEFAULT_ORIGINAL_MAX_BYTES, bound_dead_letter
from schemas.episodes import POSITION_SLOTS, version_key, version_order
from schemas.records import IN_PROVINCE
from schemas.time import parse_datetime
from sinks import metrics

__all__ = ["PostgresWriter", "dead_letter_id"]

log = logging.getLogger(__name__)


def _ms(value: int | datetime) -> int:
    """Epoch milliseconds of a timestamp-millis value (fastavro may give a datetime)."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return value


def _ts(ms: int | datetime | None) -> datetime | None:
    if ms is None or isinstance(ms, datetime):
        return ms
    return datetime.fromtimestamp(ms / 1000, UTC)


def dead_letter_id(record: dict[str, Any]) -> str:
    """The dead letter's natural key: its event id when known, else its source position."""
    if record.get("event_id"):
        return f"event:{record['event_id']}"
    index = record.get("event_index")
    return (
        f"{record['source_topic']}:{record['source_partition']}:{record['source_offset']}"
        f":{'-' if index is None else index}"
    )


def _dedupe(
    rows: Iterable[tuple[Any, ...]], key: Callable[[tuple[Any, ...]], Any]
) -> list[tuple[Any, ...]]:
    """One row per key (the last): ON CONFLICT cannot touch a row twice in one statement."""
    return list({key(r): r for r in rows}.values())


_ENTRY_COLUMNS = (
    "ma_cskcb, ma_lk, event_id, citizen_key, so_cccd, ho_ten, ngay_sinh, gioi_tinh, "
    "ma_the_bhyt, ma_dkbd, registration_province, facility_province, scope, ma_loai_kcb, "
    "visit_type, ma_benh_chinh, ma_benh_kt, ngay_vao, ngay_ra, ket_qua_dtri, ma_loai_rv, "
    "t_tongchi_bv, t_tongchi_bh, t_bhtt, has_referral, has_appointment, published_at, "
    "processed_at, version, position, content_digest"
)
_ENTRY_UPDATE = ", ".join(
    f"{c.strip()} = EXCLUDED.{c.strip()}" for c in _ENTRY_COLUMNS.split(",")[2:]
)
# Exams, the bulk of the rows, go through COPY into a per-connection temporary table and one
# INSERT ... SELECT: psycopg2's execute_values formats every value in Python (half of the
# sink's CPU when profiled); COPY's text format costs a third of that, and PostgreSQL converts
# the standard's dates and the epoch milliseconds itself.
SQL_STAGE_ENTRIES = """
CREATE TEMP TABLE IF NOT EXISTS ehb_stage_entries (
    ma_cskcb text, ma_lk text, event_id text, citizen_key text, so_cccd text, ho_ten text,
    ngay_sinh text, gioi_tinh smallint, ma_the_bhyt text, ma_dkbd text,
    registration_province text, facility_province text, scope text, ma_loai_kcb text,
    visit_type text, ma_benh_chinh text, ma_benh_kt text, ngay_vao text, ngay_ra text,
    ket_qua_dtri smallint, ma_loai_rv smallint, t_tongchi_bv bigint, t_tongchi_bh bigint,
    t_bhtt bigint, has_referral boolean, has_appointment boolean, published_ms bigint,
    processed_ms bigint, version bigint, position bigint, content_digest text,
    version_key text, newest boolean
) ON COMMIT DELETE ROWS
"""
_VN_TIME = "to_timestamp({0} || '+07', 'YYYYMMDDHH24MITZH')"
_NEWER = (
    "(coalesce({new}.version, 0), {new}.position) > (coalesce({old}.version, 0), {old}.position)"
)
_E_KEY = "CASE WHEN e.version IS NULL THEN 'p:' || e.position ELSE 'v:' || e.version END"
_WITHDRAWN_SINCE = (
    "EXISTS (SELECT 1 FROM health_book_entry_versions w WHERE w.kind = 'withdrawal' "
    "AND w.ma_cskcb = {new}.ma_cskcb AND w.ma_lk = {new}.ma_lk AND "
    + _NEWER.format(new="w", old="{new}")
    + ")"
)
# The entry holds an episode's current version; health_book_entry_versions every other one
# (docs/corrections.md). A version with the current content changes nothing; one already
# recorded (same version key: a resend) neither.
# 1. the batch's versions that will not be current: older than the entry, or than the
#    batch's newest of the episode
SQL_VERSIONS_OLDER = (
    "INSERT INTO health_book_entry_versions (ma_cskcb, ma_lk, version_key, version, position, "
    "event_id, content_digest, record, published_at) "
    "SELECT s.ma_cskcb, s.ma_lk, s.version_key, s.version, s.position, s.event_id, "
    "s.content_digest, to_jsonb(s) - 'version_key' - 'newest', "
    "to_timestamp(s.published_ms / 1000.0) "
    "FROM ehb_stage_entries s LEFT JOIN health_book_entries e "
    "ON e.ma_cskcb = s.ma_cskcb AND e.ma_lk = s.ma_lk "
    f"WHERE s.content_digest IS DISTINCT FROM e.content_digest AND s.version_key <> "
    f"coalesce({_E_KEY}, '') AND (NOT s.newest OR (e.ma_lk IS NOT NULL AND NOT "
    + _NEWER.format(new="s", old="e")
    + ")) ON CONFLICT DO NOTHING"
)
_NEWER_DIFFERENT = "s.content_digest <> e.content_digest AND " + _NEWER.format(new="s", old="e")
# 2. the entries a newer version of the batch supersedes: their content goes to the history
SQL_VERSIONS_SUPERSEDED = (
    "INSERT INTO health_book_entry_versions (ma_cskcb, ma_lk, version_key, version, position, "
    "event_id, content_digest, record, published_at, arrived_at) "
    f"SELECT e.ma_cskcb, e.ma_lk, {_E_KEY}, e.version, e.position, e.event_id, "
    "e.content_digest, to_jsonb(e) - 'persisted_at' - 'counted_scope', e.published_at, "
    "coalesce(e.corrected_at, e.persisted_at) "
    "FROM health_book_entries e JOIN ehb_stage_entries s "
    "ON e.ma_cskcb = s.ma_cskcb AND e.ma_lk = s.ma_lk AND s.newest "
    f"WHERE {_NEWER_DIFFERENT} ON CONFLICT DO NOTHING"
)
# 3. the entry takes the batch's newest version if it is newer and differs; a version newer
#    than the episode's newest withdrawal restores a withdrawn episode
SQL_ENTRIES = (
    f"INSERT INTO health_book_entries ({_ENTRY_COLUMNS}, counted_scope) "
    "SELECT ma_cskcb, ma_lk, event_id, citizen_key, so_cccd, "
    "ho_ten, ngay_sinh, gioi_tinh, "
    "ma_the_bhyt, ma_dkbd, registration_province, facility_province, scope, ma_loai_kcb, "
    f"visit_type, ma_benh_chinh, ma_benh_kt, {_VN_TIME.format('ngay_vao')}, "
    f"{_VN_TIME.format('ngay_ra')}, ket_qua_dtri, ma_loai_rv, t_tongchi_bv, t_tongchi_bh, "
    "t_bhtt, has_referral, has_appointment, to_timestamp(published_ms / 1000.0), "
    "to_timestamp(processed_ms / 1000.0), version, position, content_digest, scope "
    "FROM ehb_stage_entries WHERE newest "
    f"ON CONFLICT (ma_cskcb, ma_lk) DO UPDATE SET {_ENTRY_UPDATE}, "
    "corrected_at = clock_timestamp(), withdrawn_at = CASE WHEN "
    + _WITHDRAWN_SINCE.format(new="EXCLUDED")
    + " THEN health_book_entries.withdrawn_at END "
    "WHERE EXCLUDED.content_digest <> health_book_entries.content_digest AND "
    + _NEWER.format(new="EXCLUDED", old="health_book_entries")
    + " RETURNING (xmax = 0) AS inserted, counted_scope, published_at"
)
# the same content again, newer than a withdrawal: restores the episode
SQL_RESTORE = (
    "UPDATE health_book_entries e SET withdrawn_at = NULL "
    "FROM ehb_stage_entries s WHERE s.newest AND e.ma_cskcb = s.ma_cskcb "
    "AND e.ma_lk = s.ma_lk AND e.withdrawn_at IS NOT NULL "
    "AND s.content_digest = e.content_digest AND NOT " + _WITHDRAWN_SINCE.format(new="s")
)
SQL_WITHDRAWALS = (
    "INSERT INTO health_book_entry_versions (ma_cskcb, ma_lk, version_key, version, position, "
    "event_id, kind, content_digest, record, published_at) "
    "SELECT v.ma_cskcb, v.ma_lk, v.version_key, v.version::bigint, v.position::bigint, "
    "v.event_id, 'withdrawal', '', v.record::jsonb, v.published_at::timestamptz "
    "FROM (VALUES %s) AS v (ma_cskcb, ma_lk, version_key, version, position, event_id, record, "
    "published_at) ON CONFLICT DO NOTHING RETURNING 1"
)
# An entry older than a withdrawal of its episode is withdrawn (whichever came first)
SQL_WITHDRAW_ENTRIES = (
    "UPDATE health_book_entries e SET withdrawn_at = clock_timestamp() "
    "FROM (VALUES %s) AS k (ma_cskcb, ma_lk) "
    "WHERE e.ma_cskcb = k.ma_cskcb AND e.ma_lk = k.ma_lk AND e.withdrawn_at IS NULL AND "
    + _WITHDRAWN_SINCE.format(new="e")
    + " RETURNING 1"
)
# Dead letters of an episode a version accepted after them (on the same input partition)
_AFTER_DEAD_LETTER = f"> d.source_offset * {POSITION_SLOTS} + coalesce(d.event_index, 0)"
SQL_SUPERSEDE = (
    "UPDATE dead_letters d SET superseded_at = clock_timestamp() "
    "FROM (VALUES %s) AS k (ma_cskcb, ma_lk) "
    "WHERE d.ma_cskcb = k.ma_cskcb AND d.ma_lk = k.ma_lk AND d.superseded_at IS NULL "
    "AND (EXISTS (SELECT 1 FROM health_book_entries e "
    f"WHERE e.ma_cskcb = d.ma_cskcb AND e.ma_lk = d.ma_lk AND e.position {_AFTER_DEAD_LETTER}) "
    "OR EXISTS (SELECT 1 FROM health_book_entry_versions v "
    "WHERE v.ma_cskcb = d.ma_cskcb AND v.ma_lk = d.ma_lk AND v.kind = 'examination' "
    f"AND v.position {_AFTER_DEAD_LETTER})) "
    "RETURNING 1"
)
# where the version columns are in an entry's row (the staging table's order)
_VERSION, _POSITION, _DIGEST, _KEY = 28, 29, 30, 31
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _versions(entries: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The batch's versions of each episode, oldest first, without a version whose content is
    the one before it in the batch (an identical re-send) or whose version key came already;
    each row ends with whether it is the newest of its episode in the batch."""
    by_episode: dict[tuple[Any, Any], list[tuple[Any, ...]]] = defaultdict(list)
    for row in entries:
        by_episode[row[0], row[1]].append(row)
    kept: list[tuple[Any, ...]] = []
    for rows in by_episode.values():
        rows.sort(key=lambda r: version_order(r[_VERSION], r[_POSITION]))
        seen: set[str] = set()
        digest = None
        episode: list[tuple[Any, ...]] = []
        for row in rows:
            if row[_DIGEST] != digest and row[_KEY] not in seen:
                episode.append(row)
            seen.add(row[_KEY])
            digest = row[_DIGEST]
        kept += [(*row, False) for row in episode[:-1]]
        kept.append((*episode[-1], True))
    return kept


def _copy_text(rows: Iterable[tuple[Any, ...]]) -> io.StringIO:
    """Rows in COPY's text format: tabs, newlines and backslashes escaped, None as \\N.

    One comprehension, and ``translate`` only for a string that needs it (a printable one
    without a backslash does not): 4.6 instead of 13 µs a row, where this was a fifth of the
    sink's CPU (benchmarks/README.md).
    """
    escapes = _COPY_ESCAPES
    lines = [
        "\t".join(
            [
                "\\N"
                if value is None
                else value
                if value.__class__ is str and value.isprintable() and "\\" not in value
                else value.translate(escapes)
                if isinstance(value, str)
                else ("t" if value else "f")
                if value is True or value is False
                else str(value)
                for value in row
            ]
        )
        for row in rows
    ]
    lines.append("")
    return io.StringIO("\n".join(lines))


SQL_BOOKS = (
    "INSERT INTO health_books (citizen_key, so_cccd, ho_ten, first_event_id, first_ma_cskcb, "
    "integrated_at) VALUES %s ON CONFLICT (citizen_key) DO NOTHING RETURNING 1"
)
SQL_REFERRALS_ISSUED = (
    "INSERT INTO referrals (referral_id, event_id, citizen_key, origin, destination, "
    "ma_lydo_ct, ma_benh_chinh, issued_at, deadline, status) VALUES %s "
    "ON CONFLICT (referral_id) DO NOTHING RETURNING 1"
)
SQL_REFERRALS_CLOSED = (
    "UPDATE referrals r SET status = v.status, arrival_event_id = v.arrival_event_id, "
    "arrived_at = v.arrived_at::timestamptz, days_to_arrival = v.days::double precision, "
    "updated_at = clock_timestamp() "
    "FROM (VALUES %s) AS v (referral_id, status, arrival_event_id, arrived_at, days) "
    "WHERE r.referral_id = v.referral_id AND r.status = 'issued' "
    "RETURNING r.status, r.days_to_arrival"
)
SQL_APPOINTMENTS_SCHEDULED = (
    "INSERT INTO appointments (appointment_id, event_id, citizen_key, ma_cskcb, ma_benh_chinh, "
    "appointment_at, status) VALUES %s ON CONFLICT (appointment_id) DO NOTHING RETURNING 1"
)
SQL_APPOINTMENTS_REMINDED = (
    "UPDATE appointments a SET reminded_at = v.at::timestamptz, updated_at = clock_timestamp() "
    "FROM (VALUES %s) AS v (appointment_id, at) "
    "WHERE a.appointment_id = v.appointment_id AND a.reminded_at IS NULL RETURNING 1"
)
SQL_APPOINTMENTS_CLOSED = (
    "UPDATE appointments a SET status = v.status, visit_event_id = v.visit_event_id, "
    "updated_at = clock_timestamp() "
    "FROM (VALUES %s) AS v (appointment_id, status, visit_event_id) "
    "WHERE a.appointment_id = v.appointment_id AND a.status = 'scheduled' RETURNING a.status"
)
# AMENDED and CANCELLED carry the whole letter and the status after them; RETURNING the
# record type and whether the status changed, for the counters
SQL_REFERRALS_CHANGED = (
    "WITH v (referral_id, kind, event_id, origin, destination, ma_lydo_ct, ma_benh_chinh, "
    "issued_at, deadline, status) AS (VALUES %s), "
    "old AS (SELECT r.referral_id, r.status FROM referrals r JOIN v USING (referral_id)) "
    "UPDATE referrals r SET event_id = v.event_id, origin = v.origin, "
    "destination = v.destination, ma_lydo_ct = v.ma_lydo_ct::smallint, "
    "ma_benh_chinh = v.ma_benh_chinh, issued_at = v.issued_at::timestamptz, "
    "deadline = v.deadline::timestamptz, status = v.status, "
    "arrival_event_id = CASE WHEN v.status = 'issued' THEN NULL ELSE r.arrival_event_id END, "
    "arrived_at = CASE WHEN v.status = 'issued' THEN NULL ELSE r.arrived_at END, "
    "days_to_arrival = CASE WHEN v.status = 'issued' THEN NULL ELSE r.days_to_arrival END, "
    "updated_at = clock_timestamp() FROM v, old "
    "WHERE r.referral_id = v.referral_id AND old.referral_id = v.referral_id "
    "RETURNING v.kind, old.status <> v.status"
)
SQL_APPOINTMENTS_CHANGED = (
    "WITH v (appointment_id, kind, event_id, ma_benh_chinh, appointment_at, status) "
    "AS (VALUES %s), "
    "old AS (SELECT a.appointment_id, a.status FROM appointments a JOIN v USING (appointment_id)) "
    "UPDATE appointments a SET event_id = v.event_id, ma_benh_chinh = v.ma_benh_chinh, "
    "appointment_at = v.appointment_at::timestamptz, status = v.status, "
    "reminded_at = CASE WHEN v.kind = 'RESCHEDULED' AND v.status = 'scheduled' "
    "THEN NULL ELSE a.reminded_at END, "
    "visit_event_id = CASE WHEN v.status = 'scheduled' THEN NULL ELSE a.visit_event_id END, "
    "updated_at = clock_timestamp() FROM v, old "
    "WHERE a.appointment_id = v.appointment_id AND old.appointment_id = v.appointment_id "
    "RETURNING v.kind, old.status <> v.status"
)
SQL_DEAD_LETTERS = (
    "INSERT INTO dead_letters (dead_letter_id, reason, message, stage, source_topic, "
    "source_partition, source_offset, event_index, event_id, ma_cskcb, schema_id, original, "
    "published_at, failed_at, original_length, original_sha256, original_truncated, ma_lk) "
    "VALUES %s ON CONFLICT (dead_letter_id) DO NOTHING RETURNING reason"
)
SQL_COUNTERS = (
    "INSERT INTO campaign_counters (metric, label, value) VALUES %s "
    "ON CONFLICT (metric, label) DO UPDATE SET value = campaign_counters.value + EXCLUDED.value"
)


Rows = list[tuple[Any, ...]]


def _count_rows(key: str) -> Callable[[Rows, Counter[str]], None]:
    """Counter rule: ``key`` ("metric|label") counts every row returned."""

    def count(rows: Rows, deltas: Counter[str]) -> None:
        deltas[key] += len(rows)

    return count


def _count_by_first_column(key: str) -> Callable[[Rows, Counter[str]], None]:
    """Counter rule: each row returned counts for ``key`` formatted with its first column."""

    def count(rows: Rows, deltas: Counter[str]) -> None:
        for row in rows:
            deltas[key.format(row[0])] += 1

    return count


def _count_changes(kinds: dict[str, str]) -> Callable[[Rows, Counter[str]], None]:
    """Counter rule of amended/cancelled letters: ``kinds`` maps a record type to its counter;
    a cancellation counts when it changed the status (not when it is applied again)."""

    def count(rows: Rows, deltas: Counter[str]) -> None:
        for kind, changed in rows:
            if kind != "CANCELLED" or changed:
                deltas[kinds[kind]] += 1

    return count


def _count_referrals_closed(rows: Rows, deltas: Counter[str]) -> None:
    """Counter rule of closed referrals: by status, with the days to arrival of completed
    ones observed."""
    for status, days in rows:
        deltas[f"referrals_{status}|"] += 1
        if status == "completed" and days is not None:
            metrics.REFERRAL_DAYS.observe(days)


#: (rows of a _Batch, statement, counter rule), applied in this order after the health-book
#: entries: rows are deduplicated on their first column (the natural key) and a statement
#: returns only the rows it really inserted or changed, which is what the counters count
_STATEMENTS: tuple[tuple[str, str, Callable[[Rows, Counter[str]], None]], ...] = (
    ("books", SQL_BOOKS, _count_rows("health_books_integrated|")),
    ("referrals_issued", SQL_REFERRALS_ISSUED, _count_rows("referrals|")),
    ("referrals_closed", SQL_REFERRALS_CLOSED, _count_referrals_closed),
    ("appointments_scheduled", SQL_APPOINTMENTS_SCHEDULED, _count_rows("appointments|")),
    ("appointments_reminded", SQL_APPOINTMENTS_REMINDED, _count_rows("appointment_reminders|")),
    ("appointments_closed", SQL_APPOINTMENTS_CLOSED, _count_by_first_column("appointments_{}|")),
    (
        "referrals_changed",
        SQL_REFERRALS_CHANGED,
        _count_changes({"AMENDED": "referrals_amended|", "CANCELLED": "referrals_cancelled|"}),
    ),
    (
        "appointments_changed",
        SQL_APPOINTMENTS_CHANGED,
        _count_changes(
            {"RESCHEDULED": "appointments_rescheduled|", "CANCELLED": "appointments_cancelled|"}
        ),
    ),
    ("dead_letters", SQL_DEAD_LETTERS, _count_by_first_column("dead_letters|{}")),
)


#: errors that mean "this data is refused", not "the database is unavailable" (ValueError and
#: OverflowError: a record the sink cannot even turn into a row, e.g. an impossible date, or
#: text with NUL, which psycopg2 refuses before PostgreSQL sees it)
_REFUSED = (psycopg2.IntegrityError, psycopg2.DataError, ValueError, OverflowError)
#: errors that mean "PostgreSQL is unavailable": retried with backoff, never acknowledged
_UNAVAILABLE = (psycopg2.OperationalError, psycopg2.InterfaceError, ServiceUnavailable)


def _text(value: Any) -> str | None:
    """A text column's value PostgreSQL accepts (NUL replaced by U+FFFD)."""
    return None if value is None else str(value).replace("\x00", "\ufffd")


class _Batch:
    """Rows of one batch, split by statement."""

    def __init__(self, original_max_bytes: int = DEFAULT_ORIGINAL_MAX_BYTES) -> None:
        self.original_max_bytes = original_max_bytes
        self.entries: list[tuple[Any, ...]] = []
        self.books: list[tuple[Any, ...]] = []
        self.referrals_issued: list[tuple[Any, ...]] = []
        self.referrals_closed: list[tuple[Any, ...]] = []
        self.appointments_scheduled: list[tuple[Any, ...]] = []
        self.appointments_reminded: list[tuple[Any, ...]] = []
        self.appointments_closed: list[tuple[Any, ...]] = []
        self.withdrawals: list[tuple[Any, ...]] = []
        self.referrals_changed: list[tuple[Any, ...]] = []
        self.appointments_changed: list[tuple[Any, ...]] = []
        self.dead_letters: list[tuple[Any, ...]] = []

    def add(self, record: Record) -> None:
        v = record.value
        subject = record.subject
        if subject == SUBJECTS.HEALTH_BOOK_RECORD:
            self._add_health_book(v)
        elif subject == SUBJECTS.REFERRAL_RECORD:
            self._add_referral(v)
        elif subject == SUBJECTS.APPOINTMENT_RECORD:
            self._add_appointment(v)
        elif subject == SUBJECTS.DEAD_LETTER:
            self.add_dead_letter(v)
        elif subject == SUBJECTS.EPISODE_WITHDRAWN:
            self._add_withdrawal(v)
        else:  # pragma: no cover - the consumer filters subjects
            raise ValueError(f"unexpected subject {subject}")

    def _add_health_book(self, v: dict[str, Any]) -> None:
        if v["record_type"] == "BOOK_INTEGRATED":
            self.books.append(
                (
                    v["citizen_key"],
                    v["so_cccd"],
                    v["ho_ten"],
                    v["event_id"],
                    v["ma_cskcb"],
                    parse_datetime(v["ngay_vao"]),
                )
            )
            return
        self.entries.append(
            (
                v["ma_cskcb"],
                v["ma_lk"],
                v["event_id"],
                v["citizen_key"],
                v["so_cccd"],
                v["ho_ten"],
                v["ngay_sinh"],
                v["gioi_tinh"],
                v["ma_the_bhyt"],
                v["ma_dkbd"],
                v["registration_province"],
                v["facility_province"],
                "in_province" if v["scope"] == IN_PROVINCE else "out_of_province",
                v["ma_loai_kcb"],
                v["visit_type"],
                v["ma_benh_chinh"],
                v["ma_benh_kt"],
                v["ngay_vao"],
                v["ngay_ra"],
                v["ket_qua_dtri"],
                v["ma_loai_rv"],
                v["t_tongchi_bv"],
                v["t_tongchi_bh"],
                v["t_bhtt"],
                v["has_referral"],
                v["has_appointment"],
                _ms(v["published_at"]),
                _ms(v["processed_at"]),
                # a record written before HealthBookRecord v2 (not through the codec) has none
                v.get("version"),
                v.get("position", 0),
                v.get("content_digest", ""),
                version_key(v.get("version"), v.get("position", 0)),
            )
        )

    def _add_withdrawal(self, v: dict[str, Any]) -> None:
        record = {k: v[k] for k in ("event_id", "citizen_key", "ly_do", "version", "position")}
        self.withdrawals.append(
            (
                v["ma_cskcb"],
                v["ma_lk"],
                "w:" + version_key(v["version"], v["position"]),
                v["version"],
                v["position"],
                v["event_id"],
                json.dumps(record, ensure_ascii=False),
                _ts(v["published_at"]),
            )
        )

    def _add_referral(self, v: dict[str, Any]) -> None:
        kind = v["record_type"]
        if kind in ("AMENDED", "CANCELLED"):
            self.referrals_changed.append(
                (
                    v["referral_id"],
                    kind,
                    v["event_id"],
                    v["origin"],
                    v["destination"],
                    v["ma_lydo_ct"],
                    v["ma_benh_chinh"],
                    _ts(v["issued_at"]),
                    _ts(v["deadline"]),
                    v["status"],
                )
            )
        elif kind == "ISSUED":
            self.referrals_issued.append(
                (
                    v["referral_id"],
                    v["event_id"],
                    v["citizen_key"],
                    v["origin"],
                    v["destination"],
                    v["ma_lydo_ct"],
                    v["ma_benh_chinh"],
                    _ts(v["issued_at"]),
                    _ts(v["deadline"]),
                    "issued",
                )
            )
        else:
            self.referrals_closed.append(
                (
                    v["referral_id"],
                    "completed" if kind == "COMPLETED" else "expired",
                    v["arrival_event_id"],
                    _ts(v["arrived_at"]),
                    v["days_to_arrival"],
                )
            )

    def _add_appointment(self, v: dict[str, Any]) -> None:
        kind = v["record_type"]
        if kind in ("RESCHEDULED", "CANCELLED"):
            self.appointments_changed.append(
                (
                    v["appointment_id"],
                    kind,
                    v["event_id"],
                    v["ma_benh_chinh"],
                    _ts(v["appointment_at"]),
                    v["status"],
                )
            )
        elif kind == "SCHEDULED":
            self.appointments_scheduled.append(
                (
                    v["appointment_id"],
                    v["event_id"],
                    v["citizen_key"],
                    v["ma_cskcb"],
                    v["ma_benh_chinh"],
                    _ts(v["appointment_at"]),
                    "scheduled",
                )
            )
        elif kind == "REMINDER":
            self.appointments_reminded.append((v["appointment_id"], _ts(v["event_time"])))
        else:
            self.appointments_closed.append(
                (
                    v["appointment_id"],
                    "kept" if kind == "KEPT" else "missed",
                    v["visit_event_id"],
                )
            )

    def add_dead_letter(self, v: dict[str, Any]) -> None:
        v = bound_dead_letter(v, self.original_max_bytes)
        self.dead_letters.append(
            (
                dead_letter_id(v),
                v["reason"],
                v["message"],
                v["stage"],
                v["source_topic"],
                v["source_partition"],
                v["source_offset"],
                v["event_index"],
                v["event_id"],
                v["ma_cskcb"],
                v["schema_id"],
                psycopg2.Binary(v["original"]),
                _ts(v["published_at"]),
                _ts(v["failed_at"]),
                v["original_length"],
                v["original_sha256"],
                v["original_truncated"],
                _text(v.get("ma_lk")),
            )
        )


#: record types that change a referral or appointment in a way later records may depend on
_CHANGES = frozenset({"AMENDED", "CANCELLED", "RESCHEDULED"})


def _batches(records: Iterable[Record], original_max_bytes: int) -> list[_Batch]:
    """``records`` as batches applied one after the other. A batch applies its statements in a
    fixed order (issued before completed ...), which is the records' order as long as a
    letter's status only moves forward; an amendment or a cancellation may move it back, so
    a record of a letter that one of those touched, or one of those for a letter already in
    the batch, starts a new batch."""
    batches = [_Batch(original_max_bytes)]
    seen: set[str] = set()
    changed: set[str] = set()
    for record in records:
        letter = _letter(record)
        if letter is not None:
            change = record.value["record_type"] in _CHANGES
            if letter in changed or (change and letter in seen):
                batches.append(_Batch(original_max_bytes))
                seen, changed = set(), set()
            seen.add(letter)
            if change:
                changed.add(letter)
        batches[-1].add(record)
    return batches


def _letter(record: Record) -> str | None:
    if record.subject == SUBJECTS.REFERRAL_RECORD:
        return f"r:{record.value['referral_id']}"
    if record.subject == SUBJECTS.APPOINTMENT_RECORD:
        return f"a:{record.value['appointment_id']}"
    return None


class PostgresWriter:
    """Writes batches of records; ``write`` returns only once they are committed."""

    def __init__(
        self,
        connect: Callable[[], psycopg2.extensions.connection],
        *,
        max_backoff: float = 5.0,
        clock: Callable[[], float] = time.time,
        original_max_bytes: int = DEFAULT_ORIGINAL_MAX_BYTES,
    ) -> None:
        self._connect = connect
        self.original_max_bytes = original_max_bytes
        self._conn: psycopg2.extensions.connection | None = None
        self.max_backoff = max_backoff
        self.clock = clock

    @property
    def conn(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            conn = self._connect()
            with conn.cursor() as cur:  # the COPY staging table, once per connection
                cur.execute(SQL_STAGE_ENTRIES)
            conn.commit()
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()

    # -- public ---------------------------------------------------------------------------
    def write(self, records: Sequence[Record]) -> Counter[str]:
        """Persist ``records``; retry while PostgreSQL is unavailable. Returns counter deltas."""
        delay = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._write_once(records)
            except _UNAVAILABLE as exc:  # the connection cannot be had: a 2 s timeout
                metrics.SINK_RETRIES.inc()
                self._discard_connection()
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "PostgreSQL unavailable (attempt %d), retrying in %.1fs: %s",
                        attempt,
                        delay,
                        str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__,
                    )
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    # -- internals ----------------------------------------------------------------------
    def _discard_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None

    def _write_once(self, records: Sequence[Record]) -> Counter[str]:
        conn = self.conn
        try:
            # a record that cannot become a row is refused too
            batches = _batches(records, self.original_max_bytes)
            with conn.cursor() as cur:
                deltas, latencies = self._apply_all(cur, batches)
                self._bump_counters(cur, deltas)
            faultpoints.reach("sink.copy_done")
            conn.commit()
            faultpoints.reach("sink.db_committed")
        except _REFUSED as exc:
            conn.rollback()
            log.warning(
                "batch refused by PostgreSQL (%s); isolating the bad records", type(exc).__name__
            )
            deltas, latencies = self._write_isolating(records)
        self._observe(deltas, latencies)
        return deltas

    def _write_isolating(self, records: Sequence[Record]) -> tuple[Counter[str], list[float]]:
        """Refused records become dead letters (db_rejected); the rest is written, in order."""
        conn = self.conn
        deltas: Counter[str] = Counter()
        latencies: list[float] = []
        with conn.cursor() as cur:
            self._isolate(cur, list(records), deltas, latencies)
            self._bump_counters(cur, deltas)
        faultpoints.reach("sink.copy_done")
        conn.commit()
        faultpoints.reach("sink.db_committed")
        return deltas, latencies

    def _isolate(
        self,
        cur: psycopg2.extensions.cursor,
        records: list[Record],
        deltas: Counter[str],
        latencies: list[float],
    ) -> None:
        """Write ``records`` under a savepoint; refused, halve them (left half first, so every
        record still follows the ones before it) until each refused record is alone. A poison
        record in a batch of 5,000 costs ~25 statements, not 5,000: the partition does not
        stall behind it."""
        cur.execute("SAVEPOINT isolate")
        try:
            d, lat = self._apply_all(cur, _batches(records, self.original_max_bytes))
        except _REFUSED as exc:
            cur.execute("ROLLBACK TO SAVEPOINT isolate")
            cur.execute("RELEASE SAVEPOINT isolate")
            if len(records) > 1:
                middle = len(records) // 2
                self._isolate(cur, records[:middle], deltas, latencies)
                self._isolate(cur, records[middle:], deltas, latencies)
                return
            poison = _Batch(self.original_max_bytes)
            poison.add_dead_letter(self._poison(records[0], exc))
            d, lat = self._apply(cur, poison)
            metrics.SINK_FAILURES.labels("db_rejected").inc()
        else:
            cur.execute("RELEASE SAVEPOINT isolate")
        deltas.update(d)
        latencies.extend(lat)

    def _poison(self, record: Record, exc: Exception) -> dict[str, Any]:
        from schemas import AvroCodec

        pgcode = getattr(exc, "pgcode", None) or type(exc).__name__
        value = record.value
        return {
            "reason": "db_rejected",
            "message": f"PostgreSQL refused a {record.subject} record (SQLSTATE {pgcode})",
            "stage": "sink",
            "source_topic": record.topic,
            "source_partition": record.partition,
            "source_offset": record.offset,
            "event_index": None,
            # the refused record's own text may be what PostgreSQL refused (NUL)
            "event_id": _text(value.get("event_id")),
            "ma_cskcb": _text(value.get("ma_cskcb") or value.get("origin")),
            "schema_id": None,
            "original": AvroCodec().encode(record.subject, value),
            "published_at": record.timestamp_ms,
            "failed_at": int(self.clock() * 1000),
        }

    def _apply_all(
        self, cur: psycopg2.extensions.cursor, batches: list[_Batch]
    ) -> tuple[Counter[str], list[float]]:
        deltas: Counter[str] = Counter()
        latencies: list[float] = []
        for batch in batches:
            d, lat = self._apply(cur, batch)
            deltas.update(d)
            latencies.extend(lat)
        return deltas, latencies

    def _apply(
        self, cur: psycopg2.extensions.cursor, batch: _Batch
    ) -> tuple[Counter[str], list[float]]:
        deltas: Counter[str] = Counter()
        latencies: list[float] = []
        if batch.entries:
            self._apply_entries(cur, batch.entries, deltas, latencies)
        for attribute, statement, count in _STATEMENTS:
            rows = getattr(batch, attribute)
            if rows:
                count(
                    execute_values(
                        cur, statement, _dedupe(rows, lambda r: r[0]), page_size=1000, fetch=True
                    ),
                    deltas,
                )
        self._withdraw(cur, batch, deltas)
        self._supersede(cur, batch, deltas)
        return deltas, latencies

    def _apply_entries(
        self,
        cur: psycopg2.extensions.cursor,
        entries: list[tuple[Any, ...]],
        deltas: Counter[str],
        latencies: list[float],
    ) -> None:
        """Health-book entries: COPY every version to the staging table, record the ones that
        will not be current and the entries superseded, then one upsert of each episode's
        newest (``schemas.episodes``)."""
        now = self.clock()
        cur.copy_expert("COPY ehb_stage_entries FROM STDIN", _copy_text(_versions(entries)))
        cur.execute(SQL_VERSIONS_OLDER)
        recorded = cur.rowcount
        cur.execute(SQL_VERSIONS_SUPERSEDED)
        recorded += cur.rowcount
        cur.execute(SQL_ENTRIES)
        rows = cur.fetchall()
        cur.execute(SQL_RESTORE)
        cur.execute("TRUNCATE ehb_stage_entries")
        for new, scope, published_at in rows:
            if new:
                deltas[f"examinations|{scope}"] += 1
                latencies.append(now - published_at.timestamp())
        # each version recorded in the history is a correction (or an older one, late)
        deltas["corrections|"] += recorded

    @staticmethod
    def _withdraw(cur: psycopg2.extensions.cursor, batch: _Batch, deltas: Counter[str]) -> None:
        """Record the batch's withdrawals; withdraw the entries they are newer than (also an
        entry of this batch older than a withdrawal that came before it)."""
        if batch.withdrawals:
            rows = execute_values(cur, SQL_WITHDRAWALS, batch.withdrawals, fetch=True)
            deltas["withdrawals|"] += len(rows)
        episodes = {(r[0], r[1]) for r in batch.withdrawals}
        episodes |= {(r[0], r[1]) for r in batch.entries}  # an entry a withdrawal preceded
        if episodes:
            execute_values(cur, SQL_WITHDRAW_ENTRIES, sorted(episodes))

    @staticmethod
    def _supersede(cur: psycopg2.extensions.cursor, batch: _Batch, deltas: Counter[str]) -> None:
        """Mark the dead letters of episodes this batch accepted a later version of."""
        episodes = {(r[0], r[1]) for r in batch.entries}
        episodes.update((r[9], r[-1]) for r in batch.dead_letters if r[9] and r[-1])
        if episodes:
            rows = execute_values(cur, SQL_SUPERSEDE, sorted(episodes), fetch=True)
            deltas["dead_letters_superseded|"] += len(rows)

    @staticmethod
    def _bump_counters(cur: psycopg2.extensions.cursor, deltas: Counter[str]) -> None:
        rows = []
        for key, value in sorted(deltas.items()):
            if value:
                metric, label = key.split("|", 1)
                rows.append((metric, label, value))
        if rows:
            execute_values(cur, SQL_COUNTERS, rows)

    @staticmethod
    def _observe(deltas: Counter[str], latencies: list[float]) -> None:
        for latency in latencies:
            metrics.END_TO_END_LATENCY.observe(max(0.0, latency))
        grouped: dict[str, int] = defaultdict(int)
        for key, value in deltas.items():
            grouped[key.split("|", 1)[0]] += value
        for table, value in grouped.items():
            metrics.SINK_ROWS.labels(table).inc(value)
        metrics.SINK_LAST_COMMIT.set(time.time())
