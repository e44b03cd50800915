"""``ehb simulate``: run the simulated city against the broker, at a rate or flat out."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ehb.settings import Settings
from producers.publisher import ExaminationPublisher
from producers.reports import DailyReportBook, ReportPublisher, pick_facilities
from simulation.simulator import CitySimulator, SimulationConfig

__all__ = ["pace", "run_simulation"]


def pace(publisher: ExaminationPublisher, sent: int, rate: float, started: float) -> None:
    """After the ``sent``-th event handed to ``publisher`` since ``started`` (monotonic): when
    ahead of ``rate``, send what is pending and wait until the next event is due, so that each
    event goes out as soon as it is due."""
    ahead = sent / rate - (time.monotonic() - started)
    if ahead > 0:
        publisher.send_pending()
        publisher.poll(0)
        time.sleep(ahead)


def run_simulation(
    settings: Settings,
    config: SimulationConfig,
    *,
    rate: float = 0,
    batch_size: int = 100,
    progress: Console | None = None,
    stop: Any = None,
    publisher: ExaminationPublisher | None = None,
) -> dict[str, Any]:
    """Publish ``config.events`` events; returns a summary (counts, times)."""
    simulator = CitySimulator(config)
    publisher = publisher or ExaminationPublisher(
        settings, batch_size=batch_size, linger_s=0.2 if rate else 5.0, identity="simulate"
    )
    book, reports = _daily_reports(settings, config, simulator, publisher)
    started = time.monotonic()
    bar = _progress_bar(progress, config.events)
    try:
        for i, event in enumerate(simulator.events(), 1):
            if stop is not None and stop.is_set():
                break
            publisher.add(event)
            if book is not None and reports is not None:
                book.sent(event)
                closed = book.close_before(simulator.horizon)
                if closed:  # the day's episodes go out before its reports
                    publisher.send_pending()
                    reports.publish(closed)
            if rate:
                pace(publisher, i, rate, started)
            if bar is not None and i % 1000 == 0:
                bar[0].update(bar[1], completed=i)
        publisher.flush()
        if book is not None and reports is not None:
            reports.publish(book.close_all())
            reports.flush()
    finally:
        if bar is not None:
            bar[0].stop()
        if reports is not None:
            reports.close()
    return _summary(simulator, publisher, book, reports, time.monotonic() - started)


def _daily_reports(
    settings: Settings,
    config: SimulationConfig,
    simulator: CitySimulator,
    publisher: ExaminationPublisher,
) -> tuple[DailyReportBook | None, ReportPublisher | None]:
    """The facilities' daily reports (some silent, some inconsistent), when configured."""
    if not config.reports:
        return None, None
    codes = [f.code for f in simulator.facilities]
    silent, inconsistent = pick_facilities(
        codes, config.silent_facilities, config.inconsistent_facilities, config.seed
    )
    book = DailyReportBook(
        codes, config.start.date(), silent=silent, inconsistent=inconsistent, seed=config.seed
    )
    return book, ReportPublisher(settings, codec=publisher.codec)


def _progress_bar(progress: Console | None, total: int) -> tuple[Progress, TaskID] | None:
    """A progress bar of the events published, started, on ``progress`` when given."""
    if progress is None:
        return None
    bar = Progress(
        TextColumn("publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress,
        transient=True,
    )
    bar.start()
    return bar, bar.add_task("events", total=total)


def _summary(
    simulator: CitySimulator,
    publisher: ExaminationPublisher,
    book: DailyReportBook | None,
    reports: ReportPublisher | None,
    elapsed: float,
) -> dict[str, Any]:
    """What the run published, how fast, and the daily reports' part."""
    return {
        "events_published": publisher.events_delivered,
        "messages": publisher.messages_delivered,
        "valid": simulator.published_valid,
        "invalid_expected": dict(simulator.expected_invalid),
        "first_publish": publisher.first_publish,
        "seconds": round(elapsed, 3),
        "events_per_second": round(publisher.events_delivered / elapsed, 1) if elapsed else None,
        "daily_reports": None
        if book is None or reports is None
        else {
            "published": reports.delivered,
            "days": len({day for (_, day) in book.truth}),
            "silent_facilities": sorted(book.silent),
            "inconsistent_facilities": sorted(book.inconsistent),
        },
    }
