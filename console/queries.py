"""What the console's pages show, read from PostgreSQL with the read-only rights of ehb_console.

Every query takes its values as parameters (never formatted into the SQL), every facility
page's query is filtered by the facility code the access rule allowed, and no query selects a
dead letter's ``message`` or ``original`` (they may quote personal data) nor a citizen ID.
Names are selected only for a facility's own episode look-up (:func:`episode`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import psycopg2.extensions

__all__ = [
    "CampaignCounters",
    "CompletenessGrid",
    "Episode",
    "FacilityPage",
    "ThroughputBucket",
    "campaign_counters",
    "completeness",
    "episode",
    "facility_name",
    "facility_page",
    "throughput",
]

Cursor = psycopg2.extensions.cursor

#: the statuses of a facility-day, in the order the grid ranks them (the worst first)
STATUSES = ("silent", "mismatch", "pending", "ok")


@dataclass
class CampaignCounters:
    values: dict[str, int]
    dead_letters: dict[str, int]
    facility_days: dict[str, int]
    last_commit: datetime | None

    def get(self, name: str) -> int:
        return self.values.get(name, 0)


def campaign_counters(cur: Cursor) -> CampaignCounters:
    """The campaign's counters (``campaign_counters``, kept equal to the tables by the sink)."""
    cur.execute("SELECT metric, label, value FROM campaign_counters")
    values: dict[str, int] = {}
    dead: dict[str, int] = {}
    for metric, label, value in cur.fetchall():
        if metric == "dead_letters":
            dead[label] = value
        elif metric == "examinations":
            values[f"examinations_{label}"] = value
        else:
            values[metric] = value
    values["examinations"] = values.get("examinations_in_province", 0) + values.get(
        "examinations_out_of_province", 0
    )
    values["dead_letters"] = sum(dead.values())
    cur.execute("SELECT status, count(*) FROM facility_reports GROUP BY status")
    days = {status: count for status, count in cur.fetchall()}
    cur.execute(
        "SELECT greatest((SELECT max(persisted_at) FROM health_book_entries),"
        " (SELECT max(persisted_at) FROM dead_letters))"
    )
    row = cur.fetchone()
    return CampaignCounters(values, dict(sorted(dead.items())), days, row[0] if row else None)


@dataclass
class CompletenessGrid:
    days: list[date]
    #: (code, name, {day: (status, reported, received)}, silent days) the silent first
    facilities: list[tuple[str, str, dict[date, tuple[str, int | None, int]], int]]


def completeness(cur: Cursor, days: int) -> CompletenessGrid:
    """Facility x day over the last ``days`` days up to the newest day a facility reported
    (the simulated city's event time may be far from today); a day without a row is
    pending."""
    # the newest day some facility reported: the days after it are the ones still being
    # reported (in production, today), silent for everyone and telling nothing yet
    cur.execute(
        "SELECT coalesce(max(report_day) FILTER (WHERE reported IS NOT NULL), max(report_day))"
        " FROM facility_reports"
    )
    row = cur.fetchone()
    last = row[0] if row and row[0] is not None else None
    if last is None:
        return CompletenessGrid([], [])
    first = last - timedelta(days=days - 1)
    span = [first + timedelta(days=i) for i in range(days)]
    cur.execute(
        "SELECT f.code, f.name, r.report_day, r.status, r.reported, r.received "
        "FROM facilities f LEFT JOIN facility_reports r ON r.ma_cskcb = f.code "
        "AND r.report_day BETWEEN %s AND %s WHERE f.active OR r.ma_cskcb IS NOT NULL "
        "ORDER BY f.code",
        (first, last),
    )
    cells: dict[str, dict[date, tuple[str, int | None, int]]] = {}
    names: dict[str, str] = {}
    for code, name, day, status, reported, received in cur.fetchall():
        names[code] = name
        cells.setdefault(code, {})
        if day is not None:
            cells[code][day] = (status, reported, received)

    def rank(code: str) -> tuple[int, int, str]:
        statuses = [c[0] for c in cells[code].values()]
        return (-statuses.count("silent"), -statuses.count("mismatch"), code)

    ordered = sorted(cells, key=rank)
    return CompletenessGrid(
        span,
        [
            (c, names[c], cells[c], sum(1 for s in cells[c].values() if s[0] == "silent"))
            for c in ordered
        ],
    )


@dataclass
class ThroughputBucket:
    start: datetime
    persisted: int
    dead_lettered: int
    #: seconds from the producer's publish to the row's commit: mean and 95th percentile
    lag_mean_s: float | None
    lag_p95_s: float | None


def throughput(cur: Cursor, hours: int, buckets: int = 24) -> list[ThroughputBucket]:
    """Rows committed per time bucket over the last ``hours`` and the end-to-end lag (publish
    to commit) of the episodes among them."""
    span = timedelta(hours=hours)
    width = span / buckets
    cur.execute(
        "WITH rows AS ("
        " SELECT persisted_at, published_at, false AS dead FROM health_book_entries"
        "  WHERE persisted_at >= now() - %(span)s"
        " UNION ALL"
        " SELECT persisted_at, published_at, true FROM dead_letters"
        "  WHERE persisted_at >= now() - %(span)s) "
        "SELECT date_bin(%(width)s, persisted_at, now() - %(span)s) AS bucket,"
        " count(*) FILTER (WHERE NOT dead), count(*) FILTER (WHERE dead),"
        " avg(extract(epoch FROM persisted_at - published_at)) FILTER (WHERE NOT dead),"
        " percentile_cont(0.95) WITHIN GROUP"
        "  (ORDER BY extract(epoch FROM persisted_at - published_at))"
        "  FILTER (WHERE NOT dead) "
        "FROM rows GROUP BY 1 ORDER BY 1",
        {"span": span, "width": width},
    )
    found = {r[0]: r for r in cur.fetchall()}
    cur.execute("SELECT date_bin(%s, now() - %s, now() - %s)", (width, span, span))
    start_row = cur.fetchone()
    assert start_row is not None
    start: datetime = start_row[0]
    out = []
    for i in range(buckets):
        at = start + width * i
        r = found.get(at)
        out.append(
            ThroughputBucket(
                at,
                r[1] if r else 0,
                r[2] if r else 0,
                float(r[3]) if r and r[3] is not None else None,
                float(r[4]) if r and r[4] is not None else None,
            )
        )
    return out


def facility_name(cur: Cursor, code: str) -> str | None:
    cur.execute("SELECT name FROM facilities WHERE code = %s", (code,))
    row = cur.fetchone()
    return row[0] if row else None


@dataclass
class FacilityPage:
    #: (day, reason, dead letters, of them superseded by an accepted correction)
    rejected_by_day: list[tuple[date, str, int, int]]
    #: the latest dead letters: (failed_at, reason, MA_LK, superseded_at)
    rejected: list[tuple[datetime, str, str | None, datetime | None]]
    #: (MA_LK, versions kept, current version, corrected_at, withdrawn_at)
    corrections: list[tuple[str, int, int | None, datetime | None, datetime | None]]
    #: (day, reported, received, status)
    reports: list[tuple[date, int | None, int, str]]
    counts: dict[str, int] = field(default_factory=dict)


def facility_page(cur: Cursor, code: str, days: int = 31, limit: int = 200) -> FacilityPage:
    """One facility's rejected episodes, corrections and withdrawals, and daily reports."""
    cur.execute(
        "SELECT (failed_at AT TIME ZONE 'Asia/Ho_Chi_Minh')::date AS day, reason, count(*),"
        " count(superseded_at) FROM dead_letters WHERE ma_cskcb = %s "
        "GROUP BY 1, 2 ORDER BY 1 DESC, 3 DESC, 2 LIMIT %s",
        (code, limit),
    )
    by_day = list(cur.fetchall())
    cur.execute(
        "SELECT failed_at, reason, ma_lk, superseded_at FROM dead_letters WHERE ma_cskcb = %s "
        "ORDER BY failed_at DESC, dead_letter_id LIMIT %s",
        (code, limit),
    )
    rejected = list(cur.fetchall())
    cur.execute(
        "SELECT e.ma_lk, count(v.version_key) + 1, e.version, e.corrected_at, e.withdrawn_at "
        "FROM health_book_entries e LEFT JOIN health_book_entry_versions v "
        "ON v.ma_cskcb = e.ma_cskcb AND v.ma_lk = e.ma_lk "
        "WHERE e.ma_cskcb = %s AND (e.corrected_at IS NOT NULL OR e.withdrawn_at IS NOT NULL) "
        "GROUP BY e.ma_lk, e.version, e.corrected_at, e.withdrawn_at "
        "ORDER BY greatest(e.corrected_at, e.withdrawn_at) DESC, e.ma_lk LIMIT %s",
        (code, limit),
    )
    corrections = list(cur.fetchall())
    cur.execute(
        "SELECT report_day, reported, received, status FROM facility_reports "
        "WHERE ma_cskcb = %s ORDER BY report_day DESC LIMIT %s",
        (code, days),
    )
    reports = list(cur.fetchall())
    cur.execute(
        "SELECT (SELECT count(*) FROM health_book_entries WHERE ma_cskcb = %(c)s),"
        " (SELECT count(*) FROM dead_letters WHERE ma_cskcb = %(c)s),"
        " (SELECT count(*) FROM dead_letters WHERE ma_cskcb = %(c)s"
        "  AND superseded_at IS NULL)",
        {"c": code},
    )
    row = cur.fetchone()
    assert row is not None
    counts = {"persisted": row[0], "dead_letters": row[1], "open_dead_letters": row[2]}
    return FacilityPage(by_day, rejected, corrections, reports, counts)


@dataclass
class Episode:
    ma_lk: str
    #: the current version's row, None when the episode was never accepted
    entry: dict[str, Any] | None
    #: (version_key, kind, arrived_at) of every other version kept
    versions: list[tuple[str, str, datetime]]
    #: (failed_at, reason, superseded_at) of its dead letters
    dead_letters: list[tuple[datetime, str, datetime | None]]

    @property
    def found(self) -> bool:
        return self.entry is not None or bool(self.versions) or bool(self.dead_letters)

    @property
    def state(self) -> str:
        """persisted, withdrawn, dead_lettered, superseded (a dead letter corrected since)."""
        if self.entry is not None:
            return "withdrawn" if self.entry["withdrawn_at"] else "persisted"
        if any(superseded is None for _, _, superseded in self.dead_letters):
            return "dead_lettered"
        return "superseded" if self.dead_letters else "unknown"


def episode(cur: Cursor, code: str, ma_lk: str, with_name: bool) -> Episode:
    """Where the facility's episode ``ma_lk`` is; ``with_name``: the patient's name too (the
    facility's own staff, to match it with their records)."""
    cur.execute(
        "SELECT version, persisted_at, corrected_at, withdrawn_at, ngay_vao, ngay_ra,"
        " ma_benh_chinh, visit_type, has_referral, has_appointment"
        + (", ho_ten" if with_name else "")
        + " FROM health_book_entries WHERE ma_cskcb = %s AND ma_lk = %s",
        (code, ma_lk),
    )
    row = cur.fetchone()
    entry = None
    if row is not None:
        assert cur.description is not None
        entry = {d.name: v for d, v in zip(cur.description, row, strict=True)}
    cur.execute(
        "SELECT version_key, kind, arrived_at FROM health_book_entry_versions "
        "WHERE ma_cskcb = %s AND ma_lk = %s ORDER BY arrived_at",
        (code, ma_lk),
    )
    versions = list(cur.fetchall())
    cur.execute(
        "SELECT failed_at, reason, superseded_at FROM dead_letters "
        "WHERE ma_cskcb = %s AND ma_lk = %s ORDER BY failed_at",
        (code, ma_lk),
    )
    return Episode(ma_lk, entry, versions, list(cur.fetchall()))
