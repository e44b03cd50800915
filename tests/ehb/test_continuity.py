"""ehb.continuity: a consumer never hands on a record past offsets its fetch skipped."""

from __future__ import annotations

from ehb.continuity import ContiguousOffsets

P = ("t.health-book", 0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_in_order_from_the_start_are_taken() -> None:
    c = ContiguousOffsets()
    c.start({P: 10})
    assert [c.admit(P, o) for o in (10, 11, 12)] == [(True, None)] * 3
    assert c.next[P] == 13


def test_a_skip_at_the_head_seeks_back_to_the_start() -> None:
    """Tansu returned a later batch for the first fetch: offset 0's batch was not written."""
    c = ContiguousOffsets()
    c.start({P: 0})
    assert c.admit(P, 4) == (False, 0)
    assert c.admit(P, 5) == (False, None)  # same fetch, dropped while the seek is under way
    assert [c.admit(P, o)[0] for o in range(0, 6)] == [True] * 6


def test_a_skip_in_the_middle_seeks_back_once_per_interval() -> None:
    clock = Clock()
    c = ContiguousOffsets(reseek_interval_s=1.0, clock=clock)
    c.start({P: 100})
    assert c.admit(P, 100) == (True, None)
    assert c.admit(P, 104) == (False, 101)
    assert c.admit(P, 105) == (False, None)
    clock.now += 1.5  # the batch at 101 is still not written: the refetch skips again
    assert c.admit(P, 104) == (False, 101)
    assert c.admit(P, 101) == (True, None)
    assert c.admit(P, 100) == (False, None)  # older: seen already


def test_unknown_start_takes_the_first_record_and_checks_from_there() -> None:
    c = ContiguousOffsets()
    c.start({P: None})
    assert c.admit(P, 7) == (True, None)
    assert c.admit(P, 9) == (False, 8)


def test_a_revoked_partition_is_forgotten() -> None:
    c = ContiguousOffsets()
    c.start({P: 3})
    c.forget([P])
    assert c.admit(P, 50) == (True, None)
