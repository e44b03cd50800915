"""The citizens table's changelog encoding: keys in two formats, values in compact JSON. Pure.

* **binary key** (written since issue 17): :data:`KEY_FORMAT` followed by the 16 raw bytes of
  a citizen key (the 32 lowercase hex characters ``ehb.privacy`` derives): 17 bytes.
* **JSON key** (the original format, still read): the key as a JSON string, 34 bytes for a
  citizen key. Keys that are not citizen keys (the partitions' clocks, ``__clock__:<p>``)
  stay JSON: there are a handful.

A JSON key starts with ``"``, a binary one with :data:`KEY_FORMAT`: a reader tells them apart
by the first byte, and every reader of the changelog or of the local store accepts both
(docs/state-store.md, "The encoding"). Values stay compact JSON: the value of most citizens is
``1`` (one byte either way), and the readers' byte-level skip of them
(``RocksPartitionView.timer_candidates``) keeps working.

Faust decodes the changelog's keys itself in its recovery (and before handing a record to the
RocksDB store); the table is given :class:`CitizenKeyCodec` for that. For the memory store,
which keeps decoded keys, a citizen's JSON-keyed entry decodes to :func:`legacy` of its key,
not to the key itself: the two entries of a citizen written by the migration (its binary key,
then its JSON key's tombstone) are then independent whatever order Faust applies them in.
"""

from __future__ import annotations

import json
from typing import Any

from faust.serializers import codecs

__all__ = [
    "CODEC_NAME",
    "KEY_FORMAT",
    "CitizenKeyCodec",
    "decode_key",
    "decode_value",
    "encode_json",
    "encode_key",
    "encode_value",
    "is_legacy",
    "json_key",
    "legacy",
    "register_codec",
]

#: the first byte of a binary key (a JSON key starts with ``"``, Faust's offset key with ``_``)
KEY_FORMAT = b"\x01"
_HEX = frozenset("0123456789abcdef")
#: the name the table's key codec is registered under in Faust
CODEC_NAME = "ehb-citizen-key"

#: one encoder for the changelog (json.dumps with arguments builds a new one per call)
_JSON = json.JSONEncoder(separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """Compact JSON, as the table's values (and its keys before issue 17) are written."""
    return _JSON.encode(value).encode()


def _is_citizen_key(key: str) -> bool:
    return len(key) == 32 and _HEX.issuperset(key)


def encode_key(key: str) -> bytes:
    """The changelog key of ``key``: binary for a citizen key, JSON otherwise (clock keys)."""
    if _is_citizen_key(key):
        return KEY_FORMAT + bytes.fromhex(key)
    return encode_json(key)


def json_key(key: str) -> bytes | None:
    """The JSON changelog key an older worker wrote ``key`` under, if that differs from
    :func:`encode_key` (a citizen key); ``None`` for keys that are JSON in both formats."""
    return encode_json(key) if _is_citizen_key(key) else None


def decode_key(raw: bytes) -> str:
    """A changelog or local-store key, in either format."""
    if raw[:1] == KEY_FORMAT:
        if len(raw) != 17:
            raise ValueError(f"a binary key has 17 bytes, not {len(raw)}")
        return raw[1:].hex()
    key = json.loads(raw)
    if not isinstance(key, str):
        raise ValueError("a JSON key of the citizens table is a string")
    return key


def encode_value(value: Any) -> bytes:
    return encode_json(value)


def decode_value(raw: bytes) -> Any:
    return json.loads(raw)


#: what a citizen's JSON-keyed entry is called in the memory store (see the module docstring)
LegacyKey = tuple[str, str]
_LEGACY = "json"


def legacy(key: str) -> LegacyKey:
    """The memory store's key of ``key``'s JSON-keyed entry."""
    return (_LEGACY, key)


def is_legacy(key: object) -> bool:
    return type(key) is tuple and len(key) == 2 and key[0] == _LEGACY


class CitizenKeyCodec(codecs.Codec):
    """Faust's codec of the table's keys: both formats read; a citizen's JSON key is read as
    :func:`legacy` of the key. Writes the binary format (Faust never writes this table: the
    agent does, ``streams.health_book_agent``)."""

    def _loads(self, s: bytes) -> Any:
        if s[:1] == KEY_FORMAT:
            return decode_key(s)
        key = decode_key(s)
        return legacy(key) if _is_citizen_key(key) else key

    def _dumps(self, s: Any) -> bytes:
        if is_legacy(s):
            return encode_json(s[1])
        return encode_key(s)


def register_codec() -> str:
    """Register :class:`CitizenKeyCodec` with Faust (idempotent); returns its name."""
    codecs.register(CODEC_NAME, CitizenKeyCodec())
    return CODEC_NAME
