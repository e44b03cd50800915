"""The worker's buffered sender (streams.output.OutputProducer) on the real broker: everything
queued is on the broker once ``flush`` returns, and a message the broker cannot take fails the
flush (the batch is then not acknowledged), and every flush after it, even though only errors
are reported back."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from ehb.commands.local import DeploymentFactory
from ehb.kafka import producer_config
from schemas.topics import HEALTH_BOOK
from streams.output import OutputError, OutputProducer


@pytest.mark.integration
def test_flush_returns_once_everything_is_on_the_broker(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=2)
    output = OutputProducer(producer_config(d.settings))
    topic = d.settings.topic(HEALTH_BOOK)
    for n in range(500):
        output.produce(topic, f"v{n}".encode(), key=f"k{n}".encode())
    output.produce(topic, b"on partition 1", partition=1)
    asyncio.run(output.flush())
    output.close()

    messages = d.read_topic(HEALTH_BOOK)
    values = sorted(m.value() for m in messages)
    assert values == sorted([f"v{n}".encode() for n in range(500)] + [b"on partition 1"])
    assert [m.partition() for m in messages if m.value() == b"on partition 1"] == [1]
    assert output.sent == 501


@pytest.mark.integration
def test_a_flush_sends_at_once_whatever_the_linger(deploy: DeploymentFactory) -> None:
    """The worker's producers linger (``WORKER_LINGER_MS``) because each batch ends in a flush,
    which must send what is queued without waiting the linger out: with librdkafka's longest
    linger (15 min), a flush allowed 30 s still gets every message acknowledged."""
    d = deploy(workers=0, sink=False, partitions=2)
    output = OutputProducer(producer_config(d.settings, **{"linger.ms": 900_000}))
    topic = d.settings.topic(HEALTH_BOOK)
    for n in range(20):
        output.produce(topic, f"v{n}".encode(), key=f"k{n}".encode())
    assert output.flush_sync(timeout=30) == 0
    output.close()
    assert sorted(m.value() for m in d.read_topic(HEALTH_BOOK)) == sorted(
        f"v{n}".encode() for n in range(20)
    )


@pytest.mark.integration
def test_a_message_for_a_partition_the_topic_lacks_fails_the_producer_for_good(
    deploy: DeploymentFactory,
) -> None:
    d = deploy(workers=0, sink=False, partitions=2)
    output = OutputProducer(producer_config(d.settings))
    topic = d.settings.topic(HEALTH_BOOK)
    output.produce(topic, b"fine", key=b"k")
    asyncio.run(output.flush())  # the topic's metadata (2 partitions) is now known
    with pytest.raises(OutputError, match="not accepted"):
        output.produce(topic, b"nowhere to go", partition=7)
    with pytest.raises(OutputError):  # failed for good: a later flush cannot succeed
        asyncio.run(output.flush())
    output.close()
    assert [m.value() for m in d.read_topic(HEALTH_BOOK)] == [b"fine"]


@pytest.fixture
def refusing_address() -> Iterator[str]:
    """An address on loopback that refuses every connection (bound, never listening)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_every_concurrent_flush_fails_on_an_undelivered_message(refusing_address: str) -> None:
    """The stateful agent and the idle-partition timer flush the same producer at once: the
    error must reach both, not only the one that happened to collect it, and every flush after
    them. The messages are queued, and time out undelivered (there is no broker to take them)."""
    output = OutputProducer({"bootstrap.servers": refusing_address, "message.timeout.ms": 500})
    output.produce("health-book", b"never delivered", key=b"k")
    output.produce("health-book", b"nor this", partition=1)

    async def both() -> list[BaseException | None]:
        return await asyncio.gather(output.flush(), output.flush(), return_exceptions=True)

    results = asyncio.run(both())
    assert [type(r) for r in results] == [OutputError, OutputError]
    assert "2 messages not delivered" in str(results[0])
    with pytest.raises(OutputError):
        asyncio.run(output.flush())
