"""The example issue as a spam filter sees it: Debian's SpamAssassin (`spamassassin -t -L`,
local rules only, installed by .ci/run) scores every message of every transport at most
0.1. SendGrid builds its messages itself: here they are put together from the request as
SendGrid does (its substitutions in the content, the request's headers and each
reader's)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, make_msgid
from pathlib import Path
from typing import Any

import pytest

from .conftest import FIXTURES, REPO, SENDGRID_TEST_API_KEY, example_copy
from .support.sendgrid_emulator import SendGridEmulator
from .support.smtp_server import SmtpServer

SPAMASSASSIN = shutil.which("spamassassin")
BAR = 0.1


def send_example(config: Path, transport: str, settings: dict[str, str]) -> None:
    """The example newsletter sent with `transport`, its settings' lines replaced."""
    text = config.read_text(encoding="utf-8")
    for line, value in {'transport = "outbox"': f'transport = "{transport}"', **settings}.items():
        assert line in text, line
        text = text.replace(line, value, 1)
    config.write_text(text, encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    environ |= {"NEWSLETTER_SECRET": "a-test-signing-secret-of-some-length"}
    environ |= {"SENDGRID_API_KEY": SENDGRID_TEST_API_KEY}
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), "send", "--yes"],
        capture_output=True, text=True, timeout=120, env=environ, cwd=config.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def as_sendgrid_writes_it(body: dict[str, Any], personalization: dict[str, Any]) -> bytes:
    mail = EmailMessage()
    mail["Subject"] = body["subject"]
    sender = body["from"]
    mail["From"] = formataddr((sender.get("name", ""), sender["email"]))
    to = personalization["to"][0]
    mail["To"] = formataddr((to.get("name", ""), to["email"]))
    mail["Date"] = format_datetime(dt.datetime.now(dt.UTC))
    mail["Message-ID"] = make_msgid(domain=sender["email"].rpartition("@")[2])
    for name, value in {**body.get("headers", {}), **personalization.get("headers", {})}.items():
        mail[name] = value
    parts = []
    for content in body["content"]:
        value = content["value"]
        for token, replacement in personalization.get("substitutions", {}).items():
            value = value.replace(token, replacement)
        parts.append(value)
    mail.set_content(parts[0])
    mail.add_alternative(parts[1], subtype="html")
    return mail.as_bytes()


def messages(folder: Path, transport: str) -> Iterator[bytes]:
    config = example_copy(folder)
    if transport == "outbox":
        send_example(config, transport, {})
        yield from (p.read_bytes() for p in sorted((folder / "outbox").glob("*/*.eml")))
    elif transport == "smtp":
        with SmtpServer() as server:
            settings = {
                'host = "localhost"': 'host = "127.0.0.1"',
                "port = 587": f"port = {server.port}",
                'security = "starttls"': 'security = "none"',
            }
            send_example(config, transport, settings)
            yield from (m.data for m in server.messages)
    else:
        with SendGridEmulator(api_key=SENDGRID_TEST_API_KEY) as emulator:
            url = 'api_url = "https://api.sendgrid.com"'
            send_example(config, transport, {url: f'api_url = "{emulator.url}"'})
            for body in emulator.accepted():
                for personalization in body["personalizations"]:
                    yield as_sendgrid_writes_it(body, personalization)


def score(message: bytes) -> tuple[float, str]:
    assert SPAMASSASSIN is not None, "install Debian's spamassassin (.ci/run does)"
    report = subprocess.run(
        [SPAMASSASSIN, "-t", "-L"], input=message, capture_output=True, timeout=120
    ).stdout.decode("utf-8", "replace")
    found = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", report, re.MULTILINE)
    assert found, report[-2000:]
    details = report.partition("Content analysis details:")[2]
    return float(found.group(1)), details


@pytest.mark.parametrize("transport", ["outbox", "smtp", "sendgrid"])
def test_the_example_issue_scores_at_most_a_tenth(tmp_path: Path, transport: str) -> None:
    found = list(messages(tmp_path / "example", transport))
    assert found
    for message in found:
        points, rules = score(message)
        assert points <= BAR, f"{transport}: {points} points, rules that fired:\n{rules}"


@pytest.mark.parametrize(
    "folder", [REPO / "examples" / "zh", FIXTURES / "golden-site-ar"], ids=["zh-CN", "ar"]
)
def test_the_chinese_and_arabic_issues_score_at_most_a_tenth(tmp_path: Path, folder: Path) -> None:
    site = tmp_path / folder.name
    shutil.copytree(folder, site, ignore=shutil.ignore_patterns("outbox", "*.db"))
    send_example(site / "config.toml", "outbox", {})
    found = [p.read_bytes() for p in sorted((site / "outbox").glob("*/*.eml"))]
    assert len(found) == 2
    for message in found:
        points, rules = score(message)
        assert points <= BAR, f"{folder.name}: {points} points, rules that fired:\n{rules}"
