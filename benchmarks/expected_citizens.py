"""How many distinct citizens a simulated run must integrate: the citizen IDs of the events the
validator accepts. Compare with ``health_books`` / ``ehb_health_books_integrated_total`` after
``ehb demo --events N --seed S``::

    .venv/bin/python benchmarks/expected_citizens.py 200000 --seed 79
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ehb.commands.demo import demo_timeline  # noqa: E402
from schemas.reference import FacilityRegistry  # noqa: E402
from schemas.time import VN_TZ  # noqa: E402
from simulation.simulator import CitySimulator, SimulationConfig  # noqa: E402
from streams.validation import Validator  # noqa: E402


def main(
    events: int = typer.Argument(..., help="Events of the simulated run."),
    seed: int = typer.Option(79, help="Simulator seed (ehb demo's default)."),
    days: float | None = typer.Option(
        None, help="Simulated days (ehb demo --days; default: the demo's, 90 or more)."
    ),
) -> None:
    validator = Validator(FacilityRegistry.from_reference())
    now = datetime.now(VN_TZ)
    citizens: set[str] = set()
    valid = 0
    config = SimulationConfig(events=events, seed=seed, days=demo_timeline(events, 0, days).days)
    for event in CitySimulator(config).events():
        if validator.validate(event, now) is None:
            valid += 1
            citizens.add(event["so_cccd"])
    print(json.dumps({"events": events, "valid": valid, "distinct_citizens": len(citizens)}))


if __name__ == "__main__":
    typer.run(main)
