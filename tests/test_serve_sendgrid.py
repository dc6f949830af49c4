"""Confirmation emails through the real `sendgrid` client and the schema-checking emulator."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from newsletter.app import App
from newsletter.config import load_config

from .conftest import BASE_CONFIG, Site
from .support.cli import run
from .support.fixtures import SENDGRID_TEST_API_KEY
from .support.sendgrid_emulator import Fault, RecordedRequest, SendGridEmulator, group_key
from .support.web import SECRET, Clock, confirm_link_in, free_socket, serve, sign_up

ENVIRON = {"SENDGRID_API_KEY": SENDGRID_TEST_API_KEY, "NEWSLETTER_SECRET": SECRET}


@dataclass
class Running:
    url: str
    app: App
    http: httpx.Client
    # the ledger stamps suppressions with the real time: the app's clock follows it
    clock: Clock


@contextlib.contextmanager
def serving(site: Site, emulator: SendGridEmulator, sendgrid_extra: str = "") -> Iterator[Running]:
    """`newsletter serve` with the SendGrid transport pointed at the emulator."""
    sock = free_socket()
    url = "http://{}:{}".format(*sock.getsockname())
    site.write_config(
        BASE_CONFIG
        + f"""
[delivery]
transport = "sendgrid"

[unsubscribe]
mode = "hosted"
base_url = "{url}"

[sendgrid]
api_url = "{emulator.url}"
{sendgrid_extra}
"""
    )
    clock = Clock(dt.datetime.now(dt.UTC))
    with (
        App(load_config(site.config_path, ENVIRON), clock=clock) as app,
        serve(app, sock) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        yield Running(url, app, http, clock)


def confirmation_link(request: RecordedRequest) -> str:
    text = next(c["value"] for c in request.body["content"] if c["type"] == "text/plain")
    return confirm_link_in(text)


def test_a_reader_who_left_through_sendgrid_can_come_back(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """The confirmation goes outside the unsubscribe group, and confirming takes the reader
    off SendGrid's own lists, so the next send's sync does not suppress them again."""
    site.story("lead", title="Lead story", date="2024-03-05 06:00:00+00:00")
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text(
        "email\nback@example.com\nstay@example.com\n"
    )
    sendgrid_emulator.suppressions["unsubscribes"] = ["back@example.com", "other@example.com"]
    sendgrid_emulator.suppressions[group_key(4242)] = ["back@example.com"]
    extra = 'asm_group_id = 4242\ncategories = ["newsletter"]'
    with serving(site, sendgrid_emulator, extra) as web:
        first = run(site.config_path, "send", "--date", "2024-03-05", "--list", "main", "--yes", **ENVIRON)  # fmt: skip
        assert first.returncode == 0, first.stderr
        assert sendgrid_emulator.recipients() == ["stay@example.com"]  # synced: back@ left
        sendgrid_emulator.reset()

        web.clock.now = dt.datetime.now(dt.UTC)  # signing up after the sync suppressed them
        answer = sign_up(web.http, "back@example.com", name="Eve <x>")
        assert answer.status_code == 200, answer.text
        [request] = sendgrid_emulator.mail_requests()
        assert web.http.get(confirmation_link(request)).status_code == 200
        assert "back@example.com" not in web.app.ledger.suppressed("main")

    assert sendgrid_emulator.suppressions["unsubscribes"] == ["other@example.com"]
    assert sendgrid_emulator.suppressions[group_key(4242)] == []
    forgets = [r.path for r in sendgrid_emulator.requests if r.method == "DELETE"]
    assert forgets == [
        "/v3/asm/suppressions/global/back@example.com",
        "/v3/asm/groups/4242/suppressions/back@example.com",
    ]
    # the next day's send syncs again, and the reader who came back gets it
    site.story("second", title="Next day", date="2024-03-06 06:00:00+00:00")
    sendgrid_emulator.reset()
    second = run(site.config_path, "send", "--date", "2024-03-06", "--list", "main", "--yes", **ENVIRON)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert sorted(sendgrid_emulator.recipients()) == ["back@example.com", "stay@example.com"]
    assert request.status == 202  # the emulator validated it against SendGrid's schema
    body = request.body
    assert "asm" not in body
    assert body["mail_settings"] == {"bypass_unsubscribe_management": {"enable": True}}
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "back@example.com"}]
    assert personalization["custom_args"] == {"issue_id": "confirm", "list": "main"}
    assert body["subject"] == "Confirm your subscription to The Test Times"
    assert confirmation_link(request).startswith(f"{web.url}/confirm?token=")


def test_a_key_without_suppression_access_still_lets_the_reader_confirm(
    site: Site, sendgrid_emulator: SendGridEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """SendGrid refusing the DELETE (403) is logged with what to fix; the confirmation stands."""
    sendgrid_emulator.script(Fault(status=403, path="/v3/asm/suppressions/global"))
    with serving(site, sendgrid_emulator) as web:
        web.app.ledger.suppress([("back@example.com", "unsubscribed")], "link", list_name="main")
        web.clock.now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
        sign_up(web.http, "back@example.com")
        [request] = sendgrid_emulator.mail_requests()
        caplog.set_level(logging.WARNING)
        assert web.http.get(confirmation_link(request)).status_code == 200
        assert "back@example.com" not in web.app.ledger.suppressed("main")
    assert "Suppressions full access" in caplog.text
    assert "back@example.com" in (site.root / "subscribers" / "main.csv").read_text()
