"""Console accounts, sessions and the login rate limit, in PostgreSQL (migration 091_console).

* Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory profile);
  only the encoded hash is stored.
* A session is a random token in the (signed) session cookie; only its SHA-256 is stored, with
  its expiry, so a stolen database does not give a session and logging out ends it.
* A login is refused without checking the password once ``EHB_CONSOLE_LOGIN_ATTEMPTS`` failed
  attempts for the same account name or from the same client address fall within
  ``EHB_CONSOLE_LOGIN_WINDOW_S``.

Account creation (:func:`add_account`) runs as the database owner (``ehb console add-user``):
the console's own role can read accounts but never write one.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum

import psycopg2.extensions
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "Account",
    "Role",
    "USERNAME",
    "add_account",
    "authenticate",
    "disable_account",
    "end_session",
    "hash_password",
    "list_accounts",
    "login_refused",
    "open_session",
    "record_attempt",
    "session_account",
]

#: the account names the table accepts (no e-mail, no citizen ID: a short handle)
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{2,63}\Z")
MIN_PASSWORD = 12

_hasher = PasswordHasher()
#: verified against when the account does not exist, so both cases take the same time
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class Role(StrEnum):
    """operator: the Department of Health, sees everything; facility: one facility's staff."""

    operator = "operator"
    facility = "facility"


@dataclass(frozen=True)
class Account:
    username: str
    role: Role
    facility: str | None

    def may_see(self, facility: str) -> bool:
        return self.role is Role.operator or self.facility == facility


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def add_account(
    conn: psycopg2.extensions.connection,
    username: str,
    role: Role,
    password: str,
    facility: str | None = None,
    *,
    replace: bool = False,
) -> None:
    """Create an account (as the database owner); ``replace``: reset an existing one's role,
    facility and password and end its sessions."""
    if not USERNAME.match(username):
        raise ValueError(
            "an account name is 3-64 characters: lowercase letters, digits, '.', '_', '-'"
        )
    if (role is Role.facility) != (facility is not None):
        raise ValueError("a facility account needs --facility; an operator account has none")
    password_hash = hash_password(password)
    with conn.cursor() as cur:
        if facility is not None:
            cur.execute("SELECT 1 FROM facilities WHERE code = %s", (facility,))
            if cur.fetchone() is None:
                conn.rollback()
                raise ValueError(f"facility {facility} is not in the registry")
        conflict = (
            "DO UPDATE SET role = EXCLUDED.role, facility = EXCLUDED.facility, "
            "password_hash = EXCLUDED.password_hash, disabled_at = NULL"
            if replace
            else "DO NOTHING"
        )
        cur.execute(
            "INSERT INTO console_accounts (username, role, facility, password_hash) "
            f"VALUES (%s, %s, %s, %s) ON CONFLICT (username) {conflict} RETURNING 1",
            (username, role.value, facility, password_hash),
        )
        if cur.fetchone() is None:
            conn.rollback()
            raise ValueError(f"account {username} exists (--replace resets it)")
        cur.execute("DELETE FROM console_sessions WHERE username = %s", (username,))
    conn.commit()


def disable_account(conn: psycopg2.extensions.connection, username: str) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE console_accounts SET disabled_at = now() WHERE username = %s RETURNING 1",
            (username,),
        )
        found = cur.fetchone() is not None
        cur.execute("DELETE FROM console_sessions WHERE username = %s", (username,))
    conn.commit()
    return found


def list_accounts(conn: psycopg2.extensions.connection) -> list[tuple[object, ...]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT username, role, facility, created_at, last_login_at, disabled_at "
            "FROM console_accounts ORDER BY role, facility NULLS FIRST, username"
        )
        rows = cur.fetchall()
    conn.rollback()
    return rows


def login_refused(
    cur: psycopg2.extensions.cursor, username: str, client: str, limit: int, window_s: float
) -> bool:
    """True when too many failed attempts for this name or from this client are recent."""
    cur.execute(
        "SELECT count(*) FILTER (WHERE username = %(u)s), count(*) FILTER (WHERE client = %(c)s) "
        "FROM console_login_attempts WHERE NOT succeeded "
        "AND attempted_at > clock_timestamp() - %(w)s AND (username = %(u)s OR client = %(c)s)",
        {"u": username, "c": client, "w": timedelta(seconds=window_s)},
    )
    row = cur.fetchone()
    assert row is not None  # an aggregate returns one row
    return max(row) >= limit


def record_attempt(
    cur: psycopg2.extensions.cursor, username: str, client: str, succeeded: bool
) -> None:
    cur.execute(
        "INSERT INTO console_login_attempts (username, client, succeeded) VALUES (%s, %s, %s)",
        (username[:64], client[:64], succeeded),
    )


def authenticate(cur: psycopg2.extensions.cursor, username: str, password: str) -> Account | None:
    """The account when the name and password are right and it is enabled."""
    cur.execute(
        "SELECT role, facility, password_hash FROM console_accounts "
        "WHERE username = %s AND disabled_at IS NULL",
        (username,),
    )
    row = cur.fetchone()
    try:
        _hasher.verify(row[2] if row else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    cur.execute(
        "UPDATE console_accounts SET last_login_at = now() WHERE username = %s", (username,)
    )
    return Account(username, Role(row[0]), row[1])


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(cur: psycopg2.extensions.cursor, account: Account, hours: float) -> str:
    """A new session of ``account``; returns its token (for the cookie only)."""
    token = secrets.token_urlsafe(32)
    cur.execute(
        "INSERT INTO console_sessions (token_sha256, username, expires_at) "
        "VALUES (%s, %s, now() + %s)",
        (_digest(token), account.username, timedelta(hours=hours)),
    )
    # a login also sweeps the sessions that have ended
    cur.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    return token


def session_account(cur: psycopg2.extensions.cursor, token: str) -> Account | None:
    cur.execute(
        "SELECT a.username, a.role, a.facility FROM console_sessions s "
        "JOIN console_accounts a USING (username) "
        "WHERE s.token_sha256 = %s AND s.expires_at > now() AND a.disabled_at IS NULL",
        (_digest(token),),
    )
    row = cur.fetchone()
    return Account(row[0], Role(row[1]), row[2]) if row else None


def end_session(cur: psycopg2.extensions.cursor, token: str) -> None:
    cur.execute("DELETE FROM console_sessions WHERE token_sha256 = %s", (_digest(token),))
