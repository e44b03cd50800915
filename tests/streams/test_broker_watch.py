"""streams.broker_watch: a worker bound to a dead broker stops only when a restart can help."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from ehb.processes import free_port
from streams import broker_watch
from streams.broker_watch import EXIT_BROKERS_UNREACHABLE, BrokerWatch


def _app(*ports: int) -> Any:
    brokers = [SimpleNamespace(host="127.0.0.1", port=p) for p in ports]
    cluster = SimpleNamespace(brokers=lambda: brokers)
    client = SimpleNamespace(cluster=cluster)
    return SimpleNamespace(
        consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=SimpleNamespace(_client=client)))
    )


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []

    def exit_(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(broker_watch.os, "_exit", exit_)
    return codes


def test_exits_when_its_broker_is_dead_and_the_bootstrap_names_another(
    exits: list[int],
) -> None:
    dead, other = free_port(), free_port()
    watch = BrokerWatch(_app(dead), f"127.0.0.1:{dead},127.0.0.1:{other}", limit_s=0.0)
    asyncio.run(watch.check())  # starts the clock
    with pytest.raises(Exited):
        asyncio.run(watch.check())
    assert exits == [EXIT_BROKERS_UNREACHABLE]


def test_stays_while_its_broker_answers(exits: list[int]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        watch = BrokerWatch(_app(port), f"127.0.0.1:{port},127.0.0.1:{free_port()}", 0.0)
        for _ in range(3):
            asyncio.run(watch.check())
    assert exits == [] and watch.unreachable_since is None


def test_stays_when_a_restart_could_reach_nothing_else(exits: list[int]) -> None:
    dead = free_port()
    watch = BrokerWatch(_app(dead), f"127.0.0.1:{dead}", limit_s=0.0)
    for _ in range(3):
        asyncio.run(watch.check())
    assert exits == []
