"""Avro in the Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.

Schema ids come from the catalog (``schemas/catalog.json``) or, when a Confluent-compatible
registry is configured, from that registry. Decoding always resolves the writer's schema to
the newest version of its subject (schema evolution), and fails with a stable reason code:

=====================  ==========================================================
``empty_message``      the value is empty (or a tombstone)
``bad_magic_byte``     the first byte is not 0: not the Confluent wire format
``truncated_header``   fewer than 5 bytes
``unknown_schema_id``  the id is neither in the catalog nor in the registry
``unexpected_schema``  a known schema, but not one this topic carries
``malformed_avro``     the body does not decode with the writer's schema
``trailing_bytes``     the body decodes but bytes are left over (over-long body)
=====================  ==========================================================
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cavro
from fastavro import schemaless_reader, schemaless_writer

from schemas.catalog import Catalog, SchemaEntry, load_catalog
from schemas.errors import DecodeError, EncodeError

__all__ = ["AvroCodec", "Decoded", "MAGIC_BYTE", "wire_header"]

MAGIC_BYTE = 0
# The schema id is a signed 32-bit int, as Confluent's Java clients read it (ByteBuffer.getInt):
# an id of 0xFFFFFFFF is -1, unknown, and still fits the DeadLetter's ``schema_id`` (an int).
_HEADER = struct.Struct(">bi")


def wire_header(schema_id: int) -> bytes:
    return _HEADER.pack(MAGIC_BYTE, schema_id)


@dataclass(frozen=True)
class Decoded:
    entry: SchemaEntry
    schema_id: int
    record: dict[str, Any]

    @property
    def subject(self) -> str:
        return self.entry.subject


class _Writer:
    """Encoder bound to one subject's newest schema: the header is computed once."""

    __slots__ = ("entry", "header", "schema_id")

    def __init__(self, entry: SchemaEntry, schema_id: int) -> None:
        self.entry = entry
        self.schema_id = schema_id
        self.header = wire_header(schema_id)

    def __call__(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.header)
        try:
            schemaless_writer(buf, self.entry.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # OverflowError: an int beyond int/long (a JSON line's 2**63), not a crash
            raise EncodeError(f"{self.entry.subject}: {exc}") from exc
        return buf.getvalue()


class _FastWriter(_Writer):
    """A :class:`_Writer` that encodes with cavro (Cython), ~30% cheaper than fastavro for the
    worker's output records (benchmarks/README.md), to the same bytes; a record cavro refuses
    goes through fastavro, so what fails fails as with :class:`_Writer`."""

    __slots__ = ("schema",)

    def __init__(self, entry: SchemaEntry, schema_id: int, expanded: dict[str, Any]) -> None:
        super().__init__(entry, schema_id)
        self.schema = cavro.Schema(expanded)

    def __call__(self, record: dict[str, Any]) -> bytes:
        try:
            body: bytes = self.schema.binary_encode(record)
        except Exception:  # noqa: BLE001 - fastavro says what is wrong, as it always did
            return _Writer.__call__(self, record)
        return self.header + body


class _FastReader:
    """Decodes a body written with its subject's newest schema with cavro: about half of
    fastavro's CPU (benchmarks/README.md), to equal records.

    A body with bytes after its record must still fail (``trailing_bytes``): after the
    record, one more byte is read from the same reader, which must find the end. Whatever
    else (cavro refuses the body, or bytes are left) goes through fastavro, which decides
    as it always did.
    """

    __slots__ = ("schema",)

    def __init__(self, expanded: dict[str, Any]) -> None:
        self.schema = cavro.Schema(expanded, record_decodes_to_dict=True)

    def __call__(self, data: bytes) -> dict[str, Any] | None:
        """The record of ``data`` (header included), or None: ask fastavro."""
        reader = cavro.MemoryReader(data[_HEADER.size :])
        try:
            record = self.schema.binary_read(reader)
        except Exception:  # noqa: BLE001 - fastavro decides and says why
            return None
        try:
            _ONE_BYTE.binary_read(reader)
        except EOFError:  # the body ends where its record does
            return record if isinstance(record, dict) else None
        return None  # bytes after the record


_ONE_BYTE = cavro.Schema({"type": "fixed", "name": "EhbOneByte", "size": 1})


class AvroCodec:
    """Encode/decode records of the pipeline's subjects.

    ``registry`` (a :class:`schemas.registry.RegistryIds`) maps catalog entries to registry ids;
    without it the catalog ids are used.
    """

    def __init__(self, catalog: Catalog | None = None, registry: Any = None) -> None:
        self.catalog = catalog or load_catalog()
        self.registry = registry
        self._writers: dict[str, _Writer] = {}
        # catalog entry id -> cavro reader of a body written with the subject's newest schema
        self._fast_readers: dict[int, _FastReader] = {}
        # schema id on the wire -> catalog entry of the writer's schema
        self._by_wire_id: dict[int, SchemaEntry] = {}
        if registry is None:
            self._by_wire_id.update(self.catalog.by_id)
        else:
            for entry in self.catalog.entries:
                self._by_wire_id[registry.id_of(entry)] = entry

    def wire_id(self, entry: SchemaEntry) -> int:
        return entry.id if self.registry is None else int(self.registry.id_of(entry))

    def writer(self, subject: str) -> Callable[[dict[str, Any]], bytes]:
        writer = self._writers.get(subject)
        if writer is None:
            entry = self.catalog.latest(subject)
            writer = self._writers[subject] = _Writer(entry, self.wire_id(entry))
        return writer

    def fast_writer(self, subject: str) -> Callable[[dict[str, Any]], bytes]:
        """:meth:`writer` encoding with cavro: for records the pipeline builds itself (the
        health-book stage's outputs), whose every field the schema's types hold."""
        key = "fast:" + subject
        writer = self._writers.get(key)
        if writer is None:
            entry = self.catalog.latest(subject)
            writer = self._writers[key] = _FastWriter(
                entry, self.wire_id(entry), self.catalog.expanded_schema(entry)
            )
        return writer

    def encode(self, subject: str, record: dict[str, Any]) -> bytes:
        return self.writer(subject)(record)

    def _entry_for(self, schema_id: int) -> SchemaEntry | None:
        entry = self._by_wire_id.get(schema_id)
        if entry is None and self.registry is not None:
            entry = self.registry.entry_for_unknown_id(schema_id, self.catalog)
            if entry is not None:
                self._by_wire_id[schema_id] = entry
        return entry

    def decode(self, data: bytes | None, subjects: Iterable[str] | None = None) -> Decoded:
        """Decode one wire-format value, resolving it to the newest schema of its subject."""
        if not data:
            raise DecodeError("empty_message", "the message value is empty")
        if data[0] != MAGIC_BYTE:
            raise DecodeError(
                "bad_magic_byte",
                f"first byte is {data[0]:#04x}, expected 0x00 (Confluent wire format)",
            )
        if len(data) < _HEADER.size:
            raise DecodeError("truncated_header", f"only {len(data)} bytes, need at least 5")
        schema_id = _HEADER.unpack_from(data)[1]
        entry = self._entry_for(schema_id)
        if entry is None:
            raise DecodeError(
                "unknown_schema_id", f"schema id {schema_id} is not known", schema_id=schema_id
            )
        if subjects is not None and entry.subject not in subjects:
            raise DecodeError(
                "unexpected_schema",
                f"schema id {schema_id} is {entry.subject}, not expected on this topic",
                schema_id=schema_id,
            )
        latest = self.catalog.latest(entry.subject)
        if latest is entry:
            fast = self._fast_readers.get(entry.id)
            if fast is None:
                fast = self._fast_readers[entry.id] = _FastReader(
                    self.catalog.expanded_schema(entry)
                )
            found = fast(data)
            if found is not None:
                return Decoded(entry=entry, schema_id=schema_id, record=found)
        reader_schema = None if latest is entry else latest.parsed
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, entry.parsed, reader_schema)
        except (EOFError, StopIteration) as exc:
            raise DecodeError(
                "malformed_avro", f"body ends early: {exc or 'EOF'}", schema_id=schema_id
            ) from exc
        except Exception as exc:  # fastavro raises many kinds on garbage bodies
            raise DecodeError(
                "malformed_avro", f"{type(exc).__name__}: {exc}"[:300], schema_id=schema_id
            ) from exc
        if body.tell() != len(data):
            raise DecodeError(
                "trailing_bytes",
                f"{len(data) - body.tell()} bytes left after the record",
                schema_id=schema_id,
            )
        if not isinstance(record, dict):
            raise DecodeError("malformed_avro", "the body is not a record", schema_id=schema_id)
        return Decoded(entry=entry, schema_id=schema_id, record=record)
