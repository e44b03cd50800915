"""Schema evolution guard: every version of a subject must read the data of all its older
versions (Confluent's ``BACKWARD_TRANSITIVE``), so a consumer upgraded to the newest schema
still decodes every message already on the topics, and every producer still on an old version.

Two independent checks per (newer reader, older writer) pair:

* **structural**: the Avro specification's schema-resolution rules, as Apache Avro's
  ``ReaderWriterCompatibilityChecker`` (a port of the Java ``SchemaCompatibility``) applies
  them: a field the reader adds needs a default; a type may change only by a promotion
  (int -> long -> float -> double, string <-> bytes); an enum keeps every symbol it had;
  named types keep their names; unions keep a branch for every branch written.
* **by example**: random records generated for the older schema are encoded with it and
  decoded with the newer one by fastavro, the library the pipeline decodes with; fields the
  two share must come back unchanged and the fields the reader added must get their defaults.

Plus the catalog's own rules: a version's record is named after its subject, ids are unique
(checked by :class:`schemas.catalog.Catalog`), and a schema that references another names a
version that exists.

``check_catalog(load_catalog())`` returns the problems found; an empty list means safe.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

import fastavro
import fastavro.utils
from fastavro import schemaless_reader, schemaless_writer

from schemas.catalog import Catalog, SchemaEntry

__all__ = ["Incompatibility", "check_catalog", "check_pair"]

_PROBLEMS_PER_PAIR = 5


@dataclass(frozen=True)
class Incompatibility:
    subject: str
    reader_version: int
    writer_version: int
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.subject} v{self.reader_version} cannot read v{self.writer_version}: "
            f"{self.problem}"
        )


def _strip_logical_types(schema: Any) -> Any:
    """The schema with logical types removed: same bytes, plain values (random ints are not
    always valid dates, and the round trip is about the encoding, not the annotation)."""
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(s) for s in schema]
    return schema


def _structural(reader: dict[str, Any], writer: dict[str, Any]) -> list[str]:
    import avro.schema
    from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

    result = ReaderWriterCompatibilityChecker().get_compatibility(
        avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
    )
    if result.compatibility is SchemaCompatibilityType.compatible:
        return []
    kinds = sorted({i.value for i in result.incompatibilities})
    where = sorted(result.locations)
    return [f"{', '.join(kinds)} at {', '.join(where)}: {'; '.join(sorted(result.messages))}"]


def _fields(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return (
        {f["name"]: f for f in schema.get("fields", [])} if schema.get("type") == "record" else {}
    )


def _by_example(
    reader: dict[str, Any], writer: dict[str, Any], samples: int, seed: int
) -> list[str]:
    reader = _strip_logical_types(reader)
    writer = _strip_logical_types(writer)
    parsed_reader = fastavro.parse_schema(reader)
    parsed_writer = fastavro.parse_schema(writer)
    reader_fields = _fields(reader)
    writer_fields = _fields(writer)
    same_type = [
        n
        for n, f in writer_fields.items()
        if n in reader_fields and reader_fields[n]["type"] == f["type"]
    ]
    added = [n for n in reader_fields if n not in writer_fields]
    problems: list[str] = []
    state = random.getstate()
    random.seed(seed)  # fastavro's generator draws from the global generator
    try:
        records = list(fastavro.utils.generate_many(writer, samples))
    finally:
        random.setstate(state)
    for record in records:
        buf = io.BytesIO()
        schemaless_writer(buf, parsed_writer, record)
        size = buf.tell()
        buf.seek(0)
        try:
            decoded = schemaless_reader(buf, parsed_writer, parsed_reader)
        except Exception as exc:  # fastavro raises many kinds on a failed resolution
            problems.append(f"a sample record does not decode: {type(exc).__name__}: {exc}")
            break
        if buf.tell() != size:
            problems.append(f"decoding read {buf.tell()} of {size} bytes")
            break
        if not isinstance(decoded, dict):
            problems.append("a sample record decodes to a non-record")
            break
        changed = [n for n in same_type if decoded.get(n) != record.get(n)]
        if changed:
            problems.append(f"fields changed in decoding: {', '.join(changed)}")
            break
        missing = [n for n in added if decoded.get(n) != reader_fields[n].get("default")]
        if missing:
            problems.append(f"added fields without their default: {', '.join(missing)}")
            break
    return problems


def check_pair(
    catalog: Catalog, reader: SchemaEntry, writer: SchemaEntry, *, samples: int = 30, seed: int = 0
) -> list[Incompatibility]:
    """Can ``reader`` (the newer version) decode data written with ``writer``?"""
    reader_schema = catalog.expanded_schema(reader)
    writer_schema = catalog.expanded_schema(writer)
    problems = _structural(reader_schema, writer_schema)
    problems += _by_example(reader_schema, writer_schema, samples, seed)
    return [
        Incompatibility(reader.subject, reader.version, writer.version, p)
        for p in problems[:_PROBLEMS_PER_PAIR]
    ]


def _catalog_rules(catalog: Catalog) -> list[Incompatibility]:
    problems = []
    for entry in catalog.entries:
        raw = entry.raw
        full_name = raw.get("name", "")
        if "." not in full_name and raw.get("namespace"):
            full_name = f"{raw['namespace']}.{full_name}"
        if full_name != entry.subject:
            problems.append(
                Incompatibility(
                    entry.subject,
                    entry.version,
                    entry.version,
                    f"record {full_name!r} is not named after its subject (RecordNameStrategy)",
                )
            )
    return problems


def check_catalog(catalog: Catalog, *, samples: int = 30) -> list[Incompatibility]:
    """Every version of every subject against every older version (BACKWARD_TRANSITIVE)."""
    problems = _catalog_rules(catalog)
    for subject in catalog.subjects:
        versions = catalog.versions(subject)
        for i, reader in enumerate(versions):
            for writer in versions[:i]:
                problems += check_pair(
                    catalog, reader, writer, samples=samples, seed=reader.id * 1000 + writer.id
                )
    return problems
