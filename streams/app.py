"""The Faust stream worker: two agents, one changelog-backed table.

::

    examinations ──intake──▶ examinations-by-citizen ──health-book agent──▶ health-book
     (by facility)  │          (by citizen key)            │  table       ▶ referrals
                    ▼                                      │ "citizens"   ▶ appointments
               dead-letter                                 ▼
                                                 <app id>-citizens-changelog

* **intake** (stateless): decode, validate, enrich a ``take_events`` batch at a time and
  re-partition the valid events by pseudonymous citizen key, several per message, so that one
  citizen's events are ordered on one partition. Rejected events go to ``dead-letter``.
* **health-book** (stateful): integration, referral completion and appointment follow-through
  (``streams.citizen_state``) with state in the ``citizens`` table.

Faust pays ~200 µs of framework work per Kafka message; both agents therefore handle batches
of messages, each carrying several events, and send with librdkafka (``streams.output``). The
outputs of a batch are flushed before its state is written, and both before Faust
acknowledges the source offsets: at-least-once, idempotent downstream.

Start it with ``ehb worker``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections import defaultdict
from typing import Any

import faust
from faust.types import TP

from ehb import faultpoints
from ehb.kafka import consumer_config, faust_broker_options, producer_config
from ehb.privacy import CitizenKeyer
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.reference import FacilityRegistry
from schemas.registry import codec_for
from streams import faust_patches, metrics
from streams.citizen_state import NEVER, CitizenStateMachine, StateConfig
from streams.intake import Intake, SourceMessage
from streams.internal import decode_validated, encode_chunks, encode_validated
from streams.output import OutputProducer

__all__ = ["create_app", "encode_json"]

log = logging.getLogger(__name__)

#: internal messages per batch of the stateful agent (<= 5,000 events)
STATE_BATCH_MESSAGES = 50


class IntakeProgress:
    """The intake's progress on the input partitions it owns.

    Sent with every message to the stateful stage, which aligns its event-time clock on the
    slowest input partition (streams/citizen_state.py). A partition is *idle* when everything
    up to its high watermark has been processed for ``idle_after_s`` seconds: it then no longer
    holds the clock back. (A partition that is merely caught up between two uploads is not
    idle, so a live run and a replay of the same input give the same results.)
    """

    def __init__(self, topic: str, partitions: int, idle_after_s: float) -> None:
        self.topic = topic
        self.partitions = partitions
        self.idle_after_s = idle_after_s
        self._caught_up_since: dict[int, float] = {}
        self.watermark: dict[int, int] = {}
        self.done_upto: dict[int, int] = {}
        self._last_sent: dict[int, list[dict[str, Any]]] = {}

    def update(self, result: Any) -> None:
        for q, t in result.progress.items():
            if t > self.watermark.get(q, NEVER):
                self.watermark[q] = t
        for q, offset in result.consumed.items():
            if offset > self.done_upto.get(q, 0):
                self.done_upto[q] = offset

    def sources(self, consumer: Any) -> list[dict[str, Any]]:
        out = []
        owned = sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic)
        for q in owned:
            tp = TP(self.topic, q)
            highwater = consumer.highwater(tp)
            committed = consumer._committed_offset.get(tp) or 0
            done = max(self.done_upto.get(q, 0), committed)
            if highwater is not None and done >= highwater:
                since = self._caught_up_since.setdefault(q, time.monotonic())
                idle = time.monotonic() - since >= self.idle_after_s
            else:
                self._caught_up_since.pop(q, None)
                idle = False
            out.append({"partition": q, "watermark": self.watermark.get(q, NEVER),
                        "idle": idle})
        return out

    def changed_for(self, partition: int, sources: list[dict[str, Any]]) -> bool:
        if self._last_sent.get(partition) == sources:
            return False
        self._last_sent[partition] = sources
        return True

    def sent(self, partition: int, sources: list[dict[str, Any]]) -> None:
        self._last_sent[partition] = sources


def _shorten_fetch_wait() -> None:
    """Faust creates its aiokafka consumer with ``fetch_max_wait_ms=1500``, hard-coded.

    Apache Kafka answers a fetch as soon as data arrives, so the wait only bounds idle polls;
    Tansu holds the fetch for most of the wait (measured: median 443 ms with 1500 ms, 26 ms with
    100 ms), which adds that much latency to each hop of the worker. The app's
    ``ehb_fetch_max_wait_ms`` (``EHB_WORKER_FETCH_MAX_WAIT_MS``) replaces it before the consumer
    starts.
    """
    from faust.transport.drivers import aiokafka as driver

    thread_class = driver.AIOKafkaConsumerThread
    if getattr(thread_class, "_ehb_patched", False):
        return
    create = thread_class._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = create(self, transport)
        wait = getattr(self.app, "ehb_fetch_max_wait_ms", None)
        if wait is not None:
            consumer._fetch_max_wait_ms = int(wait)
        return consumer

    thread_class._create_worker_consumer = create_worker_consumer
    thread_class._ehb_patched = True


#: one encoder for the changelog (json.dumps with arguments builds a new one per call)
_JSON = json.JSONEncoder(separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """A changelog key or value of the citizens table: compact JSON, as Faust reads it."""
    return _JSON.encode(value).encode()


def create_app(settings: Settings, codec: AvroCodec | None = None,
               registry: FacilityRegistry | None = None) -> faust.App:
    codec = codec or codec_for(settings)
    registry = registry or FacilityRegistry.from_reference()
    faust_patches.install(real_end=functools.partial(
        faust_patches.real_end_offsets, consumer_config(settings, "ehb-changelog-end")))
    partitions = settings.kafka_partitions
    session = settings.kafka_session_timeout_s
    app = faust.App(
        settings.worker_group,
        **faust_broker_options(settings),
        store="memory://",
        # The memory store leaves no local state that could outlive its changelog, and Tansu
        # reports a partition's high watermark as the start of its newest batch + 1 (see
        # sinks/lag.py): Faust's recovery consistency check then fails after a rebalance
        # ("persisted offset higher than highwater") and crashes the surviving worker.
        recovery_consistency_check=False,
        datadir=str(settings.state_dir / "faust"),
        topic_partitions=partitions,
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.5, session / 5),
        broker_commit_interval=1.0,
        # Each input message carries up to ~100 events (tens of kB): keep the prefetch and the
        # agents' buffers to a couple of batches, or they hold hundreds of MB of backlog.
        # Not below 4 MB a partition: with 1 MB (worker peak 305 -> 267 MB draining 200,000
        # events) a two-worker demo of 200,000 events stalled for good at 183,053, twice,
        # three input partitions assigned and never fetched; with 4 MB it completes. Tansu
        # seems not to return a record batch larger than the partition's fetch size (Apache
        # Kafka does, KIP-74); librdkafka producers write batches up to 1 MB.
        broker_max_poll_records=2000,
        consumer_max_fetch_size=4 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=2 * settings.worker_batch_size,
        producer_acks=-1,
        web_enabled=False,
        consumer_group_instance_id=settings.worker_instance_id,
        key_serializer="raw",
        value_serializer="raw",
    )
    examinations = app.topic(settings.topic("examinations"), key_type=bytes, value_type=bytes)
    by_citizen = app.topic(settings.topic("examinations-by-citizen"), key_type=bytes,
                           value_type=bytes)
    # Keys and values are JSON in the changelog (Faust's default codec for these types).
    citizens = app.Table("citizens", default=None, partitions=partitions, key_type=str)
    output = OutputProducer(producer_config(settings, **{"linger.ms": 2}))
    intake = Intake(codec, registry, CitizenKeyer.from_settings(settings), partitions,
                    original_max_bytes=settings.dead_letter_original_max_bytes)
    machine = CitizenStateMachine(StateConfig.from_settings(settings))
    encode_dead_letter = codec.writer(SUBJECTS.DEAD_LETTER)
    encode_health_book = codec.writer(SUBJECTS.HEALTH_BOOK_RECORD)
    encode_referral = codec.writer(SUBJECTS.REFERRAL_RECORD)
    encode_appointment = codec.writer(SUBJECTS.APPOINTMENT_RECORD)
    t_by_citizen = settings.topic("examinations-by-citizen")
    t_dead_letter = settings.topic("dead-letter")
    t_health_book = settings.topic("health-book")
    t_referrals = settings.topic("referrals")
    t_appointments = settings.topic("appointments")
    t_examinations = settings.topic("examinations")
    batch_size, within = settings.worker_batch_size, settings.worker_batch_timeout_s

    progress = IntakeProgress(t_examinations, partitions, settings.partition_idle_s)

    def send_progress(sources: list[dict[str, Any]], with_items: set[int]) -> None:
        """Progress to every partition that got no items in this batch (if it changed)."""
        for p in range(partitions):
            if p not in with_items and progress.changed_for(p, sources):
                output.produce(t_by_citizen, encode_validated([], sources),
                               partition=p)

    faust_patches.commit_points[t_examinations] = "intake.offsets_committed"
    faust_patches.commit_points[t_by_citizen] = "health_book.offsets_committed"

    @app.agent(examinations, name="ehb.intake")
    async def intake_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in faust_patches.take_batches(stream, batch_size, within,
                                                       "intake.batch_acknowledged"):
            await faultpoints.adelay("intake.batch")
            if faust_patches.seek_pending():
                await faultpoints.adelay("intake.batch_during_seek")
            faultpoints.reach("intake.batch_received")
            started = time.perf_counter()
            messages = [
                SourceMessage(e.message.value, e.message.topic, e.message.partition,
                              e.message.offset, int(e.message.timestamp * 1000))
                for e in events
            ]
            result = intake.process(messages)
            progress.update(result)
            sources = progress.sources(app.consumer)
            for partition, items in result.by_partition.items():
                for value in encode_chunks(items, sources):
                    output.produce(t_by_citizen, value, partition=partition)
                progress.sent(partition, sources)
            send_progress(sources, set(result.by_partition))
            for facility, dead_letter in result.dead_letters:
                output.produce(t_dead_letter, encode_dead_letter(dead_letter),
                               key=facility.encode() if facility else None)
            faultpoints.reach("intake.outputs_queued")
            await output.flush()
            faultpoints.reach("intake.outputs_flushed")
            metrics.MESSAGES_IN.labels("intake").inc(len(events))
            metrics.EVENTS_IN.labels("intake").inc(result.events_in)
            metrics.EVENTS_OUT.labels("intake", t_by_citizen).inc(result.accepted)
            metrics.EVENTS_OUT.labels("intake", t_dead_letter).inc(len(result.dead_letters))
            for reason, count in result.rejected.items():
                metrics.FAILURES.labels("intake", reason).inc(count)
            metrics.LAST_PROCESSED.labels("intake").set(time.time())
            metrics.BATCH_SECONDS.labels("intake").observe(time.perf_counter() - started)

    @app.timer(1.0)
    async def report_idle_partitions() -> None:
        """Between batches: tell the stateful stage which input partitions are caught up."""
        if not app.consumer.assignment():
            return
        send_progress(progress.sources(app.consumer), set())
        await output.flush()

    changelog_topic = citizens.changelog_topic.get_topic_name()

    @app.agent(by_citizen, name="ehb.health-book")
    async def health_book_agent(stream: faust.StreamT[bytes]) -> None:
        store = citizens.data
        async for events in faust_patches.take_batches(stream, STATE_BATCH_MESSAGES, within,
                                                       "health_book.batch_acknowledged"):
            await faultpoints.adelay("health_book.batch")
            faultpoints.reach("health_book.batch_received")
            started = time.perf_counter()
            by_partition: dict[int, list[tuple[Any, Any]]] = defaultdict(list)
            for e in events:
                try:
                    items, sources = decode_validated(e.message.value, codec)
                except DecodeError as exc:  # only our own worker writes this topic
                    log.error("undecodable internal message %s[%d]@%d: %s", e.message.topic,
                              e.message.partition, e.message.offset, exc.reason)
                    metrics.FAILURES.labels("health-book", exc.reason).inc()
                    continue
                by_partition[e.message.partition].append((items, sources))
            now_ms = int(time.time() * 1000)
            state_writes: list[tuple[int, dict[str, Any]]] = []
            n_items = n_hb = n_ref = n_app = 0
            for partition, batch in by_partition.items():
                emitted = machine.process(partition, batch, store, now_ms).compact()
                n_items += sum(len(items) for items, _ in batch)
                for record in emitted.health_book:
                    output.produce(t_health_book, encode_health_book(record),
                                   key=record["citizen_key"].encode())
                for record in emitted.referrals:
                    output.produce(t_referrals, encode_referral(record),
                                   key=record["citizen_key"].encode())
                for record in emitted.appointments:
                    output.produce(t_appointments, encode_appointment(record),
                                   key=record["citizen_key"].encode())
                n_hb += len(emitted.health_book)
                n_ref += len(emitted.referrals)
                n_app += len(emitted.appointments)
                state_writes.append((partition, emitted.state))
                store.update(emitted.local)
            # Outputs first: state that says "done" must never land without its records.
            await output.flush()
            faultpoints.reach("health_book.outputs_flushed")
            for partition, changes in state_writes:
                for key, value in changes.items():
                    output.produce(changelog_topic,
                                   None if value is None else encode_json(value),
                                   key=encode_json(key), partition=partition)
                    if value is None:
                        store.pop(key, None)
                    else:
                        store[key] = value
            await output.flush()
            faultpoints.reach("health_book.changelog_written")
            metrics.MESSAGES_IN.labels("health-book").inc(len(events))
            metrics.EVENTS_IN.labels("health-book").inc(n_items)
            metrics.EVENTS_OUT.labels("health-book", t_health_book).inc(n_hb)
            metrics.EVENTS_OUT.labels("health-book", t_referrals).inc(n_ref)
            metrics.EVENTS_OUT.labels("health-book", t_appointments).inc(n_app)
            metrics.LAST_PROCESSED.labels("health-book").set(time.time())
            metrics.BATCH_SECONDS.labels("health-book").observe(time.perf_counter() - started)

    # An agent that raises stops the worker without acknowledging its batch (Faust would
    # commit and restart the agent).
    intake_agent._on_error = faust_patches.fail_stop  # type: ignore[attr-defined]
    health_book_agent._on_error = faust_patches.fail_stop  # type: ignore[attr-defined]

    @app.on_partitions_revoked.connect
    async def _forget_timer_indexes(app: faust.App, revoked: Any, **_: Any) -> None:
        machine.forget_partitions()

    @app.on_partitions_assigned.connect
    async def _count_assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        machine.forget_partitions()
        mine = app.consumer.assignment()
        metrics.ASSIGNED_PARTITIONS.set(sum(1 for tp in mine if tp.topic == t_examinations))

    if settings.database_url is not None or not settings.kafka_bootstrap:
        _schedule_registry_refresh(app, settings, registry)

    app.ehb_output = output  # type: ignore[attr-defined]
    app.ehb_fetch_max_wait_ms = settings.worker_fetch_max_wait_ms  # type: ignore[attr-defined]
    _shorten_fetch_wait()
    return app


def _schedule_registry_refresh(app: faust.App, settings: Settings,
                               registry: FacilityRegistry) -> None:
    """Reload the facility registry from PostgreSQL: updates apply without a restart."""
    from ehb.db import connect, fetch_facilities

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
            log.warning("facility registry refresh failed, keeping %d facilities: %s",
                        len(registry), exc)
            return
        metrics.REGISTRY_FACILITIES.set(count)
