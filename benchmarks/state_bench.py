"""``make bench-state``: the citizens table on RocksDB at the size of a city and beyond.

1. **Build** the state of ``--citizens`` synthetic citizens directly in the table's changelog
   (as the worker writes it: compact-JSON key and value, on the citizen's partition): most are
   "integrated only" (``1``), one in ``--open-every`` holds an open appointment, and the
   citizens of the stream below are among them.
2. **Full rebuild**: a worker (``EHB_STATE_STORE=rocksdb``) starts on an empty table directory
   while a stream of simulated exams flows at ``--rate`` events/s: the time from its start to
   its first processed batch (the recovery of every changelog record comes first), keys/s, and
   the projection for 100 M citizens.
3. **Steady**: the worker's peak RSS while it processes the stream against that state (the
   kernel's high-water mark, reset after the recovery) and the table's disk bytes per citizen.
4. ``kill -9`` and a restart **with** the local state kept: kill to first processed batch.
5. ``kill -9`` and a restart **without** it (its directory deleted): kill to first processed
   batch, a full rebuild under load.
6. **Standby takeover**: a second worker joins and follows the changelog of the first's
   partitions (``EHB_TABLE_STANDBY_REPLICAS``); once its standby databases are current the first
   is killed: kill to the survivor owning every partition and processing again.

Writes ``benchmarks/results/state-<time>.json`` and ``latest-state.json`` and prints a table::

    .venv/bin/python -m benchmarks.state_bench --citizens 10000000
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic
from rich.console import Console
from rich.table import Table

from benchmarks.harness import ROOT, BenchStack, events_file, iter_events, loadavg, peak_rss_mb
from ehb.commands.local import Child, Deployment, DeploymentFactory, scrape
from ehb.kafka import admin_client, producer_config
from ehb.privacy import CitizenKeyer
from ehb.settings import BrokerStorage
from schemas.partitioning import citizen_partition
from schemas.topics import changelog_topic
from streams.state_codec import encode_key
from streams.state_store import encode_json, persisted_offsets

RESULTS = ROOT / "benchmarks" / "results"
#: the health-book stage's batches, as the worker counts them
PROCESSED = 'ehb_stage_messages_in_total{stage="health-book"}'
console = Console()


def _say(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


# -- the state --------------------------------------------------------------------------------
def _synthetic_key(n: int) -> str:
    """A citizen key of the form the worker derives (32 hex characters, spread evenly)."""
    return hashlib.blake2b(n.to_bytes(8, "little"), digest_size=16).hexdigest()


def build_changelog(
    d: Deployment,
    citizens: int,
    stream_keys: set[str],
    open_every: int,
    now_ms: int,
    key_format: str = "binary",
) -> dict[str, Any]:
    """Write ``citizens`` states to the changelog, keys in ``key_format`` (``binary``, as the
    worker writes them; ``json``, as it did before issue 17); returns what was written."""
    encode = encode_key if key_format == "binary" else encode_json
    settings = d.settings
    partitions = settings.kafka_partitions
    topic = changelog_topic(settings.worker_group)
    admin = admin_client(settings)
    for future in admin.create_topics(
        [NewTopic(topic, partitions, 1, config={"cleanup.policy": "compact"})]
    ).values():
        future.result()
    producer = Producer(
        producer_config(
            settings,
            **{"linger.ms": 50, "batch.size": 1_000_000, "queue.buffering.max.messages": 500_000},
        )
    )
    appointment_at = now_ms + 60 * 86_400_000
    discharged = now_ms - 86_400_000
    extra = sorted(stream_keys)
    started = time.perf_counter()
    written = nbytes = with_timers = 0
    for n in range(citizens):
        key = extra[n] if n < len(extra) else _synthetic_key(n)
        if n % open_every == open_every - 1:
            value: Any = {
                "i": 1,
                "a": {
                    f"bench-{n}": [
                        "79001",
                        appointment_at,
                        0,
                        "open",
                        f"e{n}",
                        "I10",
                        discharged,
                        None,
                    ]
                },
            }
            with_timers += 1
        else:
            value = 1
        k, v = encode(key), encode_json(value)
        while True:
            try:
                producer.produce(topic, v, k, partition=citizen_partition(key, partitions))
                break
            except BufferError:
                producer.poll(0.05)
        written += 1
        nbytes += len(k) + len(v)
        if written % 1_000_000 == 0:
            producer.poll(0)
            _say(f"  changelog: {written:,} of {citizens:,} citizens")
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} changelog records not delivered")
    seconds = time.perf_counter() - started
    return {
        "citizens": written,
        "with_open_appointment": with_timers,
        "stream_citizens": len(extra),
        "seconds": round(seconds, 1),
        "records_per_s": round(written / seconds),
        "changelog_bytes_per_citizen": round(nbytes / written, 1),
    }


# -- the stream -------------------------------------------------------------------------------
class Feed:
    """Publishes the cached simulated events at ``rate`` per second, from a thread."""

    def __init__(self, d: Deployment, path: Path, rate: int) -> None:
        self.d, self.path, self.rate = d, path, rate
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def _events(self) -> Iterator[dict[str, Any]]:
        while not self._stop.is_set():
            for chunk in iter_events(self.path):
                yield from chunk
            _say("  the stream's events were all published; publishing them again")

    def _run(self) -> None:
        publisher = self.d.publisher(batch_size=100, linger_s=0.2)
        started = time.monotonic()
        for event in self._events():
            if self._stop.is_set():
                break
            publisher.add(event)
            self.published += 1
            if self.published % 100 == 0:
                ahead = self.published / self.rate - (time.monotonic() - started)
                if ahead > 0:
                    self._stop.wait(ahead)
        publisher.flush(30)
        publisher.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


# -- the worker -------------------------------------------------------------------------------
def _processed(child: Child) -> float | None:
    with contextlib.suppress(OSError):
        return scrape(child.metrics_port).get(PROCESSED, 0.0)
    return None


def _assigned(child: Child) -> float:
    with contextlib.suppress(OSError):
        return scrape(child.metrics_port).get("ehb_worker_assigned_partitions", 0.0)
    return 0.0


def wait_for(what: str, condition: Callable[[], bool], timeout: float, alive: list[Child]) -> float:
    """Seconds until ``condition``; fails when a process of ``alive`` exits or at ``timeout``."""
    started = time.monotonic()
    while not condition():
        dead = [c for c in alive if c.proc.poll() is not None]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited while waiting for {what}; see {dead[0].log}")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.25)
    return time.monotonic() - started


def first_batch(child: Child, timeout: float, after: float = 0.0) -> float:
    """Seconds until ``child`` has processed a health-book batch (its count above ``after``)."""
    return wait_for(
        f"{child.name}'s first batch",
        lambda: (_processed(child) or 0.0) > after,
        timeout,
        [child],
    )


def until_processing(child: Child, since: float, partitions: int, timeout: float) -> dict[str, Any]:
    """From ``since`` (a start or a kill) to ``child`` owning every partition (the group) and
    then to its first processed batch (the recovery, then the batch); the bulk recovery's
    figures from its log."""
    wait_for(
        f"{child.name} owning every partition",
        lambda: _assigned(child) >= partitions,
        timeout,
        [child],
    )
    owning = time.monotonic() - since
    first_batch(child, timeout)
    done = time.monotonic() - since
    return {
        "to_owning_s": round(owning, 1),
        "owning_to_first_batch_s": round(done - owning, 1),
        "to_first_batch_s": round(done, 1),
        **_bulk_recovery(child.log),
    }


_BULK = re.compile(r"bulk recovery: (\d+) changelog records of \d+ partitions in ([\d.]+)s")


def _bulk_recovery(log: Path) -> dict[str, Any]:
    """The bulk recovery the worker process logged (each recovery step's line summed):
    records, seconds, records/s."""
    found = _BULK.findall(log.read_text(errors="replace")) if log.exists() else []
    if not found:
        return {"bulk_records": 0}
    records = sum(int(r) for r, _ in found)
    seconds = round(sum(float(s) for _, s in found), 1)
    return {
        "bulk_records": records,
        "bulk_s": seconds,
        "bulk_records_per_s": round(records / seconds) if seconds else None,
    }


def _projection(timing: dict[str, Any]) -> int | None:
    """Seconds the bulk recovery would take for 100 M citizens at the rate measured."""
    rate = timing.get("bulk_records_per_s")
    return round(100_000_000 / rate) if rate else None


def reset_peak(pid: int) -> None:
    """Reset the kernel's peak RSS of ``pid`` (VmHWM) to its current RSS."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _persisted(table_dir: Path, partitions: int) -> dict[int, int]:
    """Each partition database's persisted offset; all -1 while a database cannot be read."""
    with contextlib.suppress(Exception):
        return persisted_offsets(table_dir, partitions)
    return dict.fromkeys(range(partitions), -1)


def run(
    citizens: int,
    events: int,
    rate: int,
    partitions: int,
    steady_s: float,
    open_every: int,
    key_format: str = "binary",
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "parameters": {
            "citizens": citizens,
            "key_format": key_format,
            "stream_events": events,
            "rate": rate,
            "partitions": partitions,
            "steady_s": steady_s,
            "open_every": open_every,
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"cpus": os.cpu_count(), "loadavg_start": loadavg()},
    }
    path, meta = events_file(events, 79)
    keyer = CitizenKeyer(DeploymentFactory.CITIZEN_KEY_SECRET.encode())
    stream_keys = {
        keyer(e["so_cccd"]) for chunk in iter_events(path) for e in chunk if e.get("so_cccd")
    }
    root = ROOT / ".ehb" / "bench-state"
    shutil.rmtree(root, ignore_errors=True)
    stack = BenchStack(root, partitions, BrokerStorage.MEMORY)
    try:
        d = stack.deploy(workers=0, sink=False, state_store="rocksdb")
        _say(f"building the state of {citizens:,} citizens in the changelog")
        result["build"] = build = build_changelog(
            d, citizens, stream_keys, open_every, int(time.time() * 1000), key_format
        )
        _say(f"  {build}")
        feed = Feed(d, path, rate).start()
        table = d.settings.tables_dir / "worker-0"

        _say("full rebuild: a worker on an empty table directory")
        started = time.monotonic()
        worker = d.start_worker(wait=False)
        rebuild = until_processing(worker, started, partitions, 3600)
        rebuild["worker_peak_rss_mb"] = peak_rss_mb(worker.proc.pid)
        rebuild["projected_100m_s"] = _projection(rebuild)
        result["rebuild"] = rebuild
        _say(f"  {rebuild}")

        _say(f"steady: the stream against the state for {steady_s:.0f}s")
        reset_peak(worker.proc.pid)
        before = _processed(worker) or 0.0
        time.sleep(steady_s)
        if worker.proc.poll() is not None:
            raise RuntimeError(f"the worker exited during the steady phase; see {worker.log}")
        result["steady"] = {
            "worker_peak_rss_mb": peak_rss_mb(worker.proc.pid),
            "batches": (_processed(worker) or 0.0) - before,
            "table_dir_bytes_per_citizen": round(dir_bytes(table) / citizens, 1),
        }
        _say(f"  {result['steady']}")

        _say("kill -9, restart with the local state kept")
        d.kill(worker)
        killed = time.monotonic()
        worker = d.start_worker(wait=False)
        result["restart_kept"] = until_processing(worker, killed, partitions, 600)
        _say(f"  {result['restart_kept']}")

        _say("kill -9, restart without the local state")
        d.kill(worker)
        killed = time.monotonic()
        shutil.rmtree(table)
        worker = d.start_worker(wait=False)
        cold = until_processing(worker, killed, partitions, 3600)
        cold["projected_100m_s"] = _projection(cold)
        result["restart_empty"] = cold
        _say(f"  {cold}")

        _say("standby: a second worker follows the first's partitions, then the first dies")
        survivor = d.start_worker(wait=False)
        standby_dir = d.settings.tables_dir / "worker-1"
        ends = _changelog_ends(d)
        followed = wait_for(
            "the second worker's databases current",
            lambda: all(
                o >= ends.get(p, 0) - 1 for p, o in _persisted(standby_dir, partitions).items()
            ),
            3600,
            [worker, survivor],
        )
        wait_for(
            "both workers processing",
            lambda: (_processed(survivor) or 0) > 0 and _assigned(survivor) < partitions,
            600,
            [worker, survivor],
        )
        d.kill(worker)
        killed = time.monotonic()
        wait_for(
            "the survivor owning every partition",
            lambda: _assigned(survivor) >= partitions,
            600,
            [survivor],
        )
        owned = time.monotonic() - killed
        first_batch(survivor, 600, after=_processed(survivor) or 0.0)
        result["standby_takeover"] = {
            "standby_current_after_s": round(followed, 1),
            "kill_to_owning_s": round(owned, 1),
            "kill_to_first_batch_s": round(time.monotonic() - killed, 1),
            "session_timeout_s": d.settings.kafka_session_timeout_s,
            **_bulk_recovery(survivor.log),
        }
        _say(f"  {result['standby_takeover']}")
        feed.stop()
        result["stream_published"] = feed.published
    finally:
        stack.close()
    result["host"]["loadavg_end"] = loadavg()
    return result


def _changelog_ends(d: Deployment) -> dict[int, int]:
    """Each changelog partition's end now (ListOffsets; exact on the memory broker)."""
    from confluent_kafka import Consumer, TopicPartition

    from ehb.kafka import consumer_config

    topic = changelog_topic(d.settings.worker_group)
    consumer = Consumer(consumer_config(d.settings, f"{topic}-bench"))
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(d.settings.kafka_partitions)
        }
    finally:
        consumer.close()


def print_table(result: dict[str, Any]) -> None:
    c = result["parameters"]["citizens"]
    t = Table(title=f"bench-state: {c:,} citizens, {result['parameters']['partitions']} partitions")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("target", justify="right")
    b, r, s = result["build"], result["rebuild"], result["steady"]
    kept, cold, standby = (
        result["restart_kept"],
        result["restart_empty"],
        result["standby_takeover"],
    )

    def timing(t: dict[str, Any]) -> str:
        return (
            f"{t['to_first_batch_s']} s (group {t['to_owning_s']} s, "
            f"then {t['owning_to_first_batch_s']} s)"
        )

    def bulk(t: dict[str, Any]) -> str:
        if not t.get("bulk_records"):
            return "-"
        return f"{t['bulk_records']:,} in {t['bulk_s']} s ({t['bulk_records_per_s']:,}/s)"

    rows = [
        ("changelog build", f"{b['seconds']} s ({b['records_per_s']:,} records/s)", ""),
        ("changelog bytes / citizen", f"{b['changelog_bytes_per_citizen']}", ""),
        ("full rebuild: start to first batch", timing(r), ""),
        ("  bulk recovery", bulk(r), ""),
        ("  projected for 100 M citizens", f"{r['projected_100m_s']:,} s", ""),
        ("worker peak RSS, recovery", f"{r['worker_peak_rss_mb']} MB", ""),
        ("worker peak RSS, processing", f"{s['worker_peak_rss_mb']} MB", ""),
        ("disk bytes / citizen", f"{s['table_dir_bytes_per_citizen']}", ""),
        ("kill -9 to first batch, state kept", timing(kept), "<= 10 s"),
        ("  bulk recovery", bulk(kept), ""),
        ("kill -9 to first batch, no state", timing(cold), ""),
        ("  bulk recovery", bulk(cold), ""),
        (
            "standby takeover: kill to first batch",
            f"{standby['kill_to_first_batch_s']} s (owning at {standby['kill_to_owning_s']} s)",
            "<= 10 s",
        ),
        ("  standby current after joining", f"{standby['standby_current_after_s']} s", ""),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)


def main(
    citizens: Annotated[int, typer.Option(help="Synthetic citizens in the state.")] = 10_000_000,
    events: Annotated[int, typer.Option(help="Simulated events of the stream.")] = 200_000,
    rate: Annotated[int, typer.Option(help="The stream's events per second.")] = 500,
    partitions: Annotated[int, typer.Option(help="Partitions of every topic.")] = 4,
    steady_s: Annotated[float, typer.Option(help="Seconds of the steady phase.")] = 60.0,
    open_every: Annotated[
        int, typer.Option(help="One citizen in N has an open appointment.")
    ] = 400,
    output: Annotated[Path, typer.Option(help="Directory of the JSON results.")] = RESULTS,
    key_format: Annotated[
        str,
        typer.Option(
            help="Keys of the changelog built: binary (the worker's) or json (before issue 17; "
            "the worker moves the citizens it writes to binary keys)."
        ),
    ] = "binary",
) -> None:
    if key_format not in ("binary", "json"):
        raise typer.BadParameter("binary or json", param_hint="--key-format")
    result = run(citizens, events, rate, partitions, steady_s, open_every, key_format)
    output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    text = json.dumps(result, indent=2)
    (output / f"state-{stamp}.json").write_text(text)
    (output / "latest-state.json").write_text(text)
    print_table(result)
    console.print(f"written: {output / f'state-{stamp}.json'}")


if __name__ == "__main__":
    typer.run(main)
