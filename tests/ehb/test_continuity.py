"""ehb.continuity: a consumer never hands on a record past offsets its fetch skipped."""

from __future__ import annotations

from ehb.continuity import ContiguousOffsets, HoleWatch

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


# -- holes: a skip the broker confirms is never filled ---------------------------------------


def test_a_hole_is_passed_only_after_the_broker_confirms_it() -> None:
    """Tansu on durable storage: a broker died between reserving offsets 101..103 and
    writing them; the producer's retry wrote the batch again at 104. The gap never closes."""
    clock = Clock()
    asked: list[tuple[tuple[str, int], int]] = []

    def probe(partition: tuple[str, int], offset: int) -> int | None:
        asked.append((partition, offset))
        return 104

    c = ContiguousOffsets(reseek_interval_s=1.0, clock=clock, probe=probe, confirm_s=60)
    c.start({P: 100})
    assert c.admit(P, 100) == (True, None)
    assert c.admit(P, 104) == (False, 101)  # first a seek back: a write may be under way
    clock.now += 30
    assert c.admit(P, 104) == (False, 101)
    assert asked == []  # not stuck long enough to ask
    clock.now += 31
    assert c.admit(P, 104) == (True, None)  # stuck 61 s at 101, the broker's first is 104
    assert asked == [(P, 101)]
    assert c.next[P] == 105
    assert c.admit(P, 105) == (True, None)


def test_a_skip_the_broker_does_not_confirm_stays_stopped() -> None:
    """The broker's first record at 101 is 101 (the batch landed meanwhile) or unknown: no
    hole, the partition keeps seeking back to 101."""
    clock = Clock()
    answers: list[int | None] = [101, None]
    c = ContiguousOffsets(
        reseek_interval_s=1.0, clock=clock, probe=lambda p, o: answers.pop(0), confirm_s=10
    )
    c.start({P: 101})
    assert c.admit(P, 104) == (False, 101)
    for _ in range(2):
        clock.now += 11
        assert c.admit(P, 104) == (False, 101)
    assert answers == []  # asked twice, once per confirm period, and never passed
    assert c.admit(P, 101) == (True, None)


def test_a_confirmed_hole_passes_only_its_first_record() -> None:
    clock = Clock()
    watch = HoleWatch(confirm_s=5, clock=clock)
    assert not watch.due(P, 10)  # starts the clock
    clock.now += 5
    assert watch.due(P, 10)
    assert not watch.due(P, 10)  # asked: the next question is confirm_s later
    watch.record(P, 10, 12)
    assert watch.hole(P, 10, 12)
    assert not watch.hole(P, 10, 13) and not watch.hole(P, 11, 12)
    watch.record(P, 10, 10)  # not later than expected: no new hole (the old one stays)
    assert watch.hole(P, 10, 12)
    watch.forget([P])
    assert not watch.hole(P, 10, 12)


def test_a_new_expected_offset_restarts_the_hole_clock() -> None:
    clock = Clock()
    watch = HoleWatch(confirm_s=5, clock=clock)
    watch.due(P, 10)
    clock.now += 4
    assert not watch.due(P, 11)  # moved on: stuck anew at 11
    clock.now += 4
    assert not watch.due(P, 11)
    clock.now += 1
    assert watch.due(P, 11)


def test_a_partition_quiet_after_a_skip_is_sought_back_again() -> None:
    """The refetch after the seek was dropped and nothing new arrives: without a timer the
    partition would never be read again."""
    clock = Clock()
    c = ContiguousOffsets(reseek_interval_s=1.0, clock=clock)
    c.start({P: 31})
    assert c.admit(P, 33) == (False, 31)
    assert c.admit(P, 33) == (False, None)  # the refetch, within the interval: dropped
    assert c.due_seeks() == []
    clock.now += 1.0
    assert c.due_seeks() == [(P, 31)]
    assert c.due_seeks() == []  # once per interval
    assert c.admit(P, 31) == (True, None)  # the batch landed
    clock.now += 5
    assert c.due_seeks() == []
