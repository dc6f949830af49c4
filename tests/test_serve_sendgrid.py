"""Confirmation emails through the real `sendgrid` client and the schema-checking emulator."""

from __future__ import annotations

import httpx

from newsletter.app import App
from newsletter.config import load_config

from .conftest import BASE_CONFIG, NOW, Site
from .support.fixtures import SENDGRID_TEST_API_KEY
from .support.sendgrid_emulator import SendGridEmulator
from .support.web import SECRET, Clock, free_socket, serve


def test_a_confirmation_reaches_someone_who_left_through_sendgrid(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """Sent as one-to-one mail: outside the unsubscribe group, so a former reader can come back."""
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
api_url = "{sendgrid_emulator.url}"
asm_group_id = 4242
categories = ["newsletter"]
"""
    )
    environ = {"SENDGRID_API_KEY": SENDGRID_TEST_API_KEY, "NEWSLETTER_SECRET": SECRET}
    with (
        App(load_config(site.config_path, environ), clock=Clock(NOW)) as app,
        serve(app, sock) as base,
        httpx.Client(base_url=base, timeout=10) as http,
    ):
        page = http.get("/subscribe").text
        marker = 'name="csrf" value="'
        start = page.index(marker) + len(marker)
        csrf = page[start : page.index('"', start)]
        answer = http.post(
            "/subscribe", data={"csrf": csrf, "email": "back@example.com", "name": "Eve <x>"}
        )
        assert answer.status_code == 200, answer.text

    [request] = sendgrid_emulator.mail_requests()
    assert request.status == 202  # the emulator validated it against SendGrid's schema
    body = request.body
    assert "asm" not in body
    assert body["mail_settings"] == {"bypass_unsubscribe_management": {"enable": True}}
    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "back@example.com"}]
    assert personalization["custom_args"] == {"issue_id": "confirm", "list": "main"}
    assert body["subject"] == "Confirm your subscription to The Test Times"
    text = next(c["value"] for c in body["content"] if c["type"] == "text/plain")
    assert f"{url}/confirm?token=" in text
