"""The schema catalog: every Avro schema of the pipeline, its subject, version and fixed id.

``schemas/catalog.json`` is the source of truth when no schema registry is configured. A
third party can decode any message of ours with it and the ``.avsc`` files alone: read the
4-byte id after the magic byte, look the id up in the catalog, parse the referenced schemas
first, then the schema itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from schemas.errors import SchemaCatalogError

__all__ = ["Catalog", "SchemaEntry", "SUBJECTS", "SCHEMA_DIR", "load_catalog"]

SCHEMA_DIR = Path(__file__).resolve().parent


class SUBJECTS:
    """Subject names (RecordNameStrategy: the record's full name)."""

    EXAMINATION_EVENT = "vn.ehb.ExaminationEvent"
    EXAMINATION_BATCH = "vn.ehb.ExaminationBatch"
    HEALTH_BOOK_RECORD = "vn.ehb.HealthBookRecord"
    REFERRAL_RECORD = "vn.ehb.ReferralRecord"
    APPOINTMENT_RECORD = "vn.ehb.AppointmentRecord"
    DEAD_LETTER = "vn.ehb.DeadLetter"
    VALIDATED_BATCH = "vn.ehb.internal.ValidatedBatch"
    FACILITY_DAILY_REPORT = "vn.ehb.FacilityDailyReport"
    EXAMINATION_WITHDRAWAL = "vn.ehb.ExaminationWithdrawal"
    EXAMINATION_WITHDRAWAL_BATCH = "vn.ehb.ExaminationWithdrawalBatch"
    EPISODE_WITHDRAWN = "vn.ehb.EpisodeWithdrawn"


@dataclass(frozen=True)
class Reference:
    name: str
    subject: str
    version: int


@dataclass
class SchemaEntry:
    """One released version of one subject."""

    id: int
    subject: str
    version: int
    file: Path
    references: tuple[Reference, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    parsed: Any = field(default=None, repr=False)

    @property
    def schema_str(self) -> str:
        return json.dumps(self.raw, ensure_ascii=False)

    def field_names(self) -> list[str]:
        return [f["name"] for f in self.raw.get("fields", [])]


class Catalog:
    def __init__(self, entries: list[SchemaEntry]) -> None:
        self.entries = entries
        self.by_id: dict[int, SchemaEntry] = {}
        self._by_subject: dict[str, list[SchemaEntry]] = {}
        for entry in entries:
            if entry.id in self.by_id:
                raise SchemaCatalogError(f"schema id {entry.id} is used twice")
            self.by_id[entry.id] = entry
            self._by_subject.setdefault(entry.subject, []).append(entry)
        for versions in self._by_subject.values():
            versions.sort(key=lambda e: e.version)
            numbers = [e.version for e in versions]
            if numbers != list(range(1, len(numbers) + 1)):
                raise SchemaCatalogError(
                    f"{versions[0].subject}: versions must be 1..n, found {numbers}"
                )
        for entry in entries:
            entry.parsed = self._parse(entry)

    def _parse(self, entry: SchemaEntry) -> Any:
        named: dict[str, Any] = {}
        for ref in entry.references:
            referenced = self.get(ref.subject, ref.version)
            fastavro.parse_schema(referenced.raw, named_schemas=named)
        return fastavro.parse_schema(entry.raw, named_schemas=named)

    @property
    def subjects(self) -> list[str]:
        return list(self._by_subject)

    def versions(self, subject: str) -> list[SchemaEntry]:
        try:
            return list(self._by_subject[subject])
        except KeyError:
            raise SchemaCatalogError(f"unknown subject {subject!r}") from None

    def get(self, subject: str, version: int) -> SchemaEntry:
        for entry in self.versions(subject):
            if entry.version == version:
                return entry
        raise SchemaCatalogError(f"{subject} has no version {version}")

    def latest(self, subject: str) -> SchemaEntry:
        return self.versions(subject)[-1]

    def expanded_schema(self, entry: SchemaEntry) -> dict[str, Any]:
        """The schema with referenced named types inlined (for tools without references)."""
        named: dict[str, Any] = {}
        for ref in entry.references:
            fastavro.parse_schema(self.get(ref.subject, ref.version).raw, named_schemas=named)
        expanded = fastavro.parse_schema(
            entry.raw, named_schemas=named, expand=True, _write_hint=False
        )
        if not isinstance(expanded, dict):  # a record's schema expands to a record's
            raise SchemaCatalogError(f"{entry.subject} v{entry.version} is not a record schema")
        return expanded


def _read_entries(catalog_file: Path) -> list[SchemaEntry]:
    try:
        document = json.loads(catalog_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaCatalogError(f"cannot read {catalog_file}: {exc}") from exc
    entries = []
    for item in document["schemas"]:
        path = catalog_file.parent / item["file"]
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SchemaCatalogError(f"cannot read {path}: {exc}") from exc
        entries.append(
            SchemaEntry(
                id=int(item["id"]),
                subject=item["subject"],
                version=int(item["version"]),
                file=path,
                references=tuple(Reference(**ref) for ref in item.get("references", [])),
                raw=raw,
            )
        )
    return entries


@cache
def load_catalog(catalog_file: Path | None = None) -> Catalog:
    return Catalog(_read_entries(catalog_file or SCHEMA_DIR / "catalog.json"))
