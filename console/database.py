"""The console's PostgreSQL connections: a small pool, every connection with the rights of
ehb_console only (``SET ROLE``), whoever its login user is, and a statement timeout."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from ehb.embedded import resolve_database_url
from ehb.settings import Settings

__all__ = ["CONSOLE_ROLE", "ConsoleDatabase"]

T = TypeVar("T")

#: the role of migration 091_console: ehb_reader's rights plus its own tables
CONSOLE_ROLE = "ehb_console"
#: no page may hold a connection longer than this
STATEMENT_TIMEOUT_MS = 15_000


class _ConsoleConnection(psycopg2.extensions.connection):
    """Drops to ehb_console as soon as it is opened: a superuser's or the owner's DSN (the
    embedded development stack) gets no more rights than a dedicated login user."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        with self.cursor() as cur:
            cur.execute(f"SET ROLE {CONSOLE_ROLE}")
            cur.execute("SET statement_timeout = %s", (STATEMENT_TIMEOUT_MS,))
        self.commit()


class ConsoleDatabase:
    """``run(fn, *args)``: ``fn(cursor, *args)`` in one transaction on a pooled connection."""

    def __init__(self, settings: Settings, max_connections: int = 4) -> None:
        url = settings.console_database_url
        dsn = url.get_secret_value() if url is not None else resolve_database_url(settings)
        self._pool = psycopg2.pool.ThreadedConnectionPool(
            1,
            max_connections,
            dsn,
            connection_factory=_ConsoleConnection,
            application_name="ehb-console",
            connect_timeout=5,
        )

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg2.extensions.connection]:
        conn = self._pool.getconn()
        broken = False
        try:
            yield conn
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            broken = True
            raise
        finally:
            if not broken and not conn.closed:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
            self._pool.putconn(conn, close=broken or bool(conn.closed))

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._connection() as conn:
            with conn.cursor() as cur:
                result = fn(cur, *args)
            conn.commit()
            return result

    def close(self) -> None:
        self._pool.closeall()
