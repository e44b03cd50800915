"""The Faust stream worker: two agents, one changelog-backed table.

::

    examinations ──intake──▶ examinations-by-citizen ──health-book agent──▶ health-book
     (by facility)  │          (by citizen key)            │  table       ▶ referrals
                    ▼                                      │ "citizens"   ▶ appointments
               dead-letter                                 ▼
                                                 <app id>-citizens-changelog

* **intake** (stateless, ``streams.intake_agent``): decode, validate, enrich a ``take_events``
  batch at a time and re-partition the valid events by pseudonymous citizen key, several per
  message, so that one citizen's events are ordered on one partition (``streams.routing``).
  Rejected events go to ``dead-letter``. Every message carries the intake's event-time
  progress (``streams.progress``).
* **health-book** (stateful, ``streams.health_book_agent``): integration, referral completion
  and appointment follow-through (``streams.citizen_state``) with state in the ``citizens``
  table.

Faust's framework work per Kafka message costs more than the processing of an event; both
agents therefore handle batches of messages, each carrying several events, and send with
librdkafka (``streams.output``). The outputs of a batch are flushed before its state is
written, and both before Faust acknowledges the source offsets: at-least-once, idempotent
downstream.

:func:`create_app` only wires these pieces. Start it with ``ehb worker``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import faust

from ehb.embedded import resolve_bootstrap
from ehb.kafka import (
    consumer_config,
    faust_broker_options,
    first_offset_at,
    linger_floor_ms,
    producer_config,
)
from ehb.privacy import CitizenKeyer
from ehb.settings import Settings, StateKeyFormat, StateStore
from schemas import AvroCodec
from schemas.reference import FacilityRegistry
from schemas.registry import codec_for
from schemas.topics import CITIZENS_TABLE, EXAMINATIONS, EXAMINATIONS_BY_CITIZEN
from streams import faust_patches, member_id, metrics, timer_index
from streams.broker_watch import BrokerWatch
from streams.citizen_state import CitizenStateMachine, StateConfig
from streams.health_book_agent import HealthBookAgent, HealthBookOutputs
from streams.intake import Intake
from streams.intake_agent import IntakeAgent
from streams.output import WORKER_LINGER_MS, OutputProducer
from streams.progress import IntakeProgress
from streams.routing import IntakeRoutes
from streams.state_codec import register_codec
from streams.state_store import claim_table_dir, read_changelog, share_memory

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def _faust_app(settings: Settings) -> faust.App:
    session = settings.kafka_session_timeout_s
    linger_ms = linger_floor_ms(settings)
    # the changelog's producer: on the durable embedded broker fuller batches (EHB_KAFKA_LINGER_MS)
    batching: dict[str, Any] = (
        {"producer_linger": linger_ms / 1000, "producer_max_batch_size": 1024 * 1024}
        if linger_ms
        else {}
    )
    return faust.App(
        settings.worker_group,
        **faust_broker_options(settings),
        # EHB_STATE_STORE=rocksdb: on the app, not the table: a table's store="rocksdb://" is a
        # yarl URL with neither host nor path, which is falsy, and Faust then falls back to the
        # app's store (memory) without a word
        store="rocksdb://" if settings.state_store == StateStore.ROCKSDB else "memory://",
        # Tansu reports a partition's high watermark as the start of its newest batch + 1 (see
        # sinks/lag.py): Faust's recovery consistency check then fails after a rebalance
        # ("persisted offset higher than highwater") and crashes the surviving worker.
        recovery_consistency_check=False,
        table_standby_replicas=settings.table_standby_replicas,
        datadir=str(settings.state_dir / "faust"),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.5, session / 5),
        broker_commit_interval=1.0,
        # Each input message carries up to ~100 events (tens of kB): keep the prefetch and the
        # agents' buffers to a couple of batches, or they hold hundreds of MB of backlog.
        # The fetch sizes bound what the consumer holds (EHB_WORKER_FETCH_MAX_KB).
        broker_max_poll_records=2000,
        consumer_max_fetch_size=settings.worker_fetch_max_kb * 1024,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=2 * settings.worker_batch_size,
        producer_acks=-1,
        web_enabled=False,
        consumer_group_instance_id=settings.worker_instance_id,
        key_serializer="raw",
        value_serializer="raw",
        **batching,
        **_table_dir(settings),
    )


def _table_dir(settings: Settings) -> dict[str, Any]:
    """rocksdb: the directory of the table's partition databases, this process's own
    (``EHB_STATE_STORE_DIR``, else claimed under ``EHB_DATA_DIR``; Faust creates only its last
    component). Its process rejoins the group under the member id of the last process that held
    it (``streams.member_id``)."""
    if settings.state_store != StateStore.ROCKSDB:
        return {}
    if settings.state_store_dir is not None:
        directory = settings.state_store_dir.resolve()
        directory.parent.mkdir(parents=True, exist_ok=True)
        claim_table_dir(directory.parent, directory.name)
    else:
        directory = claim_table_dir(settings.tables_dir, settings.worker_instance_id)
    log.info("citizens table on rocksdb in %s", directory)
    if settings.worker_instance_id is None:
        member_id.remember(settings.worker_group, directory / "group-member-id")
    return {"tabledir": str(directory)}


def _table_options(settings: Settings) -> dict[str, Any]:
    """The citizens table's RocksDB options (the app's store is rocksdb://): rocksdict.

    ``options`` are handed to Faust's ``RocksDBOptions``; the driver is chosen with
    ``"driver"`` (``use_rocksdict`` raises a TypeError, Faust passes it too). The block cache
    and the write buffers' budget are the process's, shared by every partition database
    (``streams.state_store.share_memory``; Faust's default: 2 GiB of cache and 3 x 64 MiB of
    memtables for each).
    """
    if settings.state_store != StateStore.ROCKSDB:
        return {}
    mib = 1024 * 1024
    share_memory(settings.state_block_cache_mb * mib, settings.state_memtables_mb * mib)
    timer_index.install()  # before Faust opens or recovers a partition database
    return {
        "options": {
            "driver": "rocksdict",
            "write_buffer_size": settings.state_write_buffer_mb * mib,
            "max_write_buffer_number": settings.state_max_write_buffers,
            "target_file_size_base": settings.state_target_file_mb * mib,
            "max_open_files": settings.state_max_open_files,
        },
    }


_fetch_patched = False


def _tune_worker_fetch() -> None:
    """Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``, hard-coded, and
    without ``fetch_max_bytes`` (aiokafka's default: 50 MB).

    Apache Kafka answers a fetch as soon as data arrives, so the wait only bounds idle polls;
    Tansu holds the fetch for most of the wait, which adds that much latency to each hop of the
    worker. The app's ``ehb_fetch_max_wait_ms`` (``EHB_WORKER_FETCH_MAX_WAIT_MS``) replaces it
    before the consumer starts, and ``ehb_fetch_max_bytes`` (``EHB_WORKER_FETCH_MAX_KB``) bounds
    a whole fetch, which is what bounds it on Tansu (it ignores the per-partition size).
    """
    from faust.transport.drivers import aiokafka as driver

    global _fetch_patched
    if _fetch_patched:
        return
    thread_class = driver.AIOKafkaConsumerThread
    create = thread_class._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = getattr(self.app, "ehb_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)
        max_bytes = getattr(self.app, "ehb_fetch_max_bytes", None)
        if max_bytes is not None:
            consumer._fetch_max_bytes = int(max_bytes)
        return consumer

    thread_class._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    _fetch_patched = True


def create_app(
    settings: Settings, codec: AvroCodec | None = None, registry: FacilityRegistry | None = None
) -> faust.App:
    codec = codec or codec_for(settings)
    registry = registry or FacilityRegistry.from_reference()
    faust_patches.install(
        real_end=functools.partial(
            faust_patches.real_end_offsets, consumer_config(settings, "ehb-changelog-end")
        ),
        first_offset=functools.partial(
            first_offset_at, consumer_config(settings, "ehb-first-offset")
        ),
        hole_confirm_s=settings.offset_hole_confirm_s,
        bulk_read=functools.partial(read_changelog, consumer_config(settings, "ehb-bulk-recovery"))
        if settings.state_store == StateStore.ROCKSDB
        else None,
    )
    partitions = settings.kafka_partitions
    app = _faust_app(settings)
    t_examinations = settings.topic(EXAMINATIONS)
    t_by_citizen = settings.topic(EXAMINATIONS_BY_CITIZEN)
    examinations = app.topic(t_examinations, key_type=bytes, value_type=bytes)
    by_citizen = app.topic(t_by_citizen, key_type=bytes, value_type=bytes)
    # Values are JSON in the changelog (Faust's default codec for the type); keys are binary
    # or, written before issue 17, JSON: Faust's recovery reads both with the table's key codec
    # (streams.state_codec). Faust made the changelog topic with the JSON codec as the table
    # was added: it is made again, same name, with the table's codec.
    citizens = app.Table(
        CITIZENS_TABLE,
        default=None,
        partitions=partitions,
        key_type=str,
        **_table_options(settings),
    )
    citizens.key_serializer = register_codec()  # type: ignore[attr-defined]
    citizens.changelog_topic = citizens._new_changelog_topic()  # type: ignore[attr-defined]
    # every send of the worker is followed by a flush, which does not wait the linger out
    producing = producer_config(settings, **{"linger.ms": WORKER_LINGER_MS})
    output = OutputProducer(producing)
    machine = CitizenStateMachine(StateConfig.from_settings(settings))
    intake = IntakeAgent(
        Intake(
            codec,
            registry,
            CitizenKeyer.from_settings(settings),
            partitions,
            original_max_bytes=settings.dead_letter_original_max_bytes,
        ),
        IntakeProgress(t_examinations, partitions, settings.partition_idle_s),
        output,
        IntakeRoutes.from_settings(settings, codec),
        lambda: app.consumer,
        settings.worker_batch_size,
        settings.worker_batch_timeout_s,
    )
    health_book = HealthBookAgent(
        machine,
        codec,
        lambda: citizens.data,
        citizens.changelog_topic.get_topic_name(),
        HealthBookOutputs.from_settings(settings, codec),
        output,
        settings.worker_batch_timeout_s,
        # RocksDB: the changelog's offsets are persisted with the state they carry
        OutputProducer(producing, report_offsets=True)
        if settings.state_store == StateStore.ROCKSDB
        else None,
        binary_keys=settings.state_key_format == StateKeyFormat.BINARY,
    )

    faust_patches.commit_points[t_examinations] = "intake.offsets_committed"
    faust_patches.commit_points[t_by_citizen] = "health_book.offsets_committed"
    for channel, name, run in (
        (examinations, "ehb.intake", intake.run),
        (by_citizen, "ehb.health-book", health_book.run),
    ):
        agent = app.agent(channel, name=name)(run)
        # An agent that raises stops the worker without acknowledging its batch (Faust would
        # commit and restart the agent).
        agent._on_error = faust_patches.fail_stop  # type: ignore[attr-defined]
    app.timer(1.0)(intake.report_idle_partitions)
    # a worker bound to a dead Tansu broker stops so that its restart bootstraps again
    app.timer(5.0)(BrokerWatch(app, resolve_bootstrap(settings)).check)
    _connect_rebalance_signals(app, machine, t_examinations)
    if settings.database_url is not None or not settings.kafka_bootstrap:
        _schedule_registry_refresh(app, settings, registry)

    app.ehb_output = output  # type: ignore[attr-defined]
    app.ehb_fetch_max_wait_ms = settings.worker_fetch_max_wait_ms  # type: ignore[attr-defined]
    app.ehb_fetch_max_bytes = settings.worker_fetch_max_kb * 1024  # type: ignore[attr-defined]
    _tune_worker_fetch()
    return app


def _connect_rebalance_signals(
    app: faust.App, machine: CitizenStateMachine, t_examinations: str
) -> None:
    """After a rebalance the state machine rebuilds its timer indexes from the table."""

    # mode types a handler with mypy_extensions' VarArg/NamedArg, which mypy 2 matches with no
    # function at all (not even ``def f(*args: Any, **kwargs: Any) -> None``): the stub is wrong
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _forget_timer_indexes(app: faust.App, revoked: Any, **_: Any) -> None:
        machine.forget_partitions()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _count_assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        machine.forget_partitions()
        mine = app.consumer.assignment()
        metrics.ASSIGNED_PARTITIONS.set(sum(1 for tp in mine if tp.topic == t_examinations))


def _schedule_registry_refresh(
    app: faust.App, settings: Settings, registry: FacilityRegistry
) -> None:
    """Reload the facility registry from PostgreSQL: updates apply without a restart."""
    from ehb.db import connect
    from ehb.facilities import fetch_facilities

    def reload() -> int:
        conn = connect(settings, timeout=5, application_name="ehb-worker-registry")
        try:
            facilities = fetch_facilities(conn)
        finally:
            conn.close()
        if facilities:
            registry.replace(facilities)
        return len(facilities)

    @app.timer(settings.registry_refresh_s, on_leader=False)
    async def refresh_registry() -> None:
        try:
            count = await asyncio.get_running_loop().run_in_executor(None, reload)
        except Exception as exc:  # keep the last good registry
            log.warning(
                "facility registry refresh failed, keeping %d facilities: %s", len(registry), exc
            )
            return
        metrics.REGISTRY_FACILITIES.set(count)
