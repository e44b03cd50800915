"""The citizens table's changelog encoding (streams/state_codec.py): pure, no broker."""

from __future__ import annotations

import hashlib
import json

import pytest

from streams.state_codec import (
    KEY_FORMAT,
    CitizenKeyCodec,
    decode_key,
    decode_value,
    encode_json,
    encode_key,
    encode_value,
    is_legacy,
    json_key,
    legacy,
)


def citizen(n: int) -> str:
    return hashlib.sha256(f"c{n}".encode()).hexdigest()[:32]


def test_a_citizen_key_is_a_format_byte_and_its_16_raw_bytes() -> None:
    for n in range(1000):
        key = citizen(n)
        raw = encode_key(key)
        assert len(raw) == 17 and raw[:1] == KEY_FORMAT and raw[1:] == bytes.fromhex(key)
        assert decode_key(raw) == key
        # the format before: a JSON string of 34 bytes, still read
        assert json_key(key) == encode_json(key) == f'"{key}"'.encode()
        assert decode_key(json_key(key) or b"") == key
    assert decode_key(KEY_FORMAT + bytes(16)) == "0" * 32


@pytest.mark.parametrize(
    "key",
    [
        "__clock__:3",  # the partitions' clocks
        "A" * 32,  # not what the keyer derives (lowercase): would not round-trip
        "0" * 31,
        "0" * 33,
        "g" * 32,
        "",
        "đ" * 16,
    ],
)
def test_other_keys_stay_json(key: str) -> None:
    assert encode_key(key) == encode_json(key)
    assert json_key(key) is None
    assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize("raw", [KEY_FORMAT + bytes(15), KEY_FORMAT + bytes(17), b"1", b"[1]"])
def test_a_malformed_key_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_key(raw)


def test_binary_and_json_keys_differ_in_their_first_byte() -> None:
    """What lets every reader take either: a JSON string starts with a quote."""
    assert KEY_FORMAT != b'"' and KEY_FORMAT != b"_"  # _: Faust's persisted-offset key
    assert all(encode_json(citizen(n))[:1] == b'"' for n in range(10))


def test_values_stay_compact_json() -> None:
    state = {"i": 1, "v": [["79001", 1_700_000_000_000, "e1"]], "r": {}, "d": {"r:x": 5}}
    assert encode_value(1) == b"1"
    assert encode_value(state) == json.dumps(state, separators=(",", ":")).encode()
    assert decode_value(encode_value(state)) == state


def test_faust_reads_both_formats_with_the_tables_key_codec() -> None:
    """Faust's recovery of the memory store: a binary key is the citizen's key, a citizen's
    JSON key its legacy entry (so that its tombstone and the binary record are independent),
    other JSON keys themselves."""
    codec = CitizenKeyCodec()
    key = citizen(1)
    assert codec.loads(encode_key(key)) == key
    assert codec.loads(encode_json(key)) == legacy(key) and is_legacy(legacy(key))
    assert codec.loads(b'"__clock__:0"') == "__clock__:0"
    assert codec.dumps(key) == encode_key(key)
    assert codec.dumps(legacy(key)) == encode_json(key)
    assert codec.dumps("__clock__:0") == b'"__clock__:0"'
    assert not is_legacy(key) and not is_legacy(("other", key))
