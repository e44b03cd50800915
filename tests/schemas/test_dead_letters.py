"""A dead letter always fits in a Kafka message (schemas/dead_letters.py): a bounded prefix of
the original with its full length and SHA-256, bounded texts, whatever the input."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import fastavro
import pytest
from pydantic import ValidationError

from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.codec import wire_header
from schemas.dead_letters import (
    DEFAULT_ORIGINAL_MAX_BYTES,
    IDENTIFIER_MAX_CHARS,
    MAX_ORIGINAL_MAX_BYTES,
    MESSAGE_MAX_CHARS,
    bound_dead_letter,
    bounded_text,
)
from schemas.reference import FacilityRegistry
from sinks.postgres import _Batch, dead_letter_id
from streams.intake import Intake, SourceMessage
from tests.support import factories as f

#: librdkafka's default message.max.bytes, which every producer of ours keeps
PRODUCER_MESSAGE_MAX_BYTES = 1_000_000


def _dead_letter(**changes: Any) -> dict[str, Any]:
    record = {
        "reason": "text_too_long",
        "message": "MA_KHOA is 1000000 characters, max 100",
        "stage": "validate",
        "source_topic": "ehb.examinations",
        "source_partition": 3,
        "source_offset": 41,
        "event_index": None,
        "event_id": "e-1",
        "ma_cskcb": "79001",
        "schema_id": 9,
        "original": b"\x00\x00\x00\x00\x09" + b"x" * 500,
        "published_at": 1_700_000_000_000,
        "failed_at": 1_700_000_000_500,
    }
    record.update(changes)
    return record


def test_a_small_dead_letter_is_kept_whole_and_described() -> None:
    record = _dead_letter()
    bounded = bound_dead_letter(record, 1024)
    assert bounded["original"] == record["original"]
    assert bounded["original_length"] == len(record["original"])
    assert bounded["original_sha256"] == hashlib.sha256(record["original"]).hexdigest()
    assert bounded["original_truncated"] is False
    assert {k: bounded[k] for k in record} == record
    assert "original_length" not in record  # a copy; the input is left alone


def test_a_large_original_keeps_a_prefix_its_length_and_sha256() -> None:
    original = bytes(range(256)) * 4096  # 1 MiB
    bounded = bound_dead_letter(_dead_letter(original=original), 64 * 1024)
    assert bounded["original"] == original[: 64 * 1024]
    assert bounded["original_length"] == len(original)
    assert bounded["original_sha256"] == hashlib.sha256(original).hexdigest()
    assert bounded["original_truncated"] is True


def test_bounding_again_keeps_the_full_originals_description() -> None:
    original = b"\x07" * 200_000
    once = bound_dead_letter(_dead_letter(original=original), 100_000)
    assert bound_dead_letter(once, 100_000) == once  # idempotent
    tighter = bound_dead_letter(once, 1000)  # e.g. a sink with a smaller setting
    assert tighter["original"] == original[:1000]
    assert (
        tighter["original_length"],
        tighter["original_sha256"],
        tighter["original_truncated"],
    ) == (200_000, hashlib.sha256(original).hexdigest(), True)


def test_a_version_1_dead_letter_gets_its_description() -> None:
    """Decoded with v2, a v1 dead letter has the defaults: its original is whole."""
    codec = AvroCodec()
    v1 = codec.catalog.get(SUBJECTS.DEAD_LETTER, 1)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, v1.parsed, _dead_letter())
    decoded = codec.decode(wire_header(v1.id) + body.getvalue()).record
    assert (
        decoded["original_length"],
        decoded["original_sha256"],
        decoded["original_truncated"],
    ) == (None, None, False)
    bounded = bound_dead_letter(decoded, 1024)
    assert bounded["original_length"] == 505
    assert bounded["original_sha256"] == hashlib.sha256(decoded["original"]).hexdigest()


def test_texts_from_the_input_are_bounded_deterministically_and_stay_distinct() -> None:
    huge_a, huge_b = "A" * 1_000_000, "A" * 999_999 + "B"
    a = bound_dead_letter(_dead_letter(event_id=huge_a, ma_cskcb=huge_a, message=huge_a), 1024)
    b = bound_dead_letter(_dead_letter(event_id=huge_b, ma_cskcb=huge_b, message=huge_b), 1024)
    assert len(a["event_id"]) == len(a["ma_cskcb"]) == IDENTIFIER_MAX_CHARS
    assert len(a["message"]) == MESSAGE_MAX_CHARS
    assert a["event_id"] != b["event_id"]  # the sink keys dead letters on it
    assert a["event_id"] == bound_dead_letter(_dead_letter(event_id=huge_a), 1024)["event_id"]
    digest = hashlib.sha256(huge_a.encode()).hexdigest()
    assert a["event_id"].startswith("AAAA") and a["event_id"].endswith(
        f"…[1000000 characters, sha256:{digest}]"
    )
    assert dead_letter_id(a) == f"event:{a['event_id']}"
    assert bounded_text("79001", IDENTIFIER_MAX_CHARS) == "79001"
    assert bounded_text(None, 10) is None


def test_the_largest_dead_letter_stays_well_below_the_producers_limit() -> None:
    """Every field at its worst (4-byte UTF-8 characters, a huge original) at the setting's
    upper limit: the encoded dead letter and its key fit with room to spare."""
    worst = "𝔸" * 2_000_000
    record = _dead_letter(
        original=b"\xff" * 8_000_000,
        message=worst,
        event_id=worst,
        ma_cskcb=worst,
        source_topic="t" * 249,
    )
    bounded = bound_dead_letter(record, MAX_ORIGINAL_MAX_BYTES)
    value = AvroCodec().encode(SUBJECTS.DEAD_LETTER, bounded)
    key = bounded["ma_cskcb"].encode()
    assert len(value) + len(key) < 0.6 * PRODUCER_MESSAGE_MAX_BYTES


def test_the_setting_has_a_safe_default_and_range(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().dead_letter_original_max_bytes == DEFAULT_ORIGINAL_MAX_BYTES == 65536
    monkeypatch.setenv("EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES", "4096")
    assert Settings().dead_letter_original_max_bytes == 4096
    with pytest.raises(ValidationError):
        Settings(dead_letter_original_max_bytes=MAX_ORIGINAL_MAX_BYTES + 1)
    with pytest.raises(ValidationError):
        Settings(dead_letter_original_max_bytes=0)


def _intake(max_bytes: int = DEFAULT_ORIGINAL_MAX_BYTES) -> Intake:
    return Intake(
        AvroCodec(),
        FacilityRegistry.from_reference(),
        CitizenKeyer(b"k" * 32),
        4,
        original_max_bytes=max_bytes,
    )


def test_the_intake_bounds_its_dead_letters_and_their_keys() -> None:
    codec = AvroCodec()
    huge_facility = "7" * 1_000_000
    event = f.exam(ma_khoa="K" * 1_000_000)
    stranger = f.exam(facility=huge_facility)
    batch = codec.encode(
        SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79001", "events": [stranger, f.exam()]}
    )
    single = codec.encode(SUBJECTS.EXAMINATION_EVENT, event)
    result = _intake().process(
        [
            SourceMessage(single, "ehb.examinations", 0, 10, 0),
            SourceMessage(batch, "ehb.examinations", 0, 11, 0),
        ]
    )
    assert result.accepted == 1
    (key1, first), (key2, second) = result.dead_letters
    assert (first["reason"], first["source_offset"], key1) == ("text_too_long", 10, "79001")
    assert first["original"] == single[:DEFAULT_ORIGINAL_MAX_BYTES]
    assert first["original_length"] == len(single) > 1_000_000
    assert first["original_sha256"] == hashlib.sha256(single).hexdigest()
    assert (second["reason"], second["event_index"]) == ("batch_facility_mismatch", 0)
    reencoded = codec.encode(SUBJECTS.EXAMINATION_EVENT, stranger)
    assert second["original_sha256"] == hashlib.sha256(reencoded).hexdigest()
    assert second["original_truncated"] and second["original_length"] == len(reencoded)
    assert key2 == second["ma_cskcb"] and len(key2) == IDENTIFIER_MAX_CHARS
    assert len(second["message"]) == MESSAGE_MAX_CHARS  # it quoted the facility code
    encode = codec.writer(SUBJECTS.DEAD_LETTER)
    for _, dead in result.dead_letters:
        assert len(encode(dead)) < DEFAULT_ORIGINAL_MAX_BYTES + 10_000


def test_the_sinks_row_is_bounded_too() -> None:
    batch = _Batch(original_max_bytes=2048)
    batch.add_dead_letter(_dead_letter(original=b"z" * 100_000, event_id="E" * 10_000))
    (row,) = batch.dead_letters
    assert len(row[0]) <= IDENTIFIER_MAX_CHARS + len("event:")
    assert len(bytes(row[11].adapted)) == 2048
    assert row[-4:-1] == (100_000, hashlib.sha256(b"z" * 100_000).hexdigest(), True)
