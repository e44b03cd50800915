"""Oversized input through the real pipeline: every input gets an outcome, whatever its size.

A dead letter that carried a large original whole would exceed the producers'
``message.max.bytes`` (librdkafka: 1,000,000 bytes); its produce failed, the intake agent
crashed and the input ended with neither a row nor a dead letter. Now a dead letter keeps a
bounded prefix of its original (``EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES``, 64 KiB) with the full
original's length and SHA-256, and the full original is read back from its source position.

Sizes: Apache Kafka accepts messages up to ``message.max.bytes`` = 1,048,588 bytes by default,
so a facility can send an event with a 1 MB text field; the embedded Tansu has no limit at all
(it stored and served 99 MB messages); the worker fetches 4 MiB a partition
(``streams/app.py``). The largest inputs here are 8 MiB, twice that fetch size.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.kafka import producer_config
from schemas import SUBJECTS
from schemas.codec import wire_header
from schemas.dead_letters import DEFAULT_ORIGINAL_MAX_BYTES, IDENTIFIER_MAX_CHARS
from schemas.topics import DEAD_LETTER, EXAMINATIONS
from tests.faults.corpus import UNDECODABLE
from tests.support import factories as f

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MIB = 1024 * 1024
#: the largest inputs: twice the worker's per-partition fetch size
LARGEST = 8 * MIB


def _sized(build: Callable[[int], bytes], size: int) -> bytes:
    """``build(n)`` padded with ``n`` characters, ``n`` chosen so the value has ``size`` bytes."""
    n = size
    for _ in range(8):
        value = build(n)
        if len(value) == size:
            return value
        n += size - len(value)
    raise AssertionError(f"cannot build a value of exactly {size} bytes")


def _produce(d: Deployment, values: list[bytes], key: bytes) -> None:
    """Like a facility's producer with ``message.max.bytes`` raised for large messages."""
    producer = Producer(producer_config(d.settings, **{"message.max.bytes": 2 * LARGEST}))
    errors: list[str] = []
    for value in values:
        producer.produce(
            d.settings.topic(EXAMINATIONS),
            value,
            key,
            on_delivery=lambda err, _msg: err and errors.append(str(err)),
        )
    assert producer.flush(60) == 0
    assert not errors, errors


def test_oversized_inputs_each_get_one_bounded_dead_letter(deploy: DeploymentFactory) -> None:
    d = deploy(partitions=1)
    codec = d.codec
    encode_event = codec.writer(SUBJECTS.EXAMINATION_EVENT)
    rng = random.Random(13)

    # 1. one event whose text field is 1 MB: above the producers' 1,000,000 bytes
    text_event = encode_event(f.exam(ma_khoa="K" * 1_000_000))
    # 2. a batch of exactly LARGEST bytes: an event of a stranger facility whose event id and
    #    facility code (the dead letter's key) are 1 MiB each, and a good event
    stranger: dict[str, Any] = {}

    def batch_of(n: int) -> bytes:
        stranger.clear()
        stranger.update(
            f.exam(9001, facility="7" * MIB, event_id="E" * MIB, ma_khoa="K" * max(n, 0))
        )
        return codec.encode(
            SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79001", "events": [stranger, batched_good]}
        )

    batched_good = f.exam(facility="79001")
    batch = _sized(batch_of, LARGEST)
    # 3. random bytes, and 4. random bytes behind a valid header, LARGEST bytes each
    noise = rng.randbytes(LARGEST)
    assert noise[0] != 0
    event_id = codec.wire_id(codec.catalog.latest(SUBJECTS.EXAMINATION_EVENT))
    noisy_body = wire_header(event_id) + rng.randbytes(LARGEST - 5)

    # (input, reasons, event_index, the full original, its key); each followed by a good event
    cases = [
        (text_event, {"text_too_long"}, None, text_event, b"79001"),
        (batch, {"batch_facility_mismatch"}, 0, encode_event(stranger), None),
        (noise, {"bad_magic_byte"}, None, noise, None),
        (noisy_body, UNDECODABLE, None, noisy_body, None),
    ]
    good = [f.exam(facility="79002") for _ in cases]
    values = []
    for (value, *_), event in zip(cases, good, strict=True):
        values += [value, encode_event(event)]
    _produce(d, values, key=b"79001")

    wait_until(
        lambda: (
            d.count("dead_letters") >= len(cases)
            and d.count("health_book_entries") >= len(good) + 1
        ),
        60,
        message="a dead letter per oversized input and every good event persisted",
    )

    by_offset = {m.offset(): m.value() for m in d.read_topic("examinations", timeout=30)}
    offsets = sorted(by_offset)
    assert len(offsets) == 2 * len(cases)
    rows = {
        r[0]: r[1:]
        for r in d.query(
            "SELECT source_offset, reason, event_index, length(original), original,"
            " original_length, original_sha256, original_truncated FROM dead_letters"
        )
    }
    topic = {}
    for message in d.read_topic(DEAD_LETTER):
        assert len(message.value()) < DEFAULT_ORIGINAL_MAX_BYTES + 10_000
        record = codec.decode(message.value()).record
        assert record["source_offset"] not in topic, "two dead letters for one input"
        topic[record["source_offset"]] = (message.key(), record)
    assert len(rows) == len(topic) == len(cases)

    for i, (_, reasons, index, original, key) in enumerate(cases):
        offset = offsets[2 * i]
        digest = hashlib.sha256(original).hexdigest()
        prefix = original[:DEFAULT_ORIGINAL_MAX_BYTES]
        reason, event_index, stored, stored_prefix, length, sha256, truncated = rows[offset]
        assert reason in reasons and event_index == index
        assert (stored, bytes(stored_prefix)) == (len(prefix), prefix)
        assert (length, sha256, truncated) == (len(original), digest, True)
        message_key, record = topic[offset]
        assert record["reason"] == reason and record["original"] == prefix
        assert (
            record["original_length"],
            record["original_sha256"],
            record["original_truncated"],
        ) == (len(original), digest, True)
        assert len(record["message"]) <= 1000
        if key is not None:
            assert message_key == key
        elif index is not None:  # the stranger's facility code, bounded
            assert message_key is not None and len(message_key) <= 4 * IDENTIFIER_MAX_CHARS
            assert len(record["event_id"]) == IDENTIFIER_MAX_CHARS

    # the full original, read back from the source position (docs/reference.md)
    for i, (_, _, index, _, _) in enumerate(cases):
        source = by_offset[offsets[2 * i]]
        if index is not None:
            source = encode_event(codec.decode(source).record["events"][index])
        assert hashlib.sha256(source).hexdigest() == rows[offsets[2 * i]][5]

    persisted = {r[0] for r in d.query("SELECT event_id FROM health_book_entries")}
    assert {e["event_id"] for e in [*good, batched_good]} <= persisted
    assert d.count("health_book_entries") == len(good) + 1
    (worker,) = d.workers
    assert worker.proc.poll() is None, "the worker exited"
    log = worker.log.read_text(errors="replace")
    assert "Traceback" not in log and "MSG_SIZE_TOO_LARGE" not in log, log[-3000:]
    assert "KKKKKKKK" not in log and "EEEEEEEE" not in log  # no input in the log
