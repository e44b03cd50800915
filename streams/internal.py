"""The internal topic's format (``examinations-by-citizen``): written and read only by workers.

A value is the structure of ``vn.ehb.internal.ValidatedBatch``
(schemas/avro/validated_batch.*.avsc: ``items`` = validated, enriched examinations; ``sources``
= the intake's progress per input partition), serialised as MessagePack behind a one-byte
marker ``0x01``. MessagePack is several times cheaper than Avro in each direction (figures:
benchmarks/README.md), and this hop is paid twice for every event; the topic's consumers are
our own workers, so a schema-less encoding of a documented structure is enough. msgspec writes
and reads it (the same bytes as ``msgpack.packb(..., use_bin_type=True)``, in ~half the time
of the msgpack package each way). A value in the
Confluent wire format (first byte ``0x00``, Avro) is still decoded, so the Avro form stays
valid on the topic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec

from schemas import SUBJECTS, AvroCodec, DecodeError

__all__ = [
    "MAX_ITEMS_PER_MESSAGE",
    "MSGPACK_MARKER",
    "decode_validated",
    "encode_chunks",
    "encode_validated",
]

MSGPACK_MARKER = b"\x01"
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()

#: events per internal message (~1 kB each): small enough that the buffers of the stateful
#: agent (Faust's stream buffer, aiokafka's prefetch) stay small in memory
MAX_ITEMS_PER_MESSAGE = 100


def encode_validated(
    items: Sequence[dict[str, Any]], sources: Sequence[dict[str, Any]] = ()
) -> bytes:
    return MSGPACK_MARKER + _ENCODER.encode({"items": items, "sources": sources})


def encode_chunks(
    items: Sequence[dict[str, Any]], sources: Sequence[dict[str, Any]] = ()
) -> Iterator[bytes]:
    """``items`` as internal messages of at most MAX_ITEMS_PER_MESSAGE events each."""
    for i in range(0, len(items), MAX_ITEMS_PER_MESSAGE):
        yield encode_validated(items[i : i + MAX_ITEMS_PER_MESSAGE], sources)


def decode_validated(
    value: bytes | None, codec: AvroCodec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(items, sources) of an internal message; DecodeError when it is neither format."""
    if value and value[:1] == MSGPACK_MARKER:
        try:
            record = _DECODER.decode(memoryview(value)[1:])
            return record["items"], record.get("sources") or []
        except (ValueError, KeyError, TypeError) as exc:  # msgspec.DecodeError is a ValueError
            raise DecodeError("malformed_msgpack", f"{type(exc).__name__}: {exc}"[:300]) from exc
    record = codec.decode(value, (SUBJECTS.VALIDATED_BATCH,)).record
    # the MessagePack form carries withdrawals among the items, with the same fields
    return record["items"] + (record.get("withdrawals") or []), record.get("sources") or []
