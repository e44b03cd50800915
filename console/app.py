"""The web console: Starlette routes, server-rendered Jinja2 pages, no JavaScript.

Access rules (docs/console.md):

* without a session, every page redirects to ``/login`` (the only page an anonymous visitor
  sees);
* an operator (the Department of Health) sees every page and every facility;
* a facility's account sees only its own facility: any other facility's page or episode, and
  the city-wide pages, answer 404 (not 403: a facility cannot even learn what exists);
* every form carries a CSRF token bound to the session cookie; a POST without the right one
  is refused (403);
* logins are rate-limited per account name and per client address (429).

Data is read with the rights of ehb_console (``console.database``); the session cookie is
signed (Starlette's SessionMiddleware, itsdangerous), HttpOnly, SameSite=Strict, Secure in
production, and holds only a random session token and the CSRF token. No MA_LK or citizen ID
ever appears in a URL: the episode look-up is a POST.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from console import accounts, queries
from console.accounts import Account, Role
from console.database import ConsoleDatabase
from console.texts import negotiate, reason_text, translator
from ehb.exceptions import ConfigurationError
from ehb.settings import Environment, Settings
from schemas.time import VN_TZ

__all__ = ["SESSION_COOKIE", "create_app", "session_secret"]

log = logging.getLogger(__name__)

SESSION_COOKIE = "ehb_console"
TEMPLATES = Path(__file__).resolve().parent / "templates"
#: seconds between two refreshes of the live pages (a meta refresh: no JavaScript)
REFRESH_S = 5
_FACILITY = re.compile(r"[0-9]{5}\Z")
_SECRET_FILE = "console-session.secret"  # noqa: S105 - a file name, not a secret

_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class _LoginRequired(Exception):
    """Raised by a page asked for without a valid session: answered by a redirect."""


def session_secret(settings: Settings) -> str:
    """The key that signs the cookies: the setting, or (development) a random one kept under
    EHB_DATA_DIR so every console process of the machine shares it."""
    if settings.console_session_secret is not None:
        secret = settings.console_session_secret.get_secret_value()
        if len(secret) < 32:
            raise ConfigurationError("EHB_CONSOLE_SESSION_SECRET must be at least 32 characters")
        return secret
    if settings.env is Environment.PRODUCTION:
        raise ConfigurationError("EHB_CONSOLE_SESSION_SECRET is required in production")
    path = settings.state_dir / _SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}")
        tmp.write_text(secrets.token_urlsafe(48))
        tmp.chmod(0o600)
        tmp.replace(path)
    return path.read_text().strip()


def _int(value: str | None, default: int, low: int, high: int) -> int:
    """A bounded integer query parameter; anything else is the default (never an error)."""
    try:
        number = int(value) if value is not None else default
    except ValueError:
        return default
    return min(max(number, low), high)


def _vn(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return value.astimezone(VN_TZ).strftime(fmt) if value is not None else ""


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


class Console:
    """The pages; one instance per application."""

    def __init__(self, settings: Settings, database: ConsoleDatabase) -> None:
        self.settings = settings
        self.db = database
        self.templates = Jinja2Templates(directory=str(TEMPLATES))
        self.templates.env.filters["vn"] = _vn
        self.templates.env.globals["reason_text"] = reason_text

    # -- helpers --------------------------------------------------------------------------
    def _csrf(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not isinstance(token, str):
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return token

    async def _check_csrf(self, request: Request) -> dict[str, str]:
        """The form, when its CSRF token is the session's; else 403."""
        form = await request.form()
        sent = form.get("csrf_token")
        expected = request.session.get("csrf")
        if not (
            isinstance(sent, str)
            and isinstance(expected, str)
            and hmac.compare_digest(sent.encode(), expected.encode())
        ):
            raise HTTPException(403, "csrf")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def _account(self, request: Request) -> Account | None:
        token = request.session.get("sid")
        if not isinstance(token, str):
            return None
        return await run_in_threadpool(self.db.run, accounts.session_account, token)

    async def _require(self, request: Request, *, operator: bool = False) -> Account:
        account = await self._account(request)
        if account is None:
            raise _LoginRequired
        if operator and account.role is not Role.operator:
            raise HTTPException(404)
        return account

    def _language(self, request: Request) -> Any:
        return negotiate(request.session.get("lang"), request.headers.get("accept-language"))

    def render(
        self,
        request: Request,
        template: str,
        account: Account | None,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        language = self._language(request)
        return self.templates.TemplateResponse(
            request,
            template,
            {
                "t": translator(language),
                "lang": language,
                "account": account,
                "csrf_token": self._csrf(request),
                "path": request.url.path,
                **context,
            },
            status_code=status_code,
        )

    # -- login and session ----------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        if await self._account(request) is not None:
            return RedirectResponse("/", 303)
        return self.render(request, "login.html", None)

    async def login(self, request: Request) -> Response:
        form = await self._check_csrf(request)
        username = form.get("username", "").strip().lower()[:64]
        password = form.get("password", "")[:1024]
        client = request.client.host if request.client else "unknown"
        settings = self.settings

        def attempt(cur: queries.Cursor) -> tuple[str, str | None]:
            if accounts.login_refused(
                cur,
                username,
                client,
                settings.console_login_attempts,
                settings.console_login_window_s,
            ):
                accounts.record_attempt(cur, username, client, False)
                return "throttled", None
            account = accounts.authenticate(cur, username, password)
            accounts.record_attempt(cur, username, client, account is not None)
            if account is None:
                return "failed", None
            return "ok", accounts.open_session(cur, account, settings.console_session_hours)

        outcome, token = await run_in_threadpool(self.db.run, attempt)
        if outcome != "ok" or token is None:
            # never the account name: someone may type a citizen ID into it
            log.warning("console login refused (%s) from %s", outcome, client)
            status, message = (429, "login_throttled") if outcome == "throttled" else (401, "")
            return self.render(
                request,
                "login.html",
                None,
                status_code=status,
                error=message or "login_failed",
            )
        language = request.session.get("lang")
        request.session.clear()  # a new session: nothing carried over from before the login
        request.session["sid"] = token
        request.session["csrf"] = secrets.token_urlsafe(32)
        if language is not None:
            request.session["lang"] = language
        return RedirectResponse("/", 303)

    async def logout(self, request: Request) -> Response:
        await self._check_csrf(request)
        token = request.session.get("sid")
        if isinstance(token, str):
            await run_in_threadpool(self.db.run, accounts.end_session, token)
        request.session.clear()
        return RedirectResponse("/login", 303)

    async def language(self, request: Request) -> Response:
        form = await self._check_csrf(request)
        if form.get("lang") in ("vi", "en"):
            request.session["lang"] = form["lang"]
        target = form.get("next", "/")
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        return RedirectResponse(target, 303)

    # -- pages ----------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        account = await self._require(request)
        if account.role is Role.operator:
            return RedirectResponse("/campaign", 303)
        return RedirectResponse(f"/facilities/{account.facility}", 303)

    async def campaign(self, request: Request) -> Response:
        account = await self._require(request, operator=True)
        counters = await run_in_threadpool(self.db.run, queries.campaign_counters)
        return self.render(request, "campaign.html", account, counters=counters, refresh=REFRESH_S)

    async def completeness(self, request: Request) -> Response:
        account = await self._require(request, operator=True)
        days = _int(request.query_params.get("days"), 14, 1, 62)
        grid = await run_in_threadpool(self.db.run, queries.completeness, days)
        return self.render(request, "completeness.html", account, grid=grid, days=days)

    async def pipeline(self, request: Request) -> Response:
        account = await self._require(request, operator=True)
        hours = _int(request.query_params.get("hours"), 6, 1, 168)
        buckets = await run_in_threadpool(self.db.run, queries.throughput, hours)
        peak = max([b.persisted + b.dead_lettered for b in buckets] + [1])
        return self.render(
            request,
            "pipeline.html",
            account,
            buckets=buckets,
            hours=hours,
            peak=peak,
            refresh=REFRESH_S * 6,
        )

    async def _facility(self, request: Request) -> tuple[Account, str, str]:
        """The account and the facility of the path, when the account may see it; else 404
        (a facility asking for another's gets exactly what a facility that does not exist
        gets)."""
        account = await self._require(request)
        code = request.path_params["code"]
        if not _FACILITY.match(code) or not account.may_see(code):
            raise HTTPException(404)
        name = await run_in_threadpool(self.db.run, queries.facility_name, code)
        if name is None:
            raise HTTPException(404)
        return account, code, name

    async def facility(self, request: Request) -> Response:
        account, code, name = await self._facility(request)
        page = await run_in_threadpool(self.db.run, queries.facility_page, code)
        return self.render(request, "facility.html", account, code=code, name=name, page=page)

    async def episode(self, request: Request) -> Response:
        account, code, name = await self._facility(request)
        form = await self._check_csrf(request)
        ma_lk = form.get("ma_lk", "").strip()[:100]
        # the facility's own staff match the episode with their records by the patient's
        # name; the Department of Health has no need of it
        with_name = account.role is Role.facility
        found = await run_in_threadpool(self.db.run, queries.episode, code, ma_lk, with_name)
        return self.render(
            request,
            "episode.html",
            account,
            status_code=200 if found.found else 404,
            code=code,
            name=name,
            episode=found,
        )

    # -- errors ---------------------------------------------------------------------------
    async def login_required(self, request: Request, exc: Exception) -> Response:
        return RedirectResponse("/login", 303)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        key = "csrf_refused" if status == 403 else "not_found"
        account = None
        if status != 403:
            try:
                account = await self._account(request)
            except Exception:  # noqa: BLE001 - an error page never fails
                account = None
            if account is None:  # anonymous: nothing but the login page, not even a 404
                return RedirectResponse("/login", 303)
        # path "/": the page never echoes the address asked for (a 404 for another facility
        # is the 404 of a facility that does not exist, byte for byte)
        return self.render(
            request, "error.html", account, status_code=status, message=key, path="/"
        )


def create_app(settings: Settings, database: ConsoleDatabase | None = None) -> Starlette:
    """The console application on ``settings`` (its database: ``database`` or the one the
    settings name)."""
    secret = session_secret(settings)
    db = database or ConsoleDatabase(settings)
    console = Console(settings, db)
    secure = settings.console_secure_cookies
    if secure is None:
        secure = settings.env is Environment.PRODUCTION
    routes = [
        Route("/", console.home),
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        Route("/language", console.language, methods=["POST"]),
        Route("/campaign", console.campaign),
        Route("/completeness", console.completeness),
        Route("/pipeline", console.pipeline),
        Route("/facilities/{code}", console.facility),
        Route("/facilities/{code}/episode", console.episode, methods=["POST"]),
    ]
    middleware = [
        Middleware(_SecurityHeaders),
        Middleware(
            SessionMiddleware,
            secret_key=secret,
            session_cookie=SESSION_COOKIE,
            max_age=int(settings.console_session_hours * 3600),
            same_site="strict",
            https_only=secure,
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            _LoginRequired: console.login_required,
            HTTPException: console.http_error,
        },
    )
    app.state.console = console
    app.state.database = db
    return app
