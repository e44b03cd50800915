"""The worker's consumer is created with the fetch bounds of the settings: Faust hard-codes a
1.5 s fetch wait and sets no bound on a whole fetch, which is what bounds the prefetch (and so
the worker's memory under a backlog) on Tansu."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from ehb.settings import Settings, StateStore
from streams.app import create_app


@pytest.fixture
def refusing_address() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_the_worker_consumer_takes_its_fetch_bounds_from_the_settings(
    refusing_address: str,
) -> None:
    settings = Settings(
        kafka_bootstrap=refusing_address,
        state_store=StateStore.MEMORY,
        worker_fetch_max_kb=2048,
        worker_fetch_max_wait_ms=40,
    )
    app = create_app(settings)

    async def create() -> tuple[int, int, int]:
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return (
                consumer._fetch_max_bytes,
                consumer._max_partition_fetch_bytes,
                consumer._fetch_max_wait_ms,
            )
        finally:
            await consumer.stop()

    assert asyncio.run(create()) == (2048 * 1024, 2048 * 1024, 40)
