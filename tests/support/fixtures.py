"""Test-only helpers on top of the local deployments of ``ehb.commands.local`` (which the
fixtures in ``tests/conftest.py`` create and the benchmarks share)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from ehb.commands.local import wait_until

__all__ = ["wait_stable"]

T = TypeVar("T")


def wait_stable(
    value: Callable[[], T | None],
    hold_s: float,
    timeout: float = 120.0,
    interval: float = 0.5,
    message: str = "a stable value",
) -> T:
    """Poll ``value`` until it is not None and has not changed for ``hold_s`` seconds.

    For the pipeline's final state, ``hold_s`` must outlast ``partition_idle_s``: the last
    timers (reminders, referrals expired, appointments missed) fire only once the input
    partitions have been idle that long and release the event-time clock."""
    since: float | None = None
    last: Any = None

    def held() -> T | None:
        nonlocal since, last
        current = value()
        now = time.monotonic()
        if current is None or current != last:
            since, last = now, current
            return None
        return current if since is not None and now - since >= hold_s else None

    return wait_until(held, timeout, interval, message)
