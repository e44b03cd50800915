"""The worker's buffered sender (streams.output.OutputProducer) on the real broker: everything
queued is on the broker once ``flush`` returns, and a message the broker cannot take fails the
flush (the batch is then not acknowledged), and every flush after it, even though only errors
are reported back."""

from __future__ import annotations

import asyncio

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
def test_an_undeliverable_message_fails_the_flush(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=2)
    output = OutputProducer(producer_config(d.settings))
    topic = d.settings.topic(HEALTH_BOOK)
    output.produce(topic, b"fine", key=b"k")
    output.produce(topic, b"nowhere to go", partition=7)  # the topic has 2 partitions
    with pytest.raises(OutputError, match="1 messages not delivered"):
        asyncio.run(output.flush())
    with pytest.raises(OutputError):  # failed for good: a later flush cannot succeed
        asyncio.run(output.flush())
    output.close()
    assert [m.value() for m in d.read_topic(HEALTH_BOOK)] == [b"fine"]


@pytest.mark.integration
def test_every_concurrent_flush_fails_on_an_undelivered_message(
    deploy: DeploymentFactory,
) -> None:
    """The stateful agent and the idle-partition timer flush the same producer at once: the
    error must reach both, not only the one that happened to collect it."""
    d = deploy(workers=0, sink=False, partitions=2)
    output = OutputProducer(producer_config(d.settings))
    topic = d.settings.topic(HEALTH_BOOK)
    output.produce(topic, b"fine", key=b"k")
    output.produce(topic, b"nowhere to go", partition=7)

    async def both() -> list[BaseException | None]:
        return await asyncio.gather(output.flush(), output.flush(), return_exceptions=True)

    results = asyncio.run(both())
    output.close()
    assert [type(r) for r in results] == [OutputError, OutputError]
