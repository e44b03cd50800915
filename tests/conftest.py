"""Session fixtures start the real broker (Tansu) and PostgreSQL once; function fixtures give
each test an isolated deployment (topics, groups, database, processes). Set
EHB_KAFKA_BOOTSTRAP and EHB_DATABASE_URL to run the suite against external services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ehb.commands.local import DeploymentFactory, session_services
from ehb.settings import Settings


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("ehb")
    settings, stack = session_services(root)
    try:
        yield settings
    finally:
        if stack is not None:
            stack.stop()


@pytest.fixture
def deploy(services: Settings, tmp_path: Path) -> Iterator[DeploymentFactory]:
    """``deploy(workers=1, sink=True, partitions=4, **settings)`` -> a running Deployment."""
    factory = DeploymentFactory(services, tmp_path)
    try:
        yield factory
    finally:
        factory.close()
