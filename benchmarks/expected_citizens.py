"""How many distinct citizens a simulated run must integrate: the citizen IDs of the events the
validator accepts. Compare with ``health_books`` / ``ehb_health_books_integrated_total`` after
``ehb demo --events N --seed S``::

    .venv/bin/python benchmarks/expected_citizens.py 200000 --seed 79
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from producers.simulator import CitySimulator, SimulationConfig  # noqa: E402
from schemas.reference import FacilityRegistry  # noqa: E402
from streams.validation import VN_TZ, Validator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events", type=int)
    parser.add_argument("--seed", type=int, default=79)
    parser.add_argument("--days", type=float, default=None)
    args = parser.parse_args()
    validator = Validator(FacilityRegistry.from_reference())
    now = datetime.now(VN_TZ)
    citizens: set[str] = set()
    valid = 0
    config = SimulationConfig(events=args.events, seed=args.seed, days=args.days)
    for event in CitySimulator(config).events():
        if validator.validate(event, now) is None:
            valid += 1
            citizens.add(event["so_cccd"])
    print(json.dumps({"events": args.events, "valid": valid,
                      "distinct_citizens": len(citizens)}))


if __name__ == "__main__":
    main()
