"""Every copy of an issue says what it is, on every transport: `List-Id` (RFC 2919),
`Feedback-ID` (Gmail's feedback loop), the one-click unsubscribe pair, and a `Date` with a
numeric zone. Read from the parsed messages the far side got."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator
from email.utils import parsedate_to_datetime

import pytest

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.faults import OutboxFolder, send, write_site
from .support.sendgrid_emulator import SendGridEmulator
from .support.smtp_server import SmtpServer

LIST_ID = "The Test Times <main.news.example.com>"
FEEDBACK_ID = "20240305:main:newsletter:news.example.com"


def messages(site: Site, transport: str) -> Iterator[dict[str, str]]:
    """The headers of every copy the far side got, send by send of the real CLI."""
    if transport == "sendgrid":
        with SendGridEmulator(api_key=SENDGRID_TEST_API_KEY) as emulator:
            write_site(site, transport, f'[sendgrid]\napi_url = "{emulator.url}"\n')
            result = send(site)
            assert result.code == 0, result.stderr
            for body in emulator.accepted():  # SendGrid merges the request's and each reader's
                for personalization in body["personalizations"]:
                    yield {**body.get("headers", {}), **personalization.get("headers", {})}
        return
    if transport == "smtp":
        with SmtpServer() as server:
            config = f'[smtp]\nhost = "127.0.0.1"\nport = {server.port}\nsecurity = "none"\n'
            write_site(site, transport, config)
            result = send(site)
            assert result.code == 0, result.stderr
            raw = [m.data for m in server.messages]
    else:
        write_site(site, transport, "")
        result = send(site)
        assert result.code == 0, result.stderr
        folder = OutboxFolder(site.root / "outbox" / "2024-03-05-main")
        raw = [path.read_bytes() for path in sorted(folder.path.glob("*.eml"))]
    for data in raw:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        yield {name: str(value) for name, value in parsed.items()}


@pytest.mark.parametrize("transport", ["outbox", "smtp", "sendgrid"])
def test_every_copy_is_marked_as_the_lists_bulk_mail(site: Site, transport: str) -> None:
    site.story("lead", title="Lead story", url="https://example.com/lead")
    copies = list(messages(site, transport))

    assert len(copies) == 300
    for headers in copies:
        assert headers["List-Id"] == LIST_ID
        assert headers["Feedback-ID"] == FEEDBACK_ID
        assert headers["List-Unsubscribe"].startswith("<https://news.example.com/n/unsubscribe/")
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        if transport != "sendgrid":  # SendGrid writes its own Date
            assert re.search(r" [+-]\d{4}$", headers["Date"]), headers["Date"]
            assert parsedate_to_datetime(headers["Date"]).utcoffset() is not None
