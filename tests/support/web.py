"""`newsletter serve` under a real uvicorn on 127.0.0.1, and a SendGrid-style event signer."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import email.message
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from newsletter.app import App
from newsletter.config import load_config
from newsletter.signing import UNSUBSCRIBE, Signer
from newsletter.web import create_app, web_parts
from tests.conftest import BASE_CONFIG, NOW, Site

SECRET = "a-test-secret-that-is-long-enough"


@dataclass
class Clock:
    """The app's clock, moved by the test (expiry, stale webhooks)."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


class EventSigner:
    """Signs event batches as SendGrid does: ECDSA P-256 over timestamp + body."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """As SendGrid's settings page shows it: base64 DER, no PEM armour."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        stamp = str(timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }


def free_socket() -> socket.socket:
    """A listening socket on a free port, handed to uvicorn (no race for the port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


@contextlib.contextmanager
def serve(app: App, sock: socket.socket) -> Iterator[str]:
    """Run the web app of `app` under uvicorn until the block ends; yields its base URL."""
    asgi = create_app(web_parts(app))
    config = uvicorn.Config(asgi, log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    host, port = sock.getsockname()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def text_part(message: email.message.EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


def confirm_link(message: email.message.EmailMessage) -> str:
    return confirm_link_in(text_part(message))


def confirm_link_in(text: str) -> str:
    """The confirmation link of a confirmation email's text part."""
    found = re.search(r"https?://\S+/confirm\?token=\S+", text)
    assert found, text
    return found.group(0)


def sign_up(http: httpx.Client, email: str, **fields: str) -> httpx.Response:
    """GET the form (for its CSRF cookie and field), then POST it as a browser would."""
    page = http.get("/subscribe")
    assert page.status_code == 200
    return http.post("/subscribe", data={"csrf": csrf_value(page.text), "email": email, **fields})


def csrf_value(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


ENV = {"NEWSLETTER_SECRET": SECRET}


@dataclass
class Web:
    url: str
    site: Site
    app: App
    clock: Clock
    http: httpx.Client
    signer: EventSigner

    @property
    def outbox(self) -> Path:
        return self.site.root / "outbox"

    def list_file(self, name: str = "main") -> Path:
        return self.site.root / "subscribers" / f"{name}.csv"

    def confirmations(self) -> list[Path]:
        folder = self.outbox / "confirmations"
        return sorted(folder.rglob("*.eml"))

    def form(self, path: str = "/subscribe") -> str:
        """GET the form (setting the CSRF cookie); returns the CSRF field's value."""
        page = self.http.get(path)
        assert page.status_code == 200
        return csrf_value(page.text)

    def sign_up(self, email: str, name: str = "", **extra: str) -> httpx.Response:
        fields = {"csrf": self.form(), "email": email, "name": name, "website": "", **extra}
        return self.http.post("/subscribe", data=fields)

    def unsubscribe_url(self, email: str, list_name: str = "main") -> str:
        token = Signer(SECRET).sign(UNSUBSCRIBE, list_name, email)
        return f"{self.url}/unsubscribe/{token}"

    def post_events(self, events: object, *, age: int = 0) -> httpx.Response:
        body = json.dumps(events).encode()
        stamp = int(self.clock.now.timestamp()) - age
        return self.http.post(
            "/webhooks/sendgrid", content=body, headers=self.signer.headers(body, stamp)
        )


def web_config(url: str, public_key: str) -> str:
    return BASE_CONFIG.replace(
        'archive_url = "https://news.example.com/archive"', f'archive_url = "{url}/archive"'
    ) + (
        f"""
[delivery]
transport = "outbox"

[unsubscribe]
mode = "hosted"
base_url = "{url}"

[serve]
signups_per_ip = 4
lists = {{ main = "The Test Times (daily)", weekly = "The Test Times Weekly" }}

[sendgrid]
webhook_public_key = "{public_key}"
"""
    )


@pytest.fixture
def web(site: Site) -> Iterator[Web]:
    with running_web(site) as running:
        yield running


@contextlib.contextmanager
def running_web(
    site: Site, language: str = "en", env: dict[str, str] | None = None
) -> Iterator[Web]:
    """`newsletter serve` for the test site, in `language`, with two readers; `env` adds
    environment variables (the admin password hash or token)."""
    sock = free_socket()
    url = "http://{}:{}".format(*sock.getsockname())
    signer = EventSigner()
    config = web_config(url, signer.public_key)
    site.write_config(config.replace("[sender]", f'language = "{language}"\n\n[sender]', 1))
    site.story("lead", title="Lead story", date="2024-03-05 06:00:00+00:00")
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text(
        "email,name\nreader@example.com,Rea Der\nother@example.com,Oth Er\n"
    )
    clock = Clock(NOW)
    with (
        App(load_config(site.config_path, {**ENV, **(env or {})}), clock=clock) as app,
        serve(app, sock) as base,
        httpx.Client(base_url=base, timeout=10, follow_redirects=False) as http,
    ):
        yield Web(base, site, app, clock, http, signer)
