"""A demo started again on the same data directory continues the last one (pure: no services)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from ehb.commands.demo import DemoLedger, default_rate, demo_timeline
from ehb.settings import BrokerStorage, Settings
from simulation.simulator import CitySimulator, SimulationConfig


def test_a_new_data_directory_starts_at_the_simulators_start(tmp_path: Path) -> None:
    ledger = DemoLedger.load(tmp_path)
    assert (ledger.runs, ledger.published, ledger.start()) == (0, 0, None)
    assert demo_timeline(1000, 0, None, start=ledger.start()).start == SimulationConfig().start


def test_the_next_run_starts_two_days_after_where_the_last_stopped(tmp_path: Path) -> None:
    first = demo_timeline(2000, 0, None)
    DemoLedger.load(tmp_path).save(tmp_path, 2000, first.reached(2000))
    ledger = DemoLedger.load(tmp_path)
    assert (ledger.runs, ledger.published) == (1, 2000)
    start = ledger.start()
    assert start is not None and start.date() == (first.end + timedelta(days=2)).date()
    second = demo_timeline(2000, 0, None, start=start)
    ledger.save(tmp_path, 1500, second.reached(1500))
    assert (DemoLedger.load(tmp_path).runs, DemoLedger.load(tmp_path).published) == (2, 3500)


def test_a_damaged_ledger_is_a_new_one(tmp_path: Path) -> None:
    (tmp_path / "demo.json").write_text("{not json")
    assert DemoLedger.load(tmp_path) == DemoLedger()


def test_two_runs_send_no_episode_letter_or_appointment_twice() -> None:
    """Episodes (MA_LK), referral letters and appointment papers of a continued run are new,
    though the simulated city (the seed) is the same."""
    start = SimulationConfig().start
    first = list(CitySimulator(SimulationConfig(events=3000, days=20, start=start)).events())
    later = start + timedelta(days=22)
    second = list(CitySimulator(SimulationConfig(events=3000, days=20, start=later)).events())

    def keys(events: list[dict[str, object]]) -> set[str]:
        out: set[str] = set()
        for e in events:
            out.add(f"lk:{e['ma_cskcb']}:{e['ma_lk']}")
            for part, field in (("referral", "so_chuyentuyen"), ("appointment", "so_giayhen_kl")):
                value = e.get(part)
                if isinstance(value, dict):
                    out.add(f"{part}:{e['ma_cskcb']}:{value[field]}")
        return out

    one, two = keys(first), keys(second)
    assert any(k.startswith("referral:") for k in one)
    assert any(k.startswith("appointment:") for k in one)
    assert not one & two


@pytest.mark.parametrize(
    ("bootstrap", "storage", "rate"),
    [(None, BrokerStorage.DURABLE, 100), (None, BrokerStorage.MEMORY, 200), ("k:9092", None, 200)],
)
def test_the_default_pace_fits_the_broker(
    bootstrap: str | None, storage: BrokerStorage | None, rate: float
) -> None:
    values: dict[str, object] = {"kafka_bootstrap": bootstrap}
    if storage is not None:
        values["broker_storage"] = storage
    assert default_rate(Settings(**values)) == rate


def test_a_ledger_time_is_kept_with_its_zone(tmp_path: Path) -> None:
    reached = datetime.fromisoformat("2024-03-05T18:30:00+07:00")
    DemoLedger().save(tmp_path, 10, reached)
    start = DemoLedger.load(tmp_path).start()
    assert start == datetime.fromisoformat("2024-03-07T07:00:00+07:00")
