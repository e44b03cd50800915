"""``ehb registry load FILE``: the facility registry in PostgreSQL, updated while everything runs.

The table ``facilities`` is seeded from ``schemas/reference/facilities.csv`` by the first
migration; afterwards PostgreSQL is the registry's source of truth. ``ehb registry load FILE``
upserts the facilities of a CSV file (``code,name,level,district``, the reference file's
format, read by ``schemas.reference.read_registry_csv``) in one transaction, optionally
deactivating every facility the file does not list. Stream workers reload the active
facilities every ``EHB_REGISTRY_REFRESH_S`` seconds (``streams.app``): a new facility's events
are accepted from the next refresh on, a deactivated one's are dead-lettered
``facility_unknown``; no worker restarts. The table's reading and writing is
``ehb.facilities``.
"""

from __future__ import annotations

from pathlib import Path

import psycopg2.extensions

from ehb.facilities import load_registry
from schemas.reference import read_registry_csv

__all__ = ["load_registry_file"]


def load_registry_file(
    conn: psycopg2.extensions.connection, path: Path, *, deactivate_missing: bool = False
) -> tuple[int, int]:
    """Upsert the file's facilities; returns (upserted, deactivated)."""
    return load_registry(conn, read_registry_csv(path), deactivate_missing=deactivate_missing)
