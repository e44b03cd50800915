"""Property-based fuzzing (hypothesis) of every parser at the pipeline's edges: the Avro decoder,
the validator, the whole intake, the sink's row building, the XML dossier parser and the
JSON Lines parser of ``ehb publish``.

The properties: no exception other than the documented rejection, no case slower than a
second (no hang, no allocation bomb), a dead letter the worker can encode, accounting that
adds up (every event in is accepted or dead-lettered), and the next good input still
accepted. ``make faults`` generates 100,000+ cases; the default suite a few hundred per target.
"""

from __future__ import annotations

import copy
import json
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehb.consumer import Record
from ehb.privacy import CitizenKeyer
from producers.dossier import DossierRejected, encode_dossier, parse_dossier
from producers.jsonl import event_from_json
from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.reasons import GATEWAY_REASONS, REASONS
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ
from simulation.simulator import CitySimulator, SimulationConfig
from sinks.postgres import _REFUSED, PostgresWriter, _Batch
from streams.intake import INPUT_SUBJECTS, Intake, SourceMessage
from streams.internal import encode_validated
from streams.validation import Validator
from tests.faults.conftest import FaultReport
from tests.support import factories as f

CODEC = AvroCodec()
REGISTRY = FacilityRegistry.from_reference()
KEYER = CitizenKeyer(b"fuzz" * 8)
DECODE_REASONS = frozenset(
    {
        "empty_message",
        "bad_magic_byte",
        "truncated_header",
        "unknown_schema_id",
        "unexpected_schema",
        "malformed_avro",
        "trailing_bytes",
    }
)
#: no hang: a case takes well under a millisecond; the bound leaves room for a shared machine
PER_CASE_S = 5.0

#: generated cases per target: (default suite, make faults); the full sizes add up to 100,000+
COUNTS = {
    "decoder, arbitrary bytes": (150, 20_000),
    "decoder, mutated messages": (150, 20_000),
    "validator, near-valid events": (150, 20_000),
    "intake, mutated messages": (100, 15_000),
    "sink rows, schema-generated records": (100, 10_000),
    "gateway parser, mutated dossiers": (60, 12_000),
    "ehb publish JSON lines": (60, 5_000),
}

SAMPLE_EVENTS = list(
    CitySimulator(
        SimulationConfig(
            events=400, seed=17, invalid_share=0, referral_share=0.1, appointment_share=0.3
        )
    ).events()
)
SAMPLE_MESSAGES = (
    [CODEC.encode(SUBJECTS.EXAMINATION_EVENT, e) for e in SAMPLE_EVENTS[:40]]
    + [
        CODEC.encode(SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": e["ma_cskcb"], "events": [e]})
        for e in SAMPLE_EVENTS[40:80]
    ]
    + [
        CODEC.encode(
            SUBJECTS.EXAMINATION_BATCH,
            {
                "ma_cskcb": "79001",
                "events": [dict(e, ma_cskcb="79001") for e in SAMPLE_EVENTS[i : i + 5]],
            },
        )
        for i in range(80, 120, 5)
    ]
)
GOOD = CODEC.encode(SUBJECTS.EXAMINATION_EVENT, f.exam())


def fuzz(
    target: str,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], None],
    report: FaultReport,
    full: bool,
) -> None:
    """Run ``check`` on ``COUNTS[target]`` generated cases; count them in the report."""
    n = COUNTS[target][1 if full else 0]
    ran = [0]

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Any) -> None:
        ran[0] += 1
        started = time.perf_counter()
        check(case)
        elapsed = time.perf_counter() - started
        assert elapsed < PER_CASE_S, f"{elapsed:.2f}s for one case"

    try:
        run()
    finally:
        report.fuzz[target] = report.fuzz.get(target, 0) + ran[0]


MODES = [
    pytest.param(False, id="quick"),
    pytest.param(
        True, marks=[pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(1800)], id="full"
    ),
]


# -- strategies ---------------------------------------------------------------------------------
def _mutated(base: list[bytes]) -> st.SearchStrategy[bytes]:
    """A valid message damaged by a few byte-level edits."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(base)))
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(("flip", "set", "delete", "insert", "truncate", "dup")))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[at] = draw(st.sampled_from((0, 1, 0x7F, 0x80, 0xFF, 0x3F)))
            elif op == "delete":
                del data[at : at + draw(st.integers(1, 16))]
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            elif op == "truncate":
                del data[at:]
            elif op == "dup":
                data[at:at] = data[at : at + draw(st.integers(1, 32))]
        return bytes(data)

    return build()


def _with_header() -> st.SearchStrategy[bytes]:
    ids = st.sampled_from(sorted(CODEC.catalog.by_id)) | st.integers(-(2**31), 2**31 - 1)
    return st.builds(
        lambda i, body: b"\x00" + struct.pack(">i", i) + body, ids, st.binary(max_size=1024)
    )


TEXT = st.one_of(
    st.text(max_size=24),
    st.text(alphabet="0123456789", min_size=0, max_size=14),
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "01",
            "11",
            "1.1",
            "79001",
            "79999",
            "J06.9",
            "XYZ",
            "202403040800",
            "202402300800",
            "20240304",
            "209901010800",
            "2024-03-04",
            "079085000001",
            "GD479000000001",
            "\x00",
            "٠٧٩",
            "２０２４",
        ]
    ),
    st.text(min_size=90, max_size=300),
)
INT = st.one_of(st.integers(-5, 12), st.integers(-(2**31), 2**31 - 1))
LONG = st.one_of(st.integers(-5, 10**7), st.integers(-(2**63), 2**63 - 1))


def _avro(schema: Any) -> st.SearchStrategy[Any]:
    """Values of an (expanded) Avro schema."""
    if isinstance(schema, list):
        return st.one_of([_avro(s) for s in schema])
    if isinstance(schema, str):
        return {
            "null": st.none(),
            "string": TEXT,
            "int": INT,
            "long": LONG,
            "boolean": st.booleans(),
            "double": st.floats(allow_nan=True),
            "float": st.floats(width=32),
            "bytes": st.binary(max_size=64),
        }[schema]
    kind = schema["type"]
    if kind == "record":
        return st.fixed_dictionaries(
            {field["name"]: _avro(field["type"]) for field in schema["fields"]}
        )
    if kind == "enum":
        return st.sampled_from(schema["symbols"])
    if kind == "array":
        return st.lists(_avro(schema["items"]), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _avro(schema["values"]), max_size=3)
    return _avro(kind)


EVENT_SCHEMA = CODEC.catalog.expanded_schema(CODEC.catalog.latest(SUBJECTS.EXAMINATION_EVENT))
EVENT_FIELDS = {field["name"]: field["type"] for field in EVENT_SCHEMA["fields"]}


@st.composite
def near_valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid simulated event with one to three fields replaced by any value of their type."""
    event = copy.deepcopy(draw(st.sampled_from(SAMPLE_EVENTS)))
    for name in draw(st.lists(st.sampled_from(sorted(EVENT_FIELDS)), min_size=1, max_size=3)):
        event[name] = draw(_avro(EVENT_FIELDS[name]))
    return event


# -- properties ---------------------------------------------------------------------------------
def _check_decode(data: bytes) -> None:
    try:
        decoded = CODEC.decode(data, INPUT_SUBJECTS)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS, exc.reason
        return
    assert isinstance(decoded.record, dict)
    CODEC.encode(decoded.subject, decoded.record)  # what decodes, encodes again


def _intake() -> Intake:
    return Intake(CODEC, REGISTRY, KEYER, 4)


INTAKE = _intake()
VALIDATOR = Validator(REGISTRY)
ENCODE_DEAD_LETTER = CODEC.writer(SUBJECTS.DEAD_LETTER)


def _check_intake(data: bytes) -> None:
    result = INTAKE.process([SourceMessage(data, "ehb.examinations", 0, 1, 0)])
    assert result.events_in == result.accepted + len(result.dead_letters)
    for _, dead in result.dead_letters:
        assert dead["reason"] in REASONS, dead["reason"]
        ENCODE_DEAD_LETTER(dead)
    for items in result.by_partition.values():
        encode_validated(items)
    after = INTAKE.process([SourceMessage(GOOD, "ehb.examinations", 0, 2, 0)])
    assert after.accepted == 1


def _check_validator(event: dict[str, Any]) -> None:
    from datetime import datetime

    now = datetime(2025, 1, 1, tzinfo=VN_TZ)
    try:
        encoded = CODEC.encode(SUBJECTS.EXAMINATION_EVENT, event)
    except Exception:  # noqa: BLE001 - not an event any producer could send
        return
    rejection = VALIDATOR.validate(CODEC.decode(encoded).record, now)
    if rejection is not None:
        assert rejection.reason in REASONS, rejection.reason
        assert event["so_cccd"] not in rejection.message or len(event["so_cccd"]) < 4
    _check_intake(encoded)


SINK_SUBJECTS = (
    SUBJECTS.HEALTH_BOOK_RECORD,
    SUBJECTS.REFERRAL_RECORD,
    SUBJECTS.APPOINTMENT_RECORD,
    SUBJECTS.DEAD_LETTER,
)
WRITER = PostgresWriter(lambda: None)  # type: ignore[arg-type, return-value]


@st.composite
def sink_records(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    subject = draw(st.sampled_from(SINK_SUBJECTS))
    schema = CODEC.catalog.expanded_schema(CODEC.catalog.latest(subject))
    return subject, draw(_avro(schema))


def _check_sink_row(case: tuple[str, dict[str, Any]]) -> None:
    subject, value = case
    try:
        encoded = CODEC.encode(subject, value)
        decoded = CODEC.decode(encoded, SINK_SUBJECTS)
    except DecodeError as exc:  # e.g. a timestamp beyond year 9999: the consumer dead-letters
        assert exc.reason in DECODE_REASONS
        return
    record = Record("ehb.health-book", 0, 5, None, 0, decoded.subject, decoded.record)
    try:
        _Batch().add(record)
    except _REFUSED as exc:  # refused: the sink writes a db_rejected dead letter instead
        _Batch().add_dead_letter(WRITER._poison(record, exc))


DOSSIERS = [encode_dossier(e["ma_cskcb"], [e]) for e in SAMPLE_EVENTS[:10]] + [
    encode_dossier("79001", [dict(e, ma_cskcb="79001") for e in SAMPLE_EVENTS[10:16]])
]


@st.composite
def mutated_dossiers(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(DOSSIERS))
    kind = draw(st.sampled_from(("bytes", "text", "base64", "prolog")))
    if kind == "bytes":
        return draw(_mutated([data]))
    text = data.decode()
    if kind == "text":  # a text node replaced by anything
        parts = text.split(">")
        at = draw(st.integers(1, len(parts) - 1))
        value = draw(st.text(max_size=40)).replace("<", "&lt;")
        head, _, tail = parts[at].partition("<")
        parts[at] = value + "<" + tail if tail else parts[at]
        del head
        return ">".join(parts).encode("utf-8", "surrogatepass")
    if kind == "base64":  # a table's base64 damaged
        start = text.index("<NOIDUNGFILE>") + len("<NOIDUNGFILE>")
        end = text.index("</NOIDUNGFILE>", start)
        content = bytearray(text[start:end].encode())
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(content) - 1))
            content[at] = draw(st.sampled_from(b"A=+/!*\n \x00\xc3"))
        return text[:start].encode() + bytes(content) + text[end:].encode()
    prolog = draw(
        st.sampled_from(
            (
                '<!DOCTYPE GIAMDINHHS [<!ENTITY a "x">]>',
                '<!DOCTYPE GIAMDINHHS SYSTEM "http://127.0.0.1:1/x.dtd">',
                "<!-- comment -->",
                "<?pi data?>",
            )
        )
    )
    return text.replace("?>", "?>" + prolog, 1).encode()


def _check_dossier(data: bytes) -> None:
    try:
        dossier = parse_dossier(data)
    except DossierRejected as exc:
        assert exc.reason in GATEWAY_REASONS
        return
    for event in dossier.events:
        CODEC.encode(SUBJECTS.EXAMINATION_EVENT, event)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(TEXT, inner, min_size=1, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(("event", "any", "text")))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "any":
        return json.dumps(draw(JSON_VALUES))
    event = copy.deepcopy(draw(st.sampled_from(SAMPLE_EVENTS)))
    for name in draw(st.lists(st.sampled_from(sorted(EVENT_FIELDS)), max_size=3)):
        if draw(st.booleans()):
            event.pop(name, None)
        else:
            event[name] = draw(JSON_VALUES)
    return json.dumps(event)


def _check_json_line(line: str) -> None:
    try:
        event = event_from_json(line, CODEC)
    except ValueError:
        return
    _check_intake(CODEC.encode(SUBJECTS.EXAMINATION_EVENT, event))


# -- the tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("full", MODES)
def test_decoder_on_arbitrary_bytes(fault_report: FaultReport, full: bool) -> None:
    fuzz(
        "decoder, arbitrary bytes",
        st.binary(max_size=2048) | _with_header(),
        _check_decode,
        fault_report,
        full,
    )


@pytest.mark.parametrize("full", MODES)
def test_decoder_on_mutated_messages(fault_report: FaultReport, full: bool) -> None:
    fuzz("decoder, mutated messages", _mutated(SAMPLE_MESSAGES), _check_decode, fault_report, full)


@pytest.mark.parametrize("full", MODES)
def test_validator_on_near_valid_events(fault_report: FaultReport, full: bool) -> None:
    fuzz("validator, near-valid events", near_valid_events(), _check_validator, fault_report, full)


@pytest.mark.parametrize("full", MODES)
def test_intake_on_mutated_messages(fault_report: FaultReport, full: bool) -> None:
    fuzz("intake, mutated messages", _mutated(SAMPLE_MESSAGES), _check_intake, fault_report, full)


@pytest.mark.parametrize("full", MODES)
def test_sink_rows_from_any_schema_valid_record(fault_report: FaultReport, full: bool) -> None:
    fuzz("sink rows, schema-generated records", sink_records(), _check_sink_row, fault_report, full)


@pytest.mark.parametrize("full", MODES)
def test_gateway_parser_on_mutated_dossiers(fault_report: FaultReport, full: bool) -> None:
    fuzz("gateway parser, mutated dossiers", mutated_dossiers(), _check_dossier, fault_report, full)


@pytest.mark.parametrize("full", MODES)
def test_publish_jsonl_parser(fault_report: FaultReport, full: bool) -> None:
    fuzz("ehb publish JSON lines", json_lines(), _check_json_line, fault_report, full)


def test_full_sizes_add_up_to_100_000() -> None:
    assert sum(full for _, full in COUNTS.values()) >= 100_000
