"""The benchmark's building blocks: its own embedded stack, fresh deployments, child processes
with a start handshake, peak memory, and pre-generated events.

Deployments are the local deployments the tests use too
(``ehb.commands.local.DeploymentFactory``): a unique topic prefix, consumer groups and
database per measurement, with ``ehb worker`` / ``ehb sink`` processes.
After a measurement its database is dropped and its topics deleted, so that one
bench invocation does not accumulate gigabytes in the memory broker.

The bench runs on an embedded stack whose broker keeps its topics in memory and, beside it,
one whose broker keeps them on durable storage (Tansu ``s3://`` on a SeaweedFS ``weed mini``
of its own; each stack has its PostgreSQL, configured alike): deployments on the two differ
in the broker's storage and what the project's settings give each storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from ehb.commands.local import (
    LOCAL_SESSION_TIMEOUT_S,
    Deployment,
    DeploymentFactory,
    local_services,
)
from ehb.kafka import admin_client
from ehb.settings import BrokerStorage, Settings

ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = ROOT / ".ehb" / "bench-cache"
CHUNK = 10_000

__all__ = [
    "BenchStack",
    "ChildScript",
    "ProcessWatch",
    "events_file",
    "iter_events",
    "peak_rss_mb",
    "sql_scalar",
]


# -- memory ------------------------------------------------------------------------------
def _status_kb(pid: int, field_name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the kernel's peak resident set size) of a live process, in MB."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else round(kb / 1024, 1)


class ProcessWatch:
    """Peak RSS and CPU time per named process: psutil samples every ``interval`` plus VmHWM
    when read.

    VmHWM is exact (the kernel's high-water mark) but only readable while the process lives;
    the samples keep a (lower-bound) figure for a process that exits between two reads. CPU
    time (user + system, all threads) is counted from a process's first sample to its last;
    a ``tree`` process counts its children too, live and exited (PostgreSQL: the postmaster
    and its backends, also those of clients gone before the last sample).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.pids: dict[str, int] = {}
        self.trees: set[str] = set()
        self.peaks: dict[str, float] = {}
        self._cpu_first: dict[str, float] = {}
        self._cpu_last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)

    def watch(self, name: str, pid: int | None, tree: bool = False) -> None:
        if pid is not None:
            self.pids[name] = pid
            if tree:
                self.trees.add(name)
            self._sample_cpu(name, pid)

    def start(self) -> ProcessWatch:
        self._thread.start()
        return self

    def _sample_cpu(self, name: str, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            tree = name in self.trees
            family = [process, *(process.children(recursive=True) if tree else ())]
            total = 0.0
            for member in family:
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    total += times.user + times.system
            if tree:
                # and the children that exited meanwhile (a client's PostgreSQL backend when
                # it disconnects): the root's reaped children's CPU time
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.children_user + times.children_system
            self._cpu_first.setdefault(name, total)
            self._cpu_last[name] = total

    def sample(self) -> None:
        for name, pid in list(self.pids.items()):
            self._sample_cpu(name, pid)
            if name in self.trees:
                continue
            rss: float | None = peak_rss_mb(pid)
            if rss is None:
                with contextlib.suppress(psutil.Error):
                    rss = round(psutil.Process(pid).memory_info().rss / 2**20, 1)
            if rss is not None and rss > self.peaks.get(name, 0.0):
                self.peaks[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds each process used between its first and its last sample."""
        return {
            name: round(self._cpu_last[name] - first, 2) for name, first in self._cpu_first.items()
        }

    def stop(self) -> dict[str, float]:
        self.sample()
        self._stop.set()
        self._thread.join(5)
        return dict(self.peaks)


# -- pre-generated events -----------------------------------------------------------------
def _simulator_fingerprint() -> str:
    """Changes when the simulator or its reference data change (the cache is then stale)."""
    digest = hashlib.sha256()
    for path in sorted(
        [ROOT / "producers" / "simulator.py", *(ROOT / "schemas" / "reference").glob("*.csv")]
    ):
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def events_file(
    events: int,
    seed: int,
    *,
    regenerate: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Simulated events on disk (pickled chunks of :data:`CHUNK`), cached by size/seed/source.

    Returns the file and its generation record (seconds, rate; ``cached`` when reused)."""
    from simulation.simulator import CitySimulator, SimulationConfig

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    name = f"events-{events}-seed{seed}-{_simulator_fingerprint()}"
    path = CACHE_DIR / f"{name}.pickle"
    meta_path = CACHE_DIR / f"{name}.json"
    if path.exists() and meta_path.exists() and not regenerate:
        meta = json.loads(meta_path.read_text())
        return path, {**meta, "cached": True}
    simulator = CitySimulator(SimulationConfig(events=events, seed=seed, reports=False))
    tmp = path.with_suffix(".tmp")
    started = time.perf_counter()
    chunk: list[dict[str, Any]] = []
    written = 0
    with open(tmp, "wb") as out:
        for event in simulator.events():
            chunk.append(event)
            if len(chunk) >= CHUNK:
                pickle.dump(chunk, out, protocol=pickle.HIGHEST_PROTOCOL)
                written += len(chunk)
                chunk = []
                if progress is not None:
                    progress(written)
        if chunk:
            pickle.dump(chunk, out, protocol=pickle.HIGHEST_PROTOCOL)
            written += len(chunk)
    seconds = time.perf_counter() - started
    tmp.replace(path)
    meta = {
        "events": written,
        "seed": seed,
        "seconds": round(seconds, 2),
        "events_per_second": round(written / seconds, 1),
        "valid": simulator.published_valid,
        "invalid": sum(simulator.expected_invalid.values()),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta_path.write_text(json.dumps(meta, indent=2))
    return path, {**meta, "cached": False}


def iter_events(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The chunks of an :func:`events_file`."""
    with open(path, "rb") as source:
        while True:
            try:
                yield pickle.load(source)  # noqa: S301 - our own cache file
            except EOFError:
                return


# -- child scripts with a start handshake --------------------------------------------------
@dataclass
class ChildScript:
    """``python -m benchmarks.<module>``: prints ``READY`` when prepared, starts on ``GO``,
    prints one JSON line with its result last."""

    name: str
    proc: subprocess.Popen[str]
    log: Path
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        name: str,
        module: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        python: str = sys.executable,
    ) -> ChildScript:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{name}.log"
        stderr = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [python, "-m", module, *args],
                cwd=ROOT,
                env=env,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            stderr.close()
        return cls(name, proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"{self.name} exited ({self.proc.wait()}); see {self.log}:\n"
                + self.log.read_text()[-3000:]
            )
        self.lines.append(line)
        return line.strip()

    def wait_ready(self) -> None:
        while self._readline() != "READY":
            pass

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("GO\n")
        self.proc.stdin.flush()

    def result(self, timeout: float | None = None) -> dict[str, Any]:
        """The JSON result line; waits for the child to exit."""
        result: dict[str, Any] | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        while result is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{self.name} did not finish within {timeout:.0f}s")
            line = self._readline()
            if line.startswith("{"):
                result = json.loads(line)
        self.proc.wait(30)
        if self.proc.returncode:
            raise RuntimeError(f"{self.name} failed ({self.proc.returncode}); see {self.log}")
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def child_main_handshake() -> None:
    """In a child script: announce readiness and wait for the bench's ``GO``."""
    print("READY", flush=True)
    line = sys.stdin.readline()
    if line.strip() != "GO":
        raise SystemExit("no GO from the bench")


# -- the stack and its deployments ----------------------------------------------------------
def sql_scalar(url: str, sql: str, *args: Any) -> Any:
    with contextlib.closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        row = cur.fetchone()
        return row[0] if row else None


class BenchStack:
    """One embedded stack (Tansu + PostgreSQL) for the whole bench, its broker on ``storage``
    (or external services when ``EHB_KAFKA_BOOTSTRAP`` and ``EHB_DATABASE_URL`` are set), and
    fresh deployments on it.

    The settings are those :func:`~ehb.commands.local.local_services` gives a stack of that
    storage (what the tests and ``ehb demo`` run on); ``EHB_BROKER_STORAGE`` does not
    apply: the bench names the storage of each of its stacks. ``storage``: ``memory``,
    ``durable`` or ``external``."""

    def __init__(
        self, root: Path, partitions: int, storage: BrokerStorage = BrokerStorage.MEMORY
    ) -> None:
        self.root = root
        self.partitions = partitions
        root.mkdir(parents=True, exist_ok=True)
        self.settings, self.stack = local_services(
            Settings(
                data_dir=root,
                kafka_session_timeout_s=LOCAL_SESSION_TIMEOUT_S,
                log_level="INFO",
                broker_storage=storage,
            )
        )
        self.storage = storage.value if self.stack is not None else "external"
        self.factory = DeploymentFactory(self.settings, root / "deployments")
        (root / "deployments").mkdir(exist_ok=True)

    @property
    def broker_pid(self) -> int | None:
        return self.stack.kafka.pid if self.stack is not None else None

    @property
    def store_pid(self) -> int | None:
        """SeaweedFS, under a durable broker."""
        if self.stack is None or self.stack.store is None:
            return None
        return self.stack.store.pid

    @property
    def postgres_pid(self) -> int | None:
        return self.stack.postgres.pid if self.stack is not None else None

    @property
    def admin_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url.get_secret_value()

    def deploy(self, workers: int = 1, sink: bool = True, **overrides: Any) -> Deployment:
        return self.factory(partitions=self.partitions, workers=workers, sink=sink, **overrides)

    def env(self, deployment: Deployment, **extra: str) -> dict[str, str]:
        """The environment of a process of ``deployment`` (what its worker and sink get)."""
        env = deployment.children.env()
        env.update(extra)
        return env

    def teardown(self, deployment: Deployment) -> None:
        """Stop its processes, drop its database, delete its topics. The processes are
        killed: nothing of a finished measurement needs a graceful shutdown."""
        for child in deployment.children.children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(10)
        deployment.stop()
        settings: Settings = deployment.settings
        tag = settings.topic_prefix.rstrip(".")
        database = f"ehb_{tag}"
        with (
            contextlib.suppress(psycopg2.Error),
            contextlib.closing(psycopg2.connect(self.admin_url)) as conn,
        ):
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            admin = admin_client(settings)
            topics = [
                t
                for t in admin.list_topics(timeout=10).topics
                if t.startswith((f"{tag}.", f"{tag}-")) or f"__{tag}-" in t
            ]  # Faust's: <group>-...; Quix Streams': changelog__<group>--..., repartition__...
            if topics:
                for future in admin.delete_topics(topics, request_timeout=30).values():
                    with contextlib.suppress(Exception):
                        future.result()
        if deployment in self.factory.created:
            self.factory.created.remove(deployment)

    def close(self) -> None:
        for deployment in list(self.factory.created):
            with contextlib.suppress(Exception):
                self.teardown(deployment)
        if self.stack is not None:
            self.stack.stop()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
