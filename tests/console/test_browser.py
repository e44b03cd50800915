"""The console in a real browser: headless Chromium (Debian's ``chromium``, driven by
Playwright; never a browser download) against a running stack: broker, worker, sink,
PostgreSQL and ``ehb console`` as its own process. The operator watches the counters move
while events flow and opens the completeness grid; a facility sees its rejected episode and
what to fix, and cannot reach another facility. A screenshot of every page is kept under
reports/console/."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ehb.commands.local import Child, Deployment, DeploymentFactory, wait_until
from ehb.embedded import free_port
from ehb.settings import Settings
from schemas.reasons import REASON_CODES
from tests.console.scenario import OTHER, OWN, PASSWORD, Scenario, create_accounts, run_scenario
from tests.support import factories as f

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = os.environ.get("EHB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "reports" / "console"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(
        f"no Chromium at {CHROMIUM} (`make test` installs Debian's chromium as root; "
        "EHB_CHROMIUM names another binary)",
        allow_module_level=True,
    )


class Stack:
    """A deployment, its console process, and the events it is being sent."""

    def __init__(self, d: Deployment, console: Child, url: str) -> None:
        self.d, self.console, self.url = d, console, url
        self.scenario: Scenario | None = None
        self.error: BaseException | None = None
        self.flow = threading.Thread(target=self._send, name="events", daemon=True)

    def _send(self) -> None:
        """A steady flow of examinations for about 20 seconds, then the scenario."""
        try:
            for i in range(40):
                self.d.publish([f.exam(1000 + 10 * i + k, facility="79003") for k in range(10)])
                time.sleep(0.5)
            self.scenario = run_scenario(self.d)
        except BaseException as exc:  # noqa: BLE001 - reported by the test that waits
            self.error = exc

    def finished(self) -> Scenario:
        self.flow.join(180)
        if self.error is not None:
            raise self.error
        assert self.scenario is not None and not self.flow.is_alive()
        return self.scenario


@pytest.fixture(scope="module")
def stack(services: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    factory = DeploymentFactory(services, tmp_path_factory.mktemp("console-browser"))
    try:
        d = factory(workers=1, sink=True, partitions=2)
        create_accounts(d)
        port = free_port()
        console = d.children.start("console", "console", 0, {"EHB_CONSOLE_PORT": str(port)})
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if console.proc.poll() is not None:
                raise RuntimeError(f"ehb console exited:\n{console.log.read_text()[-2000:]}")
            import urllib.request

            try:
                with urllib.request.urlopen(f"{url}/login", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(up, 30, 0.2, message="ehb console serving /login")
        s = Stack(d, console, url)
        s.flow.start()
        yield s
        s.flow.join(60)
    finally:
        factory.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield chromium
        chromium.close()


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _login(page: Any, url: str, username: str) -> None:
    page.goto(f"{url}/campaign")  # anonymous: redirected to the login page
    assert page.url == f"{url}/login"
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_load_state()


def _counter(page: Any, name: str) -> int | None:
    try:
        return int(page.inner_text(f"#c-{name}", timeout=2000).replace(",", ""))
    except Exception:  # noqa: BLE001 - the page is between two of its refreshes
        return None


def test_operator_sees_the_counters_move_and_the_grid(browser: Any, stack: Stack) -> None:
    context = browser.new_context(locale="en-US", viewport={"width": 1360, "height": 900})
    page = context.new_page()
    _shot(page.goto(f"{stack.url}/login") and page, "login")
    _login(page, stack.url, "doh")
    assert page.url == f"{stack.url}/campaign"
    seen: list[int] = []

    def moved() -> bool:
        value = _counter(page, "examinations")
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
        return len(seen) >= 3 and seen == sorted(seen) and seen[0] < seen[-1]

    # the page refreshes itself (a meta refresh, no JavaScript) while the events flow
    try:
        wait_until(moved, 60, 0.5, message="the examinations counter moving on its own")
    finally:
        print("examinations counter seen:", seen)
    stack.finished()
    wait_until(
        lambda: (
            _counter(page, "examinations")
            == stack.d.scalar(
                "SELECT coalesce(sum(value), 0) FROM campaign_counters"
                " WHERE metric = 'examinations'"
            )
        ),
        60,
        0.5,
        message="the counter equal to the table once the flow is over",
    )
    assert (_counter(page, "dead_letters") or 0) >= 3
    _shot(page, "campaign")

    page.click("text=Daily reports")
    page.wait_for_selector("#completeness")
    assert page.url.endswith("/completeness")
    first = page.locator("#completeness tr[data-facility]").first
    assert first.locator(".s-silent").count() >= 1  # the silent ones first
    assert page.locator(f'#completeness tr[data-facility="{OTHER}"] .s-mismatch').count() == 1
    _shot(page, "completeness")

    page.click("text=Pipeline")
    page.wait_for_selector("#throughput")
    _shot(page, "pipeline")
    page.click("#logout")
    page.wait_for_url(f"{stack.url}/login")
    context.close()


def test_facility_sees_its_rejection_and_fix_but_not_another_facility(
    browser: Any, stack: Stack
) -> None:
    s = stack.finished()
    context = browser.new_context(locale="vi-VN", viewport={"width": 1360, "height": 900})
    page = context.new_page()
    _login(page, stack.url, "f79001")
    assert page.url == f"{stack.url}/facilities/{OWN}"
    fix = REASON_CODES["icd10_main_invalid"].fix_vi
    rejected = page.locator("#rejected")
    assert "icd10_main_invalid" in rejected.inner_text() and fix in rejected.inner_text()
    assert s.rejected["ma_lk"] in page.inner_text("#rejected-latest")
    assert s.corrected["ma_lk"] in page.inner_text("#corrections")
    _shot(page, "facility")

    page.fill("#ma_lk", s.rejected["ma_lk"])
    page.click("#lookup button")
    page.wait_for_selector("#state")
    assert page.get_attribute("#state", "data-state") == "dead_lettered"
    assert fix in page.inner_text("#episode-dead-letters")
    assert s.rejected["ma_lk"] not in page.url  # the look-up is a POST: no MA_LK in a URL
    _shot(page, "episode")

    response = page.goto(f"{stack.url}/facilities/{OTHER}")
    assert response is not None and response.status == 404
    assert "Không tìm thấy" in page.inner_text("main")
    assert s.other["ma_lk"] not in page.content()
    for path in ("/campaign", "/completeness"):
        response = page.goto(f"{stack.url}{path}")
        assert response is not None and response.status == 404, path
    _shot(page, "facility-other-404")
    context.close()
