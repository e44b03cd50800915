"""Versions of an episode: its identity, the content that tells a correction from a re-send,
and the order that says which version is newer.

An episode is ``(ma_cskcb, ma_lk)``. Every examination event is one version of its episode:

* its **content digest** covers every field the facility sent except ``event_id`` and
  ``version`` (and fields left null, so that a version-1 record and a version-3 record of the
  same content have the same digest): equal digests are an identical re-send, a no-op;
* its **order** is ``(version or 0, position)``: the sender's version (set by the project's
  publishers when they accept the event, kept on resends), then the event's position on the
  facility's input partition (offset * 2^20 + its index in a batch message). All of a
  facility's messages are on one partition, so positions of one episode compare. The version
  with the higher order supersedes; an older one that arrives late changes nothing but the
  history.

docs/corrections.md says what each stage does with them.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

__all__ = [
    "EVENT_ID_NAMESPACE",
    "POSITION_SLOTS",
    "derived_event_id",
    "episode_digest",
    "position_of",
    "version_key",
    "version_order",
]

#: the namespace of the event ids derived for events that come without one (uuid5)
EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c1e-3b7a-4c8e-9a51-0e4b7d9c2a79")
#: events of a batch message that get a position of their own (the low 20 bits); a message
#: holds far fewer (a million events would be ~100 MB), later ones would share the last
POSITION_SLOTS = 1 << 20
_NOT_CONTENT = frozenset({"event_id", "version"})


def episode_digest(event: Mapping[str, Any]) -> str:
    """SHA-256 (hex, 32 digits) of the episode's content: what tells a correction from an
    identical re-send.

    The content is hashed as ``json.dumps(content, sort_keys=True, ensure_ascii=False,
    separators=(",", ":"))`` encoded in UTF-8 (digests are stored: they must never change).
    orjson writes the same bytes for the events' values at a third of the cost (the worker
    spent ~11% of its CPU here, benchmarks/README.md); where it would not (a float it formats
    otherwise, an int beyond 64 bits, a lone surrogate), ``json`` does it.
    """
    content = {k: v for k, v in event.items() if k not in _NOT_CONTENT and v is not None}
    if _orjson_writes_alike(content.values()):
        try:
            return hashlib.sha256(orjson.dumps(content, option=_SORT)).hexdigest()[:32]
        except orjson.JSONEncodeError:
            pass
    text = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_SORT = orjson.OPT_SORT_KEYS


def _orjson_writes_alike(values: Iterable[Any]) -> bool:
    """No float that orjson writes otherwise than ``json`` among ``values`` (nested too).

    Both write a float's shortest digits, in fixed notation within [1e-4, 1e16): Python turns
    to an exponent outside it, and orjson writes NaN and the infinities as null.
    """
    for value in values:
        kind = type(value)
        if kind is float:
            if not (value == 0 or 1e-4 <= abs(value) < 1e16):
                return False
        elif kind is dict:
            if not _orjson_writes_alike(value.values()):
                return False
        elif kind is list or kind is tuple:
            if not _orjson_writes_alike(value):
                return False
    return True


def derived_event_id(event: Mapping[str, Any]) -> str:
    """The event id of an event sent without one (``ehb publish``, the XML gateway): the same
    for the same content of the same episode, another for a corrected version."""
    return str(
        uuid.uuid5(
            EVENT_ID_NAMESPACE, f"{event['ma_cskcb']}:{event['ma_lk']}:{episode_digest(event)}"
        )
    )


def position_of(offset: int, index: int | None) -> int:
    """An event's position on its input partition: ``index`` is its place in a batch message
    (None: a message of one event)."""
    return offset * POSITION_SLOTS + min(index or 0, POSITION_SLOTS - 1)


def version_order(version: int | None, position: int) -> tuple[int, int]:
    """What orders two versions of one episode: the higher supersedes."""
    return (version or 0, position)


def version_key(version: int | None, position: int) -> str:
    """A version's identity among its episode's: the sender's version when it set one (a
    resend keeps it), else the position (a resend of a message gets another)."""
    return f"p:{position}" if version is None else f"v:{version}"
