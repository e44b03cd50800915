"""The stateful stage's logic: health-book integration, referral completion and appointment
follow-through, per citizen, in event time. Pure: no Kafka, no Faust.

State lives in one changelog-backed Faust table keyed by pseudonymous citizen key (see
``streams.health_book_agent``); this module reads it through a ``Mapping`` and returns what
changed, so that the agent can write the outputs *before* the state (a crash in between
re-emits a record the idempotent sink absorbs, never loses one).

Time. Every decision uses the events' own times (NGAY_VAO), never the wall clock:

* The intake reports, with every message it sends to partition ``p`` of the internal topic,
  its progress on each input partition ``q`` of ``examinations``: the newest event time it has
  processed there, or "idle" when ``q`` had nothing left to process.
* ``clock(p)`` = the minimum of those progresses over every input partition (idle ones
  excluded; all idle: the maximum), never decreasing. Aligning on the slowest input partition
  is what makes a replay of a year's backlog, consumed in whatever interleaving, give the
  results of living through it: a partition read ahead of another never makes the other's
  events "late".
* ``watermark(p) = clock(p) - allowed_lateness``: data older than that is "late" (a facility
  uploading old data) and no longer completes, keeps or expires anything.
* A referral is COMPLETED by an exam of the same citizen at its destination with admission in
  ``[issued_at, issued_at + window]``; EXPIRED once the watermark passes the deadline (so a
  facility's late upload, within the allowed lateness, still completes it).
* An appointment gets a REMINDER once the clock reaches ``appointment_at - lead``, unless a
  visit before that time (in event time) already kept it; it is KEPT
  by an exam at its facility within ``appointment_at +/- grace`` (after the episode's
  discharge); MISSED once the watermark passes ``appointment_at + grace``.
* Recent visits are kept until the watermark passes them, so that a referral or appointment
  uploaded late is matched with a visit processed before it.

Replaying the same events gives the same decisions: every update is idempotent (visits by
event id, referrals and appointments by id, integration once), and the clock is persisted.
One caveat (docs/architecture.md, Time): a REMINDER is emitted when the clock reaches its time
if the appointment is still open then; a visit *before* the reminder time that is uploaded
late (within the lateness) keeps the appointment after the reminder was sent.

State of one citizen (compact JSON, the table's value)::

    {"i": 1,                                   # the health book is integrated
     "v": [[facility, admitted_ms, event_id], ...],             # recent visits
     "r": {referral_id: [origin, destination, issued_ms, deadline_ms, status, event_id,
                         ma_lydo_ct, ma_benh_chinh, episode, order]},
     "a": {appointment_id: [facility, at_ms, reminded, status, event_id, ma_benh_chinh,
                            discharged_ms, kept_visit_ms, episode, order]},

(episode: "MA_CSKCB:MA_LK" of the exam that gave the letter; order: [version, position] of
that exam's version, ``schemas.episodes``.) A newer version of the episode amends the letter
(a changed destination or date opens it again), and cancels it when it no longer has it; an
older version changes nothing.
     "d": {"r:" + referral_id | "a:" + appointment_id: forget_after_ms}}   # closed ones

Closed referrals and appointments leave "r"/"a" once the watermark passes them, but their ids
stay in "d" for ``closed_retention`` (event time), so that a replay or a facility's re-send of
an old episode does not open them again (and re-send outdated records downstream).
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.partitioning import citizen_partition
from schemas.time import DAY_MS, HOUR_MS, NEVER, event_time_ms

__all__ = ["StateConfig", "CitizenStateMachine", "Emitted", "clock_key"]

# referral tuple indexes (R_EPISODE, R_ORDER: absent from state written before corrections)
R_ORIGIN, R_DEST, R_ISSUED, R_DEADLINE, R_STATUS, R_EVENT, R_REASON, R_ICD = range(8)
R_EPISODE, R_ORDER = 8, 9
# appointment tuple indexes (A_EPISODE, A_ORDER: likewise)
A_FACILITY, A_AT, A_REMINDED, A_STATUS, A_EVENT, A_ICD, A_DISCHARGED, A_VISIT = range(8)
A_EPISODE, A_ORDER = 8, 9
#: what the letter says (a change of anything else, e.g. the event id, is no amendment)
_R_LETTER = (R_ORIGIN, R_DEST, R_ISSUED, R_REASON, R_ICD)
OPEN = "open"
CANCELLED = "cancelled"
INTEGRATED_ONLY = {"i": 1}


@dataclass(frozen=True)
class StateConfig:
    partitions: int
    referral_window_ms: int = 30 * DAY_MS
    reminder_lead_ms: int = 24 * HOUR_MS
    grace_ms: int = 3 * DAY_MS
    lateness_ms: int = 48 * HOUR_MS
    closed_retention_ms: int = 400 * DAY_MS
    #: forget visits the watermark passed from citizens nobody touches again, to free memory
    #: (the memory store). A store on disk leaves them until the citizen's next event prunes
    #: them: the index of visits it takes is memory that grows with a backlog.
    forget_stale_visits: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> StateConfig:
        return cls(
            partitions=settings.kafka_partitions,
            referral_window_ms=int(settings.referral_window_days * DAY_MS),
            reminder_lead_ms=int(settings.appointment_reminder_lead_hours * HOUR_MS),
            grace_ms=int(settings.appointment_grace_days * DAY_MS),
            lateness_ms=int(settings.allowed_lateness_hours * HOUR_MS),
            closed_retention_ms=int(settings.closed_retention_days * DAY_MS),
            # the memory store (EHB_STATE_STORE=memory) forgets; RocksDB keeps them on disk
            forget_stale_visits=settings.state_store == "memory",
        )


def clock_key(partition: int) -> str:
    """The table key holding partition ``partition``'s event-time clock."""
    return f"__clock__:{partition}"


@dataclass
class Emitted:
    """What one batch of one partition produced: records to send, then state to write."""

    health_book: list[dict[str, Any]] = field(default_factory=list)
    #: EpisodeWithdrawn records (topic health-book too)
    withdrawn: list[dict[str, Any]] = field(default_factory=list)
    referrals: list[dict[str, Any]] = field(default_factory=list)
    appointments: list[dict[str, Any]] = field(default_factory=list)
    #: citizen key (or clock key) -> new state (None deletes)
    state: dict[str, Any] = field(default_factory=dict)
    #: citizen key -> state with stale visits forgotten: memory only, no changelog write
    #: (visits behind the watermark match nothing, so the changelog may keep them)
    local: dict[str, Any] = field(default_factory=dict)

    def compact(self) -> Emitted:
        """Store a citizen known only as integrated as ``1`` rather than a dict (memory)."""
        for states in (self.state, self.local):
            for key, value in states.items():
                if type(value) is dict and value == INTEGRATED_ONLY:
                    states[key] = 1
        return self


class CitizenStateMachine:
    def __init__(self, config: StateConfig) -> None:
        self.config = config
        self._clock_keys = [clock_key(p) for p in range(config.partitions)]
        # per partition: heap of (clock time at which something is due, citizen key)
        self._due: dict[int, list[tuple[int, str]]] = {}
        # per partition: heap of (visit time, citizen key): forget visits once they are stale
        self._visits: dict[int, list[tuple[int, str]]] = {}

    # -- clocks and timers --------------------------------------------------------------
    def clock_key(self, partition: int) -> str:
        return self._clock_keys[partition]

    def forget_partitions(self) -> None:
        """After a rebalance: timer indexes are rebuilt from the table on next use."""
        self._due.clear()
        self._visits.clear()

    def _index(self, partition: int, table: Mapping[str, Any]) -> list[tuple[int, str]]:
        heap = self._due.get(partition)
        if heap is None:
            heap = []
            n = self.config.partitions
            # a store that can skip the citizens without open items undecoded says so
            # (streams.state_store.RocksPartitionView: most citizens are "integrated only")
            candidates = getattr(table, "timer_candidates", None)
            for key, state in candidates() if candidates is not None else table.items():
                if key.startswith("__clock__") or not isinstance(state, dict):
                    continue
                if citizen_partition(key, n) != partition:
                    continue
                due = self._next_due(state)
                if due is not None:
                    heap.append((due, key))
            heapq.heapify(heap)
            self._due[partition] = heap
        return heap

    def _wants_reminder(self, a: list[Any]) -> bool:
        """Open, or kept by a visit at or after the reminder time (in event time)."""
        if a[A_STATUS] == OPEN:
            return True
        return bool(
            a[A_STATUS] == "kept"
            and a[A_VISIT] is not None
            and a[A_VISIT] >= a[A_AT] - self.config.reminder_lead_ms
        )

    def _next_due(self, state: Mapping[str, Any]) -> int | None:
        """Clock time at which this citizen's next timer fires."""
        cfg = self.config
        due: int | None = None
        for r in state.get("r", {}).values():
            if r[R_STATUS] == OPEN:
                t = r[R_DEADLINE] + cfg.lateness_ms + 1
                due = t if due is None else min(due, t)
        for a in state.get("a", {}).values():
            if not a[A_REMINDED] and self._wants_reminder(a):
                t = a[A_AT] - cfg.reminder_lead_ms
                due = t if due is None else min(due, t)
            if a[A_STATUS] == OPEN:
                t = a[A_AT] + cfg.grace_ms + cfg.lateness_ms + 1
                due = t if due is None else min(due, t)
        return due

    # -- processing ---------------------------------------------------------------------
    def clock(self, partition: int, table: Mapping[str, Any]) -> int:
        return _clock_of(table.get(self._clock_keys[partition]), self.config.partitions)

    def process(
        self,
        partition: int,
        messages: Iterable[tuple[Iterable[Mapping[str, Any]], Iterable[Mapping[str, Any]]]],
        table: Mapping[str, Any],
        now_ms: int,
    ) -> Emitted:
        """Apply one partition's messages in order: each is (validated items, progress).

        The items of a message are applied with the clock as it stands, then the message's
        progress report moves the clock and fires what is due. Decisions depend on the order
        of events on each input partition only, never on batch boundaries or interleaving.
        """
        out = Emitted()
        overlay = out.state
        heap = self._index(partition, table)
        clock_key = self._clock_keys[partition]
        progress = _copy_progress(overlay.get(clock_key, table.get(clock_key)))
        clock = progress["c"]
        lateness = self.config.lateness_ms
        published = 0
        changed = False
        forget = self.config.forget_stale_visits
        visits = self._visits.setdefault(partition, [])
        local = out.local
        for items, sources in messages:
            for item in items:
                published = item["published_at"]
                key = item["citizen_key"]
                state = _copy(
                    overlay[key] if key in overlay else local.pop(key, None) or table.get(key)
                )
                if "withdrawal" in item:
                    self._apply_withdrawal(item, state, out, now_ms)
                    overlay[key] = state
                    continue
                # the heap holds an entry for the citizen's due time as it stands: an event
                # that leaves it unchanged adds none (a backlog would fill the heap with copies)
                had = self._next_due(state) if "r" in state or "a" in state else None
                self._apply_examination(item, state, out, now_ms, clock - lateness)
                overlay[key] = state
                if forget and "v" in state:
                    heapq.heappush(visits, (item["event_time"], key))
                due = self._next_due(state)
                if due is not None and (due != had or due <= clock):
                    heapq.heappush(heap, (due, key))
                    if due <= clock:
                        self._fire_timers(heap, clock, table, out, published)
            for source in sources:
                q = str(source["partition"])
                wm, idle = progress["s"].get(q, (NEVER, False))
                progress["s"][q] = [max(wm, source["watermark"]), bool(source["idle"])]
                changed = True
            new_clock = _clock_of(progress, self.config.partitions)
            if new_clock > clock:
                clock = progress["c"] = new_clock
                if heap and heap[0][0] <= clock:
                    self._fire_timers(heap, clock, table, out, published)
                self._forget_stale_visits(visits, clock - lateness, table, out)
        if changed:
            overlay[clock_key] = progress
        return out

    def _apply_examination(
        self,
        item: Mapping[str, Any],
        state: dict[str, Any],
        out: Emitted,
        now_ms: int,
        watermark: int,
    ) -> None:
        event = item["event"]
        key = item["citizen_key"]
        admitted = item["event_time"]
        facility = event["ma_cskcb"]
        event_id = event["event_id"]
        published = item["published_at"]
        record = _health_book_record(item, "EXAMINATION", now_ms)
        out.health_book.append(record)
        if not state.get("i"):
            state["i"] = 1
            out.health_book.append({**record, "record_type": "BOOK_INTEGRATED"})

        _prune(state, watermark, self.config.closed_retention_ms)
        # Only visits within the allowed lateness count: a later decision never depends on
        # how long an older visit happened to stay in memory.
        visits: list[Sequence[Any]] = [v for v in state.get("v", ()) if v[1] >= watermark]
        if admitted >= watermark:
            if all(v[2] != event_id for v in visits):
                # a tuple, never changed once made (copies of the state share it); the
                # facility code interned: a year holds millions of visits of ~1,000 facilities
                visits.append((sys.intern(facility), admitted, event_id))
                state["v"] = visits
            # this visit may complete open referrals and keep open appointments
            self._match_visit(key, state, facility, admitted, event_id, published, out)

        episode = f"{facility}:{event['ma_lk']}"
        order = [event.get("version") or 0, item.get("position", 0)]
        referral = event.get("referral")
        rid = None if referral is None else f"{referral['ma_noi_di']}:{referral['so_chuyentuyen']}"
        appointment = event.get("appointment")
        aid = None if appointment is None else f"{facility}:{appointment['so_giayhen_kl']}"
        self._cancel_dropped(key, state, episode, order, {rid, aid}, admitted, published, out)
        if rid is not None:
            self._apply_referral(key, state, event, rid, episode, order, visits, published, out)
        if aid is not None:
            self._apply_appointment(key, state, event, aid, episode, order, visits, published, out)

    def _apply_withdrawal(
        self, item: Mapping[str, Any], state: dict[str, Any], out: Emitted, now_ms: int
    ) -> None:
        """The facility withdrew an episode: downstream is told, and its referrals and
        appointments are cancelled (if the withdrawal is newer than the version that gave
        them)."""
        w = item["withdrawal"]
        key = item["citizen_key"]
        episode = f"{w['ma_cskcb']}:{w['ma_lk']}"
        order = [w.get("version") or 0, item["position"]]
        published = item["published_at"]
        out.withdrawn.append(
            {
                "event_id": w["event_id"],
                "citizen_key": key,
                "ma_cskcb": w["ma_cskcb"],
                "ma_lk": w["ma_lk"],
                "ly_do": w.get("ly_do") or "",
                "version": w.get("version"),
                "position": item["position"],
                "published_at": published,
                "processed_at": now_ms,
            }
        )
        self._cancel_dropped(key, state, episode, order, set(), published, published, out)

    def _apply_referral(
        self,
        key: str,
        state: dict[str, Any],
        event: Mapping[str, Any],
        rid: str,
        episode: str,
        order: list[int],
        visits: list[Sequence[Any]],
        published: int,
        out: Emitted,
    ) -> None:
        """Issue the episode's referral, or amend it when this version is newer."""
        referral = event["referral"]
        event_id = event["event_id"]
        refs = state.setdefault("r", {})
        issued = event_time_ms(referral["ngay_ct"])
        letter = [
            referral["ma_noi_di"],
            referral["ma_noi_den"],
            issued,
            issued + self.config.referral_window_ms,
            OPEN,
            event_id,
            referral["ma_lydo_ct"],
            event["ma_benh_chinh"],
            episode,
            order,
        ]
        r = refs.get(rid)
        if r is None:
            if f"r:{rid}" in state.get("d", ()):
                return  # closed and forgotten: a replay or an old re-send
            r = refs[rid] = letter
            out.referrals.append(_referral_record("ISSUED", rid, key, r, issued, published))
        elif not _newer(order, r, R_ORDER):
            return  # an older version of the episode, or this one again
        else:
            # a new destination or date opens the completion check again
            reopen = r[R_STATUS] == CANCELLED or (r[R_DEST], r[R_ISSUED]) != (
                letter[R_DEST],
                letter[R_ISSUED],
            )
            changed = reopen or [r[i] for i in _R_LETTER] != [letter[i] for i in _R_LETTER]
            status = OPEN if reopen else r[R_STATUS]
            r[:] = letter
            r[R_STATUS] = status
            if not changed:
                return
            out.referrals.append(_referral_record("AMENDED", rid, key, r, issued, published))
        if r[R_STATUS] != OPEN:
            return
        for v in sorted(visits, key=lambda v: v[1]):  # a visit processed before
            if v[2] != event_id and self._referral_matches(r, v[0], v[1]):
                self._complete(key, rid, r, v[1], v[2], published, out)
                break

    def _apply_appointment(
        self,
        key: str,
        state: dict[str, Any],
        event: Mapping[str, Any],
        aid: str,
        episode: str,
        order: list[int],
        visits: list[Sequence[Any]],
        published: int,
        out: Emitted,
    ) -> None:
        """Schedule the episode's appointment, or move it when this version is newer."""
        facility = event["ma_cskcb"]
        event_id = event["event_id"]
        appts = state.setdefault("a", {})
        at = event_time_ms(event["appointment"]["ngay_hen_kl"])
        discharged = event_time_ms(event["ngay_ra"])
        a = appts.get(aid)
        if a is None:
            if f"a:{aid}" in state.get("d", ()):
                return
            a = [facility, at, 0, OPEN, event_id, event["ma_benh_chinh"], discharged, None]
            a += [episode, order]
            appts[aid] = a
            out.appointments.append(
                _appointment_record("SCHEDULED", aid, key, a, discharged, published)
            )
        elif not _newer(order, a, A_ORDER):
            return
        else:
            moved = (a[A_AT], a[A_DISCHARGED]) != (at, discharged)
            reopen = moved or a[A_STATUS] == CANCELLED
            changed = reopen or a[A_ICD] != event["ma_benh_chinh"]
            a[A_EVENT], a[A_ICD], a[A_AT], a[A_DISCHARGED] = (
                event_id,
                event["ma_benh_chinh"],
                at,
                discharged,
            )
            a[A_EPISODE:] = [episode, order]
            if reopen:  # the reminder and the kept/missed decision start again
                a[A_REMINDED], a[A_STATUS], a[A_VISIT] = 0, OPEN, None
            if not changed:
                return
            out.appointments.append(
                _appointment_record("RESCHEDULED", aid, key, a, discharged, published)
            )
        if a[A_STATUS] != OPEN:
            return
        for v in sorted(visits, key=lambda v: v[1]):
            if v[2] != event_id and self._appointment_matches(a, v[0], v[1]):
                self._keep(key, aid, a, v[1], v[2], published, out)
                break

    def _cancel_dropped(
        self,
        key: str,
        state: dict[str, Any],
        episode: str,
        order: list[int],
        kept: set[str | None],
        at: int,
        published: int,
        out: Emitted,
    ) -> None:
        """Cancel the referrals and appointments of ``episode`` that a newer version
        (``order``: a correction, or a withdrawal) no longer has (``kept``: the ids it has)."""
        for rid, r in sorted(state.get("r", {}).items()):
            if rid not in kept and _of_episode(r, R_EPISODE, episode) and _newer(order, r, R_ORDER):
                r[R_ORDER] = order
                if r[R_STATUS] != CANCELLED:
                    r[R_STATUS] = CANCELLED
                    out.referrals.append(_referral_record("CANCELLED", rid, key, r, at, published))
        for aid, a in sorted(state.get("a", {}).items()):
            if aid not in kept and _of_episode(a, A_EPISODE, episode) and _newer(order, a, A_ORDER):
                a[A_ORDER] = order
                if a[A_STATUS] != CANCELLED:
                    a[A_STATUS] = CANCELLED
                    record = _appointment_record("CANCELLED", aid, key, a, at, published)
                    out.appointments.append(record)

    def _referral_matches(self, r: list[Any], facility: str, admitted: int) -> bool:
        return (
            r[R_STATUS] == OPEN
            and r[R_DEST] == facility
            and r[R_ISSUED] <= admitted <= r[R_DEADLINE]
        )

    def _appointment_matches(self, a: list[Any], facility: str, admitted: int) -> bool:
        grace = self.config.grace_ms
        return (
            a[A_STATUS] == OPEN
            and a[A_FACILITY] == facility
            and admitted > a[A_DISCHARGED]
            and a[A_AT] - grace <= admitted <= a[A_AT] + grace
        )

    def _match_visit(
        self,
        key: str,
        state: dict[str, Any],
        facility: str,
        admitted: int,
        event_id: str,
        published: int,
        out: Emitted,
    ) -> None:
        for rid, r in sorted(state.get("r", {}).items()):
            if r[R_EVENT] != event_id and self._referral_matches(r, facility, admitted):
                self._complete(key, rid, r, admitted, event_id, published, out)
        for aid, a in sorted(state.get("a", {}).items()):
            if a[A_EVENT] != event_id and self._appointment_matches(a, facility, admitted):
                self._keep(key, aid, a, admitted, event_id, published, out)

    def _complete(
        self,
        key: str,
        rid: str,
        r: list[Any],
        admitted: int,
        visit_event_id: str,
        published: int,
        out: Emitted,
    ) -> None:
        r[R_STATUS] = "completed"
        record = _referral_record("COMPLETED", rid, key, r, admitted, published)
        record["arrival_event_id"] = visit_event_id
        record["arrived_at"] = admitted
        record["days_to_arrival"] = round((admitted - r[R_ISSUED]) / DAY_MS, 3)
        out.referrals.append(record)

    def _keep(
        self,
        key: str,
        aid: str,
        a: list[Any],
        admitted: int,
        visit_event_id: str,
        published: int,
        out: Emitted,
    ) -> None:
        a[A_STATUS] = "kept"
        a[A_VISIT] = admitted
        record = _appointment_record("KEPT", aid, key, a, admitted, published)
        record["visit_event_id"] = visit_event_id
        out.appointments.append(record)

    def _forget_stale_visits(
        self, visits: list[tuple[int, str]], watermark: int, table: Mapping[str, Any], out: Emitted
    ) -> None:
        """Drop visits the watermark passed from citizens nobody touched since (memory)."""
        while visits and visits[0][0] < watermark:
            _, key = heapq.heappop(visits)
            if key in out.state:
                continue  # pruned when its new state is computed
            current = out.local.get(key) or table.get(key)
            if type(current) is not dict or "v" not in current:
                continue
            if any(v[1] >= watermark for v in current["v"]):
                continue
            state = _copy(current)
            del state["v"]
            out.local[key] = state

    def _fire_timers(
        self,
        heap: list[tuple[int, str]],
        clock: int,
        table: Mapping[str, Any],
        out: Emitted,
        published: int,
    ) -> None:
        cfg = self.config
        watermark = clock - cfg.lateness_ms
        overlay = out.state
        fired: set[str] = set()
        while heap and heap[0][0] <= clock:
            _, key = heapq.heappop(heap)
            if key in fired:
                continue
            fired.add(key)
            current = (
                overlay[key] if key in overlay else (out.local.pop(key, None) or table.get(key))
            )
            if not current:
                continue
            state = _copy(current)
            for rid, r in sorted(state.get("r", {}).items()):
                if r[R_STATUS] == OPEN and r[R_DEADLINE] < watermark:
                    r[R_STATUS] = "expired"
                    out.referrals.append(
                        _referral_record("EXPIRED", rid, key, r, r[R_DEADLINE], published)
                    )
            for aid, a in sorted(state.get("a", {}).items()):
                remind_at = a[A_AT] - cfg.reminder_lead_ms
                if not a[A_REMINDED] and remind_at <= clock and self._wants_reminder(a):
                    a[A_REMINDED] = 1
                    out.appointments.append(
                        _appointment_record("REMINDER", aid, key, a, remind_at, published)
                    )
                if a[A_STATUS] == OPEN and a[A_AT] + cfg.grace_ms < watermark:
                    a[A_STATUS] = "missed"
                    end = a[A_AT] + cfg.grace_ms
                    out.appointments.append(
                        _appointment_record("MISSED", aid, key, a, end, published)
                    )
            _prune(state, watermark, cfg.closed_retention_ms)
            overlay[key] = state
            due = self._next_due(state)
            if due is not None:
                heapq.heappush(heap, (due, key))


def _of_episode(letter: list[Any], index: int, episode: str) -> bool:
    """The referral or appointment came from ``episode`` (older state does not say: no)."""
    return len(letter) > index and letter[index] == episode


def _newer(order: list[int], letter: list[Any], index: int) -> bool:
    """``order`` is a newer version than the one that last set ``letter`` (its order at
    ``index``; a letter written before versions has none: never)."""
    return len(letter) > index and tuple(order) > tuple(letter[index])


def _copy_progress(progress: Mapping[str, Any] | None) -> dict[str, Any]:
    if not progress:
        return {"c": NEVER, "s": {}}
    return {"c": progress["c"], "s": {q: list(v) for q, v in progress["s"].items()}}


def _clock_of(progress: Mapping[str, Any] | None, partitions: int) -> int:
    """min progress over the input partitions (idle excluded), never below the last clock."""
    if not progress:
        return NEVER
    last: int = progress["c"]
    sources = progress["s"]
    if len(sources) < partitions:
        return last  # some input partition never reported: hold the clock
    active = [wm for wm, idle in sources.values() if not idle]
    aligned = min(active) if active else max(wm for wm, _ in sources.values())
    return max(last, aligned)


def _copy(state: Mapping[str, Any] | int | None) -> dict[str, Any]:
    if not state:
        return {}
    if type(state) is not dict:  # 1: integrated, nothing else to remember
        return {"i": 1}
    out: dict[str, Any] = {}
    for k, v in state.items():
        if k == "v":
            out[k] = list(v)  # visits are never changed in place: share them
        elif k in ("r", "a"):
            out[k] = {i: list(x) for i, x in v.items()}
        elif k == "d":
            out[k] = dict(v)
        else:
            out[k] = v
    return out


def _prune(
    state: dict[str, Any], watermark: int, retention: int = StateConfig.closed_retention_ms
) -> None:
    """Forget what no late event can change any more (closed ids stay in "d" a while).

    Called for every event: it returns at once when there is nothing to forget."""
    visits = state.get("v")
    if visits is not None and any(v[1] < watermark for v in visits):
        visits = [v for v in visits if v[1] >= watermark]
        if visits:
            state["v"] = visits
        else:
            del state["v"]
    refs = state.get("r")
    if refs is not None:
        _close_old(
            state, "r", refs, R_DEADLINE, watermark, retention, lambda r: r[R_STATUS] != OPEN
        )
    appts = state.get("a")
    if appts is not None:
        _close_old(state, "a", appts, A_AT, watermark, retention, lambda a: a[A_STATUS] != OPEN)
    done = state.get("d")
    if done is not None and any(t < watermark for t in done.values()):
        done = {i: t for i, t in done.items() if t >= watermark}
        if done:
            state["d"] = done
        else:
            del state["d"]


def _close_old(
    state: dict[str, Any],
    name: str,
    items: dict[str, list[Any]],
    since: int,
    watermark: int,
    retention: int,
    closed: Any,
) -> None:
    """Move closed items the watermark has passed from ``items`` to their ids in "d"."""
    old = [i for i, x in items.items() if x[since] < watermark and closed(x)]
    if not old:
        return
    done = state.setdefault("d", {})
    for i in old:
        done[f"{name}:{i}"] = items.pop(i)[since] + retention
    if not items:
        del state[name]


def _health_book_record(item: Mapping[str, Any], record_type: str, now_ms: int) -> dict[str, Any]:
    e = item["event"]
    return {
        "record_type": record_type,
        "event_id": e["event_id"],
        "citizen_key": item["citizen_key"],
        "so_cccd": e["so_cccd"],
        "ho_ten": e["ho_ten"],
        "ngay_sinh": e["ngay_sinh"],
        "gioi_tinh": e["gioi_tinh"],
        "ma_the_bhyt": e["ma_the_bhyt"],
        "ma_lk": e["ma_lk"],
        "ma_cskcb": e["ma_cskcb"],
        "facility_name": item["facility_name"],
        "facility_level": item["facility_level"],
        "facility_district": item["facility_district"],
        "facility_province": item["facility_province"],
        "ma_dkbd": e["ma_dkbd"],
        "registration_province": item["registration_province"],
        "scope": item["scope"],
        "ma_loai_kcb": e["ma_loai_kcb"],
        "visit_type": item["visit_type"],
        "ma_benh_chinh": e["ma_benh_chinh"],
        "ma_benh_kt": e["ma_benh_kt"],
        "ngay_vao": e["ngay_vao"],
        "ngay_ra": e["ngay_ra"],
        "ket_qua_dtri": e["ket_qua_dtri"],
        "ma_loai_rv": e["ma_loai_rv"],
        "t_tongchi_bv": e["t_tongchi_bv"],
        "t_tongchi_bh": e["t_tongchi_bh"],
        "t_bhtt": e["t_bhtt"],
        "has_referral": e["referral"] is not None,
        "has_appointment": e["appointment"] is not None,
        "published_at": item["published_at"],
        "processed_at": now_ms,
        "version": e.get("version"),
        "position": item.get("position", 0),
        "content_digest": item.get("content_digest", ""),
    }


def _referral_record(
    record_type: str, rid: str, key: str, r: list[Any], event_time: int, published: int
) -> dict[str, Any]:
    return {
        "record_type": record_type,
        "referral_id": rid,
        "event_id": r[R_EVENT],
        "citizen_key": key,
        "origin": r[R_ORIGIN],
        "destination": r[R_DEST],
        "ma_lydo_ct": r[R_REASON],
        "ma_benh_chinh": r[R_ICD],
        "issued_at": r[R_ISSUED],
        "deadline": r[R_DEADLINE],
        "event_time": event_time,
        "arrival_event_id": None,
        "arrived_at": None,
        "days_to_arrival": None,
        "published_at": published,
        "status": "issued" if r[R_STATUS] == OPEN else r[R_STATUS],
    }


def _appointment_record(
    record_type: str, aid: str, key: str, a: list[Any], event_time: int, published: int
) -> dict[str, Any]:
    return {
        "record_type": record_type,
        "appointment_id": aid,
        "event_id": a[A_EVENT],
        "citizen_key": key,
        "ma_cskcb": a[A_FACILITY],
        "ma_benh_chinh": a[A_ICD],
        "appointment_at": a[A_AT],
        "event_time": event_time,
        "visit_event_id": None,
        "published_at": published,
        "status": "scheduled" if a[A_STATUS] == OPEN else a[A_STATUS],
    }
