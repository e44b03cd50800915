"""A worker whose Kafka client can reach none of the brokers it knows stops, so that a restart
bootstraps again through another address.

Every Tansu broker on a shared store reports the same node id (111) with its own address, so
aiokafka's cluster view holds one broker: the one it bootstrapped through. When that broker
dies, aiokafka refreshes its metadata only from the brokers it knows (and its bootstrap
connection, to the same dead broker) and never tries the other bootstrap addresses: the
worker stalls for good while the other brokers serve everything (seen in fault scenario 9).
librdkafka (the sink, the publishers) fails over by itself. On Apache Kafka the brokers have
distinct ids and the watch never fires unless every broker is down.

The watch fires only when a restart could help: none of the known brokers has accepted a TCP
connection for ``limit_s`` and the bootstrap list names another address. The worker then
exits with status 69 (EX_UNAVAILABLE) without committing anything; its supervisor (compose's
restart policy, ``ehb.commands.local.ChildProcesses.supervise``) starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

__all__ = ["EXIT_BROKERS_UNREACHABLE", "BrokerWatch"]

log = logging.getLogger(__name__)

EXIT_BROKERS_UNREACHABLE = 69


def _reachable(addresses: list[tuple[str, int]]) -> bool:
    for host, port in addresses:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1.0):
            return True
    return False


def _split(bootstrap: str) -> set[tuple[str, int]]:
    out = set()
    for item in bootstrap.split(","):
        host, _, port = item.strip().rpartition(":")
        if host and port.isdigit():
            out.add((host, int(port)))
    return out


class BrokerWatch:
    """``check()`` every few seconds (a Faust timer)."""

    def __init__(self, app: Any, bootstrap: str, limit_s: float = 30.0) -> None:
        self.app = app
        self.bootstrap = _split(bootstrap)
        self.limit_s = limit_s
        self.unreachable_since: float | None = None

    def known(self) -> list[tuple[str, int]]:
        """The brokers in the worker's consumer client's cluster view (empty: not yet)."""
        try:
            client = self.app.consumer._thread._consumer._client
            return [(b.host, int(b.port)) for b in client.cluster.brokers()]
        except AttributeError:
            return []

    async def check(self) -> None:
        known = self.known()
        if not known or not self.bootstrap - set(known):
            self.unreachable_since = None  # a restart would reach nothing else
            return
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, _reachable, known):
            self.unreachable_since = None
            return
        now = time.monotonic()
        if self.unreachable_since is None:
            self.unreachable_since = now
            log.warning("no broker of this worker's client answers (%d known)", len(known))
        elif now - self.unreachable_since >= self.limit_s:
            log.critical(
                "no broker this worker's client knows has answered for %.0f s, and the "
                "bootstrap list names others: exiting so that a restart bootstraps again",
                now - self.unreachable_since,
            )
            logging.shutdown()
            os._exit(EXIT_BROKERS_UNREACHABLE)
