"""The public consumer client (ehb.consumer.RecordConsumer) on the real broker: typed records,
commit only after the handler returns, undecodable values dead-lettered."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any, get_type_hints

import pytest
from confluent_kafka import Consumer, TopicPartition

from ehb.commands.local import Deployment, DeploymentFactory
from ehb.commands.tail import Start, TopicReader
from ehb.consumer import Record, RecordConsumer
from ehb.exceptions import ServiceUnavailable
from ehb.kafka import consumer_config
from schemas import SUBJECTS, load_catalog
from schemas.records import TYPED_SUBJECTS, AppointmentRecord
from schemas.topics import APPOINTMENTS


def test_typed_records_have_the_fields_of_the_newest_schemas() -> None:
    catalog = load_catalog()
    for subject, typed in TYPED_SUBJECTS.items():
        assert set(get_type_hints(typed)) == set(catalog.latest(subject).field_names()), subject


def appointment(n: int, record_type: str = "SCHEDULED") -> dict[str, Any]:
    at = datetime(2024, 3, 18, 1, 0, tzinfo=UTC)
    return {
        "record_type": record_type,
        "appointment_id": f"79001:HK{n:07d}",
        "event_id": f"e{n}",
        "citizen_key": f"{n:032x}",
        "ma_cskcb": "79001",
        "ma_benh_chinh": "I10",
        "appointment_at": at,
        "event_time": at,
        "visit_event_id": None,
        "published_at": at,
    }


def committed(d: Deployment, group: str, topic: str) -> int:
    probe = Consumer(consumer_config(d.settings, group))
    try:
        [tp] = probe.committed([TopicPartition(d.settings.topic(topic), 0)], timeout=10)
        return tp.offset
    finally:
        probe.close()


@pytest.mark.integration
def test_at_least_once_and_dead_letters(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=1)
    values = [d.codec.encode(SUBJECTS.APPOINTMENT_RECORD, appointment(n)) for n in range(3)]
    d.produce_raw("appointments", values[:2] + [b"\x07garbage"] + values[2:], key=b"k")
    group = f"{d.settings.topic_prefix}sms"

    # 1. the handler fails: nothing is committed, the error reaches the caller
    def failing(records: list[Record[AppointmentRecord]]) -> None:
        raise RuntimeError("SMS gateway down")

    with pytest.raises(RuntimeError, match="SMS gateway down"):
        RecordConsumer(d.settings, group, [APPOINTMENTS]).run(failing)
    assert committed(d, group, "appointments") < 0  # no offset stored for the group

    # 2. the next consumer of the group gets the same records again, typed, then commits
    received: list[Record[AppointmentRecord]] = []
    stop = threading.Event()

    def handle(records: list[Record[AppointmentRecord]]) -> None:
        received.extend(records)
        if len(received) >= 3:
            stop.set()

    consumer = RecordConsumer(
        d.settings, group, [APPOINTMENTS], subjects=[SUBJECTS.APPOINTMENT_RECORD]
    )
    with consumer:
        timer = threading.Timer(60, stop.set)  # a safety net only; the handler sets stop
        timer.start()
        consumer.run(handle, stop=stop)
        timer.cancel()
    assert [r.value["appointment_id"] for r in received] == [
        "79001:HK0000000",
        "79001:HK0000001",
        "79001:HK0000002",
    ]
    first = received[0]
    assert first.subject == SUBJECTS.APPOINTMENT_RECORD and first.key_text == "k"
    assert first.value["appointment_at"] == datetime(2024, 3, 18, 1, 0, tzinfo=UTC)
    assert first.topic == d.settings.topic(APPOINTMENTS) and first.partition == 0
    assert isinstance(first.timestamp, datetime)
    assert consumer.undecodable == 1
    assert committed(d, group, "appointments") == 4  # after the last record

    # 3. the undecodable value went to the dead-letter topic (once per attempt), with its bytes
    with TopicReader(d.settings, "dead-letter", Start("beginning")) as reader:
        dead = [d.codec.decode(m.value()).record for m in reader.messages(follow=False, idle_s=0.3)]
    assert len(dead) == 2  # the failed attempt and the successful one: same source position
    for letter in dead:
        assert (letter["reason"], letter["stage"]) == ("bad_magic_byte", "sink")
        assert (letter["source_topic"], letter["source_partition"], letter["source_offset"]) == (
            d.settings.topic(APPOINTMENTS),
            0,
            2,
        )
        assert letter["original"] == b"\x07garbage"


@pytest.mark.integration
def test_a_dead_letter_the_broker_refuses_leaves_the_batch_uncommitted(
    deploy: DeploymentFactory,
) -> None:
    """The undecodable record's dead letter is not delivered (here: a topic name the broker
    rejects): the consumer fails before committing, so the record is read again later."""
    d = deploy(workers=0, sink=False, partitions=1)
    good = d.codec.encode(SUBJECTS.APPOINTMENT_RECORD, appointment(1))
    d.produce_raw("appointments", [b"\x07garbage", good], key=b"k")  # in the first batch
    group = f"{d.settings.topic_prefix}refused"
    consumer = RecordConsumer(d.settings, group, [APPOINTMENTS])
    consumer._dead_letter_topic = "no spaces allowed in a topic name"
    received: list[Record[Any]] = []
    with pytest.raises(ServiceUnavailable, match="1 dead letters not delivered"):
        consumer.run(received.extend, max_batches=1)
    assert received == []
    assert committed(d, group, "appointments") < 0  # nothing stored for the group
