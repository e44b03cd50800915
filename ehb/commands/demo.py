"""``ehb demo``: the whole system on one machine, with live counters.

Starts the embedded broker and PostgreSQL (unless ``EHB_KAFKA_BOOTSTRAP`` and
``EHB_DATABASE_URL`` point elsewhere), creates the topics, migrates, starts ``ehb worker``
(one or more) and ``ehb sink`` as separate processes, waits until the workers own their
partitions, then runs the simulated city in this process and shows the campaign's counters
live. With ``--events N`` it waits until every event is persisted or dead-lettered and the
last event-time timers have fired, prints a summary and exits 0; without, it runs until Ctrl-C
and prints the summary then. Either way every child is stopped.

A demo continues the previous one on the same data directory (``--keep``, the default): the
database, the broker's topics (durable storage) and the outbox are kept, the simulated city
goes on from the event time the last run reached (:class:`DemoLedger`, ``demo.json``), and
the counters count every run's events. ``--fresh`` starts over with everything empty.

Event time is compressed so that the whole lifecycle shows (``demo_timeline``): referrals
completed and expired, appointments reminded, kept and missed need weeks of event time, which
the city's real pace (10,400 exams a day) would not reach in a demo's events.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from ehb.commands.errors import WaitTimeout
from ehb.commands.local import ChildProcesses, local_services, wait_for_workers, wait_until
from ehb.embedded import EmbeddedStack, free_port
from ehb.settings import BrokerStorage, Settings
from schemas.errors import EhbError

__all__ = ["DemoLedger", "DemoTimeline", "demo_timeline", "lifecycle_notes", "run_demo"]

#: simulated days a demo of ``--events N`` spans at least (more at the city's real pace): more
#: than a referral's window plus the allowed lateness (30 + 2 days) and than an appointment's
#: 7-30 days ahead plus grace and lateness, so that letters expire and appointments are missed
DEMO_MIN_DAYS = 90.0
#: simulated days per wall-clock second of a demo without ``--events`` at a ``--rate``
DEMO_DAYS_PER_SECOND = 1.0
#: the facility of the demo's facility account in the console
DEMO_FACILITY = "79001"
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


LEDGER_FILE = "demo.json"


@dataclass
class DemoLedger:
    """What earlier demos on this data directory published, and where their simulated city
    stopped, so that the next one continues: its events start two days of event time later
    (an episode's MA_LK holds its facility and date, so no episode is sent twice) and the
    counters are checked against every run's events."""

    runs: int = 0
    published: int = 0
    #: event time the next run starts at (ISO 8601); None: the simulator's start
    next_start: str | None = None

    @classmethod
    def load(cls, state_dir: Path) -> DemoLedger:
        try:
            return cls(**json.loads((state_dir / LEDGER_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return cls()

    def start(self) -> datetime | None:
        return datetime.fromisoformat(self.next_start) if self.next_start else None

    def save(self, state_dir: Path, published: int, reached: datetime) -> None:
        """Record a run (``published``: its events the broker acknowledged; ``reached``: its
        city's event time), written atomically."""
        nxt = reached.replace(hour=7, minute=0, second=0, microsecond=0) + timedelta(days=2)
        value = DemoLedger(self.runs + 1, self.published + published, nxt.isoformat())
        path = state_dir / LEDGER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(value)))
        tmp.replace(path)


def demo_timeline(
    events: int | None,
    rate: float,
    days: float | None,
    now: datetime | None = None,
    start: datetime | None = None,
) -> DemoTimeline:
    """The demo's event time: long enough for every lifecycle counter to move.

    ``--events N``: ``days`` or at least ``DEMO_MIN_DAYS`` (the city's real pace when that is
    longer). Without ``--events``: ``DEMO_DAYS_PER_SECOND`` simulated days a second at ``rate``
    (the real pace when flat out), for ``days`` or until the simulated city reaches today (the
    validator rejects dates in the future); the counters stay on screen after that.
    ``start``: where a previous demo's city stopped (default: the simulator's start).
    """
    from simulation.simulator import CITY_EXAMS_PER_YEAR, SimulationConfig

    start = start or SimulationConfig().start
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
    earlier: int = 0,
    draining: bool = False,
) -> Group:
    """The live counters; ``published``: this run's events, ``earlier``: earlier runs' on this
    data directory (counted in the database's counters too); ``target``: every event the
    database should account for when the run is over (None: until Ctrl-C)."""
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
        *([("  and by earlier runs", earlier)] if earlier else []),
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
    goal = f" of {target or earlier + published:,}"
    stop = (
        "publishing stopped, waiting for the rest — Ctrl-C again to stop now"
        if draining and done < (target or 0)
        else "Ctrl-C to stop"
    )
    footer = f"{done:,}{goal} events accounted for after {elapsed:.1f}s — {stop}"
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
        rate = 0 if events else default_rate(settings)
    if fresh:
        (settings.state_dir / LEDGER_FILE).unlink(missing_ok=True)
    ledger = DemoLedger.load(settings.state_dir)
    timeline = demo_timeline(events, rate, days, start=ledger.start())
    _check_not_past_today(timeline, ledger, settings)
    demo = _DemoResources(fresh=fresh)
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: interrupted.set())
    try:
        settings = demo.start_services(settings, fresh, console)
        demo.start_children(settings, workers, console)
        demo.start_console(settings, console)
        config = SimulationConfig(
            events=timeline.events,
            seed=seed,
            invalid_share=invalid_share,
            days=timeline.days,
            start=timeline.start,
        )
        if ledger.runs:
            console.print(
                f"continuing {ledger.runs} earlier run(s) on {settings.state_dir} "
                f"({ledger.published:,} events; `--fresh` starts over)"
            )
        console.print(
            f"simulated city: {timeline.events:,} events over {timeline.days:g} days "
            f"of event time ({timeline.start:%Y-%m-%d} to {timeline.end:%Y-%m-%d})"
            + ("" if events else ", then the counters stay until Ctrl-C")
        )
        publisher = demo.open_publisher(settings, rate)
        demo.ledger = ledger
        simulation = _Simulation.start(settings, config, rate, publisher)
        counters = _watch(
            console,
            demo,
            simulation,
            events,
            timeline,
            interrupted,
            timers_after=settings.partition_idle_s + 2.0,
            earlier=ledger.published,
        )
        simulation.stop.set()
        _print_summary(
            console,
            counters,
            simulation.summary,
            publisher,
            timeline,
            settings,
            complete=not (interrupted.is_set() or demo.stopped),
            earlier=ledger.published,
        )
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        console.print("stopping...")
        demo.close()
        demo.record(settings.state_dir, timeline)
        signal.signal(signal.SIGTERM, previous)


def default_rate(settings: Settings) -> float:
    """Events a second of a demo without ``--events``: 200, or 100 on the durable embedded
    broker, which reads every record batch from its object store (docs/embedded.md)."""
    embedded = not settings.kafka_bootstrap
    return 100 if embedded and settings.broker_storage is BrokerStorage.DURABLE else 200


def _check_not_past_today(timeline: DemoTimeline, ledger: DemoLedger, settings: Settings) -> None:
    """Earlier runs may have taken the simulated city so far that this one would reach
    dates in the future, which the validator rightly refuses."""
    now = datetime.now(timeline.start.tzinfo)
    if ledger.runs and timeline.end > now:
        raise EhbError(
            f"earlier demos on {settings.state_dir} took the simulated city to "
            f"{timeline.start:%Y-%m-%d}; {timeline.days:g} more days of event time would pass "
            "today. Start over with `ehb demo --fresh` (make demo ARGS=--fresh), or ask for "
            "fewer days (--days)"
        )


def _port_free(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket()) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _port_open(host: str, port: int, child: Any) -> bool:
    if child.proc.poll() is not None:
        raise EhbError(f"the console exited; see {child.log}")
    with contextlib.closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass
class _DemoResources:
    """What a demo starts and opens, closed in reverse order whatever happens."""

    fresh: bool = True
    stack: EmbeddedStack | None = None
    children: ChildProcesses | None = None
    publisher: Any = None
    conn: Any = None
    ledger: DemoLedger | None = None
    #: stopped by Ctrl-C before the city's end (and then drained)
    stopped: bool = False

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
        # as compose's restart policy: a worker that fail-stops (its outputs refused, its
        # brokers unreachable) is started again and processes its batch again
        children.supervise()
        console.print(
            f"metrics: sink :{sink_child.metrics_port}/metrics, workers "
            + ", ".join(f":{c.metrics_port}" for c in worker_children)
            + f"; logs in {children.log_dir}"
        )

    def start_console(self, settings: Settings, console: Console) -> None:
        """The web console (``ehb console``) beside the pipeline, with demo accounts whose
        passwords are new every run (printed here, for this demo only)."""
        from console.accounts import Role, add_account

        port = settings.console_port
        if not _port_free(settings.console_host, port):
            port = free_port()
        assert self.children is not None and self.conn is not None
        accounts = {
            "doh": (Role.operator, None),
            f"f{DEMO_FACILITY}": (Role.facility, DEMO_FACILITY),
        }
        passwords = {}
        for username, (role, facility) in accounts.items():
            passwords[username] = secrets.token_urlsafe(12)
            add_account(self.conn, username, role, passwords[username], facility, replace=True)
        child = self.children.start("console", "console", 0, {"EHB_CONSOLE_PORT": str(port)})
        url = f"http://{settings.console_host}:{port}"
        try:
            wait_until(lambda: _port_open(settings.console_host, port, child), 30, 0.2, url)
        except WaitTimeout:
            console.print(f"the console did not start; see {child.log}")
            return
        console.print(
            f"console: {url} — operator [bold]doh[/] / {passwords['doh']}, facility "
            f"{DEMO_FACILITY} [bold]f{DEMO_FACILITY}[/] / {passwords[f'f{DEMO_FACILITY}']} "
            "(demo-only accounts, new passwords every run)"
        )

    def open_publisher(self, settings: Settings, rate: float) -> Any:
        from producers.outbox import Outbox
        from producers.publisher import ExaminationPublisher

        outbox = Outbox.open_first_free(settings.state_dir / "outbox", "demo")
        if self.fresh and self.stack is not None:  # emptied: older events belong to no one
            outbox.discard()
        self.publisher = ExaminationPublisher(
            settings, linger_s=1.0 if rate else 5.0, outbox=outbox
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

    def record(self, state_dir: Path, timeline: DemoTimeline) -> None:
        """This run in the ledger (after :meth:`close`: the publisher has flushed), so that
        the next demo continues after it."""
        if self.ledger is None or self.publisher is None:
            return
        own = max(0, self.publisher.events_delivered - self.publisher.resent_events)
        self.ledger.save(state_dir, self.publisher.events_delivered, timeline.reached(own))

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
    earlier: int = 0,
) -> dict[str, Any]:
    """Show the counters live until the demo is over or interrupted; the last counters.
    ``earlier``: events of earlier runs, which the counters include.

    A first Ctrl-C stops the simulated city and waits until every event it published is
    accounted for (a row or a dead letter); a second one, or SIGTERM, stops at once."""
    counters: dict[str, Any] = {}
    settling = _Settling(timers_after)
    draining = False
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while not interrupted.is_set():
            try:
                counters = read_counters(demo.conn)
                finished = not simulation.thread.is_alive()
                delivered = demo.publisher.events_delivered
                # the events of this run: its own and what its outbox resent of the last one
                goal = earlier + target + demo.publisher.resent_events if target else None
                if draining and finished:
                    goal = earlier + delivered
                live.update(
                    render(
                        counters,
                        delivered,
                        goal,
                        time.monotonic() - simulation.started,
                        timeline,
                        earlier,
                        draining,
                    )
                )
                demo.check_alive(simulation.summary)
                accounted = counters["examinations"] + counters["dead_letters_total"]
                if (
                    goal
                    and finished
                    and accounted >= goal
                    and (draining or settling.over(counters))
                ):
                    break
                time.sleep(0.25)
            except KeyboardInterrupt:
                if draining:  # the second Ctrl-C: the summary of what was counted so far
                    interrupted.set()
                else:
                    draining = demo.stopped = True
                    simulation.stop.set()
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
    earlier: int = 0,
) -> None:
    first = publisher.first_publish
    last = counters.get("last_commit")
    published = publisher.events_delivered
    reached = timeline.reached(published)
    table = Table(title="Summary" if complete else "Summary (stopped)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("events published", f"{published:,}")
    if earlier:
        accounted = counters.get("examinations", 0) + counters.get("dead_letters_total", 0)
        table.add_row("  and by earlier runs", f"{earlier:,}")
        table.add_row("accounted for, every run", f"{accounted:,} of {earlier + published:,}")
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
