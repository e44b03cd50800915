"""``ehb simulate --xml-out DIR``: the simulated city's hospital systems export XML dossiers.

A command: it joins the simulated city (``simulation``) and the gateway's file format
(``producers.dossier``), which do not know each other.

The :class:`~simulation.simulator.CitySimulator`'s events are grouped per facility per day of
admission (``NGAY_VAO``) into ``GIAMDINHHS`` envelope files (:func:`producers.dossier.
encode_dossier`): XML1 for every episode, XML13 for a referral letter, XML14 for a follow-up
appointment, base64 in ``NOIDUNGFILE``, UTF-8 with the patients' Vietnamese names. Facilities
whose code ends in an odd digit use QĐ 3176's XML13 names (``MA_CSKCB_DI``/``MA_CSKCB_DEN``),
the others QĐ 130's, as a city with HIS of different vintages would.

Files are named ``YYYYMMDD_MACSKCB_NNN.xml`` (name order = day order, which is the order the
gateway publishes them in) and written the way a careful HIS drops them: to ``NAME.tmp``, then
renamed, so a watching gateway never reads a file half-written. A day with more than
``max_episodes`` episodes is split into several files (``NNN`` = 001, 002 ...).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from producers.dossier import encode_dossier
from simulation.simulator import CitySimulator, SimulationConfig

__all__ = ["export_simulation", "write_dossier"]


def write_dossier(directory: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``directory/name`` atomically (``name.tmp`` + rename)."""
    path = directory / name
    tmp = directory / f"{name}.tmp"
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path


class _Exporter:
    def __init__(self, directory: Path, max_episodes: int) -> None:
        self.directory = directory
        self.max_episodes = max_episodes
        self.files: list[Path] = []
        self.episodes = 0
        self.tables: Counter[str] = Counter()
        self.bytes = 0
        self._seq: Counter[tuple[str, str]] = Counter()

    def write(self, facility: str, day: str, events: list[dict[str, Any]]) -> None:
        for start in range(0, len(events), self.max_episodes):
            chunk = events[start : start + self.max_episodes]
            self._seq[(day, facility)] += 1
            created = max(e["ngay_ra"] for e in chunk)
            data = encode_dossier(facility, chunk, created=created, qd3176=facility[-1:] in "13579")
            name = f"{day}_{facility}_{self._seq[(day, facility)]:03d}.xml"
            self.files.append(write_dossier(self.directory, name, data))
            self.episodes += len(chunk)
            self.bytes += len(data)
            self.tables["XML1"] += len(chunk)
            self.tables["XML13"] += sum(1 for e in chunk if e.get("referral"))
            self.tables["XML14"] += sum(1 for e in chunk if e.get("appointment"))


def _days(events: Iterable[dict[str, Any]], exporter: _Exporter, on_event: Any = None) -> None:
    """Group per (facility, day); a day is written once events are two days past it."""
    open_days: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for i, event in enumerate(events, 1):
        day = str(event["ngay_vao"])[:8]
        open_days.setdefault(day, {}).setdefault(event["ma_cskcb"], []).append(event)
        if len(open_days) > 2:
            for old in sorted(open_days)[:-2]:
                for facility, group in sorted(open_days.pop(old).items()):
                    exporter.write(facility, old, group)
        if on_event is not None:
            on_event(i)
    for old in sorted(open_days):
        for facility, group in sorted(open_days[old].items()):
            exporter.write(facility, old, group)


def export_simulation(
    config: SimulationConfig,
    directory: Path,
    *,
    max_episodes: int = 2000,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Write ``config.events`` simulated episodes as dossier files; returns a summary."""
    directory.mkdir(parents=True, exist_ok=True)
    simulator = CitySimulator(config)
    exporter = _Exporter(directory, max_episodes)
    started = time.monotonic()
    bar = None
    on_event = None
    if progress is not None:
        bar = Progress(
            TextColumn("writing dossiers"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=progress,
            transient=True,
        )
        bar.start()
        task = bar.add_task("events", total=config.events)

        def on_event(i: int) -> None:
            if i % 1000 == 0:
                bar.update(task, completed=i)

    try:
        _days(simulator.events(), exporter, on_event)
    finally:
        if bar is not None:
            bar.stop()
    return {
        "directory": str(directory),
        "files": len(exporter.files),
        "episodes": exporter.episodes,
        "tables": dict(exporter.tables),
        "valid": simulator.published_valid,
        "invalid_expected": dict(simulator.expected_invalid),
        "bytes": exporter.bytes,
        "seconds": round(time.monotonic() - started, 3),
    }
