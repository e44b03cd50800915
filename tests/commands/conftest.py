"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest
from rich.console import Console

from ehb.commands import cli


@pytest.fixture
def wide_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's consoles 400 columns wide, one table row a line. ``COLUMNS`` alone is not
    enough: rich prefers a terminal's size, and a pytest-xdist worker can have one."""
    monkeypatch.setattr(cli, "out", Console(width=400))
    monkeypatch.setattr(cli, "console", Console(stderr=True, width=400))
