"""The console over HTTP (Starlette's TestClient) on a real PostgreSQL filled by the real
pipeline (tests/console/scenario.py): every page, and the access rules: anonymous requests go
to the login page, a facility sees only its own facility (another's answers 404, exactly as a
facility that does not exist), a forged CSRF token is refused, logins are rate-limited, SQL in
any parameter is harmless, names and citizen IDs appear only on a facility's own episode."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from starlette.testclient import TestClient

from console.accounts import Role, add_account
from console.app import create_app
from ehb.commands.local import Deployment, DeploymentFactory
from ehb.settings import Settings
from schemas.reasons import REASON_CODES
from tests.console.scenario import (
    OTHER,
    OWN,
    PASSWORD,
    Scenario,
    create_accounts,
    run_scenario,
)

pytestmark = pytest.mark.integration

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture(scope="module")
def stack(
    services: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Deployment, Scenario]]:
    factory = DeploymentFactory(services, tmp_path_factory.mktemp("console-http"))
    try:
        d = factory(workers=1, sink=True, partitions=2)
        scenario = run_scenario(d)
        create_accounts(d)
        yield d, scenario
    finally:
        factory.close()


@pytest.fixture(scope="module")
def app(stack: tuple[Deployment, Scenario]) -> Iterator[object]:
    application = create_app(stack[0].settings)
    yield application
    application.state.database.close()


def client(app: object, address: str = "testclient") -> TestClient:
    return TestClient(app, follow_redirects=False, client=(address, 50000))  # type: ignore[arg-type]


def csrf(c: TestClient, path: str = "/login") -> str:
    match = _CSRF.search(c.get(path).text)
    assert match, path
    return match[1]


def login(c: TestClient, username: str, password: str = PASSWORD) -> int:
    response = c.post(
        "/login", data={"csrf_token": csrf(c), "username": username, "password": password}
    )
    return response.status_code


def logged_in(app: object, username: str) -> TestClient:
    c = client(app)
    assert login(c, username) == 303
    return c


def test_anonymous_requests_go_to_the_login_page(app: object) -> None:
    c = client(app)
    for path in (
        "/",
        "/campaign",
        "/completeness",
        "/pipeline",
        f"/facilities/{OWN}",
        "/facilities/79999",
        "/no-such-page",
    ):
        response = c.get(path)
        assert (response.status_code, response.headers["location"]) == (303, "/login"), path
    response = c.post(f"/facilities/{OWN}/episode", data={"ma_lk": "x", "csrf_token": "x"})
    assert (response.status_code, response.headers["location"]) == (303, "/login")
    page = c.get("/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    assert OWN not in page.text and "icd10" not in page.text


def test_operator_sees_the_campaign_the_grid_and_the_pipeline(
    app: object, stack: tuple[Deployment, Scenario]
) -> None:
    d, s = stack
    c = logged_in(app, "doh")
    assert c.get("/").headers["location"] == "/campaign"
    page = c.get("/campaign")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.text
    counters = dict(
        ((m if not label or m == "dead_letters" else f"{m}_{label}"), v)
        for m, label, v in d.query("SELECT metric, label, value FROM campaign_counters")
        if m != "dead_letters"
    )
    for key in ("health_books_integrated", "examinations_in_province"):
        assert f'id="c-{key}">{counters.get(key, 0):,}<' in page.text, key
    assert f'id="c-dead_letters">{d.count("dead_letters")}<' in page.text
    assert "icd10_main_invalid" in page.text

    grid = c.get("/completeness?days=3")
    assert grid.status_code == 200
    rows = re.findall(r'<tr data-facility="(\d{5})">.*?<td class="num">(\d+)</td>', grid.text, re.S)
    assert {OWN, OTHER} <= {code for code, _ in rows}
    silent = [int(n) for _, n in rows]
    assert silent == sorted(silent, reverse=True) and silent[0] >= 1  # the silent first
    assert "s-mismatch" in grid.text and "s-silent" in grid.text

    pipeline = c.get("/pipeline?hours=2")
    assert pipeline.status_code == 200
    persisted = sum(
        int(n.replace(",", ""))
        for n in re.findall(r'<tr><td>[^<]+</td><td class="num">([\d,]+)</td>', pipeline.text)
    )
    assert persisted == d.count("health_book_entries")

    for code in (OWN, OTHER):
        assert c.get(f"/facilities/{code}").status_code == 200
    token = csrf(c, f"/facilities/{OTHER}")
    episode = c.post(
        f"/facilities/{OTHER}/episode", data={"csrf_token": token, "ma_lk": s.other["ma_lk"]}
    )
    assert episode.status_code == 200 and 'data-state="persisted"' in episode.text
    assert s.other["ho_ten"] not in episode.text  # the Department needs no name


def test_a_facility_sees_its_rejections_fixes_corrections_and_reports(
    app: object, stack: tuple[Deployment, Scenario]
) -> None:
    _, s = stack
    c = logged_in(app, "f79001")
    assert c.get("/").headers["location"] == f"/facilities/{OWN}"
    page = c.get(f"/facilities/{OWN}")
    assert page.status_code == 200
    reason = REASON_CODES["icd10_main_invalid"]
    assert "icd10_main_invalid" in page.text and reason.fix_vi in page.text  # Vietnamese first
    assert s.rejected["ma_lk"] in page.text and s.fixed["ma_lk"] in page.text
    corrections = page.text.split('id="corrections"')[1].split("</table>")[0]
    assert s.corrected["ma_lk"] in corrections and s.withdrawn["ma_lk"] in corrections
    reports = page.text.split('id="reports"')[1].split("</table>")[0]
    assert "2024-03-04" in reports
    assert s.other["ma_lk"] not in page.text and s.other_rejected["ma_lk"] not in page.text

    token = csrf(c, f"/facilities/{OWN}")
    states = {}
    for name in ("corrected", "withdrawn", "rejected", "fixed"):
        event = getattr(s, name)
        response = c.post(
            f"/facilities/{OWN}/episode", data={"csrf_token": token, "ma_lk": event["ma_lk"]}
        )
        assert response.status_code == 200, name
        states[name] = re.search(r'data-state="(\w+)"', response.text)[1]  # type: ignore[index]
        assert event["so_cccd"] not in response.text
    assert states == {
        "corrected": "persisted",
        "withdrawn": "withdrawn",
        "rejected": "dead_lettered",
        "fixed": "persisted",
    }
    fixed = c.post(
        f"/facilities/{OWN}/episode", data={"csrf_token": token, "ma_lk": s.fixed["ma_lk"]}
    )
    assert 'id="episode-dead-letters"' in fixed.text and reason.fix_vi in fixed.text
    assert s.fixed["ho_ten"] in fixed.text  # its own staff: the patient's name

    # English on request
    c.post("/language", data={"csrf_token": token, "lang": "en", "next": f"/facilities/{OWN}"})
    english = c.get(f"/facilities/{OWN}")
    assert "Rejected episodes by day and reason" in english.text and reason.fix in english.text


def test_a_facility_gets_404_for_anything_not_its_own(
    app: object, stack: tuple[Deployment, Scenario]
) -> None:
    _, s = stack
    c = logged_in(app, "f79001")
    token = csrf(c, f"/facilities/{OWN}")
    missing = c.get("/facilities/79999")
    assert missing.status_code == 404
    other = c.get(f"/facilities/{OTHER}")
    assert other.status_code == 404 and other.text == missing.text  # nothing tells them apart
    for path in ("/campaign", "/completeness", "/pipeline"):
        assert c.get(path).status_code == 404, path
    for code, ma_lk in (
        (OTHER, s.other["ma_lk"]),
        (OWN, s.other["ma_lk"]),
        (OTHER, s.other_rejected["ma_lk"]),
    ):
        response = c.post(f"/facilities/{code}/episode", data={"csrf_token": token, "ma_lk": ma_lk})
        assert response.status_code == 404, (code, ma_lk)
        assert s.other["ho_ten"] not in response.text and "icd10" not in response.text


def test_forged_or_missing_csrf_tokens_are_refused(app: object) -> None:
    c = client(app)
    csrf(c)
    forged = c.post(
        "/login", data={"csrf_token": "forged", "username": "doh", "password": PASSWORD}
    )
    assert forged.status_code == 403 and "set-cookie" not in {k.lower() for k in forged.headers}
    missing = c.post("/login", data={"username": "doh", "password": PASSWORD})
    assert missing.status_code == 403

    c = logged_in(app, "f79001")
    other_session = client(app)
    foreign = csrf(other_session)  # a valid token, of another browser's session
    for path, data in (
        ("/logout", {}),
        (f"/facilities/{OWN}/episode", {"ma_lk": "LK"}),
        ("/language", {"lang": "en"}),
    ):
        for token in ("forged", foreign, ""):
            assert c.post(path, data={"csrf_token": token, **data}).status_code == 403, path
    assert c.get(f"/facilities/{OWN}").status_code == 200  # the forged logout did nothing


def test_logout_ends_the_session_on_the_server(app: object) -> None:
    c = logged_in(app, "doh")
    stolen = dict(c.cookies)
    assert c.post("/logout", data={"csrf_token": csrf(c, "/campaign")}).status_code == 303
    replay = client(app)
    replay.cookies.update(stolen)
    assert replay.get("/campaign").headers.get("location") == "/login"


def test_logins_are_rate_limited_per_account_and_per_client(
    app: object, stack: tuple[Deployment, Scenario], caplog: pytest.LogCaptureFixture
) -> None:
    d, _ = stack
    url = d.settings.database_url
    assert url is not None
    with contextlib.closing(psycopg2.connect(url.get_secret_value())) as conn:
        add_account(conn, "victim.account", Role.operator, PASSWORD)
    attacker = client(app, "192.0.2.10")
    caplog.set_level(logging.INFO)
    limit = d.settings.console_login_attempts
    for _ in range(limit):
        assert login(attacker, "victim.account", "wrong password!") == 401
    assert login(attacker, "victim.account") == 429  # the right password, refused unchecked
    assert login(client(app, "192.0.2.11"), "victim.account") == 429  # the account, anywhere
    assert login(attacker, "doh") == 429  # this client, any account
    assert login(client(app, "192.0.2.12"), "doh") == 303
    assert "victim.account" not in caplog.text  # account names are never logged


def test_sql_in_every_parameter_is_harmless(
    app: object, stack: tuple[Deployment, Scenario]
) -> None:
    d, _ = stack
    before = (d.count("dead_letters"), d.count("health_book_entries"), d.count("console_accounts"))
    payloads = [
        "' OR '1'='1",
        "79001' OR ''='",
        "1; DROP TABLE dead_letters; --",
        "79001'); DELETE FROM console_accounts; --",
        "%' UNION SELECT so_cccd, ho_ten FROM health_book_entries --",
    ]
    for role in ("doh", "f79001"):
        c = logged_in(app, role)
        token = csrf(c, "/campaign" if role == "doh" else f"/facilities/{OWN}")
        for payload in payloads:
            assert c.get(f"/facilities/{payload}").status_code == 404
            for code in (OWN, payload):
                response = c.post(
                    f"/facilities/{code}/episode", data={"csrf_token": token, "ma_lk": payload}
                )
                assert response.status_code == 404, (role, code, payload)
            if role == "doh":
                assert c.get("/completeness", params={"days": payload}).status_code == 200
                assert c.get("/pipeline", params={"hours": payload}).status_code == 200
    anonymous = client(app, "192.0.2.20")
    for payload in payloads[:3]:
        assert login(anonymous, payload, payload) == 401
    after = (d.count("dead_letters"), d.count("health_book_entries"), d.count("console_accounts"))
    assert after == before


def test_no_name_or_citizen_id_on_the_departments_pages(
    app: object, stack: tuple[Deployment, Scenario]
) -> None:
    d, s = stack
    c = logged_in(app, "doh")
    personal = [v for e in (s.corrected, s.other, s.rejected) for v in (e["so_cccd"], e["ho_ten"])]
    for path in (
        "/campaign",
        "/completeness",
        "/pipeline",
        f"/facilities/{OWN}",
        f"/facilities/{OTHER}",
    ):
        text = c.get(path).text
        assert not [v for v in personal if v in text], path


def test_cookies_and_headers(stack: tuple[Deployment, Scenario]) -> None:
    d, _ = stack
    for secure in (False, True):
        application = create_app(d.settings.model_copy(update={"console_secure_cookies": secure}))
        try:
            response = client(application).get("/login")
        finally:
            application.state.database.close()
        cookie = response.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert ("secure" in cookie.split(";")[-1] or "; secure" in cookie) is secure
        assert response.headers["x-frame-options"] == "DENY"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["cache-control"] == "no-store"


def test_the_console_role_reads_and_cannot_write(stack: tuple[Deployment, Scenario]) -> None:
    """Migration 091: ehb_console reads the pipeline's tables and its accounts, writes only its
    sessions, login attempts and last-login stamps; ehb_reader and ehb_writer cannot see the
    password hashes."""
    d, _ = stack
    url = d.settings.database_url
    assert url is not None
    with contextlib.closing(psycopg2.connect(url.get_secret_value())) as conn:
        conn.autocommit = True

        def refused(role: str, sql: str) -> bool:
            with conn.cursor() as cur:
                cur.execute(f"SET ROLE {role}")
                try:
                    cur.execute(sql)
                except psycopg2.errors.InsufficientPrivilege:
                    return True
                finally:
                    cur.execute("RESET ROLE")
            return False

        for sql in (
            "SELECT count(*) FROM dead_letters",
            "SELECT count(*) FROM console_accounts",
            "UPDATE console_accounts SET last_login_at = now() WHERE false",
            "DELETE FROM console_sessions WHERE false",
        ):
            assert not refused("ehb_console", sql), sql
        for sql in (
            "INSERT INTO console_accounts (username, role, password_hash) "
            "VALUES ('intruder', 'operator', 'x')",
            "UPDATE console_accounts SET role = 'operator'",
            "UPDATE console_accounts SET password_hash = 'x'",
            "DELETE FROM console_accounts",
            "UPDATE dead_letters SET reason = 'x'",
            "DELETE FROM health_book_entries",
            "INSERT INTO campaign_counters (metric, value) VALUES ('x', 1)",
            "CREATE TABLE console_intruder (id int)",
        ):
            assert refused("ehb_console", sql), sql
        for role in ("ehb_reader", "ehb_writer"):
            assert refused(role, "SELECT password_hash FROM console_accounts"), role
            assert refused(role, "SELECT * FROM console_sessions"), role


def test_templates_use_only_known_texts() -> None:
    from console.texts import TEXTS

    keys: set[str] = set()
    for template in (Path(__file__).parents[2] / "console" / "templates").glob("*.html"):
        keys |= set(re.findall(r'\bt\("(\w+)"\)', template.read_text()))
    assert keys and keys <= set(TEXTS), keys - set(TEXTS)
