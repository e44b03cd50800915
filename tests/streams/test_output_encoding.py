"""The health-book stage's outputs are encoded with cavro (``AvroCodec.fast_writer``): the
bytes must be fastavro's, and a record cavro refuses must fail (or pass) as with fastavro."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest

from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, EncodeError
from schemas.reference import FacilityRegistry
from simulation.simulator import CitySimulator, SimulationConfig
from streams.citizen_state import CitizenStateMachine, StateConfig
from streams.intake import Intake, SourceMessage
from streams.internal import decode_validated, encode_chunks

OUTPUTS = {
    SUBJECTS.HEALTH_BOOK_RECORD: "health_book",
    SUBJECTS.REFERRAL_RECORD: "referrals",
    SUBJECTS.APPOINTMENT_RECORD: "appointments",
    SUBJECTS.EPISODE_WITHDRAWN: "withdrawn",
}


@pytest.fixture(scope="module")
def emitted() -> dict[str, list[dict[str, Any]]]:
    """The output records of 3,000 simulated events through the intake and the state
    machine."""
    settings = Settings(kafka_partitions=4)
    codec = AvroCodec()
    now_ms = int(time.time() * 1000)
    encode_batch = codec.writer(SUBJECTS.EXAMINATION_BATCH)
    events = list(CitySimulator(SimulationConfig(events=3000, seed=7)).events())
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
