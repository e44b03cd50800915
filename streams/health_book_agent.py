"""The health-book agent: the stateful stage (``streams.citizen_state``) on
``examinations-by-citizen``, with its state in the changelog-backed ``citizens`` table.

A batch of internal messages at a time: run the state machine per partition, send the
health-book, referral and appointment records, flush them, then write the state changes to the
changelog and flush again, then to the table's local data (``streams.state_store``: memory or
RocksDB, each write in the database of the partition it belongs to), and only then let Faust
acknowledge the batch. Outputs go first because state that says "done" must never land without
its records; a crash in between re-emits records the idempotent sinks absorb. The local data is
written after the changelog is acknowledged, so that a local RocksDB state kept over a crash is
never ahead of its changelog.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from ehb import faultpoints
from ehb.settings import Settings
from schemas import SUBJECTS, AvroCodec, DecodeError
from schemas.topics import APPOINTMENTS, HEALTH_BOOK, REFERRALS
from streams import faust_patches, metrics
from streams.citizen_state import CitizenStateMachine, Emitted
from streams.internal import decode_validated
from streams.output import OutputProducer
from streams.state_codec import encode_key, encode_value, json_key
from streams.state_store import as_state, encode_json

__all__ = ["STATE_BATCH_MESSAGES", "HealthBookAgent", "HealthBookOutputs", "encode_json"]

log = logging.getLogger(__name__)

STAGE = "health-book"

#: internal messages per batch of the stateful agent (<= 5,000 events)
STATE_BATCH_MESSAGES = 50


@dataclass(frozen=True)
class _Output:
    topic: str
    encode: Callable[[dict[str, Any]], bytes]


@dataclass(frozen=True)
class HealthBookOutputs:
    """The output topics of the stage and their Avro writers (two on health-book)."""

    health_book: _Output
    referrals: _Output
    appointments: _Output
    withdrawn: _Output

    @classmethod
    def from_settings(cls, settings: Settings, codec: AvroCodec) -> HealthBookOutputs:
        return cls(
            _Output(settings.topic(HEALTH_BOOK), codec.fast_writer(SUBJECTS.HEALTH_BOOK_RECORD)),
            _Output(settings.topic(REFERRALS), codec.fast_writer(SUBJECTS.REFERRAL_RECORD)),
            _Output(settings.topic(APPOINTMENTS), codec.fast_writer(SUBJECTS.APPOINTMENT_RECORD)),
            _Output(settings.topic(HEALTH_BOOK), codec.fast_writer(SUBJECTS.EPISODE_WITHDRAWN)),
        )

    def topics(self) -> list[str]:
        return list(dict.fromkeys(out.topic for out, _ in self.of(Emitted())))

    def of(self, emitted: Emitted) -> list[tuple[_Output, list[dict[str, Any]]]]:
        """Each output with its records in ``emitted``."""
        return [
            (self.health_book, emitted.health_book),
            (self.referrals, emitted.referrals),
            (self.appointments, emitted.appointments),
            (self.withdrawn, emitted.withdrawn),
        ]


Batch = list[tuple[Any, Any]]  # (items, sources) of the internal messages of one partition


@dataclass(eq=False)  # agents are hashed by identity (their bound methods are registered)
class HealthBookAgent:
    """``run`` is the Faust agent's function.

    ``store`` gives the ``citizens`` table's data (a Faust store, or a
    ``streams.state_store.PartitionedState``), read and written per partition; ``changelog``
    is its changelog topic.
    """

    machine: CitizenStateMachine
    codec: AvroCodec
    store: Callable[[], Any]
    changelog: str
    outputs: HealthBookOutputs
    output: OutputProducer
    within: float
    #: the changelog's producer when it is not ``output``: one that reports offsets (RocksDB)
    changelog_output: OutputProducer | None = None
    #: the changelog's keys in the binary format (``EHB_STATE_KEY_FORMAT``,
    #: ``streams.state_codec``); false: JSON, as workers wrote them before issue 17
    binary_keys: bool = True

    async def run(self, stream: faust.StreamT[bytes]) -> None:
        store = as_state(self.store(), self.binary_keys)
        async for events in faust_patches.take_batches(
            stream, STATE_BATCH_MESSAGES, self.within, "health_book.batch_acknowledged"
        ):
            await faultpoints.adelay("health_book.batch")
            faultpoints.reach("health_book.batch_received")
            await self.process_batch(events, store)

    async def process_batch(self, events: Sequence[Any], store: Any) -> None:
        started = time.perf_counter()
        state = as_state(store, self.binary_keys)
        by_partition = self._decode(events)
        now_ms = int(time.time() * 1000)
        state_writes: list[tuple[int, dict[str, Any], set[str]]] = []
        n_items = 0
        records_out = dict.fromkeys(self.outputs.topics(), 0)
        for partition, batch in by_partition.items():
            emitted = self.machine.process(partition, batch, state.view(partition), now_ms)
            emitted.compact()
            n_items += sum(len(items) for items, _ in batch)
            self._send_records(emitted, records_out)
            # before the local-only write below, which may give a citizen its binary key
            legacy = state.legacy(partition, emitted.state)
            state_writes.append((partition, emitted.state, legacy))
            state.write(partition, emitted.local)
        await self.output.flush()
        faultpoints.reach("health_book.outputs_flushed")
        changelog = self.changelog_output or self.output
        self._send_changelog(changelog, state_writes)
        await changelog.flush()
        offsets = changelog.take_offsets(self.changelog) if changelog.reports_offsets else {}
        for partition, changes, legacy in state_writes:
            state.write(partition, changes, offsets.get(partition), legacy)
        faultpoints.reach("health_book.changelog_written")
        metrics.count_batch(
            STAGE, messages=len(events), events_in=n_items, records_out=records_out, started=started
        )

    def _decode(self, events: Sequence[Any]) -> dict[int, Batch]:
        """The batch's internal messages by partition; an undecodable one is logged and
        skipped (only our own workers write this topic)."""
        by_partition: dict[int, Batch] = defaultdict(list)
        for e in events:
            try:
                items, sources = decode_validated(e.message.value, self.codec)
            except DecodeError as exc:
                log.error(
                    "undecodable internal message %s[%d]@%d: %s",
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    exc.reason,
                )
                metrics.FAILURES.labels(STAGE, exc.reason).inc()
                continue
            by_partition[e.message.partition].append((items, sources))
        return by_partition

    def _send_records(self, emitted: Emitted, records_out: dict[str, int]) -> None:
        """Send the records ``emitted``, keyed by citizen, and count them by topic."""
        for out, records in self.outputs.of(emitted):
            for record in records:
                self.output.produce(
                    out.topic, out.encode(record), key=record["citizen_key"].encode()
                )
            records_out[out.topic] += len(records)

    def _send_changelog(
        self, output: OutputProducer, state_writes: list[tuple[int, dict[str, Any], set[str]]]
    ) -> None:
        """The state changes to the changelog, on the partition they belong to, under binary
        keys; a citizen still held under its JSON key (``legacy``) gets that key's tombstone
        *after* its binary record: a crash between the two leaves both, and readers take the
        binary one (docs/state-store.md, "The encoding")."""
        topic = self.changelog
        binary = self.binary_keys
        for partition, changes, legacy in state_writes:
            for key, value in changes.items():
                output.produce(
                    topic,
                    None if value is None else encode_value(value),
                    # json (a rolling upgrade): a citizen with a binary key stays binary
                    key=encode_key(key) if binary or key in legacy else encode_json(key),
                    partition=partition,
                )
                if binary and key in legacy:
                    output.produce(topic, None, key=json_key(key), partition=partition)
