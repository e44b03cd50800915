"""The facility registry in PostgreSQL (table ``facilities``): the one module that reads and
writes it. The model and the CSV format are ``schemas.reference``.

The first migration seeds the table from ``schemas/reference/facilities.csv``
(``sinks.migrate``); afterwards PostgreSQL is the registry's source of truth: ``ehb registry
load FILE`` upserts a CSV's facilities (:func:`load_registry`), and the stream workers start
from the active facilities (:func:`initial_registry`) and reload them every
``EHB_REGISTRY_REFRESH_S`` seconds (:func:`fetch_facilities`), without restarting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg2.extensions
from psycopg2.extras import execute_values

from ehb.db import connect
from ehb.settings import Settings
from schemas.errors import EhbError
from schemas.reference import Facility, FacilityRegistry

__all__ = [
    "RegistryRow",
    "fetch_facilities",
    "initial_registry",
    "list_registry",
    "load_registry",
    "upsert_facilities",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryRow:
    code: str
    name: str
    level: str
    district: str | None
    active: bool


def fetch_facilities(conn: psycopg2.extensions.connection) -> list[Facility]:
    """The active facilities."""
    with conn.cursor() as cur:
        cur.execute("SELECT code, name, level, district FROM facilities WHERE active")
        rows = cur.fetchall()
    conn.rollback()
    return [Facility(*row) for row in rows]


def initial_registry(settings: Settings) -> FacilityRegistry:
    """The worker's registry: PostgreSQL's active facilities when reachable, else the
    reference file shipped in ``schemas/reference``."""
    try:
        conn = connect(settings, timeout=10, application_name="ehb-worker-registry")
    except EhbError as exc:
        log.warning("facility registry from the reference file (%s)", exc)
        return FacilityRegistry.from_reference()
    try:
        facilities = fetch_facilities(conn)
    except Exception as exc:  # table not migrated yet
        log.warning("facility registry from the reference file (%s)", type(exc).__name__)
        return FacilityRegistry.from_reference()
    finally:
        conn.close()
    return FacilityRegistry(facilities) if facilities else FacilityRegistry.from_reference()


def list_registry(
    conn: psycopg2.extensions.connection, *, include_inactive: bool = False
) -> list[RegistryRow]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT code, name, level, district, active FROM facilities"
            + ("" if include_inactive else " WHERE active")
            + " ORDER BY code"
        )
        rows = [RegistryRow(*row) for row in cur.fetchall()]
    conn.rollback()
    return rows


def upsert_facilities(cur: psycopg2.extensions.cursor, facilities: Iterable[Facility]) -> None:
    """Insert or update (and reactivate) facilities, in the caller's transaction."""
    execute_values(
        cur,
        "INSERT INTO facilities (code, name, level, district) VALUES %s "
        "ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, level = EXCLUDED.level, "
        "district = EXCLUDED.district, active = true, updated_at = now()",
        [(f.code, f.name, f.level, f.district) for f in facilities],
    )


def load_registry(
    conn: psycopg2.extensions.connection,
    facilities: list[Facility],
    deactivate_missing: bool = False,
) -> tuple[int, int]:
    """Upsert facilities into the registry; workers pick it up at their next refresh.

    Returns (facilities upserted, facilities deactivated).
    """
    with conn.cursor() as cur:
        upsert_facilities(cur, facilities)
        deactivated = 0
        if deactivate_missing:
            cur.execute(
                "UPDATE facilities SET active = false, updated_at = now() "
                "WHERE active AND NOT (code = ANY(%s))",
                ([f.code for f in facilities],),
            )
            deactivated = cur.rowcount
    conn.commit()
    return len(facilities), deactivated
