"""Unit tests of the stateful stage's logic (streams/citizen_state.py): event time, idempotence,
independence from how events are cut into batches."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from schemas.reference import FacilityRegistry
from schemas.time import DAY_MS, HOUR_MS, NEVER
from streams.citizen_state import CitizenStateMachine, StateConfig, _copy, _prune
from streams.enrichment import enrich
from tests.support import factories as f

REGISTRY = FacilityRegistry.from_reference()
CONFIG = StateConfig(
    partitions=1,
    referral_window_ms=30 * DAY_MS,
    reminder_lead_ms=24 * HOUR_MS,
    grace_ms=3 * DAY_MS,
    lateness_ms=48 * HOUR_MS,
)
T0 = f.BASE_TIME


def item(event: dict[str, Any], key: str | None = None) -> dict[str, Any]:
    return enrich(event, REGISTRY, key or f"citizen-{event['so_cccd']}", published_at=0)


class Run:
    """Feeds items through the machine like the agent does: outputs, then state."""

    def __init__(self, config: StateConfig = CONFIG) -> None:
        self.machine = CitizenStateMachine(config)
        self.progress = NEVER  # one input partition: its progress is the newest event time
        self.table: dict[str, Any] = {}
        self.health_book: list[dict] = []
        self.referrals: list[dict] = []
        self.appointments: list[dict] = []

    def feed(self, items: list[dict], batch: int = 1000) -> Run:
        messages = []
        for it in items:
            self.progress = max(self.progress, it["event_time"])
            messages.append(([it], [{"partition": 0, "watermark": self.progress, "idle": False}]))
        for i in range(0, len(messages), batch):
            # as the agent does: compact states, forget stale visits in memory only
            out = self.machine.process(0, messages[i : i + batch], self.table, now_ms=0).compact()
            self.table.update(out.local)
            self.health_book += out.health_book
            self.referrals += out.referrals
            self.appointments += out.appointments
            for k, v in out.state.items():
                if v is None:
                    self.table.pop(k, None)
                else:
                    self.table[k] = v
        return self

    def kinds(self, records: list[dict]) -> list[tuple[str, str]]:
        return [
            (r["record_type"], r.get("referral_id") or r.get("appointment_id")) for r in records
        ]

    def final(self) -> dict[str, Any]:
        return {
            "integrated": sorted(
                r["citizen_key"] for r in self.health_book if r["record_type"] == "BOOK_INTEGRATED"
            ),
            "referrals": sorted(self.kinds(self.referrals)),
            "appointments": sorted(self.kinds(self.appointments)),
        }


def clock_push(n: int, when: datetime) -> dict:
    """An unrelated citizen's exam that moves the partition's event-time clock."""
    return item(f.exam(9000 + n, admitted=when))


def test_integration_once_per_citizen_with_duplicates_and_many_exams() -> None:
    first = f.exam(1, admitted=T0)
    items = (
        [item(first), item(first)]
        + [item(f.exam(1, admitted=T0 + timedelta(days=d), facility="79005")) for d in range(1, 6)]
        + [item(f.exam(2, admitted=T0))]
    )
    run = Run().feed(items, batch=3)
    integrated = [r for r in run.health_book if r["record_type"] == "BOOK_INTEGRATED"]
    assert len(integrated) == 2
    assert integrated[0]["event_id"] == first["event_id"]
    assert len([r for r in run.health_book if r["record_type"] == "EXAMINATION"]) == 8


def test_referral_completed_by_exam_at_destination_within_window() -> None:
    issuing = f.with_referral(
        f.exam(3, facility="79005", admitted=T0), destination="79002", number="CT1"
    )
    arrival = f.exam(3, facility="79002", admitted=T0 + timedelta(days=4))
    run = Run().feed([item(issuing), clock_push(1, T0 + timedelta(days=2)), item(arrival)])
    assert run.kinds(run.referrals) == [("ISSUED", "79005:CT1"), ("COMPLETED", "79005:CT1")]
    completed = run.referrals[1]
    assert completed["arrival_event_id"] == arrival["event_id"]
    assert completed["origin"] == "79005" and completed["destination"] == "79002"
    assert 3.9 < completed["days_to_arrival"] < 4.0


def test_referral_expires_when_watermark_passes_deadline() -> None:
    issuing = f.with_referral(
        f.exam(4, facility="79005", admitted=T0), destination="79002", number="CT2"
    )
    wrong_place = f.exam(4, facility="79003", admitted=T0 + timedelta(days=3))
    run = Run().feed([item(issuing), item(wrong_place)])
    # the deadline is 30 days after the letter; lateness 48 h: not yet expired at day 31
    run.feed([clock_push(1, T0 + timedelta(days=31, hours=12))])
    assert [k for k, _ in run.kinds(run.referrals)] == ["ISSUED"]
    run.feed([clock_push(2, T0 + timedelta(days=32, hours=3))])
    assert run.kinds(run.referrals) == [("ISSUED", "79005:CT2"), ("EXPIRED", "79005:CT2")]
    # an arrival after expiry completes nothing
    run.feed([item(f.exam(4, facility="79002", admitted=T0 + timedelta(days=32)))])
    assert [k for k, _ in run.kinds(run.referrals)] == ["ISSUED", "EXPIRED"]


def test_late_arrival_within_allowed_lateness_still_completes() -> None:
    issuing = f.with_referral(
        f.exam(5, facility="79005", admitted=T0), destination="79002", number="CT3"
    )
    run = Run().feed([item(issuing), clock_push(1, T0 + timedelta(days=31))])
    # the destination uploads an exam of day 29 two days late: within lateness
    run.feed([item(f.exam(5, facility="79002", admitted=T0 + timedelta(days=29)))])
    assert [k for k, _ in run.kinds(run.referrals)] == ["ISSUED", "COMPLETED"]


def test_referral_uploaded_after_the_arrival_is_matched() -> None:
    arrival = f.exam(6, facility="79002", admitted=T0 + timedelta(days=1))
    issuing = f.with_referral(
        f.exam(6, facility="79005", admitted=T0), destination="79002", number="CT4"
    )
    run = Run().feed([item(arrival), item(issuing)])
    assert [k for k, _ in run.kinds(run.referrals)] == ["ISSUED", "COMPLETED"]
    assert run.referrals[1]["arrival_event_id"] == arrival["event_id"]


def test_appointment_reminder_kept_and_missed_in_event_time() -> None:
    date = T0 + timedelta(days=14)
    kept = f.with_appointment(f.exam(7, facility="79005", admitted=T0), when=date, number="HK1")
    missed = f.with_appointment(f.exam(8, facility="79005", admitted=T0), when=date, number="HK2")
    run = Run().feed([item(kept), item(missed)])
    assert [k for k, _ in run.kinds(run.appointments)] == ["SCHEDULED", "SCHEDULED"]
    run.feed([clock_push(1, date - timedelta(hours=25))])
    assert len(run.appointments) == 2  # not yet: 25 h before
    run.feed([clock_push(2, date - timedelta(hours=23))])
    reminders = [r for r in run.appointments if r["record_type"] == "REMINDER"]
    assert len(reminders) == 2
    assert {r["event_time"] for r in reminders} == {
        int((date - timedelta(hours=24)).timestamp() * 1000)
    }
    run.feed([item(f.exam(7, facility="79005", admitted=date + timedelta(days=1)))])
    run.feed([clock_push(3, date + timedelta(days=5, hours=1))])  # grace 3 d + lateness 2 d
    final = {(k, i) for k, i in run.kinds(run.appointments)}
    assert ("KEPT", "79005:HK1") in final and ("MISSED", "79005:HK2") in final
    assert ("MISSED", "79005:HK1") not in final and ("KEPT", "79005:HK2") not in final


def test_visits_that_leave_the_due_time_alone_add_no_timer() -> None:
    """A citizen with an appointment ahead visits other facilities many times: one timer entry
    for it, and the reminder and the decision still come when the clock passes them."""
    date = T0 + timedelta(days=14)
    booked = f.with_appointment(f.exam(11, facility="79005", admitted=T0), when=date, number="HK9")
    run = Run().feed([item(booked)])
    elsewhere = [
        item(f.exam(11, facility="79003", admitted=T0 + timedelta(hours=6 * n)))
        for n in range(1, 30)
    ]
    run.feed(elsewhere, batch=4)
    heap = run.machine._due[0]
    assert len(heap) == 1, heap
    run.feed([clock_push(1, date + timedelta(days=5, hours=1))])
    assert [k for k, _ in run.kinds(run.appointments)] == ["SCHEDULED", "REMINDER", "MISSED"]
    assert not heap


def test_the_episode_itself_does_not_keep_its_own_appointment() -> None:
    event = f.with_appointment(
        f.exam(9, facility="79005", admitted=T0), when=T0 + timedelta(days=2), number="HK3"
    )
    run = Run().feed([item(event)])
    assert [k for k, _ in run.kinds(run.appointments)] == ["SCHEDULED"]


def _scenario(seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for n in range(40):
        at = T0 + timedelta(hours=rng.randint(0, 24 * 40))
        event = f.exam(100 + n % 15, facility=rng.choice(["79001", "79002", "79005"]), admitted=at)
        if rng.random() < 0.25:
            event = f.with_referral(
                event, destination="79002" if event["ma_cskcb"] != "79002" else "79001"
            )
        elif rng.random() < 0.3:
            event = f.with_appointment(event, when=at + timedelta(days=rng.randint(3, 10)))
        items.append(item(event))
    items.sort(key=lambda i: i["event_time"] + rng.randint(-30, 30) * HOUR_MS)  # some late
    return items


def test_results_do_not_depend_on_batch_boundaries() -> None:
    items = _scenario(1)
    reference = Run().feed(items, batch=1000).final()
    for batch in (1, 2, 7, 13):
        assert Run().feed(items, batch=batch).final() == reference


def test_decisions_do_not_depend_on_forgetting_stale_visits() -> None:
    """A store on disk keeps stale visits until the citizen's next event (no index of visits
    in memory): the same records, and the same states once pruned."""
    indexed = 0
    for seed in (1, 2, 3):
        items = _scenario(seed)
        forgetting = Run().feed(items, batch=7)
        keeping = Run(replace(CONFIG, forget_stale_visits=False)).feed(items, batch=7)
        for records in ("health_book", "referrals", "appointments"):
            assert getattr(keeping, records) == getattr(forgetting, records)
        assert _pruned(keeping) == _pruned(forgetting)
        assert not any(keeping.machine._visits.values()), "an index of visits was kept"
        indexed += sum(map(len, forgetting.machine._visits.values()))
    assert indexed, "the scenarios never indexed a visit: the comparison shows nothing"


def test_only_the_memory_store_forgets_stale_visits() -> None:
    from ehb.settings import Settings, StateStore

    assert StateConfig.from_settings(Settings(state_store=StateStore.MEMORY)).forget_stale_visits
    assert not StateConfig.from_settings(
        Settings(state_store=StateStore.ROCKSDB)
    ).forget_stale_visits


def test_replaying_processed_events_changes_nothing() -> None:
    items = _scenario(2)
    once = Run().feed(items)
    replayed = Run()
    replayed.feed(items[:25])
    # a crash after state was written: the same events come again, then the rest
    replayed.feed(items[10:])
    assert replayed.final() == once.final()
    # the states agree once what no event can use any more (visits behind the watermark) is
    # forgotten: when that forgetting happens is memory management, not a decision
    assert _pruned(replayed) == _pruned(once)


def _pruned(run: Run) -> dict[str, Any]:
    clock = run.table[run.machine.clock_key(0)]["c"]
    out = {}
    for key, state in run.table.items():
        if not key.startswith("__clock__"):
            state = _copy(state)
            _prune(state, clock - CONFIG.lateness_ms)
        out[key] = state
    return out


def test_state_is_pruned_once_nothing_can_change() -> None:
    issuing = f.with_referral(f.exam(10, facility="79005", admitted=T0), destination="79002")
    run = Run().feed([item(issuing), clock_push(1, T0 + timedelta(days=40))])
    run.feed([item(f.exam(10, facility="79003", admitted=T0 + timedelta(days=40)))])
    state = run.table[f"citizen-{issuing['so_cccd']}"]
    assert state == 1 or "r" not in state  # expired and past the watermark
    assert _copy(state)["i"] == 1  # integration is remembered forever


def test_an_input_partition_read_ahead_does_not_make_another_late() -> None:
    """Replaying a backlog: input partition 1 is consumed 40 days ahead of partition 0."""
    machine = CitizenStateMachine(StateConfig(partitions=2))
    table: dict[str, Any] = {}
    issuing = f.with_referral(
        f.exam(20, facility="79005", admitted=T0), destination="79002", number="CT9"
    )
    arrival = f.exam(20, facility="79002", admitted=T0 + timedelta(days=4))
    ahead = [clock_push(i, T0 + timedelta(days=i)) for i in range(41)]

    def source(q: int, when: datetime, idle: bool = False) -> dict:
        return {"partition": q, "watermark": int(when.timestamp() * 1000), "idle": idle}

    messages = [([item(issuing)], [source(0, T0)])]
    messages += [([it], [source(1, T0 + timedelta(days=i))]) for i, it in enumerate(ahead)]
    messages += [([item(arrival)], [source(0, T0 + timedelta(days=4))])]
    out = machine.process(0, messages, table, now_ms=0)
    assert [r["record_type"] for r in out.referrals] == ["ISSUED", "COMPLETED"]
    table.update(out.state)
    # once partition 0 is caught up (idle), the clock follows partition 1: nothing else open
    out = machine.process(0, [([], [source(0, T0 + timedelta(days=4), idle=True)])], table, 0)
    assert machine.clock(0, {**table, **out.state}) == int(
        (T0 + timedelta(days=40)).timestamp() * 1000
    )


def test_the_clock_holds_until_every_input_partition_reported() -> None:
    machine = CitizenStateMachine(StateConfig(partitions=2))
    issuing = f.with_referral(f.exam(21, facility="79005", admitted=T0), destination="79002")
    later = int((T0 + timedelta(days=60)).timestamp() * 1000)
    out = machine.process(
        0, [([item(issuing)], [{"partition": 0, "watermark": later, "idle": False}])], {}, now_ms=0
    )
    assert [r["record_type"] for r in out.referrals] == ["ISSUED"]  # partition 1 unknown


def test_reminder_follows_event_time_not_the_arrival_order_of_the_visit() -> None:
    date = T0 + timedelta(days=10)
    early = f.with_appointment(f.exam(30, facility="79005", admitted=T0), when=date, number="HK30")
    ontime = f.with_appointment(f.exam(31, facility="79005", admitted=T0), when=date, number="HK31")
    run = Run().feed([item(early), item(ontime)])
    run.feed(
        [
            item(f.exam(30, facility="79005", admitted=date - timedelta(hours=40))),
            item(f.exam(31, facility="79005", admitted=date - timedelta(hours=10))),
            clock_push(1, date),
        ]
    )
    reminded = {i for k, i in run.kinds(run.appointments) if k == "REMINDER"}
    # kept 40 h before: no reminder was due; kept 10 h before: the reminder (24 h) was due
    assert reminded == {"79005:HK31"}


def test_a_replay_of_old_episodes_does_not_reopen_closed_items() -> None:
    issuing = f.with_referral(
        f.exam(40, facility="79005", admitted=T0), destination="79002", number="CT40"
    )
    arrival = f.exam(40, facility="79002", admitted=T0 + timedelta(days=2))
    appointment = f.with_appointment(
        f.exam(41, facility="79005", admitted=T0), when=T0 + timedelta(days=7), number="HK41"
    )
    run = Run().feed(
        [item(issuing), item(arrival), item(appointment), clock_push(1, T0 + timedelta(days=60))]
    )
    run.feed([clock_push(2, T0 + timedelta(days=61))])  # closed items pruned by now
    state = run.table[f"citizen-{issuing['so_cccd']}"]
    assert "r" not in state and "r:79005:CT40" in state["d"]
    before = (len(run.referrals), len(run.appointments))
    run.feed([item(issuing), item(appointment)])  # a replay of old episodes
    assert (len(run.referrals), len(run.appointments)) == before


def test_a_citizen_nobody_touches_again_shrinks_to_integrated_only() -> None:
    quiet = f.exam(50, facility="79005", admitted=T0)
    run = Run().feed([item(quiet)])
    key = f"citizen-{quiet['so_cccd']}"
    assert run.table[key]["v"]  # its visit, while it can still match
    run.feed([clock_push(1, T0 + timedelta(days=3))])  # the watermark passes the visit
    assert run.table[key] == 1
    assert _copy(run.table[key]) == {"i": 1}


# -- corrections: referrals and appointments follow the newest version of their episode ------
def version(event: dict[str, Any], position: int, **changes: Any) -> dict[str, Any]:
    """An item of ``event`` (changed by ``changes``) at ``position`` on the input partition."""
    it = item({**event, **changes, "event_id": f"{event['event_id']}@{position}"})
    it["position"] = position
    return it


def test_a_correction_moving_the_destination_reopens_a_completed_referral() -> None:
    exam = f.with_referral(f.exam(1, admitted=T0), destination="79002", number="CT1")
    arrival = f.exam(1, facility="79002", admitted=T0 + timedelta(days=2))
    moved = f.with_referral(exam, destination="79005", number="CT1")
    run = Run().feed([version(exam, 1), item(arrival)])
    assert run.kinds(run.referrals) == [("ISSUED", "79001:CT1"), ("COMPLETED", "79001:CT1")]
    run.feed([version(moved, 3)])
    amended = run.referrals[-1]
    assert (amended["record_type"], amended["destination"], amended["status"]) == (
        "AMENDED",
        "79005",
        "issued",
    )
    # an exam at the new destination completes it; one at the old does not
    run.feed([item(f.exam(1, facility="79002", admitted=T0 + timedelta(days=3)))])
    assert run.referrals[-1]["record_type"] == "AMENDED"
    run.feed([item(f.exam(1, facility="79005", admitted=T0 + timedelta(days=4)))])
    assert run.kinds(run.referrals[-1:]) == [("COMPLETED", "79001:CT1")]


def test_a_correction_without_the_referral_cancels_it_and_an_older_version_changes_nothing() -> (
    None
):
    exam = f.with_referral(f.exam(1, admitted=T0), number="CT2")
    without = {**exam, "referral": None, "ma_loai_rv": 1}
    run = Run().feed([version(exam, 1), version(without, 5)])
    assert run.kinds(run.referrals) == [("ISSUED", "79001:CT2"), ("CANCELLED", "79001:CT2")]
    assert run.referrals[-1]["status"] == "cancelled"
    run.feed([version(exam, 1), version(exam, 4)])  # a redelivery, and an older version late
    assert len(run.referrals) == 2
    run.feed([version(exam, 9)])  # a newer version with the referral again
    assert run.kinds(run.referrals[-1:]) == [("AMENDED", "79001:CT2")]
    assert run.referrals[-1]["status"] == "issued"


def test_a_correction_moving_the_appointment_moves_the_reminder_and_the_decision() -> None:
    at = T0 + timedelta(days=14)
    exam = f.with_appointment(f.exam(1, admitted=T0), when=at, number="HK1")
    moved = f.with_appointment(exam, when=at + timedelta(days=7), number="HK1")
    run = Run().feed([version(exam, 1), version(moved, 2)])
    assert run.kinds(run.appointments) == [
        ("SCHEDULED", "79001:HK1"),
        ("RESCHEDULED", "79001:HK1"),
    ]
    assert run.appointments[-1]["appointment_at"] == int(
        (at + timedelta(days=7)).timestamp() * 1000
    )
    # a visit at the old date keeps nothing; the reminder comes a day before the new date
    run.feed([item(f.exam(1, admitted=at))])
    run.feed([clock_push(1, at + timedelta(days=5, hours=23))])
    assert [r["record_type"] for r in run.appointments[2:]] == []
    run.feed([clock_push(2, at + timedelta(days=6, hours=1))])
    assert [r["record_type"] for r in run.appointments[2:]] == ["REMINDER"]
    run.feed([item(f.exam(1, admitted=at + timedelta(days=7)))])
    assert run.kinds(run.appointments[-1:]) == [("KEPT", "79001:HK1")]


def test_a_correction_without_the_appointment_cancels_it() -> None:
    exam = f.with_appointment(f.exam(1, admitted=T0), when=T0 + timedelta(days=14), number="HK2")
    run = Run().feed([version(exam, 1), version({**exam, "appointment": None}, 2)])
    assert run.kinds(run.appointments) == [("SCHEDULED", "79001:HK2"), ("CANCELLED", "79001:HK2")]
    # cancelled: no reminder, never missed
    run.feed([clock_push(3, T0 + timedelta(days=30))])
    assert len(run.appointments) == 2
