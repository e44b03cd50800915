"""``ehb registry``: the facility registry in PostgreSQL, updated while everything runs.

The table ``facilities`` is seeded from ``schemas/reference/facilities.csv`` by the first
migration; afterwards PostgreSQL is the registry's source of truth. ``ehb registry load FILE``
upserts the facilities of a CSV file (``code,name,level,district``, the reference file's
format) in one transaction, optionally deactivating every facility the file does not list.
Stream workers reload the active facilities every ``EHB_REGISTRY_REFRESH_S`` seconds
(``streams.app``): a new facility's events are accepted from the next refresh on, a
deactivated one's are dead-lettered ``facility_unknown``; no worker restarts.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import psycopg2.extensions

from ehb.commands.errors import RegistryFileError
from schemas.reference import FACILITY_LEVELS, Facility, load_provinces
from sinks.migrate import load_registry

__all__ = ["RegistryFileError", "RegistryRow", "list_registry", "load_registry_file",
           "read_registry_csv"]

COLUMNS = ("code", "name", "level", "district")


@dataclass(frozen=True, slots=True)
class RegistryRow:
    code: str
    name: str
    level: str
    district: str | None
    active: bool


def read_registry_csv(path: Path) -> list[Facility]:
    """Parse and check a registry CSV; RegistryFileError on the first bad line."""
    provinces = load_provinces()
    try:
        with open(path, encoding="utf-8-sig", newline="") as src:
            reader = csv.DictReader(src)
            missing = [c for c in COLUMNS[:3] if c not in (reader.fieldnames or [])]
            if missing:
                raise RegistryFileError(f"{path}: missing column(s) {', '.join(missing)} "
                                        f"(expected {','.join(COLUMNS)})")
            facilities: dict[str, Facility] = {}
            for row in reader:
                line = reader.line_num
                code = (row.get("code") or "").strip()
                name = (row.get("name") or "").strip()
                level = (row.get("level") or "").strip()
                district = (row.get("district") or "").strip() or None
                if len(code) != 5 or not code.isascii() or not code.isdigit() or (
                        code[:2] not in provinces and code[:2] not in ("97", "98")):
                    raise RegistryFileError(f"{path}:{line}: code {code!r} is not a 5-digit "
                                            "facility code of a real province")
                if not name:
                    raise RegistryFileError(f"{path}:{line}: facility {code} has no name")
                if level not in FACILITY_LEVELS:
                    raise RegistryFileError(f"{path}:{line}: level {level!r} is not one of "
                                            f"{', '.join(FACILITY_LEVELS)}")
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


def load_registry_file(conn: psycopg2.extensions.connection, path: Path, *,
                       deactivate_missing: bool = False) -> tuple[int, int]:
    """Upsert the file's facilities; returns (upserted, deactivated)."""
    return load_registry(conn, read_registry_csv(path), deactivate_missing=deactivate_missing)


def list_registry(conn: psycopg2.extensions.connection, *, include_inactive: bool = False
                  ) -> list[RegistryRow]:
    with conn.cursor() as cur:
        cur.execute("SELECT code, name, level, district, active FROM facilities"
                    + ("" if include_inactive else " WHERE active") + " ORDER BY code")
        rows = [RegistryRow(*row) for row in cur.fetchall()]
    conn.rollback()
    return rows
