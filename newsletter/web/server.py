"""`newsletter serve`: the ASGI app a publication puts behind its domain.

Routes parse requests and render pages; the use cases live in
`subscriptions`, `events` and `archive` (the editor's /admin/ routes in `admin`).
Blocking work (the database, the list files, the mail transport) runs in a worker
thread.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from newsletter.config import Config
from newsletter.controls import one_line
from newsletter.errors import NewsletterError
from newsletter.i18n import Language
from newsletter.state.admin import AdminSessionStore
from newsletter.state.analytics import ReaderKeys
from newsletter.state.analytics_store import AnalyticsStore
from newsletter.state.archive import ArchiveStore
from newsletter.state.database import Database
from newsletter.state.events import EventStore
from newsletter.state.issues import IssueRow
from newsletter.subscribers import check_address
from newsletter.web.admin_access import AdminAccess
from newsletter.web.archive import archived_html, atom_feed
from newsletter.web.events import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rejected,
    SignatureChecker,
    parse_events,
)
from newsletter.web.guards import BadForm, Csrf, RateLimiter, TooLarge, parse_form
from newsletter.web.subscriptions import LinkExpired, LinkInvalid, Subscriptions

log = logging.getLogger(__name__)
access_log = logging.getLogger("newsletter.access")

HONEYPOT = "website"  # a field people never see and bots fill in
ONE_CLICK = "List-Unsubscribe=One-Click"

# Pages carry no scripts; links with tokens must not leak through Referer.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@dataclass
class WebParts:
    """What the app needs, built by the composition root (or a test).

    `events`, `archive`, `database`, `analytics` and `admin_sessions` are the parts of
    the state database each page uses (the composition root passes its one Ledger as all).
    """

    config: Config
    events: EventStore
    archive: ArchiveStore
    database: Database  # the health check's round trip
    subscriptions: Subscriptions
    templates: jinja2.Environment
    public_url: str
    clock: Callable[[], dt.datetime]
    webhook: SignatureChecker | None
    signup_limiter: RateLimiter
    address_limiter: RateLimiter
    csrf: Csrf
    language: Language
    readers: ReaderKeys  # counts each reader once per issue without storing who
    analytics: AnalyticsStore  # the report under /admin/
    admin_sessions: AdminSessionStore
    admin: AdminAccess | None  # None: no password hash or token set, no /admin/ at all


def create_app(parts: WebParts) -> ASGIApp:
    from newsletter.web.admin import admin_routes  # it uses this module's helpers

    pages = _Pages(parts)
    routes = [
        Route("/subscribe", pages.subscribe_form, methods=["GET"]),
        Route("/subscribe", pages.subscribe, methods=["POST"]),
        Route("/confirm", pages.confirm, methods=["GET"]),
        Route("/unsubscribe", pages.unsubscribe_help, methods=["GET"]),
        Route("/unsubscribe/{token}", pages.unsubscribe_page, methods=["GET"]),
        Route("/unsubscribe/{token}", pages.unsubscribe, methods=["POST"]),
        Route("/webhooks/sendgrid", pages.sendgrid_events, methods=["POST"]),
        Route("/archive", pages.archive_index, methods=["GET"]),
        Route("/archive/feed.xml", pages.archive_feed, methods=["GET"]),
        Route("/archive/{date}", pages.archive_issue, methods=["GET"]),
        Route("/healthz", pages.health, methods=["GET"]),
        *admin_routes(parts, pages),
    ]
    app = Starlette(routes=routes, exception_handlers={404: pages.not_found, 405: pages.not_allowed, 500: pages.server_error})  # fmt: skip
    return Frame(app)


class _Pages:
    def __init__(self, parts: WebParts) -> None:
        self.parts = parts
        self.config = parts.config
        self.subs = parts.subscriptions
        self._ = parts.language.gettext  # every string a reader sees is translated

    # -- rendering -------------------------------------------------------------------

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.parts.templates.get_template(template).render(
            newsletter=self.config.newsletter,
            accent=self.config.theme.accent_color,
            public_url=self.parts.public_url,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def message(self, title: str, *lines: str, status: int = 200, **extra: Any) -> HTMLResponse:
        return self.page("web/message.html", status, title=title, lines=lines, **extra)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.message(
            self._("Page not found"), self._("There is nothing at this address."), status=404
        )

    async def not_allowed(self, request: Request, exc: Exception) -> Response:
        return PlainTextResponse("Method not allowed", status_code=405)

    async def server_error(self, request: Request, exc: Exception) -> Response:
        return self.message(
            self._("Something went wrong"),
            self._("Nothing was lost; please try again in a minute."),
            status=500,
        )

    # -- sign-up -----------------------------------------------------------------------

    def form(
        self,
        request: Request,
        status: int = 200,
        error: str | None = None,
        values: dict[str, str] | None = None,
    ) -> HTMLResponse:
        cookie = request.cookies.get(Csrf.cookie) or self.parts.csrf.new_cookie()
        values = values or {}
        lists = self.subs.lists
        chosen = values.get("list") or request.query_params.get("list") or next(iter(lists))
        response = self.page(
            "web/subscribe.html",
            status,
            lists=lists,
            chosen=chosen if chosen in lists else next(iter(lists)),
            csrf_field=Csrf.field,
            csrf_value=self.parts.csrf.field_value(cookie),
            honeypot=HONEYPOT,
            consent=self.config.consent_wording(self._),
            error=error,
            values=values,
        )
        response.set_cookie(
            Csrf.cookie,
            cookie,
            max_age=24 * 3600,
            httponly=True,
            samesite="lax",
            secure=self.parts.public_url.startswith("https:"),
        )
        response.headers["cache-control"] = "no-store"
        return response

    async def subscribe_form(self, request: Request) -> Response:
        return self.form(request)

    async def subscribe(self, request: Request) -> Response:
        # the body is read first (it is small, and bounded), so a client refused with
        # 429 gets the answer instead of a reset connection
        form: dict[str, str] | None = None
        too_large = False
        try:
            form = parse_form(await _body(request, self.config.serve.max_form_bytes))
        except TooLarge:
            too_large = True
        except BadForm:
            pass
        wait = self.parts.signup_limiter.hit(f"ip:{_network(_client_ip(request))}")
        if wait is not None:
            response = self.message(
                self._("Too many sign-ups"),
                self._(
                    "Too many sign-ups came from your network just now. Please try again later."
                ),
                status=429,
            )
            response.headers["retry-after"] = str(int(wait) + 1)
            return response
        if too_large:
            return self.message(
                self._("Too much data"), self._("The form was too large."), status=413
            )
        if form is None:
            return self.message(
                self._("Not a form"), self._("Please use the sign-up form."), status=400
            )
        if not self.parts.csrf.check(request.cookies.get(Csrf.cookie), form.get(Csrf.field)):
            return self.form(
                request,
                403,
                self._(
                    "The form had expired. Please check your details and press Subscribe again."
                ),
                form,
            )
        if form.get(HONEYPOT):
            log.info("sign-up ignored: the honeypot field was filled in")
            return self.check_inbox()
        list_name = form.get("list") or next(iter(self.subs.lists))
        if list_name not in self.subs.lists:
            return self.form(request, 400, self._("Please choose one of the lists below."), form)
        try:
            email = check_address(form.get("email", ""))
        except NewsletterError:
            return self.form(
                request,
                400,
                self._("That does not look like an email address. Please check it."),
                form,
            )
        # one line of text: the name goes into a To: header once confirmed (import refuses
        # control characters; a form just drops them)
        name = " ".join(one_line(form.get("name", "")).split())[:200]
        # the same answer whatever happens next, so nobody learns who is subscribed
        if self.parts.address_limiter.hit(_mailbox(email)) is None:
            try:
                await run_in_threadpool(
                    self.subs.request, email, name, list_name, self.parts.clock()
                )
            except NewsletterError as exc:
                # the class only: a mail server's reply often quotes the address
                log.error("could not send a confirmation email (%s)", type(exc).__name__)
                return self.message(
                    self._("Please try again later"),
                    self._("We could not send the confirmation email just now. Nothing was saved."),
                    status=503,
                )
        return self.check_inbox()

    def check_inbox(self) -> HTMLResponse:
        return self.message(
            self._("Check your inbox"),
            self._(
                "If the address can receive email, a message with a confirmation link is on "
                "its way."
            ),
            self._(
                "Follow the link in it to start your subscription. Nothing is sent until you do."
            ),
        )

    async def confirm(self, request: Request) -> Response:
        token = request.query_params.get("token", "")
        try:
            pending = await run_in_threadpool(
                self.subs.confirm,
                token,
                self.parts.clock(),
                _client_ip(request),
                request.headers.get("user-agent"),
            )
        except LinkExpired:
            return self.message(
                self._("This link has expired"),
                self._("Confirmation links work for a limited time. Please sign up again."),
                status=410,
                link=(f"{self.parts.public_url}/subscribe", self._("Sign up again")),
            )
        except LinkInvalid:
            return self.invalid_link()
        except NewsletterError as exc:
            log.error("could not confirm a subscription (%s)", type(exc).__name__)
            return self.message(
                self._("Please try again later"),
                self._("Your subscription could not be saved just now. The link will still work."),
                status=503,
            )
        return self.message(
            self._("You're subscribed"),
            self._("Thank you for confirming. %(list)s will come to %(email)s.")
            % {"list": self.subs.label(pending.list_name), "email": pending.email},
            link=(f"{self.parts.public_url}/archive", self._("Read past issues")),
        )

    def invalid_link(self) -> HTMLResponse:
        return self.message(
            self._("This link is not valid"),
            self._(
                "It may have been cut short when it was copied. Please use the whole link "
                "from the email."
            ),
            status=400,
        )

    # -- unsubscribe -------------------------------------------------------------------

    async def unsubscribe_help(self, request: Request) -> Response:
        return self.message(
            self._("Unsubscribing"),
            self._(
                "Every email we send has an Unsubscribe link at the bottom. It knows your "
                "address, so one click is all it takes: no password, no form."
            ),
        )

    async def unsubscribe_page(self, request: Request) -> Response:
        """A page with a button: link scanners follow GET links, and must not unsubscribe."""
        try:
            list_name, email = self.subs.reader_of(request.path_params["token"])
        except LinkInvalid:
            return self.invalid_link()
        others = [name for name in self.subs.all_lists() if name != list_name]
        response = self.page(
            "web/unsubscribe.html",
            email=email,
            list_label=self.subs.label(list_name),
            several=bool(others),
        )
        response.headers["cache-control"] = "no-store"
        return response

    async def unsubscribe(self, request: Request) -> Response:
        """RFC 8058 one-click (from the mail client) or the page's button; never a redirect."""
        token = request.path_params["token"]
        try:
            form = parse_form(await _body(request, self.config.serve.max_form_bytes))
        except TooLarge:
            return PlainTextResponse("Request too large", status_code=413)
        except BadForm:
            form = {}
        try:
            email, lists = await run_in_threadpool(
                self.subs.unsubscribe, token, form.get("scope") == "all"
            )
        except LinkInvalid:
            return self.invalid_link()
        if form.get("List-Unsubscribe") == "One-Click":
            return PlainTextResponse("Unsubscribed.\n")
        labels = self.parts.language.join(self.subs.label(name) for name in lists)
        return self.message(
            self._("You're unsubscribed"),
            self._("%(email)s will get no more email from %(lists)s.")
            % {"email": email, "lists": labels},
            self._("Changed your mind? You can sign up again at any time."),
            link=(f"{self.parts.public_url}/subscribe", self._("Sign up again")),
        )

    # -- SendGrid events ---------------------------------------------------------------

    async def sendgrid_events(self, request: Request) -> Response:
        checker = self.parts.webhook
        if checker is None:
            return PlainTextResponse("Event webhook not configured\n", status_code=404)
        try:
            body = await _body(request, self.config.serve.max_webhook_bytes)
        except TooLarge:
            return PlainTextResponse("Request too large\n", status_code=413)
        try:
            checker.check(
                body,
                request.headers.get(SIGNATURE_HEADER),
                request.headers.get(TIMESTAMP_HEADER),
                self.parts.clock(),
            )
            events, skipped = parse_events(body, self.parts.readers)
        except Rejected as exc:
            log.warning("SendGrid event batch rejected: %s", exc)
            return PlainTextResponse(f"{exc}\n", status_code=exc.status)
        # committed before the answer: an acknowledged event is never lost
        new = await run_in_threadpool(
            self.parts.events.apply_mail_events,
            events,
            "webhook",
            self.config.analytics.per_recipient,
        )
        received = len(events) + skipped
        if skipped:
            log.warning("SendGrid events: %d malformed ones skipped", skipped)
        log.info("SendGrid events: %d received, %d new", received, new)
        return JSONResponse({"received": received, "new": new, "skipped": skipped})

    # -- archive -----------------------------------------------------------------------

    def archive_url(self) -> str:
        return (self.config.newsletter.archive_url or f"{self.parts.public_url}/archive").rstrip(
            "/"
        )

    async def archive_index(self, request: Request) -> Response:
        lists = self.config.archive_lists
        rows = await run_in_threadpool(self.parts.archive.sent_issues, lists, 1000)
        return self.page(
            "web/archive.html", issues=_one_per_date(rows, lists), archive_url=self.archive_url()
        )

    async def archive_feed(self, request: Request) -> Response:
        rows = await run_in_threadpool(
            self.parts.archive.sent_issues, self.config.archive_lists, 50
        )
        archive = self.archive_url()
        body = atom_feed(rows, self.config.newsletter, archive, f"{archive}/feed.xml")
        return Response(body, media_type="application/atom+xml")

    async def archive_issue(self, request: Request) -> Response:
        try:
            date = dt.date.fromisoformat(request.path_params["date"])
        except ValueError:
            return await self.not_found(request, LookupError())
        row = await run_in_threadpool(
            self.parts.archive.sent_issue, self.config.archive_lists, date
        )
        if row is None:
            return await self.not_found(request, LookupError())
        return HTMLResponse(archived_html(row, self.parts.public_url))

    # -- health ------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        try:
            await run_in_threadpool(self.parts.database.ping)
        except Exception as exc:  # any failure means "not healthy", said without a traceback
            log.error("health check: the state database does not answer: %s", exc)
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})


async def _body(request: Request, limit: int) -> bytes:
    """The whole body, refusing it (TooLarge) as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _client_ip(request: Request) -> str:
    # behind a trusted proxy uvicorn has already put X-Forwarded-For here
    return request.client.host if request.client else "unknown"


def _one_per_date(rows: list[IssueRow], lists: list[str]) -> list[IssueRow]:
    """An archive page is a date: where several lists sent that day, the first list's issue."""
    chosen: dict[dt.date, IssueRow] = {}
    for row in sorted(rows, key=lambda r: lists.index(r.list_name)):
        chosen.setdefault(row.issue_date, row)
    return sorted(chosen.values(), key=lambda r: r.issue_date, reverse=True)


def _network(ip: str) -> str:
    """The unit a rate limit counts: one IPv4 address, or an IPv6 /64 (one subscriber line)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6 and address.ipv4_mapped is not None:  # ::ffff:1.2.3.4
        return str(address.ipv4_mapped)
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _mailbox(email: str) -> str:
    """An address without its +tag: one inbox, however it is spelt."""
    local, _, domain = email.lower().rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


_TOKEN_PATH = re.compile(r"^(/unsubscribe/)[^/]+")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def loggable_path(path: str) -> str:
    """The path without its secrets (tokens cut, query strings never kept) on one line."""
    path = _TOKEN_PATH.sub(r"\1…", path)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", path)


class Frame:
    """Around every response: the security headers added, and one access-log line
    (method, path without tokens or query, status, time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def framed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [
                    (name.encode(), value.encode())
                    for name, value in SECURITY_HEADERS.items()
                    if name.encode() not in present
                ]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, framed)
        finally:
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %d %.1f ms',
                client[0] if client else "-",
                scope["method"],
                loggable_path(scope["path"]),
                status[0],
                (time.perf_counter() - started) * 1000,
            )
