"""cavro in the codec: the health-book stage's outputs are encoded with it
(``AvroCodec.fast_writer``), and bodies of a subject's newest schema decoded with it. The
bytes must be fastavro's, the decoded records fastavro's (types included), and what cavro
refuses must fail, or pass, as with fastavro: the same records and reason codes."""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from typing import Any

import pytest

from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, DecodeError, EncodeError
from schemas.reference import FacilityRegistry
from simulation.simulator import CitySimulator, SimulationConfig
from streams.citizen_state import CitizenStateMachine, StateConfig
from streams.intake import Intake, SourceMessage
from streams.internal import decode_validated, encode_chunks
from tests.faults.corpus import broker_corpus

OUTPUTS = {
    SUBJECTS.HEALTH_BOOK_RECORD: "health_book",
    SUBJECTS.REFERRAL_RECORD: "referrals",
    SUBJECTS.APPOINTMENT_RECORD: "appointments",
    SUBJECTS.EPISODE_WITHDRAWN: "withdrawn",
}


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(CitySimulator(SimulationConfig(events=3000, seed=7)).events())


@pytest.fixture(scope="module")
def batches(events: list[dict[str, Any]]) -> list[bytes]:
    """The events as ExaminationBatch values of up to 100 events."""
    encode = AvroCodec().writer(SUBJECTS.EXAMINATION_BATCH)
    return [
        encode({"ma_cskcb": events[i]["ma_cskcb"], "events": events[i : i + 100]})
        for i in range(0, len(events), 100)
    ]


@pytest.fixture(scope="module")
def emitted(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The output records of 3,000 simulated events through the intake and the state
    machine."""
    settings = Settings(kafka_partitions=4)
    codec = AvroCodec()
    now_ms = int(time.time() * 1000)
    encode_batch = codec.writer(SUBJECTS.EXAMINATION_BATCH)
    messages = [
        SourceMessage(
            encode_batch({"ma_cskcb": e["ma_cskcb"], "events": [e]}), "examinations", 0, i, now_ms
        )
        for i, e in enumerate(events)
    ]
    intake = Intake(
        codec, FacilityRegistry.from_reference(), CitizenKeyer.from_settings(settings), 4
    )
    result = intake.process(messages)
    machine = CitizenStateMachine(StateConfig.from_settings(settings))
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)
    store: dict[str, Any] = {}
    for partition, items in result.by_partition.items():
        batch = [decode_validated(v, codec) for v in encode_chunks(items)]
        out = machine.process(partition, batch, store, now_ms)
        store.update({k: v for k, v in out.state.items() if v is not None})
        for subject, name in OUTPUTS.items():
            records[subject] += getattr(out, name)
    return records


def test_the_same_bytes_as_fastavro(emitted: dict[str, list[dict[str, Any]]]) -> None:
    codec = AvroCodec()
    assert len(emitted[SUBJECTS.HEALTH_BOOK_RECORD]) > 3000
    assert emitted[SUBJECTS.REFERRAL_RECORD] and emitted[SUBJECTS.APPOINTMENT_RECORD]
    for subject, records in emitted.items():
        fast, slow = codec.fast_writer(subject), codec.writer(subject)
        for record in records:
            assert fast(record) == slow(record)


def test_what_cavro_refuses_fails_as_with_fastavro(
    emitted: dict[str, list[dict[str, Any]]],
) -> None:
    codec = AvroCodec()
    fast, slow = (
        codec.fast_writer(SUBJECTS.HEALTH_BOOK_RECORD),
        codec.writer(SUBJECTS.HEALTH_BOOK_RECORD),
    )
    record = emitted[SUBJECTS.HEALTH_BOOK_RECORD][0]
    for field, value in [("citizen_key", None), ("published_at", "soon"), ("t_bhtt", 2**70)]:
        with pytest.raises(EncodeError):
            slow({**record, field: value})
        with pytest.raises(EncodeError):
            fast({**record, field: value})
    missing = {k: v for k, v in record.items() if k != "version"}  # a field with a default
    assert fast(missing) == slow(missing)
    extra = {**record, "not_in_the_schema": 1}
    assert fast(extra) == slow(extra)


class _FastavroOnly(AvroCodec):
    """The codec as it decoded before cavro: every body through fastavro."""

    def __init__(self) -> None:
        super().__init__()
        self._fast_readers = _NoFastReader()


class _NoFastReader(dict):  # type: ignore[type-arg]
    def get(self, *_: object) -> Any:
        return lambda _data: None


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _outcome(codec: AvroCodec, data: bytes) -> Any:
    try:
        return codec.decode(data).record
    except DecodeError as exc:
        return exc.reason


def test_decoding_gives_fastavro_s_records_and_reasons(
    emitted: dict[str, list[dict[str, Any]]], batches: list[bytes]
) -> None:
    """The same record (types included) or the same reason as fastavro alone, for the
    records and for bodies mutated at random (bytes changed, cut, added, inserted)."""
    codec, reference = AvroCodec(), _FastavroOnly()
    bodies = batches + [
        codec.encode(subject, record)
        for subject, records in emitted.items()
        for record in records[:500]
    ]
    for body in bodies:
        assert _same(codec.decode(body).record, reference.decode(body).record)
    rng = random.Random(18)
    outcomes: Counter[bool] = Counter()
    for _ in range(6000):
        body = bytearray(rng.choice(bodies))
        how = rng.random()
        if how < 0.4:
            for _ in range(rng.randint(1, 4)):
                body[rng.randrange(5, len(body))] = rng.randrange(256)
        elif how < 0.6:
            body = body[: rng.randrange(5, len(body))]
        elif how < 0.8:
            body += rng.randbytes(rng.randint(1, 5))
        else:
            at = rng.randrange(5, len(body))
            body[at:at] = rng.randbytes(rng.randint(1, 3))
        mine, theirs = _outcome(codec, bytes(body)), _outcome(reference, bytes(body))
        assert _same(mine, theirs), bytes(body).hex()
        outcomes[isinstance(theirs, dict)] += 1
    assert outcomes[True] > 100 and outcomes[False] > 1000  # both kinds were tried


def test_a_body_with_bytes_after_its_record_is_refused(
    emitted: dict[str, list[dict[str, Any]]],
) -> None:
    codec = AvroCodec()
    body = codec.encode(SUBJECTS.HEALTH_BOOK_RECORD, emitted[SUBJECTS.HEALTH_BOOK_RECORD][0])
    for tail in (b"\x00", b"\x02ab", bytes(range(256))):
        with pytest.raises(DecodeError) as caught:
            codec.decode(body + tail)
        assert caught.value.reason == "trailing_bytes"


def test_the_fault_suite_s_bad_input_decodes_as_with_fastavro() -> None:
    """Allocation bombs, invalid UTF-8, a union branch out of range, over-long bodies ...:
    the same record or reason code."""
    codec, reference = AvroCodec(), _FastavroOnly()
    cases = broker_corpus(codec)
    assert len(cases) > 50
    for case in cases:
        assert _same(_outcome(codec, case.value or b""), _outcome(reference, case.value or b"")), (
            case.kind
        )
