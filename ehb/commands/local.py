"""Local deployments of the pipeline, for the demo, the tests and the benchmarks.

* :func:`local_services`: the broker and PostgreSQL: external ones when ``EHB_KAFKA_BOOTSTRAP``
  and ``EHB_DATABASE_URL`` are set, else the embedded stack (Tansu + PostgreSQL), started here.
* :class:`ChildProcesses`: ``ehb worker`` / ``ehb sink`` processes with the deployment's
  ``EHB_*`` environment; :func:`scrape` reads their /metrics, :func:`wait_for_workers` waits
  until the workers own every input partition.
* :class:`DeploymentFactory` / :class:`Deployment`: an isolated pipeline on shared services: a
  unique topic prefix, consumer groups and database, and its own worker and sink processes, so
  that deployments never share state.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from pydantic import SecretStr

from ehb.commands.errors import WaitTimeout
from ehb.embedded import DURABLE_LINGER_MS, EmbeddedStack, free_port
from ehb.exceptions import ConfigurationError, ServiceUnavailable
from ehb.kafka import consumer_config, create_topics, position, producer_config
from ehb.processes import child_setup
from ehb.settings import BrokerStorage, Settings
from producers.publisher import ExaminationPublisher
from schemas import AvroCodec
from sinks.migrate import migrate

__all__ = [
    "Child",
    "ChildProcesses",
    "Deployment",
    "DeploymentFactory",
    "local_services",
    "scrape",
    "session_services",
    "wait_for_workers",
    "wait_until",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Tansu makes a group join wait a full session timeout: locally it is kept this short
LOCAL_SESSION_TIMEOUT_S = 6.0

_counter = itertools.count(1)


# -- services -----------------------------------------------------------------------------
def local_services(
    settings: Settings, *, fresh: bool = False
) -> tuple[Settings, EmbeddedStack | None]:
    """The settings pointed at a broker and a database, and the embedded stack started for
    them (``None`` when ``settings`` name both; the caller stops it). ``fresh``: the embedded
    database starts empty."""
    if settings.kafka_bootstrap and settings.database_url is not None:
        return settings, None
    stack = EmbeddedStack(settings, fresh_database=fresh)
    info = stack.start()
    updates: dict[str, Any] = {}
    if not settings.kafka_bootstrap:
        updates["kafka_bootstrap"] = info.bootstrap
        # Tansu can take a lost batch for a duplicate: producers without idempotence
        if settings.kafka_idempotence is None:
            updates["kafka_idempotence"] = False
        if stack.durable and settings.kafka_linger_ms is None:
            updates["kafka_linger_ms"] = DURABLE_LINGER_MS
    if settings.database_url is None:
        updates["database_url"] = SecretStr(info.database_url)
    if settings.kafka_session_timeout_s > LOCAL_SESSION_TIMEOUT_S:
        updates["kafka_session_timeout_s"] = LOCAL_SESSION_TIMEOUT_S
    return settings.model_copy(update=updates), stack


def session_services(root: Path) -> tuple[Settings, EmbeddedStack | None]:
    """:func:`local_services` for a session of deployments (tests, benchmarks) whose files
    live under ``root``. Its broker keeps topics in memory unless ``EHB_BROKER_STORAGE`` says
    otherwise (``EHB_BROKER_STORAGE=durable make test`` runs the suite on SeaweedFS)."""
    storage = os.environ.get("EHB_BROKER_STORAGE") or BrokerStorage.MEMORY
    return local_services(
        Settings(
            data_dir=root,
            kafka_session_timeout_s=LOCAL_SESSION_TIMEOUT_S,
            log_level="INFO",
            broker_storage=BrokerStorage(storage),
        )
    )


# -- child processes ----------------------------------------------------------------------
@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    command: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)
    #: times a supervisor restarted it after a fail-stop
    restarts: int = 0
    #: argv before its command (``ip netns exec NS``), kept for restarts
    prefix: tuple[str, ...] = ()


@dataclass
class ChildProcesses:
    """The worker and sink processes of one deployment; ``extra_env``: more variables for
    every one of them."""

    settings: Settings
    log_dir: Path
    children: list[Child] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    _supervisor: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        s = self.settings
        env["EHB_KAFKA_BOOTSTRAP"] = s.kafka_bootstrap or ""
        env["EHB_DATABASE_URL"] = s.database_url.get_secret_value() if s.database_url else ""
        env["EHB_DATA_DIR"] = str(s.state_dir)
        env["EHB_KAFKA_SESSION_TIMEOUT_S"] = str(s.kafka_session_timeout_s)
        env["EHB_KAFKA_PARTITIONS"] = str(s.kafka_partitions)
        env["EHB_TOPIC_PREFIX"] = s.topic_prefix
        env["EHB_WORKER_GROUP"] = s.worker_group
        env["EHB_SINK_GROUP"] = s.sink_group
        env["EHB_LOG_LEVEL"] = s.log_level
        env["EHB_OFFSET_HOLE_CONFIRM_S"] = str(s.offset_hole_confirm_s)
        if s.kafka_idempotence is not None:
            env["EHB_KAFKA_IDEMPOTENCE"] = str(s.kafka_idempotence).lower()
        if s.kafka_linger_ms is not None:
            env["EHB_KAFKA_LINGER_MS"] = str(s.kafka_linger_ms)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.extra_env)
        return env

    def start(
        self,
        name: str,
        command: str,
        metrics_port: int,
        extra_env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Child:
        """``prefix``: argv to run the command with (``ip netns exec NS``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        env = self.env()
        env["EHB_METRICS_PORT"] = str(metrics_port)
        env.update(extra_env or {})
        proc = self._spawn(command, env, log, prefix)
        child = Child(name, proc, log, metrics_port, command, env, prefix=tuple(prefix))
        self.children.append(child)
        return child

    @staticmethod
    def _spawn(
        command: str, env: dict[str, str], log: Path, prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                [*prefix, sys.executable, "-m", "ehb", command],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=child_setup(),
            )

    def supervise(self, interval: float = 0.5) -> None:
        """Restart, from a thread of their own, the children that exit with an error status,
        as ``restart: unless-stopped`` does in compose: a worker whose outputs the broker
        refused (its store down) stops without acknowledging the batch (status 70, or 1 when
        Faust's own crash handling gets there first), and its successor processes the batch
        again. A child killed by a signal (a fault test's ``kill -9``) stays down."""
        if self._supervisor is not None:
            return

        def run() -> None:
            while not self._stopping.wait(interval):
                for child in list(self.children):
                    status = child.proc.poll()
                    if status is not None and status > 0:
                        log.warning("%s exited with status %d; restarting it", child.name, status)
                        child.proc = self._spawn(child.command, child.env, child.log, child.prefix)
                        child.restarts += 1

        self._supervisor = threading.Thread(target=run, name="supervisor", daemon=True)
        self._supervisor.start()

    def dead(self) -> list[Child]:
        """Children that exited (under supervision: for good, not to be restarted)."""
        supervised = self._supervisor is not None

        def gone(proc: subprocess.Popen[bytes]) -> bool:  # one process: the supervisor swaps
            status = proc.poll()
            return status is not None and not (supervised and status > 0)

        return [c for c in self.children if gone(c.proc)]

    def stop(self, timeout: float = 20.0) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for child in self.children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)
        self.children.clear()


def scrape(port: int, timeout: float = 1.0, host: str = "127.0.0.1") -> dict[str, float]:
    """Metric samples of a local /metrics endpoint: {'name{labels}': value}."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - a local address
        text = response.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                samples[name] = float(value)
    return samples


def wait_for_workers(children: list[Child], partitions: int, timeout: float = 120.0) -> float:
    """Wait until the workers together own every partition of the input topic."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        dead = [c for c in children if c.proc.poll() is not None]
        if dead:
            raise ServiceUnavailable(f"{dead[0].name} exited; see {dead[0].log}")
        total = 0.0
        for child in children:
            with contextlib.suppress(OSError):
                total += scrape(child.metrics_port).get("ehb_worker_assigned_partitions", 0)
        if total >= partitions:
            return time.monotonic() - started
        time.sleep(0.25)
    raise ServiceUnavailable(f"workers did not own the {partitions} partitions in {timeout:.0f}s")


def wait_until(
    condition: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns a truthy value; :class:`WaitTimeout` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")


# -- deployments --------------------------------------------------------------------------
def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@dataclass
class Deployment:
    """An isolated pipeline: own topics, groups, database, worker and sink processes."""

    settings: Settings
    tmp: Path
    children: ChildProcesses
    codec: AvroCodec = field(default_factory=AvroCodec)
    workers: list[Child] = field(default_factory=list)
    sink: Child | None = None
    _conn: psycopg2.extensions.connection | None = None

    # -- processes ------------------------------------------------------------------------
    def start_worker(
        self,
        wait: bool = True,
        instance_id: str | None = None,
        extra_env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
    ) -> Child:
        """A worker process; ``instance_id``: its static group membership (a worker restarted
        with the same id takes its partitions back without waiting for a rebalance);
        ``extra_env``: more variables for this process only (``EHB_FAULT_KILL``...);
        ``prefix``: argv it runs under (``ip netns exec NS``: the network-partition test)."""
        extra = dict(extra_env or {})
        if instance_id:
            extra["EHB_WORKER_INSTANCE_ID"] = instance_id
        child = self.children.start(
            f"worker-{len(self.workers) + 1}", "worker", free_port(), extra_env=extra, prefix=prefix
        )
        self.workers.append(child)
        if wait:
            self.wait_for_workers()
        return child

    def wait_for_workers(self, timeout: float = 120.0) -> float:
        alive = [w for w in self.workers if w.proc.poll() is None]
        return wait_for_workers(alive, self.settings.kafka_partitions, timeout)

    def start_sink(self, extra_env: dict[str, str] | None = None) -> Child:
        sink = self.children.start(
            f"sink-{len(self.children.children)}", "sink", free_port(), extra_env=extra_env
        )
        self.sink = sink
        wait_until(lambda: self._scrapes(sink), 60, message="sink metrics endpoint")
        return sink

    def _scrapes(self, child: Child) -> bool:
        if child.proc.poll() is not None:
            raise ServiceUnavailable(f"{child.name} exited; log:\n{child.log.read_text()[-3000:]}")
        try:
            scrape(child.metrics_port)
            return True
        except OSError:
            return False

    def kill(self, child: Child) -> None:
        child.proc.send_signal(signal.SIGKILL)
        child.proc.wait(10)

    def stop(self) -> None:
        self.children.stop()
        if self._conn is not None:
            self._conn.close()

    # -- data -----------------------------------------------------------------------------
    def publisher(self, **kwargs: Any) -> ExaminationPublisher:
        return ExaminationPublisher(self.settings, codec=self.codec, **kwargs)

    def publish(self, events: Iterable[dict[str, Any]], batch_size: int = 100) -> int:
        """Publish ``events`` and wait for the broker's acknowledgements; returns how many."""
        publisher = self.publisher(batch_size=batch_size, linger_s=60)
        publisher.add_all(events)
        publisher.flush(30)
        publisher.close()
        if publisher.errors:
            raise ServiceUnavailable(
                f"{len(publisher.errors)} deliveries failed: {publisher.errors[0]}"
            )
        return publisher.events_delivered

    def produce_raw(
        self, topic: str, values: Iterable[bytes | None], key: bytes | None = None
    ) -> None:
        producer = Producer(producer_config(self.settings))
        for value in values:
            producer.produce(self.settings.topic(topic), value, key)
        undelivered = producer.flush(30)
        producer.close()
        if undelivered:
            raise ServiceUnavailable(f"{undelivered} messages to {topic} not delivered in 30 s")

    def read_topic(self, topic: str, timeout: float = 10.0) -> list[Message]:
        """Every message of a topic, from the beginning (a fresh consumer group)."""
        consumer = Consumer(consumer_config(self.settings, f"reader-{uuid.uuid4().hex[:8]}"))
        name = self.settings.topic(topic)
        metadata = consumer.list_topics(name, timeout=10).topics[name]
        tps = [TopicPartition(name, p) for p in metadata.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        messages: list[Message] = []
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error():
                    continue
                messages.append(message)
                _, partition, offset = position(message)
                if offset + 1 >= ends[partition]:
                    remaining.discard(partition)
        consumer.close()
        return messages

    @property
    def db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            if self.settings.database_url is None:
                raise ConfigurationError("the deployment has no database")
            self._conn = psycopg2.connect(self.settings.database_url.get_secret_value())
            self._conn.autocommit = True
        return self._conn

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def scalar(self, sql: str, *args: Any) -> Any:
        rows = self.query(sql, *args)
        return rows[0][0] if rows else None

    def count(self, table: str, where: str = "TRUE") -> int:
        return int(self.scalar(f"SELECT count(*) FROM {table} WHERE {where}"))

    def sink_metrics(self) -> dict[str, float]:
        if self.sink is None:
            raise ConfigurationError("the deployment has no sink")
        return scrape(self.sink.metrics_port)

    def accounted_events(self) -> int:
        """Examination rows + dead letters: every published event ends up in one of them."""
        return self.count("health_book_entries") + self.count("dead_letters")

    def wait_for_events(self, expected: int, timeout: float = 90.0) -> None:
        wait_until(
            lambda: self.accounted_events() >= expected,
            timeout,
            message=f"{expected} events persisted or dead-lettered",
        )


class DeploymentFactory:
    """``factory(partitions=4, workers=1, sink=True, **settings)`` -> a running
    :class:`Deployment` on the services of ``base``; its files under ``tmp_root``."""

    #: every process of a deployment gets this pseudonymisation secret
    CITIZEN_KEY_SECRET = "test-secret-" + "x" * 32

    def __init__(self, base: Settings, tmp_root: Path) -> None:
        if base.database_url is None:
            raise ConfigurationError("deployments need a database (EHB_DATABASE_URL)")
        self.base = base
        self.admin_url = base.database_url.get_secret_value()
        self.tmp_root = tmp_root
        self.created: list[Deployment] = []

    def __call__(
        self, *, partitions: int = 4, workers: int = 1, sink: bool = True, **settings_overrides: Any
    ) -> Deployment:
        n = next(_counter)
        tag = f"t{n}{uuid.uuid4().hex[:6]}"
        database = f"ehb_{tag}"
        with contextlib.closing(psycopg2.connect(self.admin_url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{database}"')
        tmp = self.tmp_root / tag
        tmp.mkdir(parents=True)
        database_url = _with_database(self.admin_url, database)
        settings = self.base.model_copy(
            update={
                "topic_prefix": f"{tag}.",
                "kafka_partitions": partitions,
                "database_url": SecretStr(database_url),
                "worker_group": f"{tag}-worker",
                "sink_group": f"{tag}-sink",
                "data_dir": tmp,
                **settings_overrides,
            }
        )
        create_topics(settings)
        with contextlib.closing(psycopg2.connect(database_url)) as conn:
            migrate(conn)
        extra = {"EHB_CITIZEN_KEY_SECRET": self.CITIZEN_KEY_SECRET}
        extra.update(
            {f"EHB_{name.upper()}": str(value) for name, value in settings_overrides.items()}
        )
        children = ChildProcesses(settings, tmp / "logs", extra_env=extra)
        deployment = Deployment(
            settings.model_copy(update={"citizen_key_secret": SecretStr(self.CITIZEN_KEY_SECRET)}),
            tmp,
            children,
        )
        self.created.append(deployment)
        for _ in range(workers):
            deployment.start_worker(wait=False)
        if sink:
            deployment.start_sink()
        if workers:
            deployment.wait_for_workers()
        return deployment

    def close(self) -> None:
        for deployment in self.created:
            deployment.stop()
