"""PostgreSQL least privilege (sinks/migrations/090_roles.sql): the reader cannot write, the
writer cannot change the schema, and the pipeline runs with exactly these rights (the worker
as a reader, the sink as a writer)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg2
import psycopg2.errors
import pytest

from ehb.commands.local import Deployment, DeploymentFactory, wait_until
from ehb.embedded import free_port
from tests.support import factories as f

pytestmark = pytest.mark.integration


def _login(d: Deployment, group: str) -> str:
    """A login user in ``group``; returns its URL (the test server trusts loopback logins)."""
    user = f"{group}_{uuid.uuid4().hex[:8]}"
    with d.db.cursor() as cur:
        cur.execute(f'CREATE ROLE "{user}" LOGIN IN ROLE {group}')
    url = d.settings.database_url.get_secret_value()
    scheme, _, rest = url.partition("://")
    _, _, host_db = rest.partition("@")
    return f"{scheme}://{user}@{host_db}"


@contextlib.contextmanager
def _connect(url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def _refused(conn: psycopg2.extensions.connection, sql: str) -> bool:
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    except psycopg2.errors.InsufficientPrivilege:
        return True
    return False


def test_reader_cannot_write_and_writer_cannot_alter(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    with _connect(_login(d, "ehb_reader")) as reader:
        with reader.cursor() as cur:
            cur.execute("SELECT count(*) FROM facilities")
            assert cur.fetchone()[0] > 0
            cur.execute("SELECT count(*) FROM campaign_counters")
        for sql in (
            "INSERT INTO campaign_counters (metric, label, value) VALUES ('x', '', 1)",
            "UPDATE facilities SET active = false",
            "DELETE FROM facilities",
            "TRUNCATE dead_letters",
            "CREATE TABLE reader_table (id int)",
            "DROP TABLE health_book_entries",
        ):
            assert _refused(reader, sql), sql
    with _connect(_login(d, "ehb_writer")) as writer:
        with writer.cursor() as cur:
            cur.execute(
                "INSERT INTO campaign_counters (metric, label, value) "
                "VALUES ('privilege_test', '', 1)"
            )
            cur.execute("UPDATE campaign_counters SET value = 2 WHERE metric = 'privilege_test'")
        for sql in (
            "DELETE FROM health_book_entries",
            "TRUNCATE dead_letters",
            "CREATE TABLE writer_table (id int)",
            "ALTER TABLE facilities ADD COLUMN x int",
            "DROP TABLE health_book_entries",
        ):
            assert _refused(writer, sql), sql


def test_pipeline_runs_as_reader_worker_and_writer_sink(deploy: DeploymentFactory) -> None:
    d = deploy(workers=0, sink=False)
    worker = d.children.start(
        "worker-reader",
        "worker",
        free_port(),
        extra_env={"EHB_DATABASE_URL": _login(d, "ehb_reader")},
    )
    d.workers.append(worker)
    d.sink = d.children.start(
        "sink-writer", "sink", free_port(), extra_env={"EHB_DATABASE_URL": _login(d, "ehb_writer")}
    )
    wait_until(lambda: d._scrapes(d.sink), 60, message="sink as ehb_writer serving metrics")
    d.wait_for_workers()
    d.publish([f.exam(70 + i) for i in range(4)] + [f.exam(80, facility="79999")])
    d.wait_for_events(5)
    assert d.count("health_book_entries") == 4
    assert d.count("dead_letters") == 1
    assert "InsufficientPrivilege" not in d.sink.log.read_text()
    assert "permission denied" not in worker.log.read_text()
