"""Settings that reach the Kafka clients' configuration (pure: no broker needed)."""

from __future__ import annotations

import pytest

from ehb.kafka import consumer_config, producer_config
from ehb.settings import Settings

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
