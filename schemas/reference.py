"""Reference data shipped with the project: the national province-code list and the facility
registry of Ho Chi Minh City (synthetic but plausible), as CSV files under ``reference/``.

The sinks load both into PostgreSQL (tables ``provinces`` and ``facilities``); the stream
worker reads the facility registry from there and refreshes it periodically, so the registry
can be updated without restarting workers (see docs/facilities.md).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "FACILITY_LEVELS",
    "Facility",
    "FacilityRegistry",
    "load_facilities",
    "load_provinces",
    "REFERENCE_DIR",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
FACILITY_LEVELS = ("central", "provincial", "district", "commune", "private")


@dataclass(frozen=True, slots=True)
class Facility:
    code: str
    name: str
    level: str
    district: str | None

    @property
    def province(self) -> str:
        return self.code[:2]


@cache
def load_provinces(path: Path | None = None) -> Mapping[str, str]:
    """{2-digit province code: name}."""
    with open(path or REFERENCE_DIR / "provinces.csv", encoding="utf-8", newline="") as src:
        return {row["code"]: row["name"] for row in csv.DictReader(src)}


def load_facilities(path: Path | None = None) -> list[Facility]:
    with open(path or REFERENCE_DIR / "facilities.csv", encoding="utf-8", newline="") as src:
        return [
            Facility(row["code"], row["name"], row["level"], row.get("district") or None)
            for row in csv.DictReader(src)
        ]


class FacilityRegistry:
    """Facility lookup by code; ``replace`` swaps the whole registry atomically."""

    __slots__ = ("_by_code", "version")

    def __init__(self, facilities: Iterable[Facility] = ()) -> None:
        self._by_code: dict[str, Facility] = {f.code: f for f in facilities}
        self.version = 0

    @classmethod
    def from_reference(cls) -> FacilityRegistry:
        return cls(load_facilities())

    def replace(self, facilities: Iterable[Facility]) -> None:
        self._by_code = {f.code: f for f in facilities}
        self.version += 1

    def get(self, code: str) -> Facility | None:
        return self._by_code.get(code)

    def __contains__(self, code: object) -> bool:
        return code in self._by_code

    def __len__(self) -> int:
        return len(self._by_code)

    def codes(self) -> list[str]:
        return list(self._by_code)
