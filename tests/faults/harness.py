"""The fault suite's driver, monitor and verifier (in the manner of Kafka's own exactly-once
system tests: a driver produces while processes are killed; a verifier checks every record).

* :class:`Expectation`: every event id the simulated facilities will publish, and what must
  become of it: a health-book row, or a dead letter with a given reason.
* :class:`LoadProcess`: ``tests.faults.load`` in its own process (durable outbox, resumable),
  so that it can be killed with SIGKILL and started again.
* :class:`Monitor`: samples the committed counters in the background: when progress stopped
  and resumed (time to recover).
* :func:`settle` waits until the pipeline is quiet; :func:`reconcile` compares the database
  (and the metrics) with the expectation: accepted, persisted, dead-lettered, lost,
  duplicated, misrouted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2

from ehb.commands.errors import WaitTimeout
from ehb.commands.local import Child, Deployment, DeploymentFactory, scrape, wait_until
from simulation.simulator import INVALID_KINDS, CitySimulator, SimulationConfig

if TYPE_CHECKING:
    from tests.faults.conftest import FaultReport

ROOT = Path(__file__).resolve().parents[2]


# -- what must happen -------------------------------------------------------------------------
class _RecordingSimulator(CitySimulator):
    """The simulator, remembering which events it broke and how."""

    def __init__(self, config: SimulationConfig) -> None:
        super().__init__(config)
        self.broken: dict[str, str] = {}

    def _break(self, event: dict[str, Any], kind: str) -> None:
        super()._break(event, kind)
        self.broken[event["event_id"]] = INVALID_KINDS[kind]


@dataclass
class Expectation:
    #: event id -> None (a health-book row) or the reason of its dead letter
    outcome: dict[str, str | None]
    citizens: int = 0
    referrals: int = 0
    appointments: int = 0
    #: the ids the stateful stage gives the appointments ("facility:so_giayhen_kl")
    appointment_ids: frozenset[str] = frozenset()

    @classmethod
    def for_simulation(
        cls, events: int, seed: int = 79, invalid_share: float = 0.01
    ) -> Expectation:
        sim = _RecordingSimulator(
            SimulationConfig(events=events, seed=seed, invalid_share=invalid_share)
        )
        outcome: dict[str, str | None] = {}
        citizens: set[str] = set()
        referrals = appointments = 0
        appointment_ids: set[str] = set()
        for event in sim.events():
            reason = sim.broken.get(event["event_id"])
            outcome[event["event_id"]] = reason
            if reason is None:
                citizens.add(event["so_cccd"])
                referrals += event["referral"] is not None
                if event["appointment"] is not None:
                    appointments += 1
                    appointment_ids.add(
                        f"{event['ma_cskcb']}:{event['appointment']['so_giayhen_kl']}"
                    )
        return cls(outcome, len(citizens), referrals, appointments, frozenset(appointment_ids))

    def add(self, event_id: str, reason: str | None) -> None:
        self.outcome[event_id] = reason

    @property
    def valid(self) -> int:
        return sum(1 for r in self.outcome.values() if r is None)


_EXPECTATIONS: dict[int, Expectation] = {}


def expected_for(events: int) -> Expectation:
    """Every event id of the simulation and its fate (computed once per size, a copy each
    time: a scenario may add its own events)."""
    if events not in _EXPECTATIONS:
        _EXPECTATIONS[events] = Expectation.for_simulation(events)
    cached = _EXPECTATIONS[events]
    return Expectation(
        dict(cached.outcome),
        cached.citizens,
        cached.referrals,
        cached.appointments,
        cached.appointment_ids,
    )


# -- the load -----------------------------------------------------------------------------------
class LoadProcess:
    """``python -m tests.faults.load`` for one deployment; killable, resumable."""

    def __init__(
        self,
        d: Deployment,
        *,
        events: int,
        identity: str = "load",
        bootstrap: str | None = None,
        rate: float = 0,
        shuffle: int = 0,
        resend: str = "",
        seed: int = 79,
    ) -> None:
        self.d = d
        self.identity = identity
        self.status_file = d.tmp / f"{identity}.status.json"
        self.log = d.tmp / "logs" / f"{identity}.log"
        self.args = [
            "--bootstrap",
            bootstrap or str(d.settings.kafka_bootstrap),
            "--prefix",
            d.settings.topic_prefix,
            "--data-dir",
            str(d.tmp / "producer"),
            "--identity",
            identity,
            "--events",
            str(events),
            "--seed",
            str(seed),
            "--rate",
            str(rate),
            "--shuffle",
            str(shuffle),
            "--resend",
            resend,
            "--partitions",
            str(d.settings.kafka_partitions),
            "--status",
            str(self.status_file),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def outbox_file(self) -> Path:
        return self.d.tmp / "producer" / "outbox" / f"{self.identity}.sqlite3"

    def start(self, extra_env: dict[str, str] | None = None) -> LoadProcess:
        """Start (or resume) the load; ``extra_env``: variables for this start only."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        if self.d.settings.kafka_idempotence is not None:
            env["EHB_KAFKA_IDEMPOTENCE"] = str(self.d.settings.kafka_idempotence).lower()
        if self.d.settings.kafka_linger_ms is not None:
            env["EHB_KAFKA_LINGER_MS"] = str(self.d.settings.kafka_linger_ms)
        env.update(extra_env or {})
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.load", *self.args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.starts += 1
        wait_until(
            lambda: self.status().get("pid") == self.proc.pid, 60, message="load process status"
        )
        return self

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"load still running after {timeout:.0f}s; log:\n{self.log.read_text()[-3000:]}"
            ) from None
        if code != 0:
            raise AssertionError(f"load exited {code}; log:\n{self.log.read_text()[-3000:]}")
        return self.status()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def outbox_pending(path: Path) -> int:
    """Events an outbox file holds (read-only, beside the live or killed producer)."""
    from producers.outbox import read_status

    return int(read_status(path)["events"]) if path.exists() else 0


# -- watching -----------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: str
    started: float
    ended: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)


class Monitor:
    """Samples committed events (campaign counters: the rows' own transaction) twice a second."""

    def __init__(self, d: Deployment, interval: float = 0.5) -> None:
        assert d.settings.database_url is not None
        self.url = d.settings.database_url.get_secret_value()
        self.interval = interval
        self.samples: list[tuple[float, int | None]] = []
        self.faults: list[Fault] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-monitor", daemon=True)
        self._conn: Any = None

    def start(self) -> Monitor:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()

    def _read(self) -> int | None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg2.connect(self.url, connect_timeout=2)
                self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(
                    "SELECT coalesce(sum(value), 0) FROM campaign_counters "
                    "WHERE metric IN ('examinations', 'dead_letters')"
                )
                return int(cur.fetchone()[0])
        except psycopg2.Error:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), self._read()))
            self._stop.wait(self.interval)

    @property
    def committed(self) -> int:
        for _, value in reversed(self.samples):
            if value is not None:
                return value
        return 0

    def unchanged_for(self) -> float:
        """Seconds since the committed events last changed (since the start if never)."""
        values = [(at, v) for at, v in list(self.samples) if v is not None]
        since = values[0][0] if values else self.started
        for at, value in reversed(values):
            if value != values[-1][1]:
                break
            since = at
        return time.time() - since

    def fault(self, kind: str, **detail: Any) -> Fault:
        fault = Fault(kind, time.time(), detail=detail)
        self.faults.append(fault)
        return fault

    def recovery_seconds(self, fault: Fault, total: int) -> float | None:
        """From the end of ``fault`` until new rows are committed again (0: nothing was left to
        commit by then); None when it never happened."""
        before = None
        for at, value in self.samples:
            if at <= fault.ended:
                if value is not None:
                    before = value
                continue
            if value is None:
                continue
            if before is None:
                before = value
                continue
            if value > before or value >= total:
                return round(max(0.0, at - fault.ended), 2)
        if before is not None and before >= total:
            return 0.0
        return None


def drop_connection(d: Deployment) -> None:
    """Close the test's own connection to the deployment's database (before an outage)."""
    conn, d._conn = d._conn, None
    if conn is not None:
        with contextlib.suppress(psycopg2.Error):
            conn.close()


def dispose(factory: DeploymentFactory) -> None:
    """Tear a factory's deployments down at once, for a test that makes many in a row: their
    processes SIGKILLed (their work is over: nothing to shut down gracefully), their topics
    deleted (the embedded broker keeps every topic in memory) and their databases dropped."""
    from ehb.kafka import admin_client

    for d in factory.created:
        for child in d.children.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
        d.children.children.clear()
        if d._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                d._conn.close()
        tag = d.settings.topic_prefix.rstrip(".")
        with contextlib.suppress(Exception):  # best effort: the next run has its own topics
            admin = admin_client(d.settings)
            names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(tag)]
            if names:
                for future in admin.delete_topics(names, operation_timeout=10).values():
                    future.result(10)
        assert d.settings.database_url is not None
        database = d.settings.database_url.get_secret_value().rpartition("/")[2]
        assert factory.base.database_url is not None
        with (
            contextlib.suppress(psycopg2.Error),
            contextlib.closing(
                psycopg2.connect(factory.base.database_url.get_secret_value())
            ) as conn,
        ):
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    factory.created.clear()


# -- the end ------------------------------------------------------------------------------------
def _pipeline_lag(d: Deployment) -> int | None:
    from ehb.kafka import admin_client
    from sinks.lag import pipeline_groups, read_lag

    try:
        return sum(
            p.lag
            for p in read_lag(admin_client(d.settings), pipeline_groups(d.settings), timeout=5)
        )
    except Exception:  # a broker hiccup: ask again
        return None


def check_alive(d: Deployment) -> None:
    """Fail at once when a worker or sink died on its own (not by the test's SIGKILL) and
    no supervisor restarts it (``ChildProcesses.supervise``: a fail-stop is restarted)."""
    for child in d.children.dead():
        code = child.proc.returncode
        if code is not None and code not in (-signal.SIGKILL, -signal.SIGTERM):
            raise AssertionError(
                f"{child.name} exited with code {code}; log:\n{child.log.read_text()[-4000:]}"
            )


def worker_owns_partitions(child: Child) -> bool:
    """The worker owns input partitions (its /metrics say so); fails if it died."""
    if child.proc.poll() is not None:
        raise AssertionError(
            f"{child.name} exited with {child.proc.returncode}; log:\n"
            f"{child.log.read_text()[-3000:]}"
        )
    try:
        return scrape(child.metrics_port).get("ehb_worker_assigned_partitions", 0) > 0
    except OSError:
        return False


def wait_committed(
    d: Deployment, monitor: Monitor, at_least: float, timeout: float, stall_s: float | None = None
) -> None:
    """Until ``at_least`` events are committed; ``stall_s``: fail as soon as nothing has been
    committed for that long (a stalled pipeline, rather than waiting out ``timeout``)."""

    def reached() -> bool:
        check_alive(d)
        if monitor.committed >= at_least:
            return True
        if stall_s is not None and monitor.unchanged_for() > stall_s:
            raise AssertionError(
                f"stalled: nothing committed for {stall_s:.0f}s "
                f"({monitor.committed} events, waiting for {at_least:.0f})"
            )
        return False

    wait_until(reached, timeout, interval=0.05, message=f"{at_least:.0f} events committed")


def settle(
    d: Deployment,
    expected_rows: int,
    timeout: float,
    quiet_s: float = 3.0,
    stall_s: float | None = None,
) -> float:
    """Wait until ``expected_rows`` are committed, no consumer group lags and the counters have
    not moved for ``quiet_s``; returns the seconds it took. ``stall_s``: fail as soon as no
    event has been accounted for that long while some are missing."""
    started = time.monotonic()
    counters = "SELECT coalesce(sum(value), 0) FROM campaign_counters"
    progress = (-1, time.monotonic())

    def accounted() -> bool:
        nonlocal progress
        check_alive(d)
        value = d.accounted_events()
        if value >= expected_rows:
            return True
        if value != progress[0]:
            progress = (value, time.monotonic())
        elif stall_s is not None and time.monotonic() - progress[1] > stall_s:
            raise AssertionError(
                f"stalled: {value} of {expected_rows} events persisted or "
                f"dead-lettered, none for {stall_s:.0f}s"
            )
        return False

    wait_until(
        accounted,
        timeout,
        interval=0.5,
        message=f"{expected_rows} events persisted or dead-lettered",
    )
    last = (int(d.scalar(counters)), time.monotonic())

    def quiet() -> bool:
        nonlocal last
        value = int(d.scalar(counters))
        if value != last[0]:
            last = (value, time.monotonic())
            return False
        return time.monotonic() - last[1] >= quiet_s and _pipeline_lag(d) == 0

    wait_until(
        quiet,
        max(60.0, timeout - (time.monotonic() - started)),
        interval=0.5,
        message="pipeline quiet (no lag, counters still)",
    )
    return time.monotonic() - started


@dataclass
class Reconciliation:
    scenario: str
    accepted: int
    persisted: int
    dead_lettered: int
    lost: int
    duplicated: int
    misrouted: int
    unexpected: int
    counter_mismatches: list[str]
    derived_mismatches: list[str]
    dead_letter_reasons: dict[str, int]
    recover_seconds: list[float | None] = field(default_factory=list)
    drain_seconds: float = 0.0
    total_seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: the scenario did not run to its end (a process died, a wait timed out)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.misrouted
            or self.unexpected
            or self.counter_mismatches
            or self.derived_mismatches
            or self.error
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def failure(self) -> str:
        return json.dumps(
            {
                k: v
                for k, v in self.as_dict().items()
                if k
                in (
                    "lost",
                    "duplicated",
                    "misrouted",
                    "unexpected",
                    "counter_mismatches",
                    "derived_mismatches",
                    "examples",
                    "error",
                )
            },
            indent=1,
        )


def reconcile(
    d: Deployment, scenario: str, expectation: Expectation, *, check_derived: bool = True
) -> Reconciliation:
    """Every expected event exactly once, where it belongs; the counters equal the tables."""
    entries = Counter(
        dict(d.query("SELECT event_id, count(*) FROM health_book_entries GROUP BY event_id"))
    )
    dead: dict[str, list[str]] = {}
    anonymous_dead = 0
    for event_id, reason, n in d.query(
        "SELECT event_id, reason, count(*) FROM dead_letters GROUP BY 1, 2"
    ):
        if event_id is None:
            anonymous_dead += n
        else:
            dead.setdefault(event_id, []).extend([reason] * n)
    lost, duplicated, misrouted = [], [], []
    for event_id, reason in expectation.outcome.items():
        rows = entries.get(event_id, 0)
        reasons = dead.get(event_id, [])
        if rows + len(reasons) == 0:
            lost.append(event_id)
        elif rows + len(reasons) > 1:
            duplicated.append(event_id)
        elif (reason is None and rows != 1) or (reason is not None and reasons != [reason]):
            misrouted.append(f"{event_id}: expected {reason or 'a row'}, got {reasons or 'a row'}")
    unexpected = [e for e in set(entries) | set(dead) if e not in expectation.outcome]
    unexpected_total = sum(entries.get(e, 0) + len(dead.get(e, [])) for e in unexpected)
    # a record counted twice shows as a counter above its table (same transaction otherwise)
    unexpected_total += anonymous_dead

    counters: dict[tuple[str, str], int] = {
        (m, lbl): v for m, lbl, v in d.query("SELECT metric, label, value FROM campaign_counters")
    }
    tables = {
        ("examinations", "in_province"): d.count("health_book_entries", "scope = 'in_province'"),
        ("examinations", "out_of_province"): d.count(
            "health_book_entries", "scope = 'out_of_province'"
        ),
        ("health_books_integrated", ""): d.count("health_books"),
        ("referrals", ""): d.count("referrals"),
        ("appointments", ""): d.count("appointments"),
    }
    reasons = Counter(dict(d.query("SELECT reason, count(*) FROM dead_letters GROUP BY 1")))
    for reason, n in reasons.items():
        tables[("dead_letters", reason)] = n
    mismatches = [
        f"{m}{{{lbl}}}: counter {counters.get((m, lbl), 0)} != table {n}"
        for (m, lbl), n in tables.items()
        if counters.get((m, lbl), 0) != n
    ]
    mismatches += [
        f"{m}{{{lbl}}}: counter {v} without rows"
        for (m, lbl), v in counters.items()
        if m == "dead_letters" and (m, lbl) not in tables and v
    ]
    # the sink's /metrics serve the same numbers
    if d.sink is not None and d.sink.proc.poll() is None:

        def scraped() -> dict[str, float] | None:
            with contextlib.suppress(OSError):
                m = scrape(d.sink.metrics_port)
                exams = sum(v for k, v in m.items() if k.startswith("ehb_examinations_total{"))
                if exams == sum(n for (k, _), n in tables.items() if k == "examinations"):
                    return m
            return None

        with contextlib.suppress(WaitTimeout):
            wait_until(scraped, 15, interval=0.5, message="sink metrics")
        metrics = scraped() or {}
        checks = {
            "ehb_health_books_integrated_total": tables[("health_books_integrated", "")],
            "ehb_referrals_total": tables[("referrals", "")],
            "ehb_appointments_total": tables[("appointments", "")],
            'ehb_examinations_total{scope="in_province"}': tables[("examinations", "in_province")],
            'ehb_examinations_total{scope="out_of_province"}': tables[
                ("examinations", "out_of_province")
            ],
            **{f'ehb_dead_letters_total{{reason="{r}"}}': n for r, n in reasons.items()},
        }
        mismatches += [
            f"/metrics {name} = {metrics.get(name)} != {n}"
            for name, n in checks.items()
            if metrics.get(name) != n
        ]
    overcount = sum(max(0, counters.get(key, 0) - n) for key, n in tables.items())
    derived: list[str] = []
    if check_derived:
        for name, table, expected in (
            ("health books", "health_books", expectation.citizens),
            ("referrals", "referrals", expectation.referrals),
            ("appointments", "appointments", expectation.appointments),
        ):
            got = d.count(table)
            if got != expected:
                derived.append(f"{name}: {got} rows, expected {expected}")
                if table == "appointments":
                    derived.append(missing_appointments(d, expectation))
    return Reconciliation(
        scenario=scenario,
        accepted=len(expectation.outcome),
        persisted=sum(1 for e, r in expectation.outcome.items() if r is None and entries.get(e)),
        dead_lettered=sum(1 for e in expectation.outcome if e in dead),
        lost=len(lost),
        duplicated=len(duplicated) + overcount,
        misrouted=len(misrouted),
        unexpected=unexpected_total,
        counter_mismatches=mismatches,
        derived_mismatches=derived,
        dead_letter_reasons=dict(sorted(reasons.items())),
        examples={
            "lost": lost[:5],
            "duplicated": duplicated[:5],
            "misrouted": misrouted[:5],
            "unexpected": unexpected[:5],
        },
    )


def finish(
    result: Reconciliation,
    monitor: Monitor,
    total: int,
    *,
    drain_seconds: float,
    notes: list[str] | None = None,
) -> Reconciliation:
    """Attach the faults (relative times, time to recover) and timings to a reconciliation."""
    for fault in monitor.faults:
        recover = monitor.recovery_seconds(fault, total)
        result.recover_seconds.append(recover)
        result.faults.append(
            {
                "kind": fault.kind,
                "at": round(fault.started - monitor.started, 1),
                "lasted": round(fault.ended - fault.started, 1),
                "recover": recover,
                "detail": fault.detail,
            }
        )
    result.drain_seconds = round(drain_seconds, 1)
    result.total_seconds = round(time.time() - monitor.started, 1)
    result.notes.extend(notes or [])
    return result


def reconcile_nothing(scenario: str, expectation: Expectation) -> Reconciliation:
    """The row of a scenario whose database could not even be read."""
    return Reconciliation(
        scenario, len(expectation.outcome), 0, 0, len(expectation.outcome), 0, 0, 0, [], [], {}
    )


def record_failure(
    report: FaultReport,
    d: Deployment,
    scenario: str,
    expectation: Expectation,
    monitor: Monitor,
    exc: BaseException,
) -> None:
    """A scenario that did not reach its end still gets its row (unless it has one): what
    the database holds, with the first line of the error."""
    if any(row.scenario == scenario for row in report.rows):
        return
    monitor.stop()
    try:
        result = reconcile(d, scenario, expectation)
    except Exception:  # noqa: BLE001 - the database itself may be what failed
        result = reconcile_nothing(scenario, expectation)
    result.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    report.add(finish(result, monitor, len(expectation.outcome), drain_seconds=0))


def missing_appointments(d: Deployment, expectation: Expectation) -> str:
    """Where the appointments missing from PostgreSQL are: in the appointments topic (the
    sink did not persist them) or not (the stateful stage never had them delivered)."""
    from ehb.kafka import position
    from schemas.registry import codec_for
    from schemas.topics import APPOINTMENTS

    try:
        stored = {row[0] for row in d.query("SELECT appointment_id FROM appointments")}
        missing = expectation.appointment_ids - stored
        codec = codec_for(d.settings)
        in_log: dict[str, list[str]] = {}
        offsets: dict[int, list[int]] = {}
        for message in d.read_topic(APPOINTMENTS, timeout=30):
            _, partition, offset = position(message)
            offsets.setdefault(partition, []).append(offset)
            aid = codec.decode(message.value()).record.get("appointment_id")
            if aid in missing:
                in_log.setdefault(aid, []).append(f"{partition}@{offset}")
        gaps = [
            f"{p}: {a + 1}..{b - 1}"
            for p, seen in sorted(offsets.items())
            for a, b in zip(sorted(set(seen)), sorted(set(seen))[1:], strict=False)
            if b - a > 1
        ]
    except Exception as exc:  # noqa: BLE001 - a diagnosis only
        return f"missing appointments not located: {exc}"
    topic = d.settings.topic(APPOINTMENTS)
    sink_log = [
        line.strip()[:200]
        for child in d.children.children
        if child.name.startswith("sink") and child.log.exists()
        for line in child.log.read_text(errors="replace").splitlines()
        if topic in line or "committed offsets" in line
    ]
    return (
        f"{len(missing)} appointment ids missing ({sorted(missing)[:5]}); in the topic: "
        f"{len(in_log)} ({dict(sorted(in_log.items())[:5])}); offset gaps: {gaps[:10]}; "
        f"the sink's log on the topic: {sink_log[-10:]}"
    )
