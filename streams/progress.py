"""The event-time progress protocol between the two stages of the worker.

The intake sends, with every message it writes to a partition of ``examinations-by-citizen``,
its progress on each input partition it owns (``sources``): the newest event time it has
processed there and whether the partition is *idle*. The stateful stage aligns its event-time
clock on the slowest input partition (``streams.citizen_state``). A partition of the internal
topic that got no events in a batch still gets a message without events when the progress it
last saw changed, so that its clock moves too; a timer repeats that between batches, when the
input is quiet.

A partition is idle when everything up to its high watermark has been processed for
``idle_after_s`` seconds: it then no longer holds the clock back. A partition that is merely
caught up between two uploads is not idle, so a live run and a replay of the same input give
the same results.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from typing import Any

from faust.types import TP

from schemas.time import NEVER
from streams.internal import encode_validated

__all__ = ["IntakeProgress"]


class IntakeProgress:
    """The intake's progress on the input partitions it owns, and what it last told each
    partition of the internal topic."""

    def __init__(self, topic: str, partitions: int, idle_after_s: float) -> None:
        self.topic = topic
        self.partitions = partitions
        self.idle_after_s = idle_after_s
        self._caught_up_since: dict[int, float] = {}
        self.watermark: dict[int, int] = {}
        self.done_upto: dict[int, int] = {}
        self._last_sent: dict[int, list[dict[str, Any]]] = {}

    def update(self, result: Any) -> None:
        """Take in an ``IntakeResult``: newest event times and consumed offsets."""
        for q, t in result.progress.items():
            if t > self.watermark.get(q, NEVER):
                self.watermark[q] = t
        for q, offset in result.consumed.items():
            if offset > self.done_upto.get(q, 0):
                self.done_upto[q] = offset

    def sources(self, consumer: Any) -> list[dict[str, Any]]:
        """The ``sources`` field of the internal messages: one entry per owned input
        partition."""
        return [
            self._source(consumer, q)
            for q in sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic)
        ]

    def _source(self, consumer: Any, q: int) -> dict[str, Any]:
        tp = TP(self.topic, q)
        highwater = consumer.highwater(tp)
        committed = consumer._committed_offset.get(tp) or 0
        done = max(self.done_upto.get(q, 0), committed)
        if highwater is not None and done >= highwater:
            since = self._caught_up_since.setdefault(q, time.monotonic())
            idle = time.monotonic() - since >= self.idle_after_s
        else:
            self._caught_up_since.pop(q, None)
            idle = False
        return {"partition": q, "watermark": self.watermark.get(q, NEVER), "idle": idle}

    def changed_for(self, partition: int, sources: list[dict[str, Any]]) -> bool:
        """Whether ``partition`` has not been sent these ``sources`` yet (and mark them sent)."""
        if self._last_sent.get(partition) == sources:
            return False
        self._last_sent[partition] = sources
        return True

    def sent(self, partition: int, sources: list[dict[str, Any]]) -> None:
        self._last_sent[partition] = sources

    def progress_messages(
        self, sources: list[dict[str, Any]], with_items: Collection[int]
    ) -> Iterator[tuple[int, bytes]]:
        """(partition, message without events) for every partition of the internal topic that
        got no events in this batch and has not seen ``sources`` yet."""
        for p in range(self.partitions):
            if p not in with_items and self.changed_for(p, sources):
                yield p, encode_validated([], sources)
