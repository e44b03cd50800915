"""What every peer does to an event, with the project's own code: decode the facility's
ExaminationBatch (``schemas.AvroCodec``), validate it (``streams.validation.Validator``),
enrich it and key it by the pseudonymous citizen key (``streams.enrichment``,
``ehb.privacy.CitizenKeyer``), and the rows a peer writes to PostgreSQL: one
``health_book_entries`` row per valid event, one ``health_books`` row per citizen (the
citizen's first valid event integrates the book).

Each peer writes into the database of its own deployment (``ehb_<tag>``, migrated like the
pipeline's), never the pipeline's. Invalid events are dropped,
not dead-lettered: a peer is checked by its rows (valid events = entries, distinct citizens of
the valid events = books), see :func:`expected_rows`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ, parse_datetime
from streams.enrichment import enrich
from streams.validation import Validator

__all__ = [
    "BOOK_COLUMNS",
    "ENTRY_COLUMNS",
    "PeerWork",
    "book_row",
    "entry_row",
    "expected_rows",
    "insert_sql",
    "rows_of",
    "state_dir",
]

#: the columns of health_book_entries a peer fills (persisted_at: the table's default)
ENTRY_COLUMNS = (
    "ma_cskcb",
    "ma_lk",
    "event_id",
    "citizen_key",
    "so_cccd",
    "ho_ten",
    "ngay_sinh",
    "gioi_tinh",
    "ma_the_bhyt",
    "ma_dkbd",
    "registration_province",
    "facility_province",
    "scope",
    "ma_loai_kcb",
    "visit_type",
    "ma_benh_chinh",
    "ma_benh_kt",
    "ngay_vao",
    "ngay_ra",
    "ket_qua_dtri",
    "ma_loai_rv",
    "t_tongchi_bv",
    "t_tongchi_bh",
    "t_bhtt",
    "has_referral",
    "has_appointment",
    "published_at",
    "processed_at",
)
BOOK_COLUMNS = (
    "citizen_key",
    "so_cccd",
    "ho_ten",
    "first_event_id",
    "first_ma_cskcb",
    "integrated_at",
)


def insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """``INSERT ... VALUES %s ON CONFLICT DO NOTHING`` for ``execute_values``: idempotent on
    the table's natural key, as a redelivery must be."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s ON CONFLICT DO NOTHING"


def _iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


class PeerWork:
    """The project's decoder, validator, registry and citizen keyer, in one place."""

    def __init__(self, settings: Settings) -> None:
        self.codec = AvroCodec()
        self.registry = FacilityRegistry.from_reference()
        self.validator = Validator(self.registry)
        self.citizen_key = CitizenKeyer.from_settings(settings)
        self.invalid = 0

    def decode(self, value: bytes) -> list[dict[str, Any]]:
        """The events of one ExaminationBatch message (a single ExaminationEvent too)."""
        decoded = self.codec.decode(value, (SUBJECTS.EXAMINATION_BATCH, SUBJECTS.EXAMINATION_EVENT))
        if decoded.subject == SUBJECTS.EXAMINATION_BATCH:
            events: list[dict[str, Any]] = decoded.record["events"]
            return events
        return [decoded.record]

    def accept(self, event: dict[str, Any], published_ms: int) -> dict[str, Any] | None:
        """The validated, enriched, keyed examination (``streams.enrichment.enrich``'s
        record), or None for an invalid event (dropped)."""
        if self.validator.validate(event, datetime.now(VN_TZ)) is not None:
            self.invalid += 1
            return None
        return enrich(event, self.registry, self.citizen_key(event["so_cccd"]), published_ms)


def entry_row(item: dict[str, Any]) -> dict[str, Any]:
    """The health_book_entries row of an accepted examination (JSON-safe: timestamps as ISO
    text, which PostgreSQL casts to timestamptz)."""
    e = item["event"]
    return {
        "ma_cskcb": e["ma_cskcb"],
        "ma_lk": e["ma_lk"],
        "event_id": e["event_id"],
        "citizen_key": item["citizen_key"],
        "so_cccd": e["so_cccd"],
        "ho_ten": e["ho_ten"],
        "ngay_sinh": e["ngay_sinh"],
        "gioi_tinh": e["gioi_tinh"],
        "ma_the_bhyt": e["ma_the_bhyt"],
        "ma_dkbd": e["ma_dkbd"],
        "registration_province": item["registration_province"],
        "facility_province": item["facility_province"],
        "scope": item["scope"].lower(),  # the table's spelling (in_province)
        "ma_loai_kcb": e["ma_loai_kcb"],
        "visit_type": item["visit_type"],
        "ma_benh_chinh": e["ma_benh_chinh"],
        "ma_benh_kt": e["ma_benh_kt"],
        "ngay_vao": parse_datetime(e["ngay_vao"]).isoformat(),
        "ngay_ra": parse_datetime(e["ngay_ra"]).isoformat(),
        "ket_qua_dtri": e["ket_qua_dtri"],
        "ma_loai_rv": e["ma_loai_rv"],
        "t_tongchi_bv": e["t_tongchi_bv"],
        "t_tongchi_bh": e["t_tongchi_bh"],
        "t_bhtt": e["t_bhtt"],
        "has_referral": e["referral"] is not None,
        "has_appointment": e["appointment"] is not None,
        "published_at": _iso_ms(item["published_at"]),
        "processed_at": datetime.now(UTC).isoformat(),
    }


def book_row(item: dict[str, Any]) -> dict[str, Any]:
    """The health_books row the citizen's first valid examination integrates."""
    e = item["event"]
    return {
        "citizen_key": item["citizen_key"],
        "so_cccd": e["so_cccd"],
        "ho_ten": e["ho_ten"],
        "first_event_id": e["event_id"],
        "first_ma_cskcb": e["ma_cskcb"],
        "integrated_at": _iso_ms(item["event_time"]),
    }


def rows_of(items: list[dict[str, Any]], columns: tuple[str, ...]) -> list[tuple[Any, ...]]:
    return [tuple(item[c] for c in columns) for item in items]


def expected_rows(events: Iterator[list[dict[str, Any]]]) -> dict[str, int]:
    """What a correct peer writes for these events: ``entries`` (valid events), ``books``
    (their distinct citizens), ``invalid``; validated now, as the peers will."""
    validator = Validator(FacilityRegistry.from_reference())
    now = datetime.now(VN_TZ)
    citizens: set[str] = set()
    valid = invalid = 0
    for chunk in events:
        for event in chunk:
            if validator.validate(event, now) is None:
                valid += 1
                citizens.add(event["so_cccd"])
            else:
                invalid += 1
    return {"entries": valid, "books": len(citizens), "invalid": invalid}


def state_dir(settings: Settings, peer: str) -> Path:
    """A fresh local state directory of ``peer`` under the deployment's data directory."""
    path = settings.data_dir / f"{peer}-state-{int(time.time() * 1000)}"
    path.mkdir(parents=True, exist_ok=True)
    return path
