"""Reference data: the national province-code list and the facility registry of Ho Chi Minh
City (synthetic but plausible), shipped as CSV files under ``reference/``; the facility model
(:class:`Facility`, :class:`FacilityRegistry`) and the registry's CSV format
(:func:`read_registry_csv`, also the format of ``ehb registry load FILE``).

The sinks load both files into PostgreSQL (tables ``provinces`` and ``facilities``); the
registry's reading and writing there is ``ehb.facilities``. The stream worker reads the
facility registry from PostgreSQL and refreshes it periodically, so the registry can be
updated without restarting workers (see docs/facilities.md).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from schemas.errors import RegistryFileError

__all__ = [
    "FACILITY_LEVELS",
    "Facility",
    "FacilityRegistry",
    "REFERENCE_DIR",
    "REGISTRY_COLUMNS",
    "load_facilities",
    "load_provinces",
    "read_registry_csv",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
FACILITY_LEVELS = ("central", "provincial", "district", "commune", "private")
#: the registry CSV's columns (``district`` optional)
REGISTRY_COLUMNS = ("code", "name", "level", "district")


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
    """The facilities of a registry CSV, by default the shipped ``reference/facilities.csv``."""
    return read_registry_csv(path or REFERENCE_DIR / "facilities.csv")


def read_registry_csv(path: Path) -> list[Facility]:
    """Parse and check a registry CSV; RegistryFileError on the first bad line."""
    provinces = load_provinces()
    try:
        with open(path, encoding="utf-8-sig", newline="") as src:
            reader = csv.DictReader(src)
            missing = [c for c in REGISTRY_COLUMNS[:3] if c not in (reader.fieldnames or [])]
            if missing:
                raise RegistryFileError(
                    f"{path}: missing column(s) {', '.join(missing)} "
                    f"(expected {','.join(REGISTRY_COLUMNS)})"
                )
            facilities: dict[str, Facility] = {}
            for row in reader:
                line = reader.line_num
                code = (row.get("code") or "").strip()
                name = (row.get("name") or "").strip()
                level = (row.get("level") or "").strip()
                district = (row.get("district") or "").strip() or None
                if (
                    len(code) != 5
                    or not code.isascii()
                    or not code.isdigit()
                    or (code[:2] not in provinces and code[:2] not in ("97", "98"))
                ):
                    raise RegistryFileError(
                        f"{path}:{line}: code {code!r} is not a 5-digit "
                        "facility code of a real province"
                    )
                if not name:
                    raise RegistryFileError(f"{path}:{line}: facility {code} has no name")
                if level not in FACILITY_LEVELS:
                    raise RegistryFileError(
                        f"{path}:{line}: level {level!r} is not one of {', '.join(FACILITY_LEVELS)}"
                    )
                if code in facilities:
                    raise RegistryFileError(f"{path}:{line}: facility {code} is listed twice")
                facilities[code] = Facility(code, name, level, district)
    except UnicodeDecodeError as exc:
        raise RegistryFileError(f"{path}: not UTF-8 ({exc.reason})") from None
    except csv.Error as exc:
        raise RegistryFileError(f"{path}: not a CSV file ({exc})") from None
    except OSError as exc:
        raise RegistryFileError(f"{path}: {exc.strerror}") from None
    if not facilities:
        raise RegistryFileError(f"{path}: no facility listed")
    return list(facilities.values())


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
