"""Waiting for a deployment's consumer groups to have processed what is in their topics."""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition

from ehb.commands.local import Deployment, wait_until
from ehb.commands.tail import Start, TopicReader
from ehb.kafka import consumer_config


def caught_up(d: Deployment, group: str, topics: tuple[str, ...], timeout: float = 90) -> None:
    """``group`` has committed everything now in ``topics`` (read to their ends: Tansu's
    ListOffsets understates the end)."""
    ends: list[TopicPartition] = []
    for topic in topics:
        with TopicReader(d.settings, topic, Start("beginning")) as reader:
            last: dict[int, int] = {}
            for message in reader.messages(follow=False, idle_s=0.3):
                last[message.partition()] = message.offset()
            ends += [TopicPartition(reader.topic, p, o + 1) for p, o in last.items()]
    probe = Consumer(consumer_config(d.settings, group))
    try:

        def committed() -> bool:
            got = probe.committed([TopicPartition(e.topic, e.partition) for e in ends], timeout=10)
            done = {(tp.topic, tp.partition): tp.offset for tp in got}
            return all(done[(e.topic, e.partition)] >= e.offset for e in ends)

        wait_until(committed, timeout, message=f"{group} to commit everything in {topics}")
    finally:
        probe.close()
