"""Dead letters that always fit in a Kafka message.

A dead letter carries what it can of the input: the original bytes, the reason's detail, the
event id and facility code read from it (the facility code is also its message key). Each of
these can be as large as the input, and a facility can send a message up to the broker's limit
(Apache Kafka: ``message.max.bytes``, 1 MiB by default; the embedded Tansu has none), while
our producers refuse a message over their own ``message.max.bytes`` (librdkafka: 1,000,000
bytes). A dead letter that cannot be written leaves its input with no outcome at all, so
:func:`bound_dead_letter` makes every dead letter small whatever the input:

* ``original`` keeps at most ``original_max_bytes`` bytes (``EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES``),
  ``original_length`` and ``original_sha256`` describe the full original and
  ``original_truncated`` says that it was cut. The full original stays readable at the
  source coordinates (``source_topic``/``source_partition``/``source_offset``, plus
  ``event_index`` inside a batch) while the topic retains it.
* ``message`` keeps at most :data:`MESSAGE_MAX_CHARS` characters, ``event_id`` and
  ``ma_cskcb`` at most :data:`IDENTIFIER_MAX_CHARS`: a longer text keeps its start and ends in
  a marker with its full length and SHA-256, so two different long identifiers stay different
  and the same one always gives the same value (the sink keys dead letters on the event id).

Pure, and idempotent: bounding a bounded dead letter again (the sink does, with its own
setting) keeps the length and SHA-256 of the first, full original.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_ORIGINAL_MAX_BYTES",
    "IDENTIFIER_MAX_CHARS",
    "MAX_ORIGINAL_MAX_BYTES",
    "MESSAGE_MAX_CHARS",
    "bound_dead_letter",
    "bounded_text",
]

#: default of EHB_DEAD_LETTER_ORIGINAL_MAX_BYTES: ~200 ordinary events; a real event is < 1 kB
DEFAULT_ORIGINAL_MAX_BYTES = 64 * 1024
#: the setting's upper limit: a dead letter stays at about half librdkafka's message.max.bytes
MAX_ORIGINAL_MAX_BYTES = 512 * 1024
#: the reason's detail (ours is one line; it may quote a value of the input)
MESSAGE_MAX_CHARS = 1000
#: event_id and ma_cskcb (valid ones have at most 100 and 5 characters)
IDENTIFIER_MAX_CHARS = 200


def bounded_text(value: str | None, limit: int) -> str | None:
    """``value`` if it has at most ``limit`` characters, else its start followed by
    ``…[N characters, sha256:HEX]`` (of the whole value), ``limit`` characters in all."""
    if value is None or len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    marker = f"…[{len(value)} characters, sha256:{digest}]"
    return value[: max(0, limit - len(marker))] + marker


def bound_dead_letter(record: Mapping[str, Any], original_max_bytes: int) -> dict[str, Any]:
    """A copy of the DeadLetter ``record`` that fits in a Kafka message (see the module doc).

    Fills ``original_length``, ``original_sha256`` and ``original_truncated`` (of the full
    original) when the record does not have them yet, e.g. a new or a version-1 dead letter.
    """
    if original_max_bytes < 0:
        raise ValueError("original_max_bytes must be >= 0")
    bounded = dict(record)
    original = bytes(record.get("original") or b"")
    length = record.get("original_length")
    digest = record.get("original_sha256")
    truncated = bool(record.get("original_truncated"))
    if length is None or (digest is None and not truncated):
        # a new (or version-1) dead letter: its original is whole
        length, digest, truncated = len(original), hashlib.sha256(original).hexdigest(), False
    if len(original) > original_max_bytes:
        original, truncated = original[:original_max_bytes], True
    bounded.update(
        original=original,
        original_length=length,
        original_sha256=digest,
        original_truncated=truncated,
        message=bounded_text(str(record.get("message") or ""), MESSAGE_MAX_CHARS),
        event_id=_identifier(record.get("event_id")),
        ma_cskcb=_identifier(record.get("ma_cskcb")),
        ma_lk=_identifier(record.get("ma_lk")),
    )
    return bounded


def _identifier(value: Any) -> str | None:
    if value is None:
        return None
    return bounded_text(value if isinstance(value, str) else str(value), IDENTIFIER_MAX_CHARS)
