"""A peer's end-to-end run: the peer process running on a fresh deployment (its own topics,
consumer group and database) while the bench's producer publishes the events flat out, as
the pipeline's and the raw clients' end-to-end runs; timed from the first event handed to the
producer to the newest ``persisted_at`` of the peer's ``health_book_entries`` /
``health_books``, once they hold what the events must give
(:func:`benchmarks.peers.work.expected_rows`).

A peer that stalls or writes the wrong number of rows is reported (``error``, its rows
beside the expected ones), not hidden: the bench goes on with the next run.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, ChildScript, ProcessWatch, loadavg
from benchmarks.runs import Context
from ehb.commands.local import Deployment

__all__ = ["PEERS", "Peer", "peer_end_to_end"]

#: the peers' virtualenv (``make peers``): Quix Streams pins an older confluent-kafka
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"

PEER_LAST_COMMIT = (
    "SELECT extract(epoch FROM greatest("
    "(SELECT max(persisted_at) FROM health_book_entries), "
    "(SELECT max(persisted_at) FROM health_books)))"
)


@dataclass(frozen=True)
class Peer:
    key: str
    title: str
    module: str
    python: Path | None  # None: the bench's own interpreter

    def interpreter(self) -> str | None:
        """The Python to run it with, or None when it is not installed."""
        if self.python is None:
            return sys.executable
        return str(self.python) if self.python.exists() else None


PEERS = (
    Peer("plain_faust", "Plain Faust", "benchmarks.peers.plain_faust", None),
    Peer("quix", "Quix Streams", "benchmarks.peers.quix", PEERS_PYTHON),
)


def _rows(deployment: Deployment) -> dict[str, int]:
    return {
        "entries": deployment.count("health_book_entries"),
        "books": deployment.count("health_books"),
    }


def _wait_rows(
    deployment: Deployment, expected: dict[str, int], ctx: Context, peer: ChildScript
) -> str | None:
    """Until the peer's tables hold the expected rows; an error when nothing moves for
    ``ctx.stall_s`` or the peer exits."""
    last: dict[str, int] = {}
    last_change = started = last_said = time.monotonic()
    while True:
        rows = _rows(deployment)
        if rows["entries"] >= expected["entries"] and rows["books"] >= expected["books"]:
            return None
        if peer.proc.poll() is not None:
            return f"{peer.name} exited ({peer.proc.returncode}) at {rows}; see {peer.log}"
        now = time.monotonic()
        if now - last_said >= 30:
            last_said = now
            ctx.say(f"  {peer.name}: {rows} of {expected} after {now - started:.0f} s")
        if rows != last:
            last, last_change = rows, now
        elif now - last_change > ctx.stall_s:
            return f"stalled at {rows} (expected {expected}) for {ctx.stall_s:.0f} s"
        time.sleep(0.2)


def peer_end_to_end(ctx: Context, peer: Peer, expected: dict[str, int]) -> dict[str, Any]:
    """``peer`` running while the producer publishes the events file."""
    python = peer.interpreter()
    if python is None:
        return {"skipped": f"{peer.python} is missing (make peers)"}
    deployment = ctx.stack.deploy(workers=0, sink=False)
    load_before = loadavg()
    child: ChildScript | None = None
    try:
        child = ChildScript.start(
            f"{peer.key}-{deployment.settings.topic_prefix}",
            peer.module,
            [],
            ctx.stack.env(deployment),
            ctx.log_dir,
            python=python,
        )
        child.wait_ready()
        watch = ProcessWatch()
        watch.watch(peer.key, child.pid)
        watch.watch("broker", ctx.stack.broker_pid)
        watch.watch("postgresql", ctx.stack.postgres_pid, tree=True)
        producer = ctx.producer(
            deployment,
            f"producer-{deployment.settings.topic_prefix}",
            "--events-file",
            str(ctx.events_path),
        )
        producer.wait_ready()
        watch.watch("producer", producer.pid)
        watch.start()
        producer.go()
        published = producer.result()
        error = _wait_rows(deployment, expected, ctx, child)
        peaks = watch.stop()
        cpu = watch.cpu_seconds()
        rows = _rows(deployment)
        last_commit = deployment.scalar(PEER_LAST_COMMIT)
    finally:
        if child is not None:
            child.kill()
        ctx.stack.teardown(deployment)
    seconds = float(last_commit) - published["started"] if last_commit is not None else 0.0
    if error is None and rows != {k: expected[k] for k in rows}:
        error = f"rows {rows}, expected {expected}"
    result: dict[str, Any] = {
        "peer": peer.key,
        "events": published["events"],
        "rows": rows,
        "expected_rows": expected,
        "correct": error is None,
        "seconds": round(seconds, 3),
        "events_per_second": round(published["events"] / seconds, 1) if seconds > 0 else 0.0,
        "publish_events_per_second": round(published["events"] / published["seconds"], 1),
        "cpu_seconds": cpu,
        "peak_rss_mb": {**peaks, "producer": published["peak_rss_mb"]},
        "load_before": load_before,
        "load_after": loadavg(),
    }
    if error is not None:
        result["error"] = f"{peer.title}: {error}"
    return result
