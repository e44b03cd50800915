"""Contiguous offsets for a plain consumer: what a fetch skipped is read again.

The project's topics have contiguous offsets (no transactions, no compaction), so a record
whose offset is past the next one expected means the fetch skipped records. Tansu 0.6.0 does
that: a produce reserves its offsets before it writes its batch, and a fetch at an offset
whose batch is not written yet returns the next batch that is (several producers writing one
partition: the workers writing health-book records, for instance). A consumer that moved on
would commit past the skipped batch. :class:`ContiguousOffsets` says, per partition, whether
a record is the next one, an old one already seen, or past a skip, and where to seek back to.

A skip that never closes is a hole in the log: Tansu on durable storage leaves one where a
broker died between reserving a batch's offsets and writing it (the producer's retry wrote the
batch again, further on). :class:`HoleWatch` tells the two apart: a partition stuck at the
same next offset for ``HOLE_CONFIRM_S`` is checked with the broker (its first record at or
after that offset); a later first record then is a hole, passed over. Long enough that a
write in progress has either landed or been given up and retried by its producer
(librdkafka's request timeout: 30 s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["HOLE_CONFIRM_S", "ContiguousOffsets", "HoleWatch"]

Partition = tuple[str, int]

#: seconds a partition stays stuck at one offset before the broker is asked about a hole
HOLE_CONFIRM_S = 60.0


class HoleWatch:
    """Per partition: how long it has been stuck at one next offset, and the holes the broker
    confirmed (``expected`` -> the first record after it)."""

    def __init__(
        self, confirm_s: float = HOLE_CONFIRM_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.confirm_s = confirm_s
        self.clock = clock
        self._stuck: dict[Partition, tuple[int, float]] = {}
        self._holes: dict[Partition, tuple[int, int]] = {}

    def due(self, partition: Partition, expected: int) -> bool:
        """A skip while ``expected`` is next: True when the broker should be asked now (stuck
        at ``expected`` for ``confirm_s``; then again ``confirm_s`` later)."""
        now = self.clock()
        stuck = self._stuck.get(partition)
        if stuck is None or stuck[0] != expected:
            self._stuck[partition] = (expected, now)
            return False
        if now - stuck[1] < self.confirm_s:
            return False
        self._stuck[partition] = (expected, now)
        return True

    def record(self, partition: Partition, expected: int, first: int | None) -> None:
        """The broker's first record at or after ``expected`` (None: no answer)."""
        if first is not None and first > expected:
            self._holes[partition] = (expected, first)

    def hole(self, partition: Partition, expected: int, offset: int) -> bool:
        """``offset`` is the first record after a confirmed hole that starts at ``expected``."""
        return self._holes.get(partition) == (expected, offset)

    def forget(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self._stuck.pop(partition, None)
            self._holes.pop(partition, None)


class ContiguousOffsets:
    """The next offset expected per partition (None: the first record sets it)."""

    def __init__(
        self,
        reseek_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        probe: Callable[[Partition, int], int | None] | None = None,
        confirm_s: float = HOLE_CONFIRM_S,
    ) -> None:
        """``probe(partition, offset)``: the broker's first record at or after ``offset``
        (None: unknown); without it a hole stalls its partition."""
        self.next: dict[Partition, int | None] = {}
        self.reseek_interval_s = reseek_interval_s
        self.clock = clock
        self.probe = probe
        self.holes = HoleWatch(confirm_s, clock)
        self._sought: dict[Partition, tuple[int, float]] = {}

    def start(self, starts: dict[Partition, int | None]) -> None:
        """Partitions assigned: their first offsets (the committed offset, or None)."""
        for partition, offset in starts.items():
            self.next[partition] = offset if offset is not None and offset >= 0 else None
            self._sought.pop(partition, None)

    def forget(self, partitions: Iterable[Partition]) -> None:
        partitions = list(partitions)
        for partition in partitions:
            self.next.pop(partition, None)
            self._sought.pop(partition, None)
        self.holes.forget(partitions)

    def admit(self, partition: Partition, offset: int) -> tuple[bool, int | None]:
        """(take the record?, offset to seek back to or None)."""
        expected = self.next.get(partition)
        if expected is None or offset == expected:
            self.next[partition] = offset + 1
            self._sought.pop(partition, None)
            return True, None
        if offset < expected:
            return False, None  # seen already (refetched after a seek)
        if self._passes_hole(partition, expected, offset):
            self.next[partition] = offset + 1
            self._sought.pop(partition, None)
            return True, None
        at, when = self._sought.get(partition, (-1, 0.0))
        now = self.clock()
        if at == expected and now - when < self.reseek_interval_s:
            return False, None  # a seek back is under way: what arrives now was fetched before
        self._sought[partition] = (expected, now)
        return False, expected

    def due_seeks(self) -> list[tuple[Partition, int]]:
        """Partitions still waiting for a skipped offset whose last seek back is older than
        the reseek interval, with that offset: seek them back again. A partition that went
        quiet after a skip (the refetch after the seek was dropped, nothing new arrives) would
        otherwise never be read again."""
        now = self.clock()
        due = []
        for partition, (at, when) in list(self._sought.items()):
            if self.next.get(partition) == at and now - when >= self.reseek_interval_s:
                self._sought[partition] = (at, now)
                due.append((partition, at))
        return due

    def _passes_hole(self, partition: Partition, expected: int, offset: int) -> bool:
        holes = self.holes
        if self.probe is not None and holes.due(partition, expected):
            holes.record(partition, expected, self.probe(partition, expected))
        return holes.hole(partition, expected, offset)
