"""The durable embedded stack: Tansu brokers keeping topics and committed offsets in SeaweedFS
under the data directory. What a broker acknowledged survives a SIGKILL of every process; the
store's credentials are private to the data directory; nothing listens beyond loopback."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ehb.commands.local import wait_until
from ehb.embedded import EmbeddedStack, read_stack_file
from ehb.objectstore import CREDENTIALS_FILE
from ehb.settings import BrokerStorage, Settings

pytestmark = pytest.mark.integration

TOPIC = "durable.check"
MESSAGES = 300


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    s = EmbeddedStack(Settings(data_dir=tmp_path, broker_storage=BrokerStorage.DURABLE, brokers=2))
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _produce(bootstrap: str, count: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": False, "acks": "all"}
    )
    failed: list[object] = []
    for i in range(count):
        producer.produce(
            TOPIC,
            f"m{i}".encode(),
            partition=i % 2,
            on_delivery=lambda err, _msg: failed.append(err) if err else None,
        )
    assert producer.flush(60) == 0 and failed == []


def _consume(bootstrap: str, group: str, want: int, commit_after: int | None = None) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([TOPIC])
    seen: list[str] = []
    try:

        def enough() -> bool:
            for message in consumer.consume(100, 0.5):
                if message.error() is None:
                    seen.append((message.value() or b"").decode())
                    if commit_after is not None and len(seen) == commit_after:
                        consumer.commit(asynchronous=False)
                        return True
            return len(seen) >= want

        wait_until(enough, 90, message=f"{want} messages from {group}")
    finally:
        consumer.close()
    return seen


def _listeners(pid: int) -> list[str]:
    process = psutil.Process(pid)
    return [
        c.laddr.ip
        for p in (process, *process.children(recursive=True))
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_acknowledged_messages_and_committed_offsets_survive_a_kill_of_everything(
    stack: EmbeddedStack,
) -> None:
    bootstrap = stack.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(TOPIC, 2, 1)]).values():
        future.result(30)
    _produce(stack.brokers[1].bootstrap, MESSAGES)  # through the second broker
    first = _consume(bootstrap, "g", MESSAGES, commit_after=100)
    assert len(first) == 100

    stack.kill()
    assert read_stack_file(stack.root) is None  # dead processes: no stale stack.json
    stack.start()

    everything = _consume(bootstrap, "fresh-reader", MESSAGES)
    assert sorted(everything) == sorted(f"m{i}" for i in range(MESSAGES))
    rest = _consume(bootstrap, "g", MESSAGES - 100)
    assert sorted(first + rest) == sorted(everything)  # the commit held: nothing twice
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "g"})
    try:
        committed = consumer.committed([TopicPartition(TOPIC, p) for p in (0, 1)], 30)
    finally:
        consumer.close()
    assert sum(max(tp.offset, 0) for tp in committed) == 100  # -1001: none on that one


def test_store_credentials_are_private_and_everything_listens_on_loopback(
    stack: EmbeddedStack,
) -> None:
    store = stack.store
    assert store is not None and store.pid is not None
    path = store.workdir / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key, secret = store.credentials()
    assert len(secret) >= 32 and key.startswith("ehb")
    assert (key, secret) == store.credentials()  # generated once per data directory
    assert secret not in " ".join(psutil.Process(store.pid).cmdline())  # nor on a command line

    addresses = _listeners(store.pid)
    assert len(addresses) >= 8  # master, volume, filer, S3 and their gRPC ports
    for broker in stack.brokers:
        assert broker.pid is not None
        addresses += _listeners(broker.pid)
    assert set(addresses) == {"127.0.0.1"}


def test_another_data_directory_has_other_credentials(tmp_path: Path) -> None:
    from ehb.objectstore import EmbeddedObjectStore

    one = EmbeddedObjectStore(tmp_path / "a").credentials()
    two = EmbeddedObjectStore(tmp_path / "b").credentials()
    assert one[0] != two[0] and one[1] != two[1]
