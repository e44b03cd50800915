"""Schema migrations, applied at sink start (and by ``ehb migrate``).

Plain SQL files in ``sinks/migrations`` applied in name order, each once, in one transaction
each, under an advisory lock so that several sinks starting together do not race. Reference
data (provinces, the facility registry) is seeded on first run; afterwards the registry is
PostgreSQL's to change (``ehb registry load FILE``, ``ehb.facilities``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg2.extensions
from psycopg2.extras import execute_values

from ehb.facilities import upsert_facilities
from schemas.reference import load_facilities, load_provinces

__all__ = ["MIGRATIONS_DIR", "migrate"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x0EB_0001


def migrate(conn: psycopg2.extensions.connection) -> list[str]:
    """Apply pending migrations; returns the names applied."""
    applied: list[str] = []
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
    conn.commit()
    try:
        with conn.cursor() as cur:
            # Checked first: a least-privilege role (the sink as ehb_writer) may not CREATE,
            # not even IF NOT EXISTS, and only needs to see that nothing is pending.
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            exists = cur.fetchone()
            assert exists is not None  # a SELECT without FROM returns one row
            if not exists[0]:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
            cur.execute("SELECT name FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        conn.commit()
        for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
            if path.name in done:
                continue
            with conn.cursor() as cur:
                cur.execute(path.read_text(encoding="utf-8"))
                cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                if path.name.startswith("001_"):
                    _seed_reference_data(cur)
            conn.commit()
            applied.append(path.name)
            log.info("applied migration %s", path.name)
    except BaseException:
        conn.rollback()
        raise
    finally:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
        conn.commit()
    return applied


def _seed_reference_data(cur: psycopg2.extensions.cursor) -> None:
    execute_values(
        cur,
        "INSERT INTO provinces (code, name) VALUES %s ON CONFLICT DO NOTHING",
        list(load_provinces().items()),
    )
    upsert_facilities(cur, load_facilities())
