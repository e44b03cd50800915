"""Named crash points and delays, for the fault suite only.

Every place where a piece of work becomes durable (an outbox row committed, outputs flushed,
offsets committed ...) calls :func:`reach` with the point's name. In production the call is
inert: the environment is read once, at import, and with no ``EHB_FAULT_*`` variable set
:func:`reach` returns at once.

* ``EHB_FAULT_KILL="intake.outputs_flushed:3"``: the process sends itself ``SIGKILL`` the 3rd
  time it reaches that point (``name`` alone means the 1st time). Several points may be given,
  separated by commas; the first one reached enough times kills.
* ``EHB_FAULT_RAISE="intake.outputs_queued:2"``: :func:`reach` raises :class:`FaultInjected`
  instead (an exception inside a batch, as a failed send would raise).
* ``EHB_FAULT_DELAY="worker.perform_seek:2.5,intake.batch:0.2"``: :func:`delay` /
  :func:`adelay` sleep that many seconds at the point, every time it is reached.

The tests in ``tests/faults/test_crash_points.py`` run every point of :data:`POINTS` with a
restart and reconcile the database with what the facilities sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

from ehb.exceptions import ConfigurationError, FaultInjected

__all__ = ["DELAYS", "POINTS", "FaultInjected", "adelay", "active", "delay", "reach"]

#: every crash point: name -> what is durable when it is reached
POINTS: dict[str, str] = {
    # producer (producers.outbox / producers.publisher)
    "producer.outbox_committed": "a batch of events is committed to the SQLite outbox, "
    "not yet sent",
    "producer.message_acknowledged": "the broker acknowledged a message; its outbox row is "
    "still there",
    "producer.outbox_deleted": "acknowledged rows are deleted from the outbox",
    # stateless stage (streams.intake_agent)
    "intake.batch_received": "the intake agent has a batch in hand; nothing of it is durable yet",
    "intake.outputs_queued": "a batch's routed events and dead letters are queued in "
    "librdkafka, not flushed",
    "intake.outputs_flushed": "a batch's outputs are acknowledged by the broker; the input "
    "batch is not acknowledged",
    "intake.batch_acknowledged": "Faust acknowledged the input batch; offsets not committed",
    "intake.offsets_committed": "the worker group committed input offsets",
    # stateful stage (streams.health_book_agent)
    "health_book.batch_received": "the health-book agent has a batch in hand; nothing of it "
    "is durable yet",
    "health_book.outputs_flushed": "health-book, referral and appointment records are "
    "acknowledged; the changelog is not written",
    "health_book.changelog_written": "the batch's state changes are in the changelog; the "
    "internal batch is not acknowledged",
    "health_book.batch_acknowledged": "Faust acknowledged the internal batch; offsets not "
    "committed",
    "health_book.offsets_committed": "the worker group committed internal-topic offsets",
    # sink (sinks.postgres / ehb.consumer)
    "sink.copy_done": "a batch is in the staging table, the transaction is open",
    "sink.db_committed": "a batch's rows and counters are committed in PostgreSQL; offsets "
    "not committed",
    "sink.offsets_committed": "the sink group committed the batch's offsets",
}

#: every delay point: name -> what it slows down
DELAYS: dict[str, str] = {
    "worker.perform_seek": "Faust's seek of the stream partitions to their committed "
    "offsets after a rebalance (the window of the rebalance race)",
    "intake.batch": "each intake batch, before it is processed",
    "health_book.batch": "each health-book batch, before it is processed",
    "intake.batch_during_seek": "each intake batch that starts while a seek of the stream "
    "partitions is pending",
}


def _parse(text: str, what: dict[str, str], default: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        if name not in what:
            raise ConfigurationError(
                f"unknown fault point {name!r} (known: {', '.join(sorted(what))})"
            )
        out[name] = float(value or default)
    return out


_KILL = _parse(os.environ.get("EHB_FAULT_KILL", ""), POINTS, "1")
_RAISE = _parse(os.environ.get("EHB_FAULT_RAISE", ""), POINTS, "1")
_DELAY = _parse(os.environ.get("EHB_FAULT_DELAY", ""), DELAYS, "0")
_seen: dict[str, int] = {}


def active() -> bool:
    """True when any fault variable was set at start (tests only)."""
    return bool(_KILL or _RAISE or _DELAY)


def reach(name: str) -> None:
    """The process is at crash point ``name``: SIGKILL itself if told to, else nothing."""
    if not (_KILL or _RAISE):
        return
    limit = _KILL.get(name)
    raise_at = _RAISE.get(name)
    if limit is None and raise_at is None:
        return
    n = _seen[name] = _seen.get(name, 0) + 1
    if raise_at is not None and n == raise_at:
        sys.stderr.write(f"EHB_FAULT_RAISE: {name} reached ({n}), raising\n")
        sys.stderr.flush()
        raise FaultInjected(f"fault injected at {name} ({n})")
    if limit is not None and n >= limit:
        sys.stderr.write(f"EHB_FAULT_KILL: {name} reached ({n}), SIGKILL\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)  # the signal is delivered before this returns


def delay(name: str) -> float:
    """Seconds to wait at ``name`` (0.0 unless ``EHB_FAULT_DELAY`` names it); sleeps them."""
    seconds = _DELAY.get(name, 0.0) if _DELAY else 0.0
    if seconds:
        time.sleep(seconds)
    return seconds


async def adelay(name: str) -> float:
    """:func:`delay` for coroutines: waits without blocking the event loop."""
    seconds = _DELAY.get(name, 0.0) if _DELAY else 0.0
    if seconds:
        await asyncio.sleep(seconds)
    return seconds
