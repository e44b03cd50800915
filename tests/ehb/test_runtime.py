"""Garbage-collector tuning of the long-running services (ehb.runtime.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ehb.runtime import tune_gc
from ehb.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_default_setting_spaces_out_young_collections(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(Settings().gc_young_threshold)
    young, middle, old = gc.get_threshold()
    assert young == 50_000 and middle >= 20 and old >= 100
    assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's sight


def test_zero_keeps_pythons_defaults(restore_gc: None) -> None:
    gc.set_threshold(700, 10, 10)
    tune_gc(0)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() == 0


def test_setting_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHB_GC_YOUNG_THRESHOLD", "0")
    assert Settings().gc_young_threshold == 0
    monkeypatch.setenv("EHB_GC_YOUNG_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings()


def test_malloc_arenas_are_limited_on_glibc() -> None:
    """mallopt(M_ARENA_MAX) is accepted (glibc); 0 leaves malloc alone."""
    import platform

    from ehb.runtime import limit_malloc_arenas

    assert limit_malloc_arenas(0) is False
    if platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas(2) is True
