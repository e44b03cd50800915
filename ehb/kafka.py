"""Kafka client configuration and topic creation.

One place turns the settings into librdkafka (confluent-kafka) and aiokafka (Faust) client
configuration, security included, so the producer, the worker, the sink and every tool talk to
the broker the same way. Topics are created explicitly with the partition counts of
``schemas.topics`` (``ehb topics``); nothing relies on broker auto-creation.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from ehb.embedded import DURABLE_LINGER_MS, embedded_durable, resolve_bootstrap
from ehb.exceptions import ServiceUnavailable
from ehb.settings import Settings
from schemas.topics import topic_specs

__all__ = [
    "admin_client",
    "consumer_config",
    "create_topics",
    "first_offset_at",
    "linger_floor_ms",
    "refused_for_good",
    "faust_broker_options",
    "position",
    "producer_config",
    "wait_for_broker",
]

log = logging.getLogger(__name__)


def _security(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.upper().startswith("SASL"):
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_username:
            conf["sasl.username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        conf["ssl.ca.location"] = str(settings.kafka_ssl_cafile)
    return conf


def position(message: Message) -> tuple[str, int, int]:
    """(topic, partition, offset) of a message from the broker (a record, a partition-end
    event, a delivery report): librdkafka sets all three; its types allow None only for a
    message that never reached a broker."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None, message
    return topic, partition, offset


def base_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": resolve_bootstrap(settings), **_security(settings)}


def idempotent(settings: Settings) -> bool:
    """Whether producers are idempotent: ``EHB_KAFKA_IDEMPOTENCE``, else on unless the broker
    is the embedded one found through ``stack.json`` (see the setting)."""
    if settings.kafka_idempotence is not None:
        return settings.kafka_idempotence
    return bool(settings.kafka_bootstrap)


#: produce errors that a resend cannot cure: the message itself is refused
_REFUSED_FOR_GOOD = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
    }
)


def refused_for_good(err: KafkaError) -> bool:
    """A delivery error about the message itself (too large, invalid, not allowed). Any
    other error is the broker's state (down, its store down, a leader moving, Tansu's
    "Unknown broker error" while its object store is away): the message is sent again."""
    return err.code() in _REFUSED_FOR_GOOD


def linger_floor_ms(settings: Settings) -> int | None:
    """The least linger of every producer: ``EHB_KAFKA_LINGER_MS``, else
    ``DURABLE_LINGER_MS`` on the durable embedded broker found through ``stack.json``."""
    if settings.kafka_linger_ms is not None:
        return settings.kafka_linger_ms
    return DURABLE_LINGER_MS if embedded_durable(settings) else None


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    safe: dict[str, Any] = (
        {"enable.idempotence": True}
        if idempotent(settings)
        else {"enable.idempotence": False, "max.in.flight.requests.per.connection": 1}
    )
    conf = {
        **base_config(settings),
        **safe,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10000,
        "queue.buffering.max.messages": 500000,
        "queue.buffering.max.kbytes": 1048576,
        # Same partitioner as the Java client, aiokafka and Faust: a key lands on the same
        # partition whichever client wrote it.
        "partitioner": "murmur2_random",
        # Never give up on a message: an outage is waited out, not turned into a loss.
        "message.timeout.ms": 0,
    }
    conf.update(overrides)
    floor = linger_floor_ms(settings)
    if floor is not None:
        conf["linger.ms"] = max(int(conf["linger.ms"]), floor)
    return conf


def consumer_config(settings: Settings, group: str, **overrides: Any) -> dict[str, Any]:
    conf = {
        **base_config(settings),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": int(settings.kafka_session_timeout_s * 1000),
        "heartbeat.interval.ms": max(500, int(settings.kafka_session_timeout_s * 1000) // 5),
        "fetch.min.bytes": 1,
        # Tansu holds a fetch for most of this wait even when data arrives (Apache Kafka
        # answers at once): short, or every hop adds it to the latency.
        "fetch.wait.max.ms": settings.consumer_fetch_max_wait_ms,
        "enable.partition.eof": False,
    }
    conf.update(overrides)
    return conf


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(base_config(settings))


def wait_for_broker(settings: Settings, timeout: float = 30.0) -> AdminClient:
    admin = admin_client(settings)
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=2)
            return admin
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"Kafka broker {resolve_bootstrap(settings)} unreachable: {exc}"
                ) from exc
            time.sleep(0.2)


def create_topics(settings: Settings, timeout: float = 30.0) -> dict[str, str]:
    """Create the missing topics; returns {topic: "created" | "exists"}."""
    admin = wait_for_broker(settings, timeout)
    existing = set(admin.list_topics(timeout=10).topics)
    result: dict[str, str] = {}
    wanted = []
    for spec in topic_specs(settings):
        name = settings.topic(spec.name)
        if name in existing:
            result[name] = "exists"
        else:
            wanted.append(
                NewTopic(
                    name,
                    spec.partitions,
                    settings.kafka_replication_factor,
                    config=dict(spec.config),
                )
            )
    if wanted:
        futures = admin.create_topics(wanted, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                result[name] = "created"
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == 36:  # TOPIC_ALREADY_EXISTS (a race)
                    result[name] = "exists"
                else:
                    raise ServiceUnavailable(f"cannot create topic {name}: {exc}") from exc
    _wait_for_metadata(admin, list(result), timeout)
    return result


def _wait_for_metadata(admin: AdminClient, topics: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        known = admin.list_topics(timeout=5).topics
        if all(t in known and known[t].partitions for t in topics):
            return
        time.sleep(0.1)
    raise ServiceUnavailable(f"topics not visible in metadata after {timeout:.0f}s: {topics}")


def faust_broker_options(settings: Settings) -> dict[str, Any]:
    """Faust (aiokafka) settings derived from the same security settings."""
    import faust

    options: dict[str, Any] = {"broker": f"kafka://{resolve_bootstrap(settings)}"}
    proto = settings.kafka_security_protocol.upper()
    context = None
    if proto.endswith("SSL"):
        context = ssl.create_default_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        )
    if proto.startswith("SASL"):
        password = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password is not None
            else ""
        )
        options["broker_credentials"] = faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def first_offset_at(
    consumer_config: dict[str, Any], topic: str, partition: int, offset: int, timeout: float = 5.0
) -> int | None:
    """The offset of the first record of ``topic[partition]`` at or after ``offset``, as the
    broker returns it to a fetch from ``offset``; None when none arrives within ``timeout``."""
    consumer = Consumer(
        {
            **consumer_config,
            "group.id": "ehb-first-offset",
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in consumer.consume(1, 0.5):
                if message.error() is None:
                    return position(message)[2]
        return None
    finally:
        consumer.close()
