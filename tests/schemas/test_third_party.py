"""A third party that knows only the .avsc files and catalog.json can publish to the pipeline;
bytes that are not our wire format land in dead-letter with distinct reasons."""

from __future__ import annotations

import io
import json
import struct
from collections import Counter
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Producer

from ehb.commands.local import DeploymentFactory, wait_until
from schemas.topics import EXAMINATIONS
from tests.support import factories as f

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def third_party_encode(record: dict) -> bytes:
    """Encode like any Confluent-compatible client would: catalog id + fastavro body."""
    catalog = json.loads((SCHEMAS / "catalog.json").read_text())
    entry = max(
        (e for e in catalog["schemas"] if e["subject"] == "vn.ehb.ExaminationEvent"),
        key=lambda e: e["version"],
    )
    schema = fastavro.parse_schema(json.loads((SCHEMAS / entry["file"]).read_text()))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    return struct.pack(">bI", 0, entry["id"]) + body.getvalue()


def test_plain_client_record_is_accepted_and_garbage_dead_lettered(
    deploy: DeploymentFactory,
) -> None:
    d = deploy()
    good = f.exam(501, facility="79003", name="Trần Thị Bích Ngọc", sex=2, year=2001)
    encoded = third_party_encode(good)
    producer = Producer({"bootstrap.servers": d.settings.kafka_bootstrap})
    topic = d.settings.topic(EXAMINATIONS)
    unknown_id = struct.pack(">bI", 0, 987654) + encoded[5:]
    payloads = {
        "good": encoded,
        "garbage": b"\x89PNG\r\n\x1a\n not an event at all",
        "wrong_magic": b"\x01" + encoded[1:],
        "unknown_id": unknown_id,
        "truncated": encoded[: len(encoded) // 2],
    }
    for value in payloads.values():
        producer.produce(topic, value, key=b"79003")
    assert producer.flush(30) == 0

    wait_until(
        lambda: d.count("health_book_entries") == 1 and d.count("dead_letters") == 4,
        60,
        message="1 row and 4 dead letters",
    )
    row = d.query("SELECT ho_ten, so_cccd, ma_lk FROM health_book_entries")[0]
    assert row == (good["ho_ten"], good["so_cccd"], good["ma_lk"])
    reasons = Counter(r for (r,) in d.query("SELECT reason FROM dead_letters"))
    # garbage starts with 0x89: not the magic byte, like the wrong-magic message
    assert reasons == Counter({"bad_magic_byte": 2, "unknown_schema_id": 1, "malformed_avro": 1})
    originals = {bytes(o) for (o,) in d.query("SELECT original FROM dead_letters")}
    assert originals == {payloads[k] for k in ("garbage", "wrong_magic", "unknown_id", "truncated")}


def test_each_broken_header_has_its_own_reason(deploy: DeploymentFactory) -> None:
    d = deploy()
    encoded = third_party_encode(f.exam(502))
    d.produce_raw(
        "examinations",
        [
            b"\x00\x00",  # truncated_header
            b"\x07garbage",  # bad_magic_byte
            encoded + b"\x00\x00\x00",  # trailing_bytes (over-long body)
            encoded[:5] + b"\xff" * 3,  # malformed_avro
            struct.pack(">bI", 0, 4) + encoded[5:],  # a known schema, wrong for this topic
        ],
        key=b"79001",
    )
    wait_until(lambda: d.count("dead_letters") == 5, 60, message="5 dead letters")
    reasons = Counter(r for (r,) in d.query("SELECT reason FROM dead_letters"))
    assert reasons == Counter(
        {
            "truncated_header": 1,
            "bad_magic_byte": 1,
            "trailing_bytes": 1,
            "malformed_avro": 1,
            "unexpected_schema": 1,
        }
    )
