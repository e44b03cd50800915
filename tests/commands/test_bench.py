"""Smoke test of ``make bench``: the harness runs end to end with tiny sizes (``--quick``), so it
cannot rot. The figures themselves are not checked (a 3,000-event run says nothing about
throughput); that every measurement produced one, on the memory broker and on the durable one
beside it with their durable/memory ratios, and that the results are written, is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.profiling import read_stacks, summarize

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_runs_every_measurement(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/bench.py", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    written = list(tmp_path.glob("*-quick.json"))
    assert len(written) == 1, list(tmp_path.iterdir())
    assert not (tmp_path / "latest.json").exists()  # a smoke run never replaces the figures
    result = json.loads(written[0].read_text())
    figures = result["figures"]
    assert "errors" not in figures, figures["errors"]
    for key in (
        "publish_only_events_per_second",
        "pipeline_events_per_second",
        "pipeline_2_workers_events_per_second",
        "raw_end_to_end_events_per_second",
        "raw_drain_events_per_second",
        "pipeline_drain_events_per_second",
        "ratio_to_ceiling",
        "ratio_end_to_end",
        "latency_p99_ms",
        "worker_peak_rss_mb",
        "sink_peak_rss_mb",
        "producer_peak_rss_mb",
        "broker_peak_rss_mb",
    ):
        assert figures.get(key), key
    runs = result["runs"]
    assert runs["pipeline_1_worker"][0]["accounted"] == result["parameters"]["events"]
    assert set(runs["pipeline_2_workers"][0]["peak_rss_mb"]) >= {"worker-1", "worker-2", "sink"}
    # where the cores went: every process of the pipeline used some CPU time during the drain
    cpu = figures["cpu_us_per_event_drain"]
    assert set(cpu) >= {"worker-1", "sink", "broker", "postgresql"}, cpu
    assert all(v > 0 for v in cpu.values()), cpu
    assert all(
        result["versions"][name]
        for name in (
            "python",
            "faust-streaming",
            "confluent-kafka",
            "fastavro",
            "psycopg2",
            "postgresql",
            "tansu",
        )
    )
    assert result["machine"]["cpu_count"] >= 1
    assert "Pipeline end to end, 1 worker" in run.stdout
    # the durable broker, measured beside the memory one: figures and explicit ratios
    durable = figures["durable"]
    for key in (
        "publish_only_events_per_second",
        "pipeline_events_per_second",
        "durable_memory_throughput_ratio",
        "durable_memory_publish_ratio",
        "latency_p99_ms",
        "durable_memory_latency_ratio_p50",
        "durable_memory_latency_ratio_p99",
        "broker_peak_rss_mb",
        "store_peak_rss_mb",
    ):
        assert durable.get(key), key
    assert len(durable["durable_memory_throughput_ratio_per_run"]) == 1
    assert runs["pipeline_1_worker_durable"][0]["accounted"] == result["parameters"]["events"]
    assert runs["pipeline_1_worker_durable"][0]["storage"] == "durable"
    assert set(durable["cpu_us_per_event_end_to_end"]) >= {"worker-1", "broker", "store"}
    assert result["versions"]["seaweedfs"]
    assert "durable/memory throughput" in run.stdout
    # the raw clients' CPU per event per process, and the pipeline's as a ratio of it
    assert set(figures["cpu_us_per_event_raw_end_to_end"]) >= {"raw", "broker", "postgresql"}
    assert figures["cpu_ratio_to_raw"] > 0
    # the peers, beside the pipeline, checked by their rows (Quix Streams: only when its
    # virtualenv is installed, `make peers`)
    peers = figures["peers"]
    faust = peers["plain_faust"]
    assert faust["correct"], runs["plain_faust_end_to_end"]
    assert faust["rows"][0]["entries"] == runs["peers_expected_rows"]["entries"]
    assert faust["pipeline_ratio"] > 0 and faust["cpu_us_per_event"]["plain_faust"] > 0
    assert peers["quix"].get("correct") or "skipped" in peers["quix"], peers["quix"]
    assert "side by side" in run.stdout


def test_profile_summary_attributes_samples_to_the_agents(tmp_path: Path) -> None:
    loop = "main (ehb/commands/cli.py);BaseEventLoop._run_once (asyncio/base_events.py)"
    collapsed = tmp_path / "worker.collapsed.txt"
    collapsed.write_text(
        "\n".join(
            [
                f"{loop};create_app.<locals>.intake_agent (streams/app.py);"
                "AvroCodec.decode (schemas/codec.py) 30",
                f"{loop};create_app.<locals>.intake_agent (streams/app.py);"
                "Validator.validate (streams/validation.py) 10",
                f"{loop};create_app.<locals>.health_book_agent (streams/app.py);"
                "_Writer.__call__ (schemas/codec.py) 40",
                f"{loop};Consumer._drain_messages (faust/transport/consumer.py) 20",
                "",
            ]
        )
    )
    assert sum(read_stacks(collapsed).values()) == 100
    summary = summarize(collapsed, seconds=2.0, rate=100, worker=True)
    categories = summary["categories"]
    assert summary["gil_busy"] == 0.5
    assert categories["intake agent"]["percent_of_process"] == 40.0
    assert categories["intake agent"]["top_self"][0] == {
        "function": "AvroCodec.decode (schemas/codec.py)",
        "samples": 30,
        "percent": 75.0,
    }
    assert categories["health-book agent"]["samples"] == 40
    assert categories["framework and other tasks"]["samples"] == 20


def test_quick_year_runs_on_both_brokers(tmp_path: Path) -> None:
    """``make bench-year ARGS=--year-durable`` at a tiny size: the year on the memory broker and
    then on the durable one, each with its events accounted for, CPU and RSS per process."""
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench.py",
            "--year",
            "--year-events",
            "2000",
            "--year-durable",
            "--output",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    (written,) = tmp_path.glob("2*-year.json")
    result = json.loads(written.read_text())
    figures, runs = result["figures"], result["runs"]
    assert "errors" not in figures, figures["errors"]
    for key, storage in (("year", "memory"), ("year_durable", "durable")):
        assert runs[key]["accounted"] == 2000, runs[key]
        assert runs[key]["storage"] == storage
        assert set(figures[f"{key}_cpu_us_per_event"]) >= {"worker-1", "sink", "broker"}
        assert figures[f"{key}_peak_rss_mb"]["worker-1"] > 0
    assert "Year on the durable broker" in run.stdout
