"""The measurements. Each one gets a fresh deployment (topics, groups, database, processes)
on the bench's stack and tears it down afterwards.

Times: a run starts when the producer is handed the first event (wall clock, ``time.time()``
in the producer process) and ends at the newest ``persisted_at`` (``clock_timestamp()`` at
insert, a few milliseconds before the sink's commit) of ``health_book_entries`` /
``dead_letters`` once every event is accounted for (a row or a dead letter).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import BenchStack, ChildScript, ProcessWatch, loadavg, peak_rss_mb
from benchmarks.profiling import Spy, summarize
from ehb.commands.local import Deployment
from schemas.errors import EhbError

__all__ = ["Context", "RunFailed"]

ACCOUNTED = (
    "SELECT coalesce(sum(value), 0) FROM campaign_counters "
    "WHERE metric IN ('examinations', 'dead_letters')"
)
LAST_COMMIT = (
    "SELECT extract(epoch FROM greatest("
    "(SELECT max(persisted_at) FROM health_book_entries), "
    "(SELECT max(persisted_at) FROM dead_letters)))"
)
#: the worker's first batch: the intake stamps dead letters, the health-book stage entries
FIRST_PROCESSED = (
    "SELECT extract(epoch FROM least("
    "(SELECT min(processed_at) FROM health_book_entries), "
    "(SELECT min(failed_at) FROM dead_letters)))"
)
#: per event: publish -> committed, and its two legs (worker: publish -> health-book stage;
#: sink: health-book stage -> row); seconds
LATENCY = (
    "SELECT count(*), "
    "percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
    "(ORDER BY extract(epoch FROM persisted_at - published_at)), "
    "max(extract(epoch FROM persisted_at - published_at)), "
    "percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
    "(ORDER BY extract(epoch FROM processed_at - published_at)), "
    "percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP "
    "(ORDER BY extract(epoch FROM persisted_at - processed_at)) "
    "FROM health_book_entries"
)


CENSUS = ("health_book_entries", "dead_letters", "health_books", "referrals", "appointments")


#: p50 / p99 of publish -> committed per 10 s of publishing: a backlog shows as growth
LATENCY_WINDOWS = (
    "SELECT floor(extract(epoch FROM published_at - min(published_at) OVER ()) / 10) AS w, "
    "extract(epoch FROM persisted_at - published_at) AS s FROM health_book_entries"
)
LATENCY_BY_WINDOW = (
    f"SELECT w * 10, count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY s), "
    f"percentile_cont(0.99) WITHIN GROUP (ORDER BY s) FROM ({LATENCY_WINDOWS}) t "
    "GROUP BY w ORDER BY w"
)


class RunFailed(EhbError):
    """A measurement could not complete (a process died, the pipeline stalled ...)."""


@dataclass
class Context:
    stack: BenchStack
    events_path: Path
    events: int
    log_dir: Path
    outbox: bool = True
    stall_s: float = 120.0
    say: Callable[[str], None] = print

    def producer(self, deployment: Deployment, name: str, *args: str) -> ChildScript:
        extra = [] if self.outbox else ["--no-outbox"]
        return ChildScript.start(
            name, "benchmarks.producer", [*args, *extra], self.stack.env(deployment), self.log_dir
        )


def _eps(events: int, seconds: float) -> float:
    return round(events / seconds, 1) if seconds > 0 else 0.0


def wait_accounted(
    deployment: Deployment, expected: int, stall_s: float, say: Callable[[str], None]
) -> int:
    """Poll the campaign counters until ``expected`` events are rows or dead letters; fail
    when nothing moves for ``stall_s`` seconds."""
    last, last_change = -1, time.monotonic()
    started = last_said = time.monotonic()
    while True:
        done = int(deployment.scalar(ACCOUNTED))
        if done >= expected:
            return done
        if time.monotonic() - last_said >= 30:
            last_said = time.monotonic()
            say(f"  {done:,}/{expected:,} events persisted after {last_said - started:.0f} s")
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > stall_s:
            raise RunFailed(f"stalled at {done}/{expected} events for {stall_s:.0f}s")
        time.sleep(0.2)


def _accounted_exactly(deployment: Deployment) -> int:
    return deployment.count("health_book_entries") + deployment.count("dead_letters")


def _watch(ctx: Context, deployment: Deployment) -> ProcessWatch:
    watch = ProcessWatch()
    for i, worker in enumerate(deployment.workers, 1):
        watch.watch(f"worker-{i}", worker.proc.pid)
    if deployment.sink is not None:
        watch.watch("sink", deployment.sink.proc.pid)
    watch.watch("broker", ctx.stack.broker_pid)
    watch.watch("store", ctx.stack.store_pid)  # SeaweedFS, under a durable broker
    watch.watch("postgresql", ctx.stack.postgres_pid, tree=True)
    return watch


def pipeline_end_to_end(
    ctx: Context,
    workers: int = 1,
    profile_dir: Path | None = None,
    expected: int | None = None,
    census: bool = False,
) -> dict[str, Any]:
    """Publish the pre-generated events flat out into a running pipeline. ``census``: also
    count the rows of every table (the year replay)."""
    expected = expected or ctx.events
    load_before = loadavg()
    deployment = ctx.stack.deploy(workers=workers)
    spies: list[Spy] = []
    try:
        watch = _watch(ctx, deployment)
        producer = ctx.producer(
            deployment,
            f"producer-{deployment.settings.topic_prefix}",
            "--events-file",
            str(ctx.events_path),
        )
        producer.wait_ready()
        watch.watch("producer", producer.pid)
        watch.start()
        if profile_dir is not None:
            for i, worker in enumerate(deployment.workers, 1):
                spies.append(Spy.start(f"worker-{i}", worker.proc.pid, profile_dir))
            assert deployment.sink is not None
            spies.append(Spy.start("sink", deployment.sink.proc.pid, profile_dir))
        spied_from = time.monotonic()
        producer.go()
        published = producer.result()
        accounted = wait_accounted(deployment, expected, ctx.stall_s, ctx.say)
        spied_for = time.monotonic() - spied_from
        profiles = {}
        for spy in spies:
            path = spy.stop()
            profiles[spy.name] = summarize(
                path, seconds=spied_for, rate=spy.rate, worker=spy.name.startswith("worker")
            )
        peaks = watch.stop()
        cpu = watch.cpu_seconds()
        last_commit = float(deployment.scalar(LAST_COMMIT))
        exact = _accounted_exactly(deployment)
        tables = {t: deployment.count(t) for t in CENSUS} if census else None
    finally:
        for spy in spies:
            spy.stop()
        ctx.stack.teardown(deployment)
    seconds = last_commit - published["started"]
    peaks["producer"] = max(peaks.get("producer", 0.0), published["peak_rss_mb"])
    result = {
        "workers": workers,
        "events": expected,
        "accounted": exact,
        "seconds": round(seconds, 3),
        "events_per_second": _eps(expected, seconds),
        "publish_seconds": published["seconds"],
        "publish_events_per_second": _eps(published["events"], published["seconds"]),
        "messages": published["messages"],
        "peak_rss_mb": peaks,
        "cpu_seconds": cpu,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    if exact != expected or accounted != expected:
        result["error"] = f"{exact} events accounted for, {expected} published"
    if profiles:
        result["profiles"] = profiles
    if tables is not None:
        result["rows"] = tables
    return result


def publish_then_drain(ctx: Context) -> dict[str, Any]:
    """Publish with nothing consuming (publish-only rate), then drain the same topic with the
    raw-client pipeline (the ceiling) and then with the real pipeline (one worker)."""
    deployment = ctx.stack.deploy(workers=0, sink=False)
    out: dict[str, Any] = {"load_before": loadavg()}
    try:
        raw_topic = deployment.settings.topic("raw-out")
        _create_raw_outputs(deployment, raw_topic)
        out["publish"] = _publish_only(ctx, deployment)
        out["raw_drain"] = _raw_drain(ctx, deployment, raw_topic)
        out["pipeline_drain"] = _pipeline_drain(ctx, deployment)
    finally:
        ctx.stack.teardown(deployment)
    out["load_after"] = loadavg()
    return out


def publish_only(ctx: Context) -> dict[str, Any]:
    """The producer publishes the events file into a fresh deployment, nothing consuming."""
    deployment = ctx.stack.deploy(workers=0, sink=False)
    load_before = loadavg()
    try:
        watch = _watch(ctx, deployment).start()
        out = _publish_only(ctx, deployment)
        watch.stop()
        out["cpu_seconds"] = watch.cpu_seconds()
    finally:
        ctx.stack.teardown(deployment)
    return {**out, "load_before": load_before, "load_after": loadavg()}


def _publish_only(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    """The producer publishes the events file with nothing consuming."""
    producer = ctx.producer(
        deployment,
        f"producer-{deployment.settings.topic_prefix}",
        "--events-file",
        str(ctx.events_path),
    )
    producer.wait_ready()
    producer.go()
    published = producer.result()
    return {
        "events": published["events"],
        "messages": published["messages"],
        "seconds": published["seconds"],
        "events_per_second": _eps(published["events"], published["seconds"]),
        "unpickling_seconds": published["load_s"],
        "peak_rss_mb": published["peak_rss_mb"],
        "rss_before_publishing_mb": published["rss_before_mb"],
        "outbox": published.get("durable", ctx.outbox),
    }


def _raw_drain(ctx: Context, deployment: Deployment, raw_topic: str) -> dict[str, Any]:
    """The raw-client pipeline drains the published topic: the ceiling."""
    raw = ChildScript.start(
        f"raw-drain-{deployment.settings.topic_prefix}",
        "benchmarks.raw_pipeline",
        [
            "--group",
            f"{deployment.settings.worker_group}-raw",
            "--expected",
            str(ctx.events),
            "--output-topic",
            raw_topic,
            "--prefilled",
        ],
        ctx.stack.env(deployment),
        ctx.log_dir,
    )
    raw.wait_ready()
    raw.go()
    drained = raw.result()
    seconds = drained["last_commit"] - drained["first_message"]
    return {
        "events": drained["events"],
        "seconds": round(seconds, 3),
        "events_per_second": _eps(drained["events"], seconds),
        "peak_rss_mb": drained["peak_rss_mb"],
        "seconds_by_step": drained.get("seconds_by_step"),
    }


def _pipeline_drain(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    """The real pipeline (one worker, one sink) drains the same topic."""
    n = ctx.events
    deployment.start_worker(wait=False)
    deployment.start_sink()
    watch = _watch(ctx, deployment).start()
    wait_accounted(deployment, n, ctx.stall_s, ctx.say)
    peaks = watch.stop()
    first = float(deployment.scalar(FIRST_PROCESSED))
    last = float(deployment.scalar(LAST_COMMIT))
    exact = _accounted_exactly(deployment)
    out: dict[str, Any] = {
        "events": n,
        "accounted": exact,
        "seconds": round(last - first, 3),
        "events_per_second": _eps(n, last - first),
        "peak_rss_mb": peaks,
        "cpu_seconds": watch.cpu_seconds(),
    }
    if exact != n:
        out["error"] = f"{exact} events accounted for, {n} published"
    return out


def _create_raw_outputs(deployment: Deployment, raw_topic: str) -> None:
    from confluent_kafka.admin import NewTopic

    from benchmarks.raw_pipeline import CREATE_TABLE
    from ehb.kafka import admin_client

    admin = admin_client(deployment.settings)
    for future in admin.create_topics(
        [NewTopic(raw_topic, deployment.settings.kafka_partitions, 1)]
    ).values():
        future.result()
    with deployment.db.cursor() as cur:
        cur.execute(CREATE_TABLE)


def raw_end_to_end(ctx: Context) -> dict[str, Any]:
    """The raw-client pipeline, running, while the producer publishes flat out."""
    deployment = ctx.stack.deploy(workers=0, sink=False)
    load_before = loadavg()
    try:
        raw_topic = deployment.settings.topic("raw-out")
        _create_raw_outputs(deployment, raw_topic)
        raw = ChildScript.start(
            f"raw-e2e-{deployment.settings.topic_prefix}",
            "benchmarks.raw_pipeline",
            [
                "--group",
                f"{deployment.settings.worker_group}-raw",
                "--expected",
                str(ctx.events),
                "--output-topic",
                raw_topic,
            ],
            ctx.stack.env(deployment),
            ctx.log_dir,
        )
        raw.wait_ready()
        producer = ctx.producer(
            deployment,
            f"producer-{deployment.settings.topic_prefix}",
            "--events-file",
            str(ctx.events_path),
        )
        producer.wait_ready()
        # CPU per event of each process, as the pipeline's runs (the CPU budget's reference)
        watch = ProcessWatch()
        watch.watch("raw", raw.pid)
        watch.watch("broker", ctx.stack.broker_pid)
        watch.watch("postgresql", ctx.stack.postgres_pid, tree=True)
        watch.watch("producer", producer.pid)
        watch.start()
        raw.go()
        producer.go()
        published = producer.result()
        drained = raw.result()
        watch.stop()
    finally:
        ctx.stack.teardown(deployment)
    seconds = drained["last_commit"] - published["started"]
    return {
        "events": drained["events"],
        "seconds": round(seconds, 3),
        "events_per_second": _eps(drained["events"], seconds),
        "publish_events_per_second": _eps(published["events"], published["seconds"]),
        "cpu_seconds": watch.cpu_seconds(),
        "peak_rss_mb": {"raw": drained["peak_rss_mb"], "producer": published["peak_rss_mb"]},
        "load_before": load_before,
        "load_after": loadavg(),
    }


def latency(ctx: Context, rate: float, seconds: float, events_path: Path) -> dict[str, Any]:
    """A steady ``rate`` for ``seconds`` (the simulated city's events of ``events_path``,
    paced); publish -> committed."""
    deployment = ctx.stack.deploy(workers=1)
    load_before = loadavg()
    expected = int(rate * seconds)
    try:
        watch = _watch(ctx, deployment)
        producer = ctx.producer(
            deployment,
            f"producer-{deployment.settings.topic_prefix}",
            "--events-file",
            str(events_path),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        )
        producer.wait_ready()
        watch.watch("producer", producer.pid)
        watch.start()
        producer.go()
        published = producer.result(timeout=seconds * 3 + 120)
        wait_accounted(deployment, expected, ctx.stall_s, ctx.say)
        peaks = watch.stop()
        cpu = watch.cpu_seconds()
        rows, (p50, p95, p99), worst, worker_leg, sink_leg = deployment.query(LATENCY)[0]
        windows = deployment.query(LATENCY_BY_WINDOW)
    finally:
        ctx.stack.teardown(deployment)
    return {
        "rate": rate,
        "seconds": seconds,
        "events": published["events"],
        "achieved_rate": _eps(published["events"], published["seconds"]),
        "messages": published["messages"],
        "rows": rows,
        "p50_ms": round(p50 * 1000, 1),
        "p95_ms": round(p95 * 1000, 1),
        "p99_ms": round(p99 * 1000, 1),
        "max_ms": round(float(worst) * 1000, 1),
        "worker_leg_p50_p99_ms": [round(x * 1000, 1) for x in worker_leg],
        "sink_leg_p50_p99_ms": [round(x * 1000, 1) for x in sink_leg],
        "by_10s": [
            {
                "from_s": int(w),
                "events": n,
                "p50_ms": round(a * 1000, 1),
                "p99_ms": round(b * 1000, 1),
            }
            for w, n, a, b in windows
        ],
        "peak_rss_mb": peaks,
        "cpu_seconds": cpu,
        "load_before": load_before,
        "load_after": loadavg(),
    }


def broker_rss_mb(ctx: Context) -> float | None:
    pid = ctx.stack.broker_pid
    return None if pid is None else peak_rss_mb(pid)
