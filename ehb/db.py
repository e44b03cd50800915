"""PostgreSQL connections shared by the sinks, the worker's registry refresh and the tools."""

from __future__ import annotations

import time

import psycopg2
import psycopg2.extensions

from ehb.embedded import resolve_database_url
from ehb.exceptions import ServiceUnavailable
from ehb.settings import Settings

__all__ = ["connect"]


def connect(
    settings: Settings, *, timeout: float = 30.0, application_name: str = "ehb"
) -> psycopg2.extensions.connection:
    """Connect, retrying while the server starts; ServiceUnavailable after ``timeout``."""
    dsn = resolve_database_url(settings)
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return psycopg2.connect(dsn, application_name=application_name, connect_timeout=5)
        except psycopg2.OperationalError as exc:
            if time.monotonic() >= deadline:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
                raise ServiceUnavailable(f"PostgreSQL unreachable: {first_line}") from exc
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
