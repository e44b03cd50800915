"""``ehb console add-user | users | disable-user``: accounts made as the database owner, the
password from a prompt or stdin (never argv), hashed with argon2id; bad input is one line and
exit code 2."""

from __future__ import annotations

import contextlib

import psycopg2
import pytest
from typer.testing import CliRunner

from console.texts import negotiate
from ehb.commands.cli import app
from ehb.commands.local import DeploymentFactory

pytestmark = pytest.mark.integration


def test_add_list_and_disable_accounts(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    url = d.settings.database_url
    assert url is not None
    env = {"EHB_DATABASE_URL": url.get_secret_value(), "EHB_DATA_DIR": str(d.tmp)}
    runner = CliRunner()

    def ehb(*args: str, stdin: str = "") -> tuple[int, str]:
        result = runner.invoke(app, ["console", *args], input=stdin, env=env)
        return result.exit_code, result.output

    password = "a long enough passphrase"
    code, output = ehb(
        "add-user", "hcdc.ops", "--role", "operator", "--password-stdin", stdin=password + "\n"
    )
    assert code == 0, output
    code, output = ehb(
        "add-user",
        "f79002",
        "--role",
        "facility",
        "--facility",
        "79002",
        stdin=f"{password}\n{password}\n",
    )  # the prompt asks twice
    assert code == 0, output
    assert password not in output

    refused = [
        ("add-user", "hcdc.ops", "--role", "operator", "--password-stdin"),  # exists
        ("add-user", "short", "--role", "operator", "--password-stdin"),  # password too short
        ("add-user", "nofacility", "--role", "facility", "--password-stdin"),
        ("add-user", "ghost", "--role", "facility", "--facility", "99999", "--password-stdin"),
        ("add-user", "Bad Name", "--role", "operator", "--password-stdin"),
    ]
    for args in refused:
        stdin = ("tiny" if args[1] == "short" else password) + "\n"
        result = runner.invoke(app, ["console", *args], input=stdin, env=env)
        assert result.exit_code != 0, args
    code, _ = ehb(
        "add-user",
        "hcdc.ops",
        "--role",
        "facility",
        "--facility",
        "79001",
        "--replace",
        "--password-stdin",
        stdin=password + "\n",
    )
    assert code == 0

    with contextlib.closing(psycopg2.connect(url.get_secret_value())) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT username, role, facility, password_hash FROM console_accounts "
                "ORDER BY username"
            )
            rows = cur.fetchall()
    assert [r[:3] for r in rows] == [
        ("f79002", "facility", "79002"),
        ("hcdc.ops", "facility", "79001"),
    ]
    assert all(r[3].startswith("$argon2id$") and password not in r[3] for r in rows)

    code, output = ehb("users")
    assert code == 0 and "hcdc.ops" in output and "argon2" not in output
    assert ehb("disable-user", "f79002")[0] == 0
    assert ehb("disable-user", "nobody")[0] != 0


def test_language_negotiation() -> None:
    assert negotiate(None, None) == "vi"
    assert negotiate(None, "en-US,en;q=0.9") == "en"
    assert negotiate(None, "vi-VN,vi;q=0.9,en;q=0.8") == "vi"
    assert negotiate("vi", "en-US") == "vi" and negotiate("en", None) == "en"
    assert negotiate("xx'; DROP", "fr") == "vi"
