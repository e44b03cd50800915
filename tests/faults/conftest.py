"""The fault suite: ``make faults`` runs everything marked ``faults``: the full scenarios
(200,000 events each) and fuzzing (100,000+ cases), also marked ``slow``, and the bad-input
corpora. The default ``make test`` skips the ``slow`` ones and runs the reduced versions.

Every scenario adds its reconciliation to the session's report, written at the end to
``reports/faults.{md,json}`` (full suite) or ``reports/faults-quick.{md,json}``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import ROOT, Reconciliation

REPORTS = Path(os.environ.get("EHB_FAULTS_REPORT_DIR", ROOT / "reports"))


def _selected(config: pytest.Config) -> bool:
    return "faults" in (config.getoption("markexpr", "") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _selected(config):
        return
    skip = pytest.mark.skip(reason="full fault suite: run `make faults` (pytest -m faults)")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


class FaultReport:
    def __init__(self) -> None:
        self.rows: list[Reconciliation] = []
        #: one per crash point run (tests/faults/test_crash_points.py): the reconciliation
        #: and where the process died
        self.crash_points: list[dict[str, Any]] = []
        #: one per loop of random kills: runs, failures, seconds per run
        self.loops: list[dict[str, Any]] = []
        self.fuzz: dict[str, int] = {}
        self.corpus: dict[str, Any] = {}
        self.started = time.time()

    def add(self, row: Reconciliation) -> None:
        self.rows.append(row)

    def add_crash_point(self, row: Reconciliation, **detail: Any) -> None:
        self.crash_points.append({**detail, **row.as_dict()})

    def part(self) -> dict[str, Any]:
        """What this session (or ``pytest-xdist`` worker) found, as JSON."""
        return {
            "started": self.started,
            "scenarios": [row.as_dict() for row in self.rows],
            "crash_points": self.crash_points,
            "loops": self.loops,
            "fuzz_cases": self.fuzz,
            "bad_input_corpus": self.corpus,
        }


def write_report(parts: list[dict[str, Any]], full: bool) -> Path | None:
    """Write ``reports/faults{,-quick}.{md,json}`` from the parts of one run (one per
    ``pytest-xdist`` worker, or the session's own)."""
    if not any(
        p[k]
        for p in parts
        for k in ("scenarios", "crash_points", "loops", "fuzz_cases", "bad_input_corpus")
    ):
        return None
    REPORTS.mkdir(parents=True, exist_ok=True)
    stem = REPORTS / ("faults" if full else "faults-quick")
    fuzz: dict[str, int] = {}
    for part in parts:
        for target, n in part["fuzz_cases"].items():
            fuzz[target] = fuzz.get(target, 0) + n
    document = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": os.environ.get("EHB_FAULTS_COMMAND", "make faults" if full else "make test"),
        "events_per_scenario": os.environ.get("EHB_FAULTS_EVENTS", "200000" if full else "3000"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "seconds": round(time.time() - min(p["started"] for p in parts), 1),
        "scenarios": [row for p in parts for row in p["scenarios"]],
        "crash_points": [row for p in parts for row in p["crash_points"]],
        "loops": [row for p in parts for row in p["loops"]],
        "fuzz_cases": fuzz,
        "bad_input_corpus": {k: v for p in parts for k, v in p["bad_input_corpus"].items()},
    }
    stem.with_suffix(".json").write_text(json.dumps(document, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(document))
    return stem


def _seconds(values: list[float | None]) -> str:
    if not values:
        return "-"
    if any(v is None for v in values):
        return "never"
    return f"{max(v for v in values if v is not None):.1f}"


def markdown(document: dict[str, Any]) -> str:
    lines = [
        "# Fault suite: reconciliation report",
        "",
        f"Generated {document['generated_at']} by `{document['command']}` on "
        f"{document['machine']}, {document['events_per_scenario']} simulated events per "
        f"scenario, {document['seconds']} s in all.",
        "",
        "| scenario | accepted | persisted | dead-lettered | lost | duplicated | misrouted | "
        "counters = tables | time to recover (s, worst) | drain (s) | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in document["scenarios"]:
        counters = "yes" if not (row["counter_mismatches"] or row["derived_mismatches"]) else ("NO")
        lines.append(
            f"| {row['scenario']} | {row['accepted']:,} | {row['persisted']:,} | "
            f"{row['dead_lettered']:,} | {row['lost']} | {row['duplicated']} | "
            f"{row['misrouted']} | {counters} | {_seconds(row['recover_seconds'])} | "
            f"{row['drain_seconds']:.1f} | {'PASS' if row['ok'] else 'FAIL'} |"
        )
    lines += ["", "## Faults injected", ""]
    for row in document["scenarios"]:
        lines.append(f"### {row['scenario']}")
        lines.append("")
        for fault in row["faults"]:
            detail = ", ".join(f"{k}={v}" for k, v in fault["detail"].items())
            recover = "never" if fault["recover"] is None else f"{fault['recover']:.1f}s"
            lines.append(
                f"- {fault['kind']} at +{fault['at']:.1f}s, lasted "
                f"{fault['lasted']:.1f}s, recovered in {recover}"
                + (f" ({detail})" if detail else "")
            )
        for note in row["notes"]:
            lines.append(f"- {note}")
        if row["counter_mismatches"] or row["derived_mismatches"]:
            lines.append(f"- MISMATCHES: {row['counter_mismatches'] + row['derived_mismatches']}")
        reasons = ", ".join(f"{k} {v:,}" for k, v in row["dead_letter_reasons"].items())
        lines += [f"- dead letters by reason: {reasons or 'none'}", ""]
    lines += _crash_points(document.get("crash_points", []))
    lines += _loops(document.get("loops", []))
    if document["bad_input_corpus"]:
        corpus = document["bad_input_corpus"]
        lines += ["## Bad input", ""]
        for name, section in corpus.items():
            lines.append(
                f"- {name}: {section['kinds']} kinds, {section['cases']} cases, "
                f"{section['ok']} handled as expected"
            )
        lines.append("")
    if document["fuzz_cases"]:
        lines += [
            "## Property-based fuzzing (hypothesis)",
            "",
            "| target | generated cases |",
            "|---|---:|",
        ]
        for target, n in document["fuzz_cases"].items():
            lines.append(f"| {target} | {n:,} |")
        lines.append(f"| total | {sum(document['fuzz_cases'].values()):,} |")
        lines.append("")
    return "\n".join(lines)


def _crash_points(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Crash points",
        "",
        "Each point: the process SIGKILLs itself the N-th time it reaches the point "
        "(`EHB_FAULT_KILL=point:N`), is restarted without it, and the run is reconciled.",
        "",
        "| point | process | killed at | committed when killed | time to recover (s) | "
        "accepted | lost | duplicated | counters = tables | seconds | result |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for row in rows:
        counters = "yes" if not (row["counter_mismatches"] or row["derived_mismatches"]) else ("NO")
        died = row.get("committed_at_kill")
        lines.append(
            f"| `{row['point']}` | {row['process']} | #{row['kill_at']} | "
            f"{'-' if died is None else f'{died:,}'} | {_seconds(row['recover_seconds'])} | "
            f"{row['accepted']:,} | {row['lost']} | {row['duplicated']} | {counters} | "
            f"{row['total_seconds']:.1f} | {'PASS' if row['ok'] else 'FAIL'} |"
        )
    lines.append("")
    for row in rows:
        if row["error"] or row["counter_mismatches"] or row["derived_mismatches"]:
            problems = [
                row["error"],
                *row["counter_mismatches"],
                *row["derived_mismatches"],
                *row["notes"],
            ]
            lines.append(f"- `{row['point']}`: {'; '.join(p for p in problems if p)}")
    return [*lines, ""]


def _loops(loops: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for loop in loops:
        seconds = loop["seconds_per_run"]
        lines += [
            f"## {loop['scenario']}, {loop['runs']} runs in a row",
            "",
            f"{loop['runs']} runs of {loop['asked']} asked, {loop.get('lanes', 1)} at a time "
            f"in {loop.get('loop_seconds', sum(seconds)):.0f} s "
            f"({loop['runs'] - loop['static']} "
            f"with dynamic group membership, {loop['static']} static; run n draws its kills "
            f"with seed "
            f"{loop['seed_base']} + n), {len(loop['failures'])} failed; seconds per run: "
            + (
                f"median {sorted(seconds)[len(seconds) // 2]:.1f}, max {max(seconds):.1f}"
                if seconds
                else "-"
            )
            + ".",
            "",
        ]
        if loop["failures"]:
            lines += [
                "| run | membership | seed | lost | duplicated | error |",
                "|---:|---|---:|---:|---:|---|",
            ]
            for f in loop["failures"]:
                error = " ".join(str(f["error"] or "-").split()).replace("|", "/")[:300]
                lines.append(
                    f"| {f['run']} | {f['membership']} | {f['seed']} | {f['lost']} | "
                    f"{f['duplicated']} | {error} |"
                )
            lines.append("")
    return lines


#: where ``pytest-xdist`` workers leave their parts of the report for the controller
_PARTS = "EHB_FAULTS_REPORT_PARTS"


def _worker(config: pytest.Config) -> str | None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])


def pytest_configure(config: pytest.Config) -> None:
    if _worker(config) is None and getattr(config.option, "numprocesses", None):
        # read by the workers, which inherit this process's environment when they start
        os.environ[_PARTS] = tempfile.mkdtemp(prefix="ehb-fault-report-")


def pytest_sessionfinish(session: pytest.Session) -> None:
    parts_dir = os.environ.get(_PARTS)
    if _worker(session.config) is not None or not parts_dir:
        return
    parts = [json.loads(p.read_text()) for p in sorted(Path(parts_dir).glob("*.json"))]
    shutil.rmtree(parts_dir, ignore_errors=True)
    if parts and (path := write_report(parts, _selected(session.config))) is not None:
        print(f"\nfault report: {path}.md / .json")


@pytest.fixture(scope="session")
def fault_report(request: pytest.FixtureRequest) -> Iterator[FaultReport]:
    report = FaultReport()
    yield report
    worker, parts_dir = _worker(request.config), os.environ.get(_PARTS)
    if worker is not None and parts_dir:
        (Path(parts_dir) / f"{worker}.json").write_text(json.dumps(report.part(), default=str))
        return
    path = write_report([report.part()], _selected(request.config))
    if path is not None:
        print(f"\nfault report: {path}.md / .json")
