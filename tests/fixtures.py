"""Test fixtures' building blocks: a real broker and PostgreSQL, and isolated deployments.

One embedded stack (Tansu + PostgreSQL) per test session, unless ``EHB_KAFKA_BOOTSTRAP`` and
``EHB_DATABASE_URL`` point at real services. Each test that needs the pipeline gets its own
:class:`Deployment`: a unique topic prefix, consumer groups and database, and its own worker
and sink processes, so tests never share state.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

from ehb.commands.demo import Child, DemoChildren, scrape, wait_for_workers
from ehb.embedded import free_port
from ehb.kafka import consumer_config, create_topics, producer_config
from ehb.settings import Settings
from producers.publisher import ExaminationPublisher
from schemas import AvroCodec
from sinks.migrate import migrate

T = TypeVar("T")

_counter = itertools.count(1)


def wait_until(condition: Callable[[], T], timeout: float = 60.0, interval: float = 0.1,
               message: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message} (last: {last!r})")


def wait_stable(value: Callable[[], T | None], hold_s: float, timeout: float = 120.0,
                interval: float = 0.5, message: str = "a stable value") -> T:
    """Poll ``value`` until it is not None and has not changed for ``hold_s`` seconds.

    For the pipeline's final state, ``hold_s`` must outlast ``partition_idle_s``: the last
    timers (reminders, referrals expired, appointments missed) fire only once the input
    partitions have been idle that long and release the event-time clock."""
    since: float | None = None
    last: Any = None

    def held() -> T | None:
        nonlocal since, last
        current = value()
        now = time.monotonic()
        if current is None or current != last:
            since, last = now, current
            return None
        return current if since is not None and now - since >= hold_s else None

    return wait_until(held, timeout, interval, message)


def _with_database(url: str, database: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{database}"


@dataclass
class Deployment:
    """An isolated pipeline: own topics, groups, database, worker and sink processes."""

    settings: Settings
    tmp: Path
    children: DemoChildren
    codec: AvroCodec = field(default_factory=AvroCodec)
    workers: list[Child] = field(default_factory=list)
    sink: Child | None = None
    _conn: psycopg2.extensions.connection | None = None

    # -- processes ------------------------------------------------------------------------
    def start_worker(self, wait: bool = True, instance_id: str | None = None,
                     extra_env: dict[str, str] | None = None) -> Child:
        """A worker process; ``instance_id``: its static group membership (a worker restarted
        with the same id takes its partitions back without waiting for a rebalance);
        ``extra_env``: more variables for this process only (``EHB_FAULT_KILL``...)."""
        extra = dict(extra_env or {})
        if instance_id:
            extra["EHB_WORKER_INSTANCE_ID"] = instance_id
        child = self.children.start(f"worker-{len(self.workers) + 1}", "worker", free_port(),
                                    extra_env=extra)
        self.workers.append(child)
        if wait:
            self.wait_for_workers()
        return child

    def wait_for_workers(self, timeout: float = 120.0) -> float:
        alive = [w for w in self.workers if w.proc.poll() is None]
        return wait_for_workers(alive, self.settings.kafka_partitions, timeout)

    def start_sink(self, extra_env: dict[str, str] | None = None) -> Child:
        self.sink = self.children.start(f"sink-{len(self.children.children)}", "sink",
                                        free_port(), extra_env=extra_env)
        wait_until(lambda: self._scrapes(self.sink), 60, message="sink metrics endpoint")
        return self.sink

    def _scrapes(self, child: Child | None) -> bool:
        if child is None:
            return False
        if child.proc.poll() is not None:
            raise AssertionError(f"{child.name} exited; log:\n{child.log.read_text()[-3000:]}")
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
        publisher = self.publisher(batch_size=batch_size, linger_s=60)
        publisher.add_all(events)
        publisher.flush(30)
        publisher.close()
        assert not publisher.errors, publisher.errors
        return publisher.events_delivered

    def produce_raw(self, topic: str, values: Iterable[bytes | None], key: bytes | None = None
                    ) -> None:
        producer = Producer(producer_config(self.settings))
        for value in values:
            producer.produce(self.settings.topic(topic), value, key)
        assert producer.flush(30) == 0
        producer.close()

    def read_topic(self, topic: str, timeout: float = 10.0) -> list[Any]:
        """Every message of a topic, from the beginning (a fresh consumer group)."""
        consumer = Consumer(consumer_config(self.settings, f"reader-{uuid.uuid4().hex[:8]}"))
        name = self.settings.topic(topic)
        metadata = consumer.list_topics(name, timeout=10).topics[name]
        tps = [TopicPartition(name, p) for p in metadata.partitions]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        consumer.assign([TopicPartition(name, p, 0) for p in ends])
        messages: list[Any] = []
        remaining = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for message in consumer.consume(1000, 0.5):
                if message.error():
                    continue
                messages.append(message)
                if message.offset() + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
        consumer.close()
        return messages

    @property
    def db(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            assert self.settings.database_url is not None
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
        assert self.sink is not None
        return scrape(self.sink.metrics_port)

    def accounted_events(self) -> int:
        """Examination rows + dead letters: every published event ends up in one of them."""
        return self.count("health_book_entries") + self.count("dead_letters")

    def wait_for_events(self, expected: int, timeout: float = 90.0) -> None:
        wait_until(lambda: self.accounted_events() >= expected, timeout,
                   message=f"{expected} events persisted or dead-lettered")


class DeploymentFactory:
    def __init__(self, base: Settings, tmp_root: Path) -> None:
        self.base = base
        self.tmp_root = tmp_root
        self.created: list[Deployment] = []

    def __call__(self, *, partitions: int = 4, workers: int = 1, sink: bool = True,
                 **settings_overrides: Any) -> Deployment:
        n = next(_counter)
        tag = f"t{n}{uuid.uuid4().hex[:6]}"
        assert self.base.database_url is not None
        admin_url = self.base.database_url.get_secret_value()
        database = f"ehb_{tag}"
        with contextlib.closing(psycopg2.connect(admin_url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{database}"')
        tmp = self.tmp_root / tag
        tmp.mkdir(parents=True)
        settings = self.base.model_copy(update={
            "topic_prefix": f"{tag}.",
            "kafka_partitions": partitions,
            "database_url": SecretStr(_with_database(admin_url, database)),
            "worker_group": f"{tag}-worker",
            "sink_group": f"{tag}-sink",
            "data_dir": tmp,
            **settings_overrides,
        })
        create_topics(settings)
        with contextlib.closing(
                psycopg2.connect(settings.database_url.get_secret_value())) as conn:
            migrate(conn)
        extra = {"EHB_CITIZEN_KEY_SECRET": "test-secret-" + "x" * 32}
        children = DemoChildren(settings, tmp / "logs")
        original_env = children.env

        def env() -> dict[str, str]:
            values = original_env()
            values.update(extra)
            for name, value in settings_overrides.items():
                values[f"EHB_{name.upper()}"] = str(value)
            return values

        children.env = env  # type: ignore[method-assign]
        deployment = Deployment(settings.model_copy(update={
            "citizen_key_secret": SecretStr(extra["EHB_CITIZEN_KEY_SECRET"])}), tmp, children)
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


def base_settings(tmp_root: Path) -> tuple[Settings, Any]:
    """Settings for the session: external services from the environment, else embedded."""
    from ehb.embedded import EmbeddedStack

    env_bootstrap = os.environ.get("EHB_KAFKA_BOOTSTRAP")
    env_database = os.environ.get("EHB_DATABASE_URL")
    settings = Settings(data_dir=tmp_root, kafka_session_timeout_s=6.0, log_level="INFO")
    if env_bootstrap and env_database:
        return settings, None
    stack = EmbeddedStack(settings)
    info = stack.start()
    return settings.model_copy(update={
        "kafka_bootstrap": info.bootstrap, "database_url": SecretStr(info.database_url),
    }), stack
