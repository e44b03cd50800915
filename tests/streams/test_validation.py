"""One test per reason code, each with a minimal failing record: a valid exam with one thing
broken (validation), crafted bytes through the intake (decoding), or a record the sink must
refuse. Plus: Vietnamese and hostile text pass untouched, and docs/reference.md documents every
code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from ehb.consumer import Record
from ehb.privacy import CitizenKeyer
from schemas import SUBJECTS, AvroCodec
from schemas.codec import wire_header
from schemas.reasons import REASONS, reason_stage, reasons_markdown
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ
from sinks.reports import report_dead_letter, report_problem
from streams.intake import Intake, SourceMessage
from streams.validation import Validator
from tests.support import factories as f

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=VN_TZ)
AT = f.BASE_TIME


def _exam(**overrides: Any) -> dict[str, Any]:
    return f.exam(1, admitted=AT, **overrides)


# -- validation: one broken field each --------------------------------------------------------
VALIDATOR_CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "citizen_id_format": lambda: _exam(so_cccd="07908500000"),  # 11 digits
    "citizen_id_province": lambda: _exam(so_cccd=f.citizen_id(1, province="99")),
    "citizen_id_sex_century": lambda: _exam(so_cccd=f.citizen_id(1, sex=2)),  # male exam
    "hi_card_format": lambda: _exam(ma_the_bhyt="ZZ4790000000001"),
    "facility_code_invalid": lambda: _exam(ma_dkbd="99001"),
    "facility_unknown": lambda: _exam(facility="79999"),
    "icd10_main_invalid": lambda: _exam(ma_benh_chinh="12345"),
    "icd10_secondary_invalid": lambda: _exam(ma_benh_kt="I10;J6"),
    "code_not_in_list": lambda: _exam(ma_loai_kcb="11"),
    "date_invalid": lambda: _exam(ngay_vao="202402301000"),  # 30 February
    "date_order": lambda: _exam(ngay_vao=f.fmt(AT + timedelta(hours=3))),  # after NGAY_RA
    "date_in_future": lambda: f.exam(1, admitted=NOW + timedelta(hours=1)),
    "appointment_before_discharge": lambda: f.with_appointment(_exam(), when=AT),
    "referral_same_facility": lambda: f.with_referral(_exam(), destination="79001"),
    "money_negative": lambda: _exam(t_thuoc=-1),
    "money_insurer_exceeds_total": lambda: _exam(t_tongchi_bh=300_001),
    "required_field_missing": lambda: _exam(ma_bn="  "),
    "text_too_long": lambda: _exam(name="Nguyễn " * 37),  # 259 characters
    "text_nul_character": lambda: _exam(name="Nguyễn\x00Văn An"),
}


def test_the_base_record_is_valid() -> None:
    validator = Validator(FacilityRegistry.from_reference())
    assert validator.validate(_exam(), NOW) is None
    assert validator.validate(f.with_referral(_exam()), NOW) is None
    assert validator.validate(f.with_appointment(_exam(), when=AT + timedelta(days=7)), NOW) is None


@pytest.mark.parametrize("reason", sorted(VALIDATOR_CASES))
def test_validator_reason(reason: str) -> None:
    rejection = Validator(FacilityRegistry.from_reference()).validate(
        VALIDATOR_CASES[reason](), NOW
    )
    assert rejection is not None and rejection.reason == reason, rejection
    assert "Nguyễn" not in rejection.message and "0790" not in rejection.message  # no PII


# -- decoding: crafted bytes through the intake -----------------------------------------------
CODEC = AvroCodec()
EVENT = CODEC.encode(SUBJECTS.EXAMINATION_EVENT, _exam())

INTAKE_CASES: dict[str, Callable[[], bytes | None]] = {
    "empty_message": lambda: None,  # a tombstone
    "bad_magic_byte": lambda: b"\x01" + EVENT[1:],
    "truncated_header": lambda: b"\x00\x00\x00",
    "unknown_schema_id": lambda: wire_header(999_999) + EVENT[5:],
    "unexpected_schema": lambda: wire_header(6) + EVENT[5:],  # DeadLetter's id
    "malformed_avro": lambda: EVENT[:5] + b"\xff\xff\xff",
    "trailing_bytes": lambda: EVENT + b"\x00",
    "empty_batch": lambda: CODEC.encode(
        SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79001", "events": []}
    ),
    "batch_facility_mismatch": lambda: CODEC.encode(
        SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79002", "events": [_exam()]}
    ),
}


def _intake() -> Intake:
    return Intake(
        CODEC, FacilityRegistry.from_reference(), CitizenKeyer(b"k" * 32), 4, clock=NOW.timestamp
    )


def _message(value: bytes | None) -> SourceMessage:
    return SourceMessage(value, "ehb.examinations", 0, 42, int(AT.timestamp() * 1000))


@pytest.mark.parametrize("reason", sorted(INTAKE_CASES))
def test_intake_reason(reason: str) -> None:
    value = INTAKE_CASES[reason]()
    result = _intake().process([_message(value)])
    assert result.accepted == 0 and result.events_in == 1
    [(_, dead_letter)] = result.dead_letters
    assert dead_letter["reason"] == reason
    assert dead_letter["stage"] == reason_stage(reason)
    assert (dead_letter["source_topic"], dead_letter["source_offset"]) == ("ehb.examinations", 42)
    if reason != "batch_facility_mismatch":  # the whole message is kept as it came
        assert dead_letter["original"] == (value or b"")


# -- the sink ---------------------------------------------------------------------------------
def test_sink_reason_report_invalid() -> None:
    report = {
        "ma_cskcb": "79001",
        "report_date": date(2024, 3, 4),
        "episodes_sent": -1,
        "sent_at": datetime(2024, 3, 5, tzinfo=UTC),
    }
    problem = report_problem(report, date(2024, 6, 1))
    assert problem is not None
    record = Record(
        "ehb.facility-reports", 0, 7, b"79001", 0, SUBJECTS.FACILITY_DAILY_REPORT, report
    )
    encode = CODEC.writer(SUBJECTS.FACILITY_DAILY_REPORT)
    dead_letter = report_dead_letter(record, problem, encode, 1)
    assert (dead_letter["reason"], dead_letter["stage"]) == ("report_invalid", "sink")
    assert CODEC.decode(dead_letter["original"]).record == report


@pytest.mark.integration
def test_sink_reason_db_rejected(deploy: Any) -> None:
    """A record PostgreSQL refuses (a CHECK constraint) is dead-lettered, the batch flows."""
    from sinks.postgres import PostgresWriter

    d = deploy(workers=0, sink=False)
    good, bad = (_health_book_record(n, cost) for n, cost in ((1, 300_000), (2, -1)))
    dsn = d.settings.database_url.get_secret_value()
    writer = PostgresWriter(lambda: psycopg2.connect(dsn))
    try:
        writer.write(
            [
                Record("ehb.health-book", 0, i, None, 0, SUBJECTS.HEALTH_BOOK_RECORD, r)
                for i, r in enumerate((good, bad))
            ]
        )
    finally:
        writer.close()
    assert d.count("health_book_entries") == 1
    assert d.query("SELECT reason, stage, event_id FROM dead_letters") == [
        ("db_rejected", "sink", bad["event_id"])
    ]


def _health_book_record(n: int, cost: int) -> dict[str, Any]:
    event = _exam()
    return {
        "record_type": "EXAMINATION",
        "event_id": f"hb-{n}",
        "citizen_key": f"key-{n}",
        "so_cccd": event["so_cccd"],
        "ho_ten": event["ho_ten"],
        "ngay_sinh": event["ngay_sinh"],
        "gioi_tinh": 1,
        "ma_the_bhyt": event["ma_the_bhyt"],
        "ma_lk": f"LK{n}",
        "ma_cskcb": "79001",
        "facility_name": "Bệnh viện Thống Nhất",
        "facility_level": "central",
        "facility_district": "Tân Bình",
        "facility_province": "79",
        "ma_dkbd": "79005",
        "registration_province": "79",
        "scope": "IN_PROVINCE",
        "ma_loai_kcb": "01",
        "visit_type": "outpatient exam",
        "ma_benh_chinh": "J06.9",
        "ma_benh_kt": None,
        "ngay_vao": event["ngay_vao"],
        "ngay_ra": event["ngay_ra"],
        "ket_qua_dtri": 1,
        "ma_loai_rv": 1,
        "t_tongchi_bv": cost,
        "t_tongchi_bh": 0,
        "t_bhtt": 0,
        "has_referral": False,
        "has_appointment": False,
        "published_at": 0,
        "processed_at": 0,
    }


def test_every_reason_code_has_exactly_one_minimal_failing_record() -> None:
    sink = {"report_invalid", "db_rejected"}
    cases = [*VALIDATOR_CASES, *INTAKE_CASES, *sink]
    assert sorted(cases) == sorted(REASONS), "a reason code without its test, or one twice"


# -- text passes untouched --------------------------------------------------------------------
NAMES = [
    "Nguyễn Thị Ánh Tuyết",
    "Huỳnh Ngọc Phượng",
    "Nguye\u0302\u0303n Va\u0306n An",  # decomposed (NFD) diacritics, kept as sent
    "Đặng Hữu Phước — 黎文悅 😷",
    "O'Brien\"); DROP TABLE health_book_entries;--\t\x07",
]


@pytest.mark.parametrize("name", NAMES)
def test_vietnamese_and_hostile_names_pass_untouched(name: str) -> None:
    event = _exam(name=name)
    result = _intake().process([_message(CODEC.encode(SUBJECTS.EXAMINATION_EVENT, event))])
    assert result.accepted == 1, result.dead_letters
    [items] = result.by_partition.values()
    assert items[0]["event"]["ho_ten"] == name  # byte for byte


def test_other_scripts_digits_are_not_digits() -> None:
    """Python's \\d and str.isdigit() accept e.g. fullwidth digits: the rules must not."""
    validator = Validator(FacilityRegistry.from_reference())
    fullwidth = str.maketrans("0123456789", "０１２３４５６７８９")
    cases = {
        "citizen_id_format": _exam(so_cccd=f.citizen_id(1).translate(fullwidth)),
        "date_invalid": _exam(ngay_sinh="19850615".translate(fullwidth) + "0000"),
        "icd10_main_invalid": _exam(ma_benh_chinh="J0６.9"),
        "hi_card_format": _exam(ma_the_bhyt="GD479" + "0000000001".translate(fullwidth)),
        "code_not_in_list": _exam(ma_doituong_kcb="1.１"),
    }
    for reason, event in cases.items():
        rejection = validator.validate(event, NOW)
        assert rejection is not None and rejection.reason == reason, (reason, rejection)


# -- the documentation -------------------------------------------------------------------------
def test_docs_document_every_reason_code() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    match = re.search(r"<!-- reasons:begin -->\n(.*?)<!-- reasons:end -->", text, re.S)
    assert match, "docs/reference.md lacks the reasons markers"
    assert match.group(1).strip() == reasons_markdown().strip(), (
        "docs/reference.md: the reason-code table is stale: run `make docs`"
    )
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", match.group(1), re.M))
    assert documented == set(REASONS)


def test_reason_codes_are_stable_identifiers() -> None:
    for code, (meaning, fix) in REASONS.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", code), code
        assert meaning.strip() and fix.strip(), code
