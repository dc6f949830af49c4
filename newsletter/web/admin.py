"""/admin/: the editor's report in `newsletter serve`, behind a sign-in.

    GET  /admin/                 the report (?list=NAME&since=YYYY-MM-DD, both optional)
    GET  /admin/csv/<table>.csv  one table of it, same filters
    GET  /admin/login            the sign-in form (password or token)
    POST /admin/login            signs in: a session cookie, then 303 to /admin/
    POST /admin/logout           signs out: the session is revoked everywhere

The routes exist only when a password hash or a token is set (`AdminAccess`); without
them every /admin path is a 404 like any unknown path. A session is a random cookie
(Secure, HttpOnly, SameSite=Strict, scoped to the admin path) whose hash is kept in the
state database with its expiry; the app's clock decides expiry. Every answer is
`no-store`; nothing secret is logged.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from newsletter.config import LIST_NAME_PATTERN
from newsletter.report import TABLES, AdminChrome, ReportQuery, build_report, csv_table, render_html
from newsletter.web.admin_access import NONCE_LIFETIME, AdminAccess, new_session_token
from newsletter.web.guards import BadForm, Csrf, TooLarge, parse_form
from newsletter.web.server import _body, _client_ip, _network

if TYPE_CHECKING:
    from newsletter.report import Report
    from newsletter.web.server import WebParts, _Pages

log = logging.getLogger(__name__)

COOKIE = "newsletter_admin"
CSRF_COOKIE = "newsletter_admin_csrf"  # the sign-in form's double-submit cookie
NONCE_FIELD = "nonce"
SECRET_FIELD = "password"
PRIVATE = {"cache-control": "no-store", "x-robots-tag": "noindex, nofollow"}
LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# matplotlib's settings are global to the process: one report page is drawn at a time
_drawing = threading.Lock()

Handler = Callable[["AdminPages", Request], Awaitable[Response]]


def admin_routes(parts: WebParts, pages: _Pages) -> list[Route]:
    """The /admin routes, or none when no password hash or token is set."""
    if parts.admin is None:
        return []
    admin = AdminPages(parts, parts.admin, pages)
    return [
        Route("/admin", admin.home, methods=["GET"]),
        Route("/admin/", admin.report, methods=["GET"]),
        Route("/admin/csv/{table}.csv", admin.csv, methods=["GET"]),
        Route("/admin/login", admin.login_form, methods=["GET"]),
        Route("/admin/login", admin.login, methods=["POST"]),
        Route("/admin/logout", admin.logout, methods=["POST"]),
    ]


class BadFilter(ValueError):
    """A query parameter of the report that is not a list name or a date."""


@dataclass(frozen=True)
class Filters:
    list_name: str | None = None
    since: dt.date | None = None
    last_issues: int | None = None

    @classmethod
    def parse(cls, params: QueryParams) -> Filters:
        """`list`, `since` and `issues` (the last N; other parameters are ignored); empty
        means every list, ever."""
        list_name = params.get("list", "").strip() or None
        if list_name is not None and not re.fullmatch(LIST_NAME_PATTERN, list_name):
            raise BadFilter(
                "The list filter is not a list name (lower-case letters, digits, - and _)."
            )
        since_text = params.get("since", "").strip()
        since = None
        if since_text:
            try:
                if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", since_text):
                    raise ValueError
                since = dt.date.fromisoformat(since_text)
            except ValueError:
                raise BadFilter("The since filter is not a date (YYYY-MM-DD).") from None
        issues_text = params.get("issues", "").strip()
        last = None
        if issues_text:
            if not re.fullmatch(r"[0-9]{1,6}", issues_text) or not 1 <= int(issues_text) <= 100_000:
                raise BadFilter("The issues filter is not a number of issues (1 to 100000).")
            last = int(issues_text)
        return cls(list_name, since, last)

    @property
    def query_string(self) -> str:
        pairs = [
            ("list", self.list_name),
            ("since", self.since and self.since.isoformat()),
            ("issues", self.last_issues and str(self.last_issues)),
        ]
        kept = [(name, value) for name, value in pairs if value]
        return f"?{urlencode(kept)}" if kept else ""


def _private(handler: Handler) -> Handler:
    """The answer is for the signed-in editor only: never cached, never indexed."""

    @functools.wraps(handler)
    async def answer(self: AdminPages, request: Request) -> Response:
        response = await handler(self, request)
        response.headers.update(PRIVATE)
        return response

    return answer


class AdminPages:
    def __init__(self, parts: WebParts, access: AdminAccess, pages: _Pages) -> None:
        self.parts, self.access, self.pages = parts, access, pages
        self.config = parts.config
        self.sessions = parts.admin_sessions
        # behind a proxy that strips a prefix (base_url https://example.com/news), the
        # browser sees /news/admin: the cookie's path and every link carry the prefix
        self.base = urlsplit(parts.public_url).path.rstrip("/") + "/admin"
        self.url = f"{parts.public_url}/admin"

    # -- sessions ----------------------------------------------------------------------

    async def signed_in(self, request: Request) -> str | None:
        """The session cookie, if it names a live session."""
        token = request.cookies.get(COOKIE)
        if not token or not _COOKIE_VALUE.fullmatch(token):
            return None
        valid = await run_in_threadpool(
            self.sessions.admin_session_valid, token, self.parts.clock()
        )
        return token if valid else None

    def to_login(self, request: Request) -> Response:
        response = RedirectResponse(f"{self.url}/login", status_code=303)
        if COOKIE in request.cookies:  # a stale or forged one: the browser may forget it
            self._cookie(response, COOKIE, "", max_age=0)
        return response

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.base,
            secure=True,  # only ever over HTTPS: serve it behind a TLS proxy
            httponly=True,
            samesite="Strict",  # type: ignore[arg-type]  # Starlette checks it case-blind
        )

    def _logout_csrf(self, token: str) -> str:
        """The sign-out form's CSRF field: the session cookie is the double-submit cookie."""
        return self.parts.csrf.field_value(_binding(token))

    # -- the report --------------------------------------------------------------------

    @_private
    async def home(self, request: Request) -> Response:
        return RedirectResponse(f"{self.url}/", status_code=303)

    @_private
    async def report(self, request: Request) -> Response:
        token = await self.signed_in(request)
        if token is None:
            return self.to_login(request)
        try:
            filters = Filters.parse(request.query_params)
        except BadFilter as exc:
            return self.pages.message(
                "Not a report filter", str(exc), status=400, link=(f"{self.url}/", "The report")
            )
        html = await run_in_threadpool(self._report_page, filters, token)
        return HTMLResponse(html)

    @_private
    async def csv(self, request: Request) -> Response:
        if await self.signed_in(request) is None:
            return PlainTextResponse(
                f"Sign in at {self.url}/login first.\n",
                status_code=401,
                headers={"www-authenticate": 'Cookie realm="newsletter admin"'},
            )
        table = request.path_params["table"]
        if table not in TABLES or (
            table == "clicks_by_reader" and not self.config.analytics.per_recipient
        ):
            return await self.pages.not_found(request, LookupError())
        try:
            filters = Filters.parse(request.query_params)
        except BadFilter as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        report = await run_in_threadpool(self._report, filters)
        return Response(
            csv_table(report, table),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{table}.csv"'},
        )

    def _report(self, filters: Filters) -> Report:
        analytics = self.config.analytics
        query = ReportQuery(
            list_name=filters.list_name,
            since=filters.since,
            last_issues=filters.last_issues,
            detail_issues=analytics.detail_issues,
            per_recipient=analytics.per_recipient,
            today=self.parts.clock().astimezone(self.config.newsletter.tz).date(),
        )
        return build_report(self.parts.analytics, query, self.parts.clock())

    def _report_page(self, filters: Filters, token: str) -> str:
        report = self._report(filters)
        lists = {
            *self.parts.subscriptions.all_lists(),
            self.config.schedule.list,
            *self.config.archive_lists,
        }
        if filters.list_name:
            lists.add(filters.list_name)
        chrome = AdminChrome(
            base=self.base,
            lists=sorted(lists),
            query=filters.query_string,
            csrf=self._logout_csrf(token),
        )
        with _drawing:
            return render_html(
                report,
                title=f"{self.config.newsletter.name}: report",
                accent=self.config.theme.accent_color,
                admin=chrome,
            )

    # -- signing in and out ------------------------------------------------------------

    @_private
    async def login_form(self, request: Request) -> Response:
        if await self.signed_in(request) is not None:
            return RedirectResponse(f"{self.url}/", status_code=303)
        return self.login_page(request)

    def login_page(self, request: Request, status: int = 200, error: str | None = None) -> Response:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not _COOKIE_VALUE.fullmatch(cookie):
            cookie = self.parts.csrf.new_cookie()
        response = self.pages.page(
            "web/admin_login.html",
            status,
            title="Sign in",
            asks_for=self.access.asks_for,
            csrf_field=Csrf.field,
            csrf_value=self.parts.csrf.field_value(cookie),
            nonce_field=NONCE_FIELD,
            nonce=self.access.nonces.new(self.parts.clock()),
            secret_field=SECRET_FIELD,
            error=error,
            # the cookies are Secure: over plain HTTP a browser drops them (localhost aside)
            plain_http=request.url.scheme == "http" and request.url.hostname not in LOOPBACK,
        )
        self._cookie(response, CSRF_COOKIE, cookie, int(NONCE_LIFETIME.total_seconds()))
        return response

    @_private
    async def login(self, request: Request) -> Response:
        # the body first (small and bounded), so a client refused with 429 gets the answer
        form: dict[str, str] | None = None
        too_large = False
        try:
            form = parse_form(await _body(request, self.config.serve.max_form_bytes))
        except TooLarge:
            too_large = True
        except BadForm:
            pass
        network = _network(_client_ip(request))
        # every attempt counts, right or wrong: the limit bounds guesses, whatever they are
        wait = self.access.limiter.hit(f"admin:{network}")
        if wait is not None:
            log.warning("admin sign-in refused: too many attempts from %s", network)
            response = self.pages.message(
                "Too many attempts",
                "Too many sign-in attempts came from your network just now. "
                "Please wait and try again.",
                status=429,
            )
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        if too_large:
            return self.pages.message("Too much data", "The form was too large.", status=413)
        if form is None:
            return self.login_page(request, 400, "Please use the sign-in form.")
        if not self.parts.csrf.check(request.cookies.get(CSRF_COOKIE), form.get(Csrf.field)):
            return self.login_page(request, 403, "The form had expired. Please sign in again.")
        now = self.parts.clock()
        nonce = self.access.nonces.open(form.get(NONCE_FIELD), now)
        if nonce is None or not await run_in_threadpool(
            self.sessions.use_admin_nonce, nonce[0], now, nonce[1]
        ):
            log.warning("admin sign-in refused: a form used before or out of time (%s)", network)
            return self.login_page(
                request,
                403,
                "This sign-in form was used already or is too old. Please sign in again.",
            )
        if not await run_in_threadpool(self.access.check, form.get(SECRET_FIELD, "")):
            log.warning(
                "admin sign-in refused: wrong %s (%s)", self.access.asks_for.lower(), network
            )
            return self.login_page(
                request, 403, f"That is not the {self.access.asks_for.lower()}. Please try again."
            )
        token = new_session_token()
        await run_in_threadpool(
            self.sessions.create_admin_session, token, now, now + self.access.session
        )
        log.info("admin signed in (%s)", network)
        response = RedirectResponse(f"{self.url}/", status_code=303)
        self._cookie(response, COOKIE, token, int(self.access.session.total_seconds()))
        return response

    @_private
    async def logout(self, request: Request) -> Response:
        try:
            form = parse_form(await _body(request, self.config.serve.max_form_bytes))
        except (TooLarge, BadForm):
            form = {}
        token = await self.signed_in(request)
        if token is None:
            return self.to_login(request)
        if not self.parts.csrf.check(_binding(token), form.get(Csrf.field)):
            return self.pages.message(
                "Still signed in",
                "The sign-out form had expired. Reload the report and press Sign out again.",
                status=403,
                link=(f"{self.url}/", "The report"),
            )
        await run_in_threadpool(self.sessions.revoke_admin_session, token)
        log.info("admin signed out")
        response = RedirectResponse(f"{self.url}/login", status_code=303)
        self._cookie(response, COOKIE, "", max_age=0)
        return response


def _binding(token: str) -> str:
    """What the sign-out form's CSRF field signs: the session, never the cookie itself."""
    return "admin-session " + hashlib.sha256(token.encode()).hexdigest()
