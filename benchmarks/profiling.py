"""py-spy sampling of the worker and the sink during a throughput run, and a summary of the
collapsed stacks: where the samples go, per agent of the worker.

py-spy is not a dependency of the project: ``.venv/bin/pip install py-spy`` to use
``--profile``. Only samples of the thread holding the GIL are kept (``--gil``: the Python CPU
time; py-spy's idle detection does not recognise every wait in a container), at ``rate`` Hz,
without native frames: time spent in C extensions (fastavro, librdkafka, psycopg2) while
holding the GIL is attributed to the Python function that called them.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Spy", "py_spy_binary", "summarize"]

_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*)\)$")

#: a worker stack belongs to an agent when one of its frames is that agent's function
#: (``IntakeAgent.run (streams/intake_agent.py)``); the second marker matches profiles
#: recorded when the agents were closures in ``streams/app.py``
WORKER_CATEGORIES = (
    ("intake agent", (".run (streams/intake_agent.py)", ".intake_agent (streams/app.py)")),
    (
        "health-book agent",
        (".run (streams/health_book_agent.py)", ".health_book_agent (streams/app.py)"),
    ),
    (
        "idle-partition timer",
        (
            ".report_idle_partitions (streams/intake_agent.py)",
            ".report_idle_partitions (streams/app.py)",
        ),
    ),
)


def py_spy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Spy:
    name: str
    proc: subprocess.Popen[bytes]
    output: Path
    rate: int

    @classmethod
    def start(cls, name: str, pid: int, directory: Path, rate: int = 100) -> Spy:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (.venv/bin/pip install py-spy)")
        directory.mkdir(parents=True, exist_ok=True)
        output = directory / f"{name}.collapsed.txt"
        log = open(directory / f"{name}.py-spy.log", "wb")  # noqa: SIM115 - handed over
        try:
            proc = subprocess.Popen(
                [
                    binary,
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate),
                    "--format",
                    "raw",
                    "--nolineno",
                    "--gil",
                    "--output",
                    str(output),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        return cls(name, proc, output, rate)

    def stop(self) -> Path:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.output


def _frame(text: str) -> str:
    """``function (file)``; py-spy's raw format already leaves out line numbers here."""
    match = _FRAME.match(text.strip())
    return f"{match['function']} ({match['file']})" if match else text.strip()


def read_stacks(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        stacks[tuple(_frame(f) for f in body.split(";"))] += int(count)
    return stacks


def _top(counter: Counter[str], total: int, top: int) -> list[dict[str, Any]]:
    return (
        [
            {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]
        if total
        else []
    )


def summarize(
    path: Path, *, seconds: float, rate: int, worker: bool, top: int = 12
) -> dict[str, Any]:
    """Samples per category (the worker's agents, the rest of its event loop), and per
    category the top functions by self samples (leaf frame) and by inclusive samples."""
    stacks = read_stacks(path)
    total = sum(stacks.values())
    categories: dict[str, Counter[tuple[str, ...]]] = {}
    for stack, n in stacks.items():
        name = "all"
        if worker:
            name = "framework and other tasks"
            for category, markers in WORKER_CATEGORIES:
                if any(frame.endswith(markers) for frame in stack):
                    name = category
                    break
        categories.setdefault(name, Counter())[stack] += n
    summary: dict[str, Any] = {
        "samples": total,
        "seconds": round(seconds, 1),
        "rate_hz": rate,
        # share of the wall time some thread held the GIL (1.0: Python saturates one core)
        "gil_busy": round(total / (rate * seconds), 2) if seconds else None,
        "categories": {},
    }
    for name, category in sorted(categories.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(category.values())
        self_time: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for stack, count in category.items():
            self_time[stack[-1]] += count
            for frame in set(stack):
                inclusive[frame] += count
        # frames present in every sample of the category (the outer chain) say nothing
        inclusive = Counter({f: c for f, c in inclusive.items() if c < n})
        summary["categories"][name] = {
            "samples": n,
            "percent_of_process": round(100 * n / total, 1) if total else 0.0,
            # percentages below are of this category's samples
            "top_self": _top(self_time, n, top),
            "top_inclusive": _top(inclusive, n, top),
        }
    return summary
