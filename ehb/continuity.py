"""Contiguous offsets for a plain consumer: what a fetch skipped is read again.

The project's topics have contiguous offsets (no transactions, no compaction), so a record
whose offset is past the next one expected means the fetch skipped records. Tansu 0.6.0 does
that: a produce reserves its offsets before it writes its batch, and a fetch at an offset
whose batch is not written yet returns the next batch that is (several producers writing one
partition: the workers writing health-book records, for instance). A consumer that moved on
would commit past the skipped batch. :class:`ContiguousOffsets` says, per partition, whether
a record is the next one, an old one already seen, or past a skip, and where to seek back to.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["ContiguousOffsets"]

Partition = tuple[str, int]


class ContiguousOffsets:
    """The next offset expected per partition (None: the first record sets it)."""

    def __init__(
        self, reseek_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.next: dict[Partition, int | None] = {}
        self.reseek_interval_s = reseek_interval_s
        self.clock = clock
        self._sought: dict[Partition, tuple[int, float]] = {}

    def start(self, starts: dict[Partition, int | None]) -> None:
        """Partitions assigned: their first offsets (the committed offset, or None)."""
        for partition, offset in starts.items():
            self.next[partition] = offset if offset is not None and offset >= 0 else None
            self._sought.pop(partition, None)

    def forget(self, partitions: Iterable[Partition]) -> None:
        for partition in partitions:
            self.next.pop(partition, None)
            self._sought.pop(partition, None)

    def admit(self, partition: Partition, offset: int) -> tuple[bool, int | None]:
        """(take the record?, offset to seek back to or None)."""
        expected = self.next.get(partition)
        if expected is None or offset == expected:
            self.next[partition] = offset + 1
            self._sought.pop(partition, None)
            return True, None
        if offset < expected:
            return False, None  # seen already (refetched after a seek)
        at, when = self._sought.get(partition, (-1, 0.0))
        now = self.clock()
        if at == expected and now - when < self.reseek_interval_s:
            return False, None  # a seek back is under way: what arrives now was fetched before
        self._sought[partition] = (expected, now)
        return False, expected
