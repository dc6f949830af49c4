"""Signing in to /admin/ of `newsletter serve` over real HTTP, as a browser would.

The admin cookies are Secure, and httpx's cookie jar (rightly) sends no Secure cookie
over plain http: these helpers read `Set-Cookie` themselves and send `Cookie` by hand.
Each sign-in comes from its own client address (uvicorn believes X-Forwarded-For from
127.0.0.1), so the per-network limit on attempts counts only what a test means it to.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from newsletter.app import App
from newsletter.config import load_config
from newsletter.passwords import hash_password
from tests.conftest import BASE_CONFIG, NOW, Site

from .cli import run
from .fixtures import SENDGRID_TEST_API_KEY
from .sendgrid_emulator import SendGridEmulator
from .web import SECRET, Clock, EventSigner, Web, free_socket, serve

PASSWORD = "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)
TOKEN = "tok_" + "Qx7" * 12  # 40 characters
HASH_ENV = "NEWSLETTER_ADMIN_PASSWORD_HASH"
TOKEN_ENV = "NEWSLETTER_ADMIN_TOKEN"
SESSION = "newsletter_admin"
CSRF = "newsletter_admin_csrf"
SENDING_ENV = {"NEWSLETTER_SECRET": SECRET, "SENDGRID_API_KEY": SENDGRID_TEST_API_KEY}

_addresses = itertools.count(1)


def fresh_ip() -> str:
    n = next(_addresses)
    return f"198.18.{n >> 8 & 255}.{n & 255}"


@dataclass(frozen=True)
class SetCookie:
    name: str
    value: str
    attributes: dict[str, str]  # lower-cased names; flags map to ""

    def has(self, name: str, value: str | None = None) -> bool:
        if name.lower() not in self.attributes:
            return False
        return value is None or self.attributes[name.lower()].lower() == value.lower()


def set_cookies(response: httpx.Response) -> dict[str, SetCookie]:
    found = {}
    for header in response.headers.get_list("set-cookie"):
        first, *rest = [part.strip() for part in header.split(";")]
        name, _, value = first.partition("=")
        attributes = {}
        for part in rest:
            key, _, val = part.partition("=")
            attributes[key.strip().lower()] = val.strip()
        found[name] = SetCookie(name, value.strip('"'), attributes)
    return found


def field(page: str, name: str) -> str:
    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert found, f"no field {name} in the page"
    return found.group(1)


@dataclass(frozen=True)
class SignInForm:
    """What a browser holds after loading /admin/login: the CSRF cookie and the fields."""

    csrf_cookie: str
    fields: dict[str, str]

    def post(self, web: Web, secret: str, ip: str | None = None) -> httpx.Response:
        return request(
            web,
            "POST",
            "/admin/login",
            cookies={CSRF: self.csrf_cookie},
            ip=ip,
            data={**self.fields, "password": secret},
        )


def request(
    web: Web,
    method: str,
    path: str,
    cookies: dict[str, str] | None = None,
    ip: str | None = None,
    **kwargs: object,
) -> httpx.Response:
    """One request with exactly these cookies (the jar left out), from `ip`."""
    web.http.cookies.clear()
    headers = {"x-forwarded-for": ip or fresh_ip()}
    if cookies:
        headers["cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return web.http.request(method, path, headers=headers, **kwargs)  # type: ignore[arg-type]


def sign_in_form(web: Web, ip: str | None = None) -> SignInForm:
    page = request(web, "GET", "/admin/login", ip=ip)
    assert page.status_code == 200, page.text
    cookie = set_cookies(page)[CSRF].value
    return SignInForm(
        cookie, {"csrf": field(page.text, "csrf"), "nonce": field(page.text, "nonce")}
    )


def sign_in(web: Web, secret: str, ip: str | None = None) -> httpx.Response:
    ip = ip or fresh_ip()
    return sign_in_form(web, ip).post(web, secret, ip)


def session(web: Web, secret: str) -> str:
    """A signed-in session's cookie value."""
    answer = sign_in(web, secret)
    assert answer.status_code == 303, answer.text
    return set_cookies(answer)[SESSION].value


def admin_get(web: Web, path: str, cookie: str | None, **kwargs: object) -> httpx.Response:
    return request(web, "GET", path, cookies={SESSION: cookie} if cookie else None, **kwargs)


def sign_out(web: Web, cookie: str, csrf: str | None) -> httpx.Response:
    data = {"csrf": csrf} if csrf is not None else {}
    return request(web, "POST", "/admin/logout", cookies={SESSION: cookie}, data=data)


# -- a newsletter with something to report: issues sent through SendGrid (the emulator) and
# SendGrid's signed events posted to the real webhook ---------------------------------------

READERS = [f"reader{n}@example.com" for n in range(8)]
DATES = ["2024-03-03", "2024-03-04", "2024-03-05"]


def newsroom_config(url: str, emulator_url: str, public_key: str) -> str:
    return (
        BASE_CONFIG
        + f"""
[delivery]
transport = "sendgrid"
workers = 1
retry_delay = "0s"

[unsubscribe]
mode = "hosted"
base_url = "{url}"

[serve]
lists = {{ main = "The Test Times (daily)", weekly = "The Test Times Weekly" }}

[sendgrid]
api_url = "{emulator_url}"
timeout = 5
click_tracking = true
open_tracking = true
webhook_public_key = "{public_key}"
"""
    )


@contextlib.contextmanager
def newsroom(site: Site, emulator: SendGridEmulator, env: dict[str, str]) -> Iterator[Web]:
    """`newsletter serve` for a site that sends with SendGrid, with `env` (the admin's)."""
    sock = free_socket()
    url = "http://{}:{}".format(*sock.getsockname())
    signer = EventSigner()
    site.write_config(newsroom_config(url, emulator.url, signer.public_key))
    for date in DATES:
        site.story(f"lead-{date}", title=f"Lead of {date}: the council votes on the new bridge",
                   lead=True, date=f"{date} 06:00:00+00:00", url=f"https://paper.example.com/{date}/lead")  # fmt: skip
        site.story(f"second-{date}", title=f"Second of {date}", date=f"{date} 05:00:00+00:00",
                   url=f"https://paper.example.com/{date}/second")  # fmt: skip
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    (folder / "main.csv").write_text("email,name\n" + "".join(f"{e},R\n" for e in READERS))
    clock = Clock(NOW)
    with (
        App(load_config(site.config_path, {**SENDING_ENV, **env}), clock=clock) as app,
        serve(app, sock) as base,
        httpx.Client(base_url=base, timeout=10, follow_redirects=False) as http,
    ):
        yield Web(base, site, app, clock, http, signer)


def send_issues_with_events(web: Web) -> None:
    """Three issues of list main through SendGrid, and a day of events for each."""
    for date in DATES:
        done = run(web.site.config_path, "send", "--date", date, "--yes", **SENDING_ENV)
        assert done.returncode == 0, done.stderr
    sequence = itertools.count(1)
    stamp = int(NOW.timestamp())

    def event(kind: str, email: str, issue: int, **extra: object) -> dict[str, object]:
        return {"email": email, "event": kind, "sg_event_id": f"ev{next(sequence)}",
                "timestamp": stamp, "issue_id": str(issue), **extra}  # fmt: skip

    for day, date in enumerate(DATES):
        row = web.app.ledger.issue("main", dt.date.fromisoformat(date))
        assert row is not None
        opened = READERS[: 3 + day]
        events = [event("delivered", r, row.id) for r in READERS[:-1]]
        events += [event("bounce", READERS[-1], row.id, type="bounce", reason="550 unknown")]
        events += [event("open", r, row.id) for r in opened]
        events += [event("click", r, row.id, url=f"https://paper.example.com/{date}/lead")
                   for r in opened[: 1 + day]]  # fmt: skip
        events += [
            event("click", opened[0], row.id, url=f"https://paper.example.com/{date}/second")
        ]
        answer = web.post_events(events)
        assert answer.status_code == 200, answer.text
