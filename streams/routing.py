"""Where the intake's results go, for the worker's intake agent and for ``ehb replay`` alike.

Valid events go to ``examinations-by-citizen``, on the partition of their citizen key (so that
one citizen's events are ordered on one partition), several per message; rejected events go to
``dead-letter``, keyed by facility code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec
from schemas.topics import DEAD_LETTER, EXAMINATIONS_BY_CITIZEN
from streams.intake import IntakeResult
from streams.internal import encode_chunks

__all__ = ["IntakeRoutes", "Send", "route_intake_result"]


class Send(Protocol):
    def __call__(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class IntakeRoutes:
    by_citizen: str
    dead_letter: str
    encode_dead_letter: Callable[[dict[str, Any]], bytes]

    @classmethod
    def from_settings(cls, settings: Settings, codec: AvroCodec) -> IntakeRoutes:
        return cls(
            settings.topic(EXAMINATIONS_BY_CITIZEN),
            settings.topic(DEAD_LETTER),
            codec.writer(SUBJECTS.DEAD_LETTER),
        )


def route_intake_result(
    result: IntakeResult, send: Send, routes: IntakeRoutes, sources: Sequence[dict[str, Any]] = ()
) -> None:
    """Send ``result``'s events and dead letters; ``sources`` is the intake's event-time
    progress (``streams.progress``), carried by every internal message (a replay sends none)."""
    for partition, items in result.by_partition.items():
        for value in encode_chunks(items, sources):
            send(routes.by_citizen, value, partition=partition)
    for facility, dead_letter in result.dead_letters:
        send(
            routes.dead_letter,
            routes.encode_dead_letter(dead_letter),
            key=facility.encode() if facility else None,
        )
