"""``ehb rejected --facility CODE``: a facility's own dead letters (its rejected episodes) of a
day or a range of days, in Vietnam time, with what each reason means and what to fix in
Vietnamese and English.

Read from the ``dead_letters`` table. Per dead letter: when it failed, the reason code and
its stage, the meaning and fix, the source position (topic, partition, offset, the event's
index in its batch) and the event id. Never the dead letter's ``message`` (it may quote a
value of the input) nor its ``original`` bytes: neither is even selected, so names, citizen
IDs and health data cannot reach the screen or a CSV/JSON file.

Pure parts (argument checks, the day window, rows to CSV/JSON/table) are separate from the one
query, :func:`fetch_rejected`.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from ehb.commands.reasons import explanation, explanation_cells, reason_headers
from schemas.reasons import Language
from schemas.reference import load_provinces
from schemas.time import VN_TZ

if TYPE_CHECKING:
    from ehb.settings import Settings

__all__ = [
    "COLUMNS",
    "DEFAULT_LIMIT",
    "Format",
    "Period",
    "RejectedEpisode",
    "check_facility",
    "fetch_rejected",
    "fields",
    "parse_day",
    "period",
    "print_rejected",
    "rejected_csv",
    "rejected_json",
    "rejected_table",
    "today_in_vietnam",
]

#: rows listed unless --limit says otherwise (a misconfigured HIS can fail thousands a day)
DEFAULT_LIMIT = 1000

#: The dead_letters columns read, in RejectedEpisode's order. A later column (e.g. when an
#: episode dead-lettered and later corrected is marked superseded) is one more name here: it
#: is then selected, filled into RejectedEpisode and shown in every format.
COLUMNS: tuple[str, ...] = (
    "failed_at",
    "reason",
    "stage",
    "source_topic",
    "source_partition",
    "source_offset",
    "event_index",
    "event_id",
    "ma_lk",
    "superseded_at",
)

#: the table's title and the summary line, per language
_TITLE: dict[Language, str] = {"vi": "Hồ sơ bị từ chối", "en": "Rejected episodes"}
_SUMMARY: dict[Language, str] = {
    "vi": "{} hồ sơ bị từ chối của cơ sở KCB {}",
    "en": "{} dead letters of facility {}",
}

_FACILITY = re.compile(r"[0-9]{5}\Z")
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


class Format(StrEnum):
    """``--format``: a table on the terminal, CSV (a spreadsheet) or JSON (a program)."""

    table = "table"
    csv = "csv"
    json = "json"


@dataclass(frozen=True)
class RejectedEpisode:
    """One dead letter as the facility sees it: no message, no original bytes."""

    failed_at: datetime
    reason: str
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_index: int | None
    event_id: str | None
    #: the episode's MA_LK (the facility's own code), when the event could be decoded
    ma_lk: str | None = None
    #: when a later version of the episode was accepted (docs/corrections.md)
    superseded_at: datetime | None = None

    @property
    def source(self) -> str:
        """``topic:partition:offset``, plus ``#index`` for an event of a batch."""
        position = f"{self.source_topic}:{self.source_partition}:{self.source_offset}"
        return position if self.event_index is None else f"{position}#{self.event_index}"

    def as_dict(self, languages: Sequence[Language]) -> dict[str, Any]:
        """The row of CSV and JSON (keys: :func:`fields`): times ISO 8601 in Vietnam time, the
        texts in ``languages``."""
        row: dict[str, Any] = {
            "failed_at": _vn(self.failed_at).isoformat(),
            "reason": self.reason,
            "stage": self.stage,
        }
        for language in languages:
            meaning, fix = explanation(self.reason, language)
            row[f"meaning_{language}"] = meaning
            row[f"fix_{language}"] = fix
        row.update(
            source_topic=self.source_topic,
            source_partition=self.source_partition,
            source_offset=self.source_offset,
            event_index=self.event_index,
            event_id=self.event_id,
            ma_lk=self.ma_lk,
        )
        if "superseded_at" in COLUMNS:
            at = self.superseded_at
            row["superseded_at"] = _vn(at).isoformat() if at is not None else None
        return row


def fields(languages: Sequence[Language]) -> list[str]:
    """The keys of a CSV/JSON row, in order."""
    texts = [f"{kind}_{language}" for language in languages for kind in ("meaning", "fix")]
    return [
        "failed_at",
        "reason",
        "stage",
        *texts,
        "source_topic",
        "source_partition",
        "source_offset",
        "event_index",
        "event_id",
        "ma_lk",
        *(["superseded_at"] if "superseded_at" in COLUMNS else []),
    ]


@dataclass(frozen=True)
class Period:
    """Days of Vietnam time, ``first`` to ``last`` inclusive: failed_at in [start, end)."""

    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), VN_TZ)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(), VN_TZ)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first} .. {self.last}"


# -- the arguments (pure) -------------------------------------------------------------------
def check_facility(code: str) -> str:
    """``code`` if it is a facility code (MA_CSKCB: 5 ASCII digits, the first two a real
    province, or 97/98); ValueError otherwise."""
    code = code.strip()
    if _FACILITY.match(code) is None or (
        code[:2] not in load_provinces() and code[:2] not in ("97", "98")
    ):
        raise ValueError(
            f"{code!r} is not a facility code (MA_CSKCB: 5 digits, the first two a "
            "province code), e.g. 79001"
        )
    return code


def parse_day(value: str, today: date, option: str = "--day") -> date:
    """A day: ``YYYY-MM-DD``, ``today`` or ``yesterday`` (Vietnam time); ValueError naming
    ``option`` otherwise."""
    text = value.strip().lower()
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    if _ISO_DAY.match(text) is None:
        raise ValueError(
            f"{option} {value!r} is not a day: expected YYYY-MM-DD, today or yesterday"
        )
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{option} {value!r} is not a day of the calendar") from None


def period(day: str | None, since: str | None, until: str | None, today: date) -> Period:
    """The days asked for: ``--day D``; ``--since D1 [--until D2]`` (D2 defaults to today);
    or, with none of them, today. ValueError for a bad day or combination."""
    if day is not None:
        if since is not None or until is not None:
            raise ValueError("give either --day or --since/--until, not both")
        one = parse_day(day, today)
        return Period(one, one)
    if since is None:
        if until is not None:
            raise ValueError("--until needs --since")
        return Period(today, today)
    first = parse_day(since, today, "--since")
    last = parse_day(until, today, "--until") if until is not None else today
    if last < first:
        raise ValueError(f"--until {last} is before --since {first}")
    return Period(first, last)


def today_in_vietnam(now: datetime | None = None) -> date:
    """Today's date in Vietnam time (the days of ``ehb rejected``)."""
    return (now or datetime.now(VN_TZ)).astimezone(VN_TZ).date()


# -- the query ------------------------------------------------------------------------------
def _query(limited: bool) -> str:
    return (
        f"SELECT {', '.join(COLUMNS)}, count(*) OVER () AS total FROM dead_letters "
        "WHERE ma_cskcb = %(facility)s AND failed_at >= %(start)s AND failed_at < %(end)s "
        "ORDER BY failed_at, source_topic, source_partition, source_offset, "
        "event_index NULLS FIRST, dead_letter_id" + (" LIMIT %(limit)s" if limited else "")
    )


def fetch_rejected(
    conn: Any, facility: str, days: Period, limit: int = DEFAULT_LIMIT
) -> tuple[list[RejectedEpisode], int]:
    """The facility's dead letters of ``days`` (oldest first, at most ``limit``; 0: all)
    and how many there are in all."""
    with conn.cursor() as cur:
        cur.execute(
            _query(limit > 0),
            {"facility": facility, "start": days.start, "end": days.end, "limit": limit},
        )
        rows = cur.fetchall()
    episodes = [RejectedEpisode(**dict(zip(COLUMNS, row[:-1], strict=True))) for row in rows]
    return episodes, (int(rows[0][-1]) if rows else 0)


# -- the output (pure) ----------------------------------------------------------------------
def _vn(moment: datetime) -> datetime:
    return moment.astimezone(VN_TZ)


def rejected_csv(episodes: Iterable[RejectedEpisode], languages: Sequence[Language]) -> str:
    """CSV with a header line; the texts in ``languages``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields(languages), lineterminator="\n")
    writer.writeheader()
    writer.writerows(episode.as_dict(languages) for episode in episodes)
    return buffer.getvalue()


def rejected_json(episodes: Iterable[RejectedEpisode], languages: Sequence[Language]) -> str:
    """A JSON array, one object per dead letter (Vietnamese in clear, not escaped)."""
    rows = [episode.as_dict(languages) for episode in episodes]
    return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"


def rejected_table(
    episodes: Sequence[RejectedEpisode], languages: tuple[Language, ...], title: str
) -> Table:
    """The terminal table; every value a Text (an event id is the facility's text, never
    markup)."""
    meaning_header, fix_header = reason_headers(languages)
    vietnamese = languages[0] == "vi"
    # identifiers fold onto a second line rather than lose their end to an ellipsis
    columns = [
        Column("thời điểm (UTC+7)" if vietnamese else "failed at (UTC+7)", overflow="fold"),
        Column("mã lý do" if vietnamese else "reason", overflow="fold"),
        Column(meaning_header, ratio=3),
        Column(fix_header, ratio=3),
        Column("vị trí" if vietnamese else "source", overflow="fold"),
        Column("event_id", overflow="fold"),
        Column("MA_LK", overflow="fold"),
    ]
    superseded = any(e.superseded_at is not None for e in episodes)
    if superseded:
        columns.append(Column("đã có bản sửa" if vietnamese else "superseded", overflow="fold"))
    table = Table(*columns, title=title, show_lines=True)
    for episode in episodes:
        cells = [
            Text(_vn(episode.failed_at).strftime("%Y-%m-%d %H:%M:%S")),
            Text(episode.reason),
            *explanation_cells(episode.reason, languages),
            Text(episode.source),
            Text(episode.event_id or "-"),
            Text(episode.ma_lk or "-"),
        ]
        if superseded:
            at = episode.superseded_at
            cells.append(Text(_vn(at).strftime("%Y-%m-%d %H:%M:%S") if at else "-"))
        table.add_row(*cells)
    return table


def print_rejected(
    settings: Settings,
    facility: str,
    days: Period,
    *,
    output_format: Format,
    languages: tuple[Language, ...],
    limit: int,
    out: Console,
    err: Console,
) -> None:
    """``ehb rejected``: read the facility's dead letters (a read-only session) and print them
    on ``out`` in ``output_format``; a note on ``err`` when ``limit`` left some out."""
    from ehb.db import connect

    conn = connect(settings, application_name="ehb-rejected")
    try:
        conn.set_session(readonly=True, autocommit=True)
        episodes, total = fetch_rejected(conn, facility, days, limit)
    finally:
        conn.close()
    vietnamese = languages[0] == "vi"
    if len(episodes) < total:
        more = "--limit 0 để xem tất cả" if vietnamese else "--limit 0 to list them all"
        err.print(f"{len(episodes)} / {total}: {more}", markup=False, highlight=False)
    if output_format is Format.csv:
        out.file.write(rejected_csv(episodes, languages))
        return
    if output_format is Format.json:
        out.file.write(rejected_json(episodes, languages))
        return
    if episodes:
        title = " / ".join(_TITLE[language] for language in languages)
        out.print(rejected_table(episodes, languages, title))
    where = f"{facility}, {days} (UTC+7)"
    summary = " / ".join(_SUMMARY[language].format(total, where) for language in languages)
    out.print(summary, markup=False, highlight=False)
