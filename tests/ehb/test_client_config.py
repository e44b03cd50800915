"""Settings that reach the Kafka clients' configuration (pure: no broker needed)."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError

from ehb.kafka import consumer_config, idempotent, producer_config, refused_for_good
from ehb.settings import BrokerStorage, Settings

BROKER = {"kafka_bootstrap": "broker.example:9092"}


def test_consumer_fetch_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert consumer_config(Settings(**BROKER), "g")["fetch.wait.max.ms"] == 25
    monkeypatch.setenv("EHB_CONSUMER_FETCH_MAX_WAIT_MS", "500")
    conf = consumer_config(Settings(**BROKER), "g")
    assert conf["fetch.wait.max.ms"] == 500 and conf["group.id"] == "g"
    monkeypatch.setenv("EHB_CONSUMER_FETCH_MAX_WAIT_MS", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings()


def test_producers_never_give_up_and_write_idempotently() -> None:
    conf = producer_config(Settings(**BROKER), **{"linger.ms": 2})
    assert conf["message.timeout.ms"] == 0  # an outage is waited out, not turned into a loss
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["linger.ms"] == 2


def test_idempotence_is_on_for_a_named_broker_and_off_for_the_embedded_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EHB_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("EHB_KAFKA_IDEMPOTENCE", raising=False)
    assert idempotent(Settings(**BROKER))
    assert not idempotent(Settings())  # the embedded broker, found through stack.json
    assert not idempotent(Settings(**BROKER, kafka_idempotence=False))
    assert idempotent(Settings(kafka_idempotence=True))


def test_without_idempotence_one_request_is_in_flight() -> None:
    """A retry of an earlier request can then never land after a later one: order holds."""
    conf = producer_config(Settings(**BROKER, kafka_idempotence=False))
    assert conf["enable.idempotence"] is False
    assert conf["max.in.flight.requests.per.connection"] == 1
    assert conf["acks"] == "all" and conf["message.timeout.ms"] == 0
    assert "max.in.flight.requests.per.connection" not in producer_config(Settings(**BROKER))


@pytest.mark.parametrize(
    ("code", "for_good"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, True),
        (KafkaError.INVALID_RECORD, True),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, True),
        (KafkaError.UNKNOWN, False),  # Tansu while its object store is down
        (KafkaError.NOT_LEADER_FOR_PARTITION, False),
        (KafkaError._TRANSPORT, False),
        (KafkaError.REQUEST_TIMED_OUT, False),
    ],
)
def test_only_errors_about_the_message_itself_are_final(code: int, for_good: bool) -> None:
    assert refused_for_good(KafkaError(code)) is for_good


def test_several_embedded_brokers_need_durable_storage() -> None:
    assert Settings(brokers=3).brokers == 3
    with pytest.raises(ValueError, match="EHB_BROKER_STORAGE=durable"):
        Settings(brokers=2, broker_storage=BrokerStorage.MEMORY)
