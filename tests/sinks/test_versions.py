"""The sink's choice of an episode's versions within one batch (pure: no database)."""

from __future__ import annotations

from typing import Any

from schemas.episodes import version_key
from sinks.postgres import _versions


def row(ma_lk: str, version: int | None, position: int, digest: str) -> tuple[Any, ...]:
    """An entry row as the sink stages it: only the episode and version columns matter."""
    return (
        "79001",
        ma_lk,
        *([None] * 26),
        version,
        position,
        digest,
        version_key(version, position),
    )


def kept(rows: list[tuple[Any, ...]]) -> list[tuple[str, int, bool]]:
    return [(r[1], r[29], r[-1]) for r in _versions(rows)]


def test_versions_are_ordered_and_the_newest_of_each_episode_is_marked() -> None:
    rows = [row("A", None, 30, "a2"), row("B", None, 5, "b1"), row("A", None, 10, "a1")]
    assert sorted(kept(rows)) == [("A", 10, False), ("A", 30, True), ("B", 5, True)]


def test_the_sender_version_comes_before_the_position() -> None:
    rows = [row("A", 20, 1, "newer"), row("A", 10, 2, "older, sent later")]
    assert kept(rows) == [("A", 2, False), ("A", 1, True)]


def test_an_identical_resend_and_a_repeated_version_key_are_dropped() -> None:
    rows = [
        row("A", None, 1, "same"),
        row("A", None, 2, "same"),  # the same content again
        row("A", 7, 3, "other"),
        row("A", 7, 4, "other, resent by the outbox"),  # same sender version: a resend
    ]
    assert kept(rows) == [("A", 1, False), ("A", 3, True)]
