"""Schemas evolve safely: every version in schemas/catalog.json reads the data of all older
versions of its subject (BACKWARD_TRANSITIVE), the check fails on changes that would break
consumers, released schemas are never edited, and version-1 records still flow end to end."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest

from ehb.commands.local import DeploymentFactory, wait_until
from schemas import SUBJECTS, AvroCodec, load_catalog
from schemas.catalog import Catalog, _read_entries
from schemas.codec import wire_header
from schemas.compatibility import check_catalog
from tests.support import factories as f

#: id -> Rabin fingerprint of the parsing canonical form of every released schema. A released
#: schema is never edited (docs may change: they are not part of the canonical form); a change
#: is a new version with a new id, added here once it passes test_catalog_is_backward_transitive.
RELEASED = {
    1: "3f7b3d813e323443",
    2: "d993642832d65e92",
    3: "e812ab7ed26c960d",
    4: "6024a14a007389ab",
    5: "54e4c8c1a9292e96",
    6: "662420fd6ac1b7ae",
    7: "3e726be6a736dc82",
    8: "8d1e4bed889dd482",
    9: "13eccfdba90e651e",
    10: "38baef94abf054eb",
    11: "9a66aa0e92a0b122",
    12: "8f18e0b3d2b0dede",
    13: "8203cbd1d1f39dac",
    14: "636f9b325ae1c785",
    15: "4d3b661575522b92",
    16: "013b97555aa330da",
    17: "ad5254409721c726",
    18: "d9cbb0fd86965d1d",
    19: "1d2a00697fbab168",
    20: "16ea64f8a0ba9cc9",
    21: "056e9bb331382618",
    22: "fc909d56ac33014d",
}


def _fingerprint(catalog: Catalog, schema_id: int) -> str:
    entry = catalog.by_id[schema_id]
    canonical = fastavro.schema.to_parsing_canonical_form(catalog.expanded_schema(entry))
    return fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")


# -- the real catalog -------------------------------------------------------------------------
def test_catalog_is_backward_transitive() -> None:
    problems = check_catalog(load_catalog())
    assert problems == [], "\n".join(map(str, problems))


def test_released_schemas_are_never_edited() -> None:
    catalog = load_catalog()
    actual = {i: _fingerprint(catalog, i) for i in catalog.by_id}
    assert actual == RELEASED, (
        "a released schema changed, or a new one is not listed in RELEASED: publish a change "
        "as a new version (see docs/schema-evolution.md)"
    )


def test_version_1_records_decode_with_the_newest_schemas() -> None:
    codec = AvroCodec()
    catalog = codec.catalog
    event = f.exam(1, name="Lê Thị Hồng Nhung", sex=2, year=1992)

    def encode_v1(subject: str, record: dict[str, Any]) -> bytes:
        entry = catalog.get(subject, 1)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, entry.parsed, record)
        return wire_header(entry.id) + body.getvalue()

    single = codec.decode(encode_v1(SUBJECTS.EXAMINATION_EVENT, event))
    assert (single.entry.version, single.schema_id) == (1, 1)
    assert single.record == {**event, "can_nang": None, "version": None}
    batch = codec.decode(
        encode_v1(SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79001", "events": [event, event]})
    )
    assert [e["can_nang"] for e in batch.record["events"]] == [None, None]
    assert batch.record["events"][0]["ho_ten"] == "Lê Thị Hồng Nhung"
    # the newest writers emit the newest version, which carries the new fields
    weighed = codec.decode(
        codec.encode(SUBJECTS.EXAMINATION_EVENT, {**event, "can_nang": 52.5, "version": 7})
    )
    assert weighed.entry.version == 3 and weighed.record["can_nang"] == 52.5
    assert weighed.record["version"] == 7


# -- the check itself, on deliberately (in)compatible catalogs ----------------------------------
BASE = {
    "type": "record",
    "name": "Visit",
    "namespace": "test",
    "fields": [
        {"name": "facility", "type": "string"},
        {"name": "days", "type": "int"},
        {
            "name": "kind",
            "type": {"type": "enum", "name": "Kind", "symbols": ["OUTPATIENT", "INPATIENT"]},
        },
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


def _evolve(change: str) -> dict[str, Any]:
    schema = copy.deepcopy(BASE)
    fields = {f["name"]: f for f in schema["fields"]}
    if change == "add_optional_field":
        schema["fields"].append({"name": "weight", "type": ["null", "double"], "default": None})
    elif change == "promote_int_to_long":
        fields["days"]["type"] = "long"
    elif change == "enum_grows":
        fields["kind"]["type"]["symbols"].append("DAY_CARE")
    elif change == "remove_field":
        schema["fields"].remove(fields["note"])
    elif change == "add_field_without_default":
        schema["fields"].append({"name": "weight", "type": "double"})
    elif change == "change_type":
        fields["facility"]["type"] = "int"
    elif change == "narrow_long_to_int":  # (a v1 int made long first, then back)
        fields["days"]["type"] = "int"
    elif change == "enum_loses_symbol":
        fields["kind"]["type"]["symbols"].remove("INPATIENT")
    elif change == "rename_record":
        schema["name"] = "Encounter"
    elif change == "union_loses_branch":
        fields["note"]["type"] = "string"
        fields["note"]["default"] = ""
    else:  # pragma: no cover
        raise ValueError(change)
    return schema


def _catalog(tmp_path: Path, *versions: dict[str, Any]) -> Catalog:
    entries = []
    for number, schema in enumerate(versions, 1):
        (tmp_path / f"visit.v{number}.avsc").write_text(json.dumps(schema))
        entries.append(
            {
                "id": 100 + number,
                "subject": "test.Visit",
                "version": number,
                "file": f"visit.v{number}.avsc",
            }
        )
    (tmp_path / "catalog.json").write_text(json.dumps({"schemas": entries}))
    return Catalog(_read_entries(tmp_path / "catalog.json"))


@pytest.mark.parametrize(
    "change", ["add_optional_field", "promote_int_to_long", "enum_grows", "remove_field"]
)
def test_safe_changes_pass(tmp_path: Path, change: str) -> None:
    assert check_catalog(_catalog(tmp_path, BASE, _evolve(change))) == []


@pytest.mark.parametrize(
    "change",
    [
        "add_field_without_default",
        "change_type",
        "enum_loses_symbol",
        "rename_record",
        "union_loses_branch",
    ],
)
def test_breaking_changes_fail(tmp_path: Path, change: str) -> None:
    problems = check_catalog(_catalog(tmp_path, BASE, _evolve(change)))
    assert (2, 1) in {(p.reader_version, p.writer_version) for p in problems}, (
        f"{change} must be refused: {problems}"
    )


def test_a_change_safe_against_the_previous_version_only_fails_transitively(tmp_path: Path) -> None:
    v2 = _evolve("add_optional_field")
    v2["fields"][-1] = {"name": "weight", "type": "double", "default": 0.0}
    v3 = copy.deepcopy(v2)
    del v3["fields"][-1]["default"]  # reads v2 data (which has weight), not v1 data
    problems = check_catalog(_catalog(tmp_path, BASE, v2, v3))
    assert {(p.reader_version, p.writer_version) for p in problems} == {(3, 1)}
    assert "weight" in str(problems[0])


def test_the_real_event_schema_with_a_breaking_v3_fails(tmp_path: Path) -> None:
    """The guard on the real ExaminationEvent: a v3 that drops a default breaks v1 producers."""
    catalog = load_catalog()
    v2 = copy.deepcopy(catalog.latest(SUBJECTS.EXAMINATION_EVENT).raw)
    v3 = copy.deepcopy(v2)
    for field in v3["fields"]:
        if field["name"] == "can_nang":
            field["type"] = "double"
            del field["default"]
    v1 = catalog.get(SUBJECTS.EXAMINATION_EVENT, 1).raw
    entries = []
    for number, schema in enumerate((v1, v2, v3), 1):
        (tmp_path / f"e{number}.avsc").write_text(json.dumps(schema))
        entries.append(
            {
                "id": number,
                "subject": SUBJECTS.EXAMINATION_EVENT,
                "version": number,
                "file": f"e{number}.avsc",
            }
        )
    (tmp_path / "catalog.json").write_text(json.dumps({"schemas": entries}))
    problems = check_catalog(Catalog(_read_entries(tmp_path / "catalog.json")))
    assert {(p.reader_version, p.writer_version) for p in problems} == {(3, 1), (3, 2)}


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.integration
def test_version_1_messages_from_a_third_party_are_accepted(deploy: DeploymentFactory) -> None:
    """A producer that still encodes with ExaminationEvent/ExaminationBatch v1 (ids 1 and 2):
    the worker resolves them to v2 and the episodes reach PostgreSQL unchanged."""
    d = deploy()
    catalog = d.codec.catalog
    single = f.exam(601, facility="79003", name="Phạm Ngọc Ánh", sex=2, year=1999)
    batched = [f.exam(602 + i, facility="79004") for i in range(3)]

    def v1(subject: str, record: dict[str, Any]) -> bytes:
        entry = catalog.get(subject, 1)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, entry.parsed, record)
        return wire_header(entry.id) + body.getvalue()

    d.produce_raw("examinations", [v1(SUBJECTS.EXAMINATION_EVENT, single)], key=b"79003")
    d.produce_raw(
        "examinations",
        [v1(SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79004", "events": batched})],
        key=b"79004",
    )
    wait_until(lambda: d.count("health_book_entries") == 4, 90, message="4 episodes")
    assert d.count("dead_letters") == 0
    names = {r[0] for r in d.query("SELECT ho_ten FROM health_book_entries")}
    assert "Phạm Ngọc Ánh" in names
