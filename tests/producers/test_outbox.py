"""The producer outbox: events are on disk before they are sent, gone once acknowledged, and
resent by the next producer with the same identity after a crash or an outage."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from ehb.commands.local import DeploymentFactory, wait_until
from ehb.kafka import producer_config
from ehb.settings import Settings
from producers import outbox as outbox_module
from producers.outbox import EVENT, MESSAGE, Outbox, OutboxBusy
from producers.publisher import ExaminationPublisher, _avro_long
from schemas import SUBJECTS, AvroCodec
from schemas.errors import EhbError
from schemas.topics import EXAMINATIONS
from tests.support import factories as f
from tests.support.proxy import KafkaProxy


def _crash(outbox: Outbox) -> None:
    """What a killed process leaves: no commit, no clean close, and (the process being gone)
    no outbox in this process's gauges."""
    outbox._db.close()
    outbox._lock_file.close()
    outbox_module._open_outboxes.discard(outbox)


def test_staged_rows_are_durable_only_after_commit(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path, "p")
    first = outbox.stage("79001", EVENT, 1, b"a")
    outbox.commit({"source": "1"})
    outbox.stage("79001", EVENT, 1, b"b")  # staged, never committed: a crash loses it
    _crash(outbox)
    again = Outbox.open(tmp_path, "p")
    assert [(r.seq, r.body) for r in again.rows()] == [(first, b"a")]
    assert again.recovered_events == again.pending_events == 1
    assert again.mark("source") == "1"
    again.close()


def test_acknowledged_rows_are_deleted_and_sequence_numbers_never_reused(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path, "p")
    seqs = [outbox.stage("79001", EVENT, 1, bytes([i])) for i in range(5)]
    message = outbox.stage("79002", MESSAGE, 3, b"batch", [("h", b"\x01\x02")])
    outbox.commit()
    assert outbox.pending_events == 8
    outbox.acknowledge(seqs, 5)
    outbox.commit()
    rows = outbox.rows()
    assert [(r.seq, r.kind, r.events, r.headers) for r in rows] == [
        (message, MESSAGE, 3, [("h", b"\x01\x02")])
    ]
    outbox.acknowledge([message], 3)
    outbox.close()
    again = Outbox.open(tmp_path, "p")
    assert again.rows() == [] and again.pending_events == 0
    assert again.stage("79001", EVENT, 1, b"x") > message  # a late ack can never hit a new row
    again.close()


def test_one_live_process_per_outbox(tmp_path: Path) -> None:
    outbox = Outbox.open(tmp_path, "gateway")
    with pytest.raises(OutboxBusy):
        Outbox.open(tmp_path, "gateway")
    second = Outbox.open_first_free(tmp_path, "gateway")
    assert second.identity == "gateway.2"
    second.close()
    outbox.close()
    Outbox.open(tmp_path, "gateway").close()  # free again once closed
    with pytest.raises(EhbError):
        Outbox.open(tmp_path, "../escape")


def test_gauges_count_pending_events_and_the_oldest_age(tmp_path: Path) -> None:
    def sample(name: str) -> float:
        value = REGISTRY.get_sample_value(name)
        assert value is not None
        return value

    before = sample("ehb_outbox_pending_events")
    outbox = Outbox.open(tmp_path, "p")
    seq = outbox.stage("79001", EVENT, 1, b"a")
    outbox.stage("79001", EVENT, 1, b"b")
    outbox.commit()
    assert sample("ehb_outbox_pending_events") == before + 2
    time.sleep(0.05)  # an age to measure
    assert sample("ehb_outbox_oldest_pending_age_seconds") >= 0.05
    outbox.acknowledge([seq], 1)
    assert sample("ehb_outbox_pending_events") == before + 1
    outbox.close()
    assert sample("ehb_outbox_pending_events") == before


@pytest.mark.parametrize("n", [0, 1, -1, 63, 64, -65, 300, 2**40, -(2**62)])
def test_avro_long_is_avros_zigzag_varint(n: int) -> None:
    import io

    from fastavro import schemaless_reader

    assert schemaless_reader(io.BytesIO(_avro_long(n)), "long") == n


def test_a_batch_composed_from_stored_events_is_the_encoded_batch(tmp_path: Path) -> None:
    codec = AvroCodec()
    settings = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path)
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    publisher = ExaminationPublisher(settings, codec=codec, producer=producer, durable=False)
    events = [f.exam(i, name="Nguyễn Thị Ánh 😷") for i in range(3)] + [
        f.with_appointment(f.exam(9), when=f.BASE_TIME + f.timedelta(days=9))
    ]
    values = [codec.encode(SUBJECTS.EXAMINATION_EVENT, e) for e in events]
    assert publisher._compose_batch("79001", values) == codec.encode(
        SUBJECTS.EXAMINATION_BATCH, {"ma_cskcb": "79001", "events": events}
    )
    publisher.outbox.close()


@pytest.mark.integration
def test_an_outage_and_a_crashed_producer_lose_nothing(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False, partitions=2)
    proxy = KafkaProxy.for_bootstrap(str(d.settings.kafka_bootstrap)).start()
    via_proxy = d.settings.model_copy(update={"kafka_bootstrap": proxy.bootstrap})
    events = [f.exam(i, facility=("79001", "79002")[i % 2]) for i in range(300)]
    try:
        doomed = Producer(producer_config(via_proxy, log_level=0))  # quiet once it is "dead"
        publisher = ExaminationPublisher(
            via_proxy, codec=d.codec, identity="clinic", linger_s=60, producer=doomed
        )
        publisher.add_all(events[:100])
        assert publisher.flush(30) == 0
        proxy.cut()
        publisher.add_all(events[100:])
        assert publisher.flush(2) > 0  # the broker is unreachable: nothing acknowledged
        assert publisher.outbox.pending_events == 200
        # the producer dies: librdkafka's queue is gone, the outbox file stays
        publisher._producer.purge()
        _crash(publisher.outbox)
        proxy.restore()
        restarted = ExaminationPublisher(via_proxy, codec=d.codec, identity="clinic")
        assert restarted.resent_events == 200
        assert restarted.flush(60) == 0
        assert restarted.outbox.pending_events == 0
        restarted.close()
    finally:
        proxy.close()
    ids = wait_until(
        lambda: (
            {
                e["event_id"]
                for m in d.read_topic(EXAMINATIONS)
                for e in d.codec.decode(m.value()).record["events"]
            }
            >= {e["event_id"] for e in events}
            or None
        ),
        30,
        message="every event on the topic",
    )
    assert ids


def test_an_outbox_is_not_resent_to_another_topic(tmp_path: Path) -> None:
    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0})
    a = Settings(kafka_bootstrap="127.0.0.1:1", data_dir=tmp_path, topic_prefix="a.")
    publisher = ExaminationPublisher(a, producer=producer, identity="x")
    publisher.add(f.exam(1))
    publisher.commit()
    publisher.outbox.close()
    b = a.model_copy(update={"topic_prefix": "b."})
    with pytest.raises(EhbError, match="holds 1 events for topic a.examinations"):
        ExaminationPublisher(b, producer=producer, identity="x")
