"""ehb.consumer: where a newly assigned partition starts is known before its first record.

With an unknown start the first record fetched sets it, so a fetch that skipped the first
batch (Tansu, ``ehb.continuity``) would go unnoticed; the committed offsets are therefore
asked for again when the coordinator does not answer. The consumer here is a stand-in for
``confluent_kafka.Consumer``'s two calls: the logic under test is the retry.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from ehb.consumer import COMMITTED_READ_ATTEMPTS, RecordConsumer

PARTITIONS = [TopicPartition("t.appointments", 0), TopicPartition("t.appointments", 1)]


class Coordinator:
    """``committed`` fails ``failures`` times (the call, or one partition's answer)."""

    def __init__(self, failures: int, per_partition: bool = False) -> None:
        self.failures = failures
        self.per_partition = per_partition
        self.calls = 0

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[Any]:
        self.calls += 1
        failing = self.calls <= self.failures
        if failing and not self.per_partition:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
        answer = []
        for p in partitions:  # TopicPartition's error is read-only: the same fields
            error = None
            if failing and p.partition == 1:
                error = KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)
            offset = -1001 if error else 40 + p.partition
            answer.append(
                SimpleNamespace(topic=p.topic, partition=p.partition, offset=offset, error=error)
            )
        return answer

    def get_watermark_offsets(self, *_: Any, **__: Any) -> tuple[int, int]:
        return (0, 100)


def starts(coordinator: Coordinator) -> dict[tuple[str, int], int | None]:
    owner = SimpleNamespace(_earliest=True)
    return RecordConsumer._starts(owner, coordinator, PARTITIONS)  # type: ignore[arg-type]


@pytest.mark.parametrize("per_partition", [False, True], ids=["call fails", "partition fails"])
def test_a_coordinator_that_answers_late_still_gives_the_committed_offsets(
    per_partition: bool,
) -> None:
    coordinator = Coordinator(failures=2, per_partition=per_partition)
    assert starts(coordinator) == {("t.appointments", 0): 40, ("t.appointments", 1): 41}
    assert coordinator.calls == 3


def test_a_coordinator_that_never_answers_fails_the_consumer() -> None:
    coordinator = Coordinator(failures=COMMITTED_READ_ATTEMPTS)
    with pytest.raises(KafkaException):
        starts(coordinator)
    assert coordinator.calls == COMMITTED_READ_ATTEMPTS
