"""Session fixtures start the real broker (Tansu) and PostgreSQL once; function fixtures give
each test an isolated deployment (topics, groups, database, processes). Set
EHB_KAFKA_BOOTSTRAP and EHB_DATABASE_URL to run the suite against external services."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ehb.commands.local import DeploymentFactory, session_services
from ehb.settings import Settings


def pytest_configure(config: pytest.Config) -> None:
    """Each session gets its own base directory unless ``--basetemp`` is given. pytest's
    numbered ``/tmp/pytest-of-<user>/pytest-N`` keeps only the newest three, so a second
    session started meanwhile (another checkout, `make test` beside `make faults`) could delete
    the directory holding a running session's PostgreSQL data and broker logs."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="ehb-pytest-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A session that passed removes its own base directory; a failed one keeps it (logs)."""
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


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
