"""``ehb demo``: the whole system on one machine, with live counters.

Starts the embedded broker and PostgreSQL (unless ``EHB_KAFKA_BOOTSTRAP`` and
``EHB_DATABASE_URL`` point elsewhere), creates the topics, migrates, starts ``ehb worker``
(one or more) and ``ehb sink`` as separate processes, waits until the workers own their
partitions, then runs the simulated city in this process and shows the campaign's counters
live. With ``--events N`` it waits until every event is persisted or dead-lettered and the
last event-time timers have fired, prints a summary and exits 0; without, it runs until Ctrl-C
and prints the summary then. Either way every child is stopped.

Event time is compressed so that the whole lifecycle shows (``demo_timeline``): referrals
completed and expired, appointments reminded, kept and missed need weeks of event time, which
the city's real pace (10,400 exams a day) would not reach in a demo's events.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from ehb.commands.local import ChildProcesses, local_services, wait_for_workers
from ehb.embedded import EmbeddedStack
from ehb.settings import Settings
from schemas.errors import EhbError

__all__ = ["run_demo", "DemoTimeline", "demo_timeline", "lifecycle_notes"]

#: simulated days a demo of ``--events N`` spans at least (more at the city's real pace): more
#: than a referral's window plus the allowed lateness (30 + 2 days) and than an appointment's
#: 7-30 days ahead plus grace and lateness, so that letters expire and appointments are missed
DEMO_MIN_DAYS = 90.0
#: simulated days per wall-clock second of a demo without ``--events`` at a ``--rate``
DEMO_DAYS_PER_SECOND = 1.0
#: the simulator books follow-up appointments this many days after the exam
_APPOINTMENT_DAYS_AHEAD = (7, 30)


@dataclass(frozen=True)
class DemoTimeline:
    """How many events a demo publishes and how many simulated days they span."""

    events: int
    days: float
    start: datetime

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)

    def reached(self, published: int) -> datetime:
        """The event time the city has reached after ``published`` events (they are spread
        evenly over the span)."""
        return self.start + timedelta(days=self.days) * min(1.0, published / self.events)


def demo_timeline(
    events: int | None, rate: float, days: float | None, now: datetime | None = None
) -> DemoTimeline:
    """The demo's event time: long enough for every lifecycle counter to move.

    ``--events N``: ``days`` or at least ``DEMO_MIN_DAYS`` (the city's real pace when that is
    longer). Without ``--events``: ``DEMO_DAYS_PER_SECOND`` simulated days a second at ``rate``
    (the real pace when flat out), for ``days`` or until the simulated city reaches today (the
    validator rejects dates in the future); the counters stay on screen after that.
    """
    from simulation.simulator import CITY_EXAMS_PER_YEAR, SimulationConfig

    start = SimulationConfig().start
    if events:
        real_pace = events * 365 / CITY_EXAMS_PER_YEAR
        return DemoTimeline(events, days or max(DEMO_MIN_DAYS, real_pace), start)
    now = now or datetime.now(start.tzinfo)
    span = days or max(1.0, (now - start).days - 1.0)
    per_day = rate / DEMO_DAYS_PER_SECOND if rate > 0 else CITY_EXAMS_PER_YEAR / 365
    return DemoTimeline(max(1, round(span * per_day)), span, start)


def read_counters(conn: Any) -> dict[str, Any]:
    with conn.cursor() as cur:
        cur.execute("SELECT metric, label, value FROM campaign_counters")
        rows = cur.fetchall()
        cur.execute(
            "SELECT greatest((SELECT max(persisted_at) FROM health_book_entries),"
            " (SELECT max(persisted_at) FROM dead_letters))"
        )
        last = cur.fetchone()[0]
        # daily facility reports, reconciled by the sink (sinks/reconcile.py)
        cur.execute("SELECT status, count(*) FROM facility_reports GROUP BY status")
        reports = dict(cur.fetchall())
    conn.rollback()
    counters: dict[str, Any] = {"dead_letters": {}, "last_commit": last, "facility_days": reports}
    for metric, label, value in rows:
        if metric == "dead_letters":
            counters["dead_letters"][label] = value
        elif metric == "examinations":
            counters[f"examinations_{label}"] = value
        else:
            counters[metric] = value
    counters["examinations"] = counters.get("examinations_in_province", 0) + counters.get(
        "examinations_out_of_province", 0
    )
    counters["dead_letters_total"] = sum(counters["dead_letters"].values())
    return counters


def render(
    counters: dict[str, Any],
    published: int,
    target: int | None,
    elapsed: float,
    timeline: DemoTimeline | None = None,
) -> Group:
    table = Table(title="Ho Chi Minh City electronic health book (live)", min_width=60)
    table.add_column("counter")
    table.add_column("value", justify="right")
    if timeline is not None:
        table.add_row(
            "event time reached (simulated)",
            f"{timeline.reached(published):%Y-%m-%d} of {timeline.end:%Y-%m-%d}",
        )
    rows = [
        ("events published", published),
        ("examinations persisted", counters.get("examinations", 0)),
        ("  in province", counters.get("examinations_in_province", 0)),
        ("  out of province", counters.get("examinations_out_of_province", 0)),
        ("health books integrated", counters.get("health_books_integrated", 0)),
        ("referrals issued", counters.get("referrals", 0)),
        ("  completed", counters.get("referrals_completed", 0)),
        ("  expired", counters.get("referrals_expired", 0)),
        ("appointments", counters.get("appointments", 0)),
        ("  reminders", counters.get("appointment_reminders", 0)),
        ("  kept", counters.get("appointments_kept", 0)),
        ("  missed", counters.get("appointments_missed", 0)),
        ("dead letters", counters.get("dead_letters_total", 0)),
        ("facility-days reconciled ok", counters.get("facility_days", {}).get("ok", 0)),
        ("  report mismatches", counters.get("facility_days", {}).get("mismatch", 0)),
        ("  silent (no report)", counters.get("facility_days", {}).get("silent", 0)),
    ]
    for reason, value in sorted(counters.get("dead_letters", {}).items()):
        rows.append((f"  {reason}", value))
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    done = counters.get("examinations", 0) + counters.get("dead_letters_total", 0)
    goal = f" of {target:,}" if target else ""
    footer = f"{done:,}{goal} events accounted for after {elapsed:.1f}s — Ctrl-C to stop"
    return Group(table, Panel(footer, expand=False))


def run_demo(
    settings: Settings,
    *,
    events: int | None,
    rate: float,
    workers: int,
    seed: int,
    invalid_share: float,
    fresh: bool,
    console: Console,
    days: float | None = None,
) -> int:
    from simulation.simulator import SimulationConfig

    if rate < 0:
        rate = 0 if events else 200
    demo = _DemoResources()
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    try:
        settings = demo.start_services(settings, fresh, console)
        demo.start_children(settings, workers, console)
        timeline = demo_timeline(events, rate, days)
        config = SimulationConfig(
            events=timeline.events, seed=seed, invalid_share=invalid_share, days=timeline.days
        )
        console.print(
            f"simulated city: {timeline.events:,} events over {timeline.days:g} days "
            f"of event time ({timeline.start:%Y-%m-%d} to {timeline.end:%Y-%m-%d})"
            + ("" if events else ", then the counters stay until Ctrl-C")
        )
        publisher = demo.open_publisher(settings, rate)
        simulation = _Simulation.start(settings, config, rate, publisher)
        counters = _watch(
            console,
            demo,
            simulation,
            events,
            timeline,
            interrupted,
            timers_after=settings.partition_idle_s + 2.0,
        )
        simulation.stop.set()
        _print_summary(
            console,
            counters,
            simulation.summary,
            publisher,
            timeline,
            settings,
            complete=not interrupted.is_set(),
        )
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        console.print("stopping...")
        demo.close()
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _DemoResources:
    """What a demo starts and opens, closed in reverse order whatever happens."""

    stack: EmbeddedStack | None = None
    children: ChildProcesses | None = None
    publisher: Any = None
    conn: Any = None

    def start_services(self, settings: Settings, fresh: bool, console: Console) -> Settings:
        """The embedded broker and PostgreSQL unless the settings point elsewhere, the topics
        and the migrated database; the settings that reach them."""
        from ehb.db import connect
        from ehb.kafka import create_topics
        from sinks.migrate import migrate

        if not settings.kafka_bootstrap or settings.database_url is None:
            with console.status("starting the embedded broker (Tansu) and PostgreSQL..."):
                settings, self.stack = local_services(settings, fresh=fresh)
        with console.status("creating topics and migrating the database..."):
            create_topics(settings)
            self.conn = connect(settings)
            migrate(self.conn)
        return settings

    def start_children(self, settings: Settings, workers: int, console: Console) -> None:
        """The sink and ``workers`` workers, once the workers own every input partition."""
        self.children = children = ChildProcesses(settings, settings.state_dir / "demo-logs")
        base_port = settings.metrics_port or 9400
        sink_child = children.start("sink", "sink", base_port)
        worker_children = [
            children.start(
                f"worker-{i + 1}",
                "worker",
                base_port + 1 + i,
                {"EHB_WORKER_INSTANCE_ID": f"demo-worker-{i + 1}"},
            )
            for i in range(workers)
        ]
        with console.status(f"starting {workers} worker(s) and the sink..."):
            wait_for_workers(worker_children, settings.kafka_partitions)
        console.print(
            f"metrics: sink :{sink_child.metrics_port}/metrics, workers "
            + ", ".join(f":{c.metrics_port}" for c in worker_children)
            + f"; logs in {children.log_dir}"
        )

    def open_publisher(self, settings: Settings, rate: float) -> Any:
        from producers.outbox import Outbox
        from producers.publisher import ExaminationPublisher

        outbox = Outbox.open_first_free(settings.state_dir / "outbox", "demo")
        if self.stack is not None:  # a new, empty embedded broker: older events belong to no one
            outbox.discard()
        self.publisher = ExaminationPublisher(
            settings, linger_s=0.2 if rate else 5.0, outbox=outbox
        )
        return self.publisher

    def check_alive(self, summary: dict[str, Any]) -> None:
        """Raise when a child process or the simulator died."""
        dead = self.children.dead() if self.children is not None else []
        if dead:
            child = dead[0]
            raise EhbError(
                f"{child.name} exited with code {child.proc.returncode}; see {child.log}"
            )
        if "error" in summary:
            raise EhbError(f"simulator failed: {summary['error']}")

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()
        if self.conn is not None:
            self.conn.close()
        if self.children is not None:
            self.children.stop()
        if self.stack is not None:
            self.stack.stop()


@dataclass
class _Simulation:
    """The simulated city, publishing from a thread of this process."""

    thread: threading.Thread
    stop: threading.Event
    summary: dict[str, Any]
    started: float

    @classmethod
    def start(cls, settings: Settings, config: Any, rate: float, publisher: Any) -> _Simulation:
        from ehb.commands.simulate import run_simulation

        stop = threading.Event()
        summary: dict[str, Any] = {}

        def simulate() -> None:
            try:
                summary.update(
                    run_simulation(settings, config, rate=rate, stop=stop, publisher=publisher)
                )
            except Exception as exc:  # reported by the main loop
                summary["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=simulate, name="simulator", daemon=True)
        started = time.monotonic()
        thread.start()
        return cls(thread, stop, summary, started)


class _Settling:
    """When a demo of ``--events N`` is over: every event is accounted for, the last event-time
    timers had time to fire and the lifecycle counters stopped moving.

    The last timers (expiries, reminders, missed appointments) fire only once every input
    partition has been idle for ``partition_idle_s`` (the event-time clock then moves to the
    newest event time); the worker reports idleness every second. ``timers_after`` allows for
    that.
    """

    def __init__(self, timers_after: float) -> None:
        self.timers_after = timers_after
        self.done_at: float | None = None
        self.lifecycle: tuple[int, ...] = ()
        self.settled_at = 0.0

    def over(self, counters: dict[str, Any]) -> bool:
        now = time.monotonic()
        self.done_at = self.done_at or now
        current = tuple(counters.get(k, 0) for k, _ in LIFECYCLE)
        if current != self.lifecycle:
            self.lifecycle, self.settled_at = current, now
        # then a few more frames: the sink reconciles the last daily reports
        return (
            now - self.done_at >= self.timers_after and now - self.settled_at >= 3.0
        ) or now - self.done_at >= self.timers_after + 30.0


def _watch(
    console: Console,
    demo: _DemoResources,
    simulation: _Simulation,
    target: int | None,
    timeline: DemoTimeline,
    interrupted: threading.Event,
    *,
    timers_after: float,
) -> dict[str, Any]:
    """Show the counters live until the demo is over or interrupted; the last counters."""
    counters: dict[str, Any] = {}
    settling = _Settling(timers_after)
    try:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while not interrupted.is_set():
                counters = read_counters(demo.conn)
                live.update(
                    render(
                        counters,
                        demo.publisher.events_delivered,
                        target,
                        time.monotonic() - simulation.started,
                        timeline,
                    )
                )
                demo.check_alive(simulation.summary)
                accounted = counters["examinations"] + counters["dead_letters_total"]
                if (
                    target
                    and not simulation.thread.is_alive()
                    and accounted >= target
                    and settling.over(counters)
                ):
                    break
                time.sleep(0.25)
    except KeyboardInterrupt:  # Ctrl-C: the summary of what was counted so far
        interrupted.set()
    return counters


#: the lifecycle counters (campaign_counters metric, summary label) a demo should move
LIFECYCLE: tuple[tuple[str, str], ...] = (
    ("referrals", "referrals issued"),
    ("referrals_completed", "  completed"),
    ("referrals_expired", "  expired"),
    ("appointments", "appointments scheduled"),
    ("appointment_reminders", "  reminded"),
    ("appointments_kept", "  kept"),
    ("appointments_missed", "  missed"),
)


@dataclass(frozen=True)
class _Hint:
    """How much event time the demo covered, and what to try when that was not enough."""

    days: float
    span: str
    more: str = "publish more events (--events)"
    longer: str = "use a longer event time (--days)"


def lifecycle_notes(
    counters: dict[str, Any],
    timeline: DemoTimeline,
    settings: Settings,
    *,
    complete: bool = True,
    reached: datetime | None = None,
) -> list[str]:
    """Why each lifecycle counter that stayed at 0 did (empty: every counter moved)."""
    days = ((reached or timeline.end) - timeline.start).total_seconds() / 86400
    span = f"the events span {days:.1f} days of event time"
    if not complete:
        span += " (the demo was stopped before the end)"
    hint = _Hint(days, span) if complete else _Hint(days, span, longer="let the demo run longer")
    reasons: dict[str, str] = {
        "referrals": f"about 0.6% of exams carry a referral letter: {hint.more}",
        "appointments": f"about 7% of exams book a follow-up appointment: {hint.more}",
    }
    if counters.get("referrals", 0) > 0:
        reasons.update(_referral_reasons(hint, settings))
    if counters.get("appointments", 0) > 0:
        reasons.update(_appointment_reasons(hint, settings))
    return _zero_counter_notes(counters, reasons)


def _referral_reasons(hint: _Hint, settings: Settings) -> dict[str, str]:
    """Why referrals were neither completed nor expired."""
    lateness = settings.allowed_lateness_hours / 24
    window = settings.referral_window_days
    needed = window + lateness
    return {
        "referrals_completed": (
            f"a letter is completed by the patient's exam at the destination within {window:g} "
            f"days; the simulated patients arrive within 10 days: {hint.more}"
        ),
        "referrals_expired": (
            f"a letter expires when the watermark (event-time clock - {lateness:g} days of "
            f"allowed lateness) passes its {window:g}-day deadline, more than {needed:g} days "
            f"after it was issued; {hint.span}: {hint.longer}"
            if hint.days <= needed
            else f"every letter was matched before its deadline (about 20% of referred patients "
            f"never arrive): {hint.more}"
        ),
    }


def _appointment_reasons(hint: _Hint, settings: Settings) -> dict[str, str]:
    """Why appointments had no reminder, were not kept or not missed."""
    lateness = settings.allowed_lateness_hours / 24
    grace = settings.appointment_grace_days
    lead_days = settings.appointment_reminder_lead_hours / 24
    soonest, latest = _APPOINTMENT_DAYS_AHEAD
    days, span, more, longer = hint.days, hint.span, hint.more, hint.longer
    needed = soonest + grace + lateness
    return {
        "appointment_reminders": (
            f"a reminder goes out when the event-time clock reaches {lead_days:g} day(s) before "
            f"the appointment, booked {soonest}-{latest} days after the exam; {span}: {longer}"
            if days <= soonest - lead_days
            else f"every appointment was kept before its reminder time: {more}"
        ),
        "appointments_kept": (
            f"an appointment is kept by an exam at its facility within {grace:g} days of the "
            f"date, {soonest}-{latest} days after the exam; {span}: {longer}"
            if days <= soonest - grace
            else f"no patient came back in time: {more}"
        ),
        "appointments_missed": (
            f"an appointment is missed when the watermark (clock - {lateness:g} days) passes "
            f"its date + {grace:g} days of grace, at least {needed:g} days after the exam; "
            f"{span}: {longer}"
            if days <= needed
            else f"every appointment whose window has passed was kept (about 25% are not): {more}"
        ),
    }


def _zero_counter_notes(counters: dict[str, Any], reasons: dict[str, str]) -> list[str]:
    """One note a lifecycle counter still at 0, in the order of ``LIFECYCLE``."""
    notes = []
    for key, label in LIFECYCLE:
        if counters.get(key, 0) == 0:
            referral = key.startswith("referral")
            why = reasons.get(
                key, "no referral letter was issued" if referral else "no appointment was booked"
            )
            name = (
                label.strip()
                if not label.startswith(" ")
                else (("referrals " if referral else "appointments ") + label.strip())
            )
            notes.append(f"{name} stayed at 0: {why}.")
    return notes


def _print_summary(
    console: Console,
    counters: dict[str, Any],
    summary: dict[str, Any],
    publisher: Any,
    timeline: DemoTimeline,
    settings: Settings,
    *,
    complete: bool = True,
) -> None:
    first = publisher.first_publish
    last = counters.get("last_commit")
    published = publisher.events_delivered
    reached = timeline.reached(published)
    table = Table(title="Summary" if complete else "Summary (stopped)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events published", f"{published:,}")
    table.add_row(
        "event time (simulated)",
        f"{timeline.start:%Y-%m-%d} to {reached:%Y-%m-%d}, "
        f"{(reached - timeline.start).total_seconds() / 86400:.0f} days",
    )
    table.add_row("examinations persisted", f"{counters.get('examinations', 0):,}")
    table.add_row("  in province", f"{counters.get('examinations_in_province', 0):,}")
    table.add_row("  out of province", f"{counters.get('examinations_out_of_province', 0):,}")
    table.add_row("health books integrated", f"{counters.get('health_books_integrated', 0):,}")
    for key, label in LIFECYCLE:
        table.add_row(label, f"{counters.get(key, 0):,}")
    table.add_row("dead letters", f"{counters.get('dead_letters_total', 0):,}")
    for reason, value in sorted(counters.get("dead_letters", {}).items()):
        table.add_row(f"  {reason}", f"{value:,}")
    if first and last:
        seconds = last.timestamp() - first
        table.add_row("first publish -> last commit", f"{seconds:.2f} s")
        table.add_row("end-to-end throughput", f"{published / seconds:,.0f} events/s")
    if summary.get("events_per_second"):
        table.add_row("publish rate", f"{summary['events_per_second']:,.0f} events/s")
    console.print(table)
    notes = lifecycle_notes(counters, timeline, settings, complete=complete, reached=reached)
    if notes:
        console.print("\n".join(["Lifecycle counters that did not move:"] + notes))
    else:
        console.print(
            "Every lifecycle counter moved: referrals issued, completed and expired; "
            "appointments scheduled, reminded, kept and missed."
        )
