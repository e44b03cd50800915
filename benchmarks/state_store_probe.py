"""A probe of the citizens table's stores (docs/state-store.md), not ``make bench-state``.

The health-book agent's ``process_batch`` on simulated events, in-process (no broker: outputs
and changelog go to a recorder), with the table on ``memory`` or ``rocksdb``; one store per
run, so that the peak RSS is that store's::

    PYTHONPATH=. .venv/bin/python -m benchmarks.state_store_probe --store memory --events 200000
    PYTHONPATH=. .venv/bin/python -m benchmarks.state_store_probe --store rocksdb --events 200000

Prints one JSON line: events/s of the agent (its time only, not the simulation's), peak RSS
(the whole process: simulator, agent, timer heaps, store), keys, the state's bytes as the changelog
carries them (binary keys, JSON values), as it carried them before issue 17 (JSON keys), and
with MessagePack values, and the RocksDB directory's bytes on disk (``--key-format json``: the
table written as before issue 17).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack

from ehb.settings import Settings, StateStore
from schemas import AvroCodec
from schemas.partitioning import citizen_partition
from schemas.reference import FacilityRegistry
from schemas.time import VN_TZ
from simulation.simulator import CitySimulator, SimulationConfig
from streams.app import _faust_app, _table_options
from streams.citizen_state import CitizenStateMachine, StateConfig
from streams.enrichment import enrich
from streams.health_book_agent import STATE_BATCH_MESSAGES, HealthBookAgent, HealthBookOutputs
from streams.health_book_agent import _Output as Output
from streams.internal import MAX_ITEMS_PER_MESSAGE, encode_validated
from streams.state_codec import encode_key
from streams.state_store import as_state, encode_json
from streams.validation import Validator

PARTITIONS = 4


class Recorder:
    """The OutputProducer's interface, counting instead of sending."""

    reports_offsets = True

    def __init__(self) -> None:
        self.sent = 0
        self.next: dict[int, int] = {}
        self.delivered: dict[int, int] = {}

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        partition: int | None = None,
    ) -> None:
        self.sent += 1
        if partition is not None and topic == "changelog":
            offset = self.next.get(partition, 0)
            self.next[partition] = offset + 1
            self.delivered[partition] = offset

    async def flush(self, timeout: float = 1.0) -> None:
        return None

    def take_offsets(self, topic: str) -> dict[int, int]:
        taken, self.delivered = self.delivered, {}
        return taken


def internal_messages(events: int, seed: int) -> Iterator[Any]:
    """The intake's output for ``events`` simulated exams: messages by citizen partition,
    generated as they are consumed (the input is not held in memory)."""
    registry = FacilityRegistry.from_reference()
    validator = Validator(registry)
    now = datetime.now(VN_TZ)
    pending: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    messages: list[Any] = []
    watermark = 0
    offsets = dict.fromkeys(range(PARTITIONS), 0)

    def emit(p: int) -> None:
        # every input partition reports (the clock holds until all have): one input here
        # stands for all, so timers fire and stale visits are forgotten as in the worker
        sources = [
            {"partition": q, "watermark": watermark, "idle": False} for q in range(PARTITIONS)
        ]
        value = encode_validated(pending[p], sources)
        message = SimpleNamespace(topic="by-citizen", partition=p, offset=offsets[p], value=value)
        messages.append(SimpleNamespace(message=message))
        offsets[p] += 1
        pending[p] = []

    config = SimulationConfig(events=events, seed=seed, days=365, invalid_share=0.0)
    for event in CitySimulator(config).events():
        if "so_cccd" not in event or validator.validate(event, now) is not None:
            continue
        key = hashlib.sha256(event["so_cccd"].encode()).hexdigest()[:32]  # as ehb.privacy
        item = enrich(event, registry, key, published_at=0)
        watermark = max(watermark, item["event_time"])
        p = citizen_partition(key, PARTITIONS)
        pending[p].append(item)
        if len(pending[p]) >= MAX_ITEMS_PER_MESSAGE:
            emit(p)
            yield from messages
            messages.clear()
    for p in range(PARTITIONS):
        if pending[p]:
            emit(p)
    yield from messages


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=["memory", "rocksdb"], default="memory")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--key-format",
        choices=["binary", "json"],
        default="binary",
        help="keys as the worker writes them (binary) or as it wrote them before issue 17",
    )
    parser.add_argument(
        "--tracemalloc", type=int, default=0, help="print the N largest live allocation sites"
    )
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start()

    tmp = Path(tempfile.mkdtemp(prefix="ehb-state-probe-"))
    try:
        settings = Settings(
            state_store=StateStore(args.store),
            state_store_dir=tmp / "tables",
            data_dir=tmp,
            kafka_partitions=PARTITIONS,
            kafka_bootstrap="127.0.0.1:1",  # never connected to
        )
        app = _faust_app(settings)
        table = app.Table(
            "citizens",
            default=None,
            partitions=PARTITIONS,
            key_type=str,
            **_table_options(settings),
        )
        binary_keys = args.key_format == "binary"
        state = as_state(table.data, binary_keys)
        recorder = Recorder()

        def out(topic: str) -> Output:
            return Output(topic, lambda record: b"")

        agent = HealthBookAgent(
            CitizenStateMachine(StateConfig.from_settings(settings)),
            AvroCodec(),
            lambda: table.data,
            "changelog",
            HealthBookOutputs(out("hb"), out("referrals"), out("appointments"), out("hb")),
            recorder,  # type: ignore[arg-type]
            within=0.1,
            binary_keys=binary_keys,
        )
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        elapsed = 0.0
        n_messages = 0
        batch: list[Any] = []
        loop = asyncio.new_event_loop()
        for message in internal_messages(args.events, args.seed):
            batch.append(message)
            if len(batch) == STATE_BATCH_MESSAGES:
                started = time.perf_counter()
                loop.run_until_complete(agent.process_batch(batch, state))
                elapsed += time.perf_counter() - started
                n_messages += len(batch)
                batch = []
        if batch:
            started = time.perf_counter()
            loop.run_until_complete(agent.process_batch(batch, state))
            elapsed += time.perf_counter() - started
            n_messages += len(batch)
        loop.close()
        keys = 0
        state_bytes = binary_bytes = msgpack_bytes = 0
        for p in range(PARTITIONS):
            for key, value in state.view(p).items():  # memory: every partition's keys
                if key.startswith("__clock__") or citizen_partition(key, PARTITIONS) != p:
                    continue
                keys += 1
                state_bytes += len(encode_json(key)) + len(encode_json(value))
                binary_bytes += len(encode_key(key)) + len(encode_json(value))
                # the value in MessagePack instead (measured, not used: docs/state-store.md)
                msgpack_bytes += len(encode_key(key)) + len(msgpack.packb(value))
        disk = compacted = 0
        if args.store == "rocksdb":
            disk = du(tmp / "tables")  # memtables in the WAL, SST files, RocksDB's logs
            for p in range(PARTITIONS):
                db = table.data._db_for_partition(p)
                db.flush()
                db.compact_range(None, None)
            compacted = du(tmp / "tables")
        result = {
            "store": args.store,
            "events": args.events,
            "internal_messages": n_messages,
            "seconds": round(elapsed, 2),
            "events_per_s": round(args.events / elapsed),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_before_mb": round(rss_before / 1024),
            "citizens": keys,
            "key_format": args.key_format,
            "changelog_json_bytes_per_citizen": round(state_bytes / max(keys, 1), 1),
            "changelog_bytes_per_citizen": round(binary_bytes / max(keys, 1), 1),
            "changelog_msgpack_value_bytes_per_citizen": round(msgpack_bytes / max(keys, 1), 1),
            "disk_bytes_per_citizen": round(disk / max(keys, 1), 1) if disk else None,
            "disk_bytes_per_citizen_compacted": (
                round(compacted / max(keys, 1), 1) if compacted else None
            ),
        }
        print(json.dumps(result))  # noqa: T201
        if args.tracemalloc:
            snapshot = tracemalloc.take_snapshot()
            for stat in snapshot.statistics("lineno")[: args.tracemalloc]:
                print(f"{stat.size / 2**20:8.1f} MiB {stat.count:9d} {stat.traceback}")  # noqa: T201
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
