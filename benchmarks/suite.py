"""``make bench`` / ``make bench-year``: the whole benchmark in one invocation.

Starts its own embedded stack (Tansu + PostgreSQL under a temporary ``EHB_DATA_DIR``; or the
services of ``EHB_KAFKA_BOOTSTRAP`` + ``EHB_DATABASE_URL`` when both are set), pre-generates
the simulated events (cached under ``.ehb/bench-cache/``). The stack's broker keeps its
topics in memory; beside it a second stack's broker keeps them on durable storage (Tansu
``s3://`` on a SeaweedFS of its own, and a PostgreSQL of its own configured alike;
``--skip-durable``: not started). Then, ``--repeat`` times:

1. publish-only on the durable broker, then publish-only on the memory broker and a drain of
   that topic by the raw-client pipeline (the ceiling) and by the real pipeline (one worker +
   one sink);
2. the pipeline end to end with one worker (first publish -> last row committed) on the
   memory broker and on the durable broker, back to back, memory first in odd repeats and
   durable first in even ones: each pair gives a durable/memory ratio;
3. the raw-client pipeline end to end, the same way (its CPU per event per process: the
   pipeline's CPU budget is stated as a ratio of it);
4. the peers end to end, the same way: the same work written in plain Faust and with Quix
   Streams (benchmarks/peers/), each checked by its rows (``--skip-peers``: not run);
5. the pipeline end to end with two workers;

then the latency at a steady rate on the memory broker and then on the durable broker, and
with ``--profile`` one more end-to-end run under py-spy. Prints a table and writes
``benchmarks/results/<timestamp>.json`` (+ ``latest.json``).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from benchmarks.harness import ROOT, BenchStack, events_file, iter_events, loadavg, peak_rss_mb
from benchmarks.peers.measure import PEERS, peer_end_to_end
from benchmarks.peers.work import expected_rows
from benchmarks.report import (
    durable_summary,
    figures,
    machine,
    markdown_table,
    render,
    source,
    versions,
    write_results,
)
from benchmarks.runs import (
    Context,
    RunFailed,
    latency,
    pipeline_end_to_end,
    publish_only,
    publish_then_drain,
    raw_end_to_end,
)
from ehb.settings import BrokerStorage

__all__ = ["app"]

YEAR_EVENTS = 3_789_912
RESULTS = ROOT / "benchmarks" / "results"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


# The command's options, one a line: their help text is the CLI's.
EventsOption = Annotated[int, typer.Option(help="Events per throughput run.")]
RepeatOption = Annotated[
    int, typer.Option(help="Runs of each throughput measurement (the figures are medians).")
]
PartitionsOption = Annotated[int, typer.Option(help="Partitions of the pipeline's topics.")]
SkipLatencyOption = Annotated[bool, typer.Option("--skip-latency", help="Skip the latency run.")]
LatencySecondsOption = Annotated[float, typer.Option(help="Length of the latency run.")]
LatencyRateOption = Annotated[float, typer.Option(help="Steady events/s of the latency run.")]
SkipScaleOption = Annotated[bool, typer.Option("--skip-scale", help="Skip the two-worker runs.")]
SkipPeersOption = Annotated[
    bool,
    typer.Option(
        "--skip-peers", help="Skip the peers (the same work in plain Faust and Quix Streams)."
    ),
]
SkipRawOption = Annotated[
    bool, typer.Option("--skip-raw", help="Skip the raw-client end-to-end runs.")
]
ProfileOption = Annotated[
    bool,
    typer.Option(
        "--profile",
        help="One more 1-worker run under py-spy (worker and sink); needs py-spy installed.",
    ),
]
OutboxOption = Annotated[bool, typer.Option(help="The producer's durable outbox (as deployed).")]
QuickOption = Annotated[
    bool, typer.Option("--quick", help="Tiny sizes: a smoke run of the harness.")
]
YearOption = Annotated[
    bool,
    typer.Option(
        "--year", help="Replay a synthetic year of Ho Chi Minh City instead (make bench-year)."
    ),
]
YearEventsOption = Annotated[int, typer.Option(help="Events of the year replay.")]
YearDurableOption = Annotated[
    bool,
    typer.Option(
        "--year-durable",
        help="With --year: replay the year again on the durable broker (Tansu s3:// on "
        "SeaweedFS), after the memory broker.",
    ),
]
WorkersOption = Annotated[int, typer.Option(help="Workers of the year replay.")]
SeedOption = Annotated[int, typer.Option(help="Simulator seed.")]
RegenerateOption = Annotated[
    bool, typer.Option("--regenerate", help="Regenerate the cached events.")
]
OutputOption = Annotated[Path, typer.Option(help="Directory of the JSON results.")]
SkipDurableOption = Annotated[
    bool,
    typer.Option(
        "--skip-durable", help="Skip the runs on the durable broker (Tansu s3:// on SeaweedFS)."
    ),
]
DurableEventsOption = Annotated[
    int | None,
    typer.Option(help="Events per throughput run on the durable broker (default: --events)."),
]
KeepOption = Annotated[
    bool, typer.Option("--keep", help="Keep the temporary data directory (logs).")
]


@dataclass(frozen=True)
class BenchOptions:
    """What ``bench`` was asked to do (its options, as given)."""

    events: int
    repeat: int
    partitions: int
    skip_latency: bool
    latency_seconds: float
    latency_rate: float
    skip_scale: bool
    skip_raw: bool
    skip_peers: bool
    skip_durable: bool
    durable_events: int | None
    profile: bool
    outbox: bool
    quick: bool
    year: bool
    year_events: int
    year_durable: bool
    workers: int
    seed: int
    regenerate: bool
    output: Path
    keep: bool

    def sized(self) -> BenchOptions:
        """The sizes actually run: tiny with ``--quick``, the year's events with ``--year``."""
        opts = self
        if opts.quick:
            opts = replace(
                opts,
                events=min(opts.events, 3000),
                durable_events=min(opts.durable_events or opts.events, 3000),
                repeat=1,
                latency_seconds=3.0,
                latency_rate=200.0,
                partitions=min(opts.partitions, 2),
            )
        if opts.year:
            opts = replace(
                opts,
                events=opts.year_events,
                skip_durable=not opts.year_durable,
                durable_events=opts.year_events,
            )
        if opts.durable_events is None or opts.durable_events >= opts.events:
            opts = replace(opts, durable_events=opts.events)
        return opts


@app.command()
def bench(
    events: EventsOption = 200_000,
    repeat: RepeatOption = 3,
    partitions: PartitionsOption = 8,
    skip_latency: SkipLatencyOption = False,
    latency_seconds: LatencySecondsOption = 60.0,
    latency_rate: LatencyRateOption = 1000.0,
    skip_scale: SkipScaleOption = False,
    skip_raw: SkipRawOption = False,
    skip_peers: SkipPeersOption = False,
    skip_durable: SkipDurableOption = False,
    durable_events: DurableEventsOption = None,
    profile: ProfileOption = False,
    outbox: OutboxOption = True,
    quick: QuickOption = False,
    year: YearOption = False,
    year_events: YearEventsOption = YEAR_EVENTS,
    year_durable: YearDurableOption = False,
    workers: WorkersOption = 1,
    seed: SeedOption = 79,
    regenerate: RegenerateOption = False,
    output: OutputOption = RESULTS,
    keep: KeepOption = False,
) -> None:
    """Throughput, latency and memory of the pipeline, against a raw-client ceiling; the
    pipeline on the durable broker beside the memory one."""
    run_bench(
        BenchOptions(
            events=events,
            repeat=repeat,
            partitions=partitions,
            skip_latency=skip_latency,
            latency_seconds=latency_seconds,
            latency_rate=latency_rate,
            skip_scale=skip_scale,
            skip_raw=skip_raw,
            skip_peers=skip_peers,
            skip_durable=skip_durable,
            durable_events=durable_events,
            profile=profile,
            outbox=outbox,
            quick=quick,
            year=year,
            year_events=year_events,
            year_durable=year_durable,
            workers=workers,
            seed=seed,
            regenerate=regenerate,
            output=output,
            keep=keep,
        )
    )


def _parameters(opts: BenchOptions) -> dict[str, Any]:
    """The parameters recorded with the results."""
    latency_off = opts.skip_latency or opts.year
    return {
        "events": opts.events,
        "repeat": 1 if opts.year else opts.repeat,
        "partitions": opts.partitions,
        "latency_rate": None if latency_off else opts.latency_rate,
        "latency_seconds": None if latency_off else opts.latency_seconds,
        "outbox": opts.outbox,
        "quick": opts.quick,
        "year": opts.year,
        "seed": opts.seed,
        "publisher_batch_size": 100,
        # the peers (plain Faust, Quix Streams) beside the pipeline
        "peers": not (opts.skip_peers or opts.year),
        "workers": opts.workers if opts.year else None,
        # the runs on the durable broker: events per throughput run (None: not run)
        "durable_events": None if opts.skip_durable else opts.durable_events,
    }


def run_bench(opts: BenchOptions) -> None:
    """The whole bench: events generated, runs on a stack of their own, results written."""
    console = Console() if sys.stdout.isatty() else Console(width=120)  # logs: no wrapping
    opts = opts.sized()
    started = time.time()
    load_start = loadavg()
    params = _parameters(opts)

    def say(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")

    say(f"load average {load_start}; generating {opts.events:,} events (cached when possible)")
    path, generation = _generate_events(opts.events, opts.seed, opts.regenerate, say)
    durable_path = path
    if not opts.skip_durable and opts.durable_events != opts.events:
        assert opts.durable_events is not None
        say(f"durable broker: {opts.durable_events:,} events per run (--durable-events)")
        durable_path, _ = _generate_events(opts.durable_events, opts.seed, opts.regenerate, say)
    runs: dict[str, Any] = {}
    result_versions, failure = _run_in_a_stack(
        path,
        durable_path,
        params,
        runs,
        say,
        keep=opts.keep,
        workers=opts.workers,
        suite={
            "skip_scale": opts.skip_scale,
            "skip_raw": opts.skip_raw,
            "skip_peers": opts.skip_peers,
            "skip_latency": opts.skip_latency,
            "profile": opts.profile,
        },
    )
    result: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "machine": machine(),
        "source": source(),
        "load": {"start": load_start, "end": loadavg()},
        "versions": result_versions,
        "parameters": params,
        "generation": generation,
        "figures": figures(runs),
        "runs": runs,
    }
    if failure:
        result["figures"].setdefault("errors", []).append(failure)
    _write_and_show(result, console, opts.output, started, quick=opts.quick, year=opts.year)
    if result["figures"].get("errors"):
        raise typer.Exit(1)


def _generate_events(
    events: int, seed: int, regenerate: bool, say: Callable[[str], None]
) -> tuple[Path, dict[str, Any]]:
    """The simulated events' file (cached when possible) and how it was generated."""
    last = [time.monotonic()]

    def progress(done: int) -> None:
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            say(f"  generated {done:,} events")

    path, generation = events_file(events, seed, regenerate=regenerate, progress=progress)
    say(
        f"events ready: {generation['events']:,} in {path.name} "
        f"({'cached; generated' if generation['cached'] else 'generated'} in "
        f"{generation['seconds']:.1f} s, {generation['events_per_second']:,.0f}/s)"
    )
    return path, generation


def _run_in_a_stack(
    path: Path,
    durable_path: Path,
    params: dict[str, Any],
    runs: dict[str, Any],
    say: Callable[[str], None],
    *,
    keep: bool,
    workers: int,
    suite: dict[str, bool],
) -> tuple[dict[str, Any], str | None]:
    """The runs, in ``runs``, on a stack of their own under a temporary directory; the
    versions of the stack's parts and the failure, if any."""
    quick, partitions = params["quick"], params["partitions"]
    root = Path(tempfile.mkdtemp(prefix="ehb-bench-"))
    stack = twin = None
    failure: str | None = None
    try:
        stack = BenchStack(root, partitions)
        say(f"stack up (broker {stack.settings.kafka_bootstrap}); data in {root}")
        if params["durable_events"] is not None:
            if stack.stack is None:
                say("external services: no durable broker beside them (runs skipped)")
                params["durable_events"] = None
            else:
                twin = BenchStack(root / "durable", partitions, BrokerStorage.DURABLE)
                say(
                    f"durable stack up (broker {twin.settings.kafka_bootstrap}: Tansu s3:// on "
                    f"SeaweedFS; data in {twin.root})"
                )
                # what the durable stack's settings change (e.g. the producers' linger)
                mine, its = stack.settings.public_dict(), twin.settings.public_dict()
                params["durable_settings"] = {
                    k: v
                    for k, v in its.items()
                    if v != mine.get(k) and k not in ("kafka_bootstrap", "database_url", "data_dir")
                }
        params["settings"] = {
            k: v
            for k, v in stack.settings.public_dict().items()
            if k.startswith(("worker_", "sink_", "kafka_session"))
        }
        ctx = Context(
            stack,
            path,
            params["events"],
            root / "logs",
            outbox=params["outbox"],
            stall_s=60.0 if quick else 180.0,
            say=say,
        )
        durable = (
            None
            if twin is None
            else replace(ctx, stack=twin, events_path=durable_path, events=params["durable_events"])
        )
        if params["year"]:
            run_year(ctx, workers, runs, say, durable=durable)
        else:
            run_suite(
                ctx, params, runs, say, **suite, durable=durable, profile_dir=root / "profiles"
            )
        if stack.broker_pid is not None:
            runs["broker_peak_rss_mb"] = peak_rss_mb(stack.broker_pid)
        if twin is not None and twin.broker_pid is not None and twin.store_pid is not None:
            runs["durable_broker_peak_rss_mb"] = peak_rss_mb(twin.broker_pid)
            runs["store_peak_rss_mb"] = peak_rss_mb(twin.store_pid)
        result_versions = versions(stack, durable=twin is not None)
    except (RunFailed, TimeoutError, RuntimeError) as exc:
        failure = str(exc)
        result_versions = versions(stack, durable=twin is not None) if stack is not None else {}
    finally:
        if twin is not None:
            twin.close()
        if stack is not None:
            stack.close()
        if keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return result_versions, failure


def _write_and_show(
    result: dict[str, Any],
    console: Console,
    output: Path,
    started: float,
    *,
    quick: bool,
    year: bool,
) -> None:
    """The results as JSON under ``output`` (and ``latest*.json``), a table on the console and,
    unless quick, the markdown table of benchmarks/README.md."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    suffix = "-year" if year else "-quick" if quick else ""
    latest = None if quick else "latest-year.json" if year else "latest.json"
    written = write_results(result, output, stamp + suffix, latest)
    render(result, console)
    console.print(f"results: {written}" + (f" and {output / latest}" if latest else ""))
    if not quick:
        print("\n" + markdown_table(result), flush=True)  # for benchmarks/README.md, unwrapped


def run_suite(
    ctx: Context,
    params: dict[str, Any],
    runs: dict[str, Any],
    say: Any,
    *,
    skip_scale: bool,
    skip_raw: bool,
    skip_latency: bool,
    profile: bool,
    profile_dir: Path,
    durable: Context | None = None,
    skip_peers: bool = False,
) -> None:
    """The throughput runs ``repeat`` times, then the latency; ``durable``: the context of the
    durable broker, whose runs go beside the memory broker's (the ``*_durable`` keys)."""
    repeat = params["repeat"]
    keys = ["publish_and_drain", "pipeline_1_worker", "raw_end_to_end", "pipeline_2_workers"]
    if durable is not None:
        keys += ["publish_only_durable", "pipeline_1_worker_durable"]
    if not skip_peers:
        keys += [f"{peer.key}_end_to_end" for peer in PEERS]
        runs["peers_expected_rows"] = expected_rows(iter_events(ctx.events_path))
    for key in keys:
        runs[key] = []
    for i in range(1, repeat + 1):
        tag = f"run {i}/{repeat}"
        if durable is not None:  # just before the memory broker's publish-only run
            published = {**publish_only(durable), "storage": "durable"}
            runs["publish_only_durable"].append(published)
            say(f"{tag} durable broker: publish only {published['events_per_second']:,.0f}/s")
        drained = publish_then_drain(ctx)
        runs["publish_and_drain"].append(drained)
        say(
            f"{tag} publish only {drained['publish']['events_per_second']:,.0f}/s; drains: "
            f"raw clients {drained['raw_drain']['events_per_second']:,.0f}/s, pipeline "
            f"{drained['pipeline_drain']['events_per_second']:,.0f}/s"
        )
        _one_worker_pair(ctx, durable, runs, say, tag, durable_first=i % 2 == 0)
        if not skip_raw:
            raw = raw_end_to_end(ctx)
            runs["raw_end_to_end"].append(raw)
            say(
                f"{tag} raw clients end to end: {raw['events_per_second']:,.0f}/s "
                f"({raw['seconds']:.1f} s)"
            )
        if not skip_peers:
            _peers(ctx, runs, say, tag)
        if not skip_scale:
            two = pipeline_end_to_end(ctx, workers=2)
            runs["pipeline_2_workers"].append(two)
            say(
                f"{tag} pipeline end to end, 2 workers: {two['events_per_second']:,.0f}/s "
                f"({two['seconds']:.1f} s)"
            )
    if not skip_latency:
        rate, seconds = params["latency_rate"], params["latency_seconds"]
        latency_events, _ = _generate_events(int(rate * seconds), params["seed"], False, say)
        for key, context in (("latency", ctx), ("latency_durable", durable)):
            if context is None:
                continue
            where = "durable broker" if context is durable else "memory broker"
            say(f"latency ({where}): {rate:,.0f} events/s for {seconds:.0f} s")
            measured = latency(context, rate, seconds, latency_events)
            runs[key] = [{**measured, "storage": where.split()[0]}]
            say(
                f"latency ({where}) p50/p95/p99 {measured['p50_ms']:.0f}/"
                f"{measured['p95_ms']:.0f}/{measured['p99_ms']:.0f} ms at "
                f"{measured['achieved_rate']:,.0f}/s"
            )
    if durable is not None:
        say(durable_summary(figures(runs)))
    if profile:
        say("profiling a 1-worker run with py-spy (not counted in the figures)")
        profiled = pipeline_end_to_end(ctx, workers=1, profile_dir=profile_dir)
        runs["profile"] = profiled
        keep = ROOT / "benchmarks" / "results" / "profiles"
        keep.mkdir(parents=True, exist_ok=True)
        for collapsed in profile_dir.glob("*.collapsed.txt"):
            shutil.copy(collapsed, keep / collapsed.name)
        say(f"profiles: {keep}")


def _peers(ctx: Context, runs: dict[str, Any], say: Any, tag: str) -> None:
    """Each peer end to end, right after the pipeline's and the raw clients' runs."""
    for peer in PEERS:
        measured = peer_end_to_end(ctx, peer, runs["peers_expected_rows"])
        runs[f"{peer.key}_end_to_end"].append(measured)
        if "skipped" in measured:
            say(f"{tag} {peer.title}: skipped ({measured['skipped']})")
            continue
        say(
            f"{tag} {peer.title} end to end: {measured['events_per_second']:,.0f}/s "
            f"({measured['seconds']:.1f} s; rows {measured['rows']}, "
            f"{'correct' if measured['correct'] else 'WRONG: ' + measured['error']})"
        )


def _one_worker_pair(
    ctx: Context,
    durable: Context | None,
    runs: dict[str, Any],
    say: Any,
    tag: str,
    *,
    durable_first: bool,
) -> None:
    """The pipeline end to end with one worker on the memory broker and, right before or
    after it, on the durable broker: a pair measured under the same load of the machine."""
    order: list[tuple[str, Context]] = [("memory", ctx)]
    if durable is not None:
        order.insert(0 if durable_first else 1, ("durable", durable))
    for storage, context in order:
        one = {**pipeline_end_to_end(context, workers=1), "storage": storage}
        runs["pipeline_1_worker" if context is ctx else "pipeline_1_worker_durable"].append(one)
        say(
            f"{tag} pipeline end to end, 1 worker, {storage} broker: "
            f"{one['events_per_second']:,.0f}/s ({one['seconds']:.1f} s; publishing "
            f"{one['publish_events_per_second']:,.0f}/s)"
        )
    if durable is not None:
        mem, dur = runs["pipeline_1_worker"][-1], runs["pipeline_1_worker_durable"][-1]
        if mem["events_per_second"]:
            say(
                f"{tag} durable/memory throughput "
                f"{dur['events_per_second'] / mem['events_per_second']:.2f}"
            )


def run_year(
    ctx: Context, workers: int, runs: dict[str, Any], say: Any, durable: Context | None = None
) -> None:
    """The year on the memory broker, then (``--year-durable``) on the durable one."""
    for key, context, where in (("year", ctx, "memory"), ("year_durable", durable, "durable")):
        if context is None:
            continue
        say(f"replaying {context.events:,} events with {workers} worker(s), {where} broker")
        year = {**pipeline_end_to_end(context, workers=workers, census=True), "storage": where}
        runs[key] = year
        say(
            f"year ({where} broker): {year['seconds'] / 60:.1f} min end to end "
            f"({year['events_per_second']:,.0f}/s; publishing "
            f"{year['publish_events_per_second']:,.0f}/s)"
        )
