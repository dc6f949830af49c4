"""`newsletter send` end to end: the real CLI, the real sendgrid client, the local emulator."""

from __future__ import annotations

import collections
import datetime as dt
import os
import subprocess
import sys

from newsletter.ledger import Ledger
from newsletter.signing import Signer, unsubscribe_url

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.sendgrid_emulator import Fault, SendGridEmulator

SECRET = "a-test-signing-secret-of-some-length"
DATE = "2024-03-05"


def setup_site(
    site: Site,
    emulator: SendGridEmulator | None,
    subscribers: int,
    *,
    batch_size: int = 1000,
    extra: str = "",
    url: str | None = None,
) -> list[str]:
    site.story(
        "lead", title="Lead story", date="2024-03-05 06:00:00+00:00", url="https://example.com/lead"
    )
    site.story("second", title="Second story", date="2024-03-05 05:00:00+00:00")
    api_url = url or (emulator.url if emulator else "http://127.0.0.1:9")
    site.write_config(
        extra=f"""
        [delivery]
        transport = "sendgrid"
        workers = 1
        batch_size = {batch_size}
        retry_delay = "0s"
        max_retry_delay = "1s"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        mailto = "unsubscribe@news.example.com"

        [sendgrid]
        api_url = "{api_url}"
        timeout = 2
        categories = ["daily"]
        """
        + extra
    )
    emails = [f"reader{n:05d}@example.com" for n in range(subscribers)]
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    lines = ["email,name,source"] + [f"{e},Reader {n},test" for n, e in enumerate(emails)]
    (folder / "main.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "test.csv").write_text("email,name\neditor@example.com,Ed\n", encoding="utf-8")
    return emails


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return {**base, "SENDGRID_API_KEY": SENDGRID_TEST_API_KEY, "NEWSLETTER_SECRET": SECRET, **extra}


def newsletter(
    site: Site, *args: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), *args],
        capture_output=True, text=True, timeout=120, env=environ or env(),
    )  # fmt: skip


def send(
    site: Site, *args: str, environ: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return newsletter(site, "send", "--date", DATE, "--yes", *args, environ=environ)


def delivered(emulator: SendGridEmulator) -> collections.Counter[str]:
    return collections.Counter(emulator.recipients())


def ledger(site: Site) -> Ledger:
    return Ledger(site.config().database_url)


def test_a_list_goes_out_in_batches_of_1000_each_reader_once(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 2500)
    suppressed = emails[10:13]
    assert newsletter(site, "subscribers", "suppress", *suppressed).returncode == 0

    result = send(site)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"to 2,497 recipients of list 'main', {DATE} in 3 batches via sendgrid" in result.stdout
    assert "3 suppressed addresses skipped" in result.stdout
    requests = sendgrid_emulator.mail_requests()
    assert len(requests) == 3 and all(r.accepted and r.validated for r in requests)
    assert [r.personalizations for r in requests] == [1000, 1000, 497]
    counts = delivered(sendgrid_emulator)
    assert set(counts) == set(emails) - set(suppressed)
    assert max(counts.values()) == 1

    body = requests[0].body
    assert body["subject"] == "The Test Times: Tuesday, 5 March 2024"
    assert body["from"] == {"email": "news@example.com", "name": "The Test Times"}
    assert body["reply_to"] == {"email": "editor@example.com"}
    assert body["categories"] == ["daily"]
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "custom_args" not in body
    html = body["content"][1]["value"]
    assert 'href="%%unsubscribe_url%%"' in html and "%%email%%" in html
    signer = Signer(SECRET)
    for p in body["personalizations"][:5] + body["personalizations"][-5:]:
        [to] = p["to"]
        address = to["email"]
        url = unsubscribe_url(
            "https://news.example.com/n", signer.sign("unsubscribe", "main", address)
        )
        assert to["name"].startswith("Reader ")
        assert p["substitutions"] == {
            "%%email%%": address,
            "%%email:text%%": address,
            "%%unsubscribe_url%%": url,
            "%%unsubscribe_url:text%%": url,
        }
        assert p["headers"] == {
            "List-Unsubscribe": f"<{url}>, <mailto:unsubscribe@news.example.com?subject=unsubscribe>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        assert p["custom_args"]["list"] == "main" and p["custom_args"]["issue_id"].isdigit()
        assert signer.verify("unsubscribe", url.rsplit("/", 1)[1]) == ("main", address)

    status = newsletter(site, "status", "--date", DATE)
    assert "main, 2024-03-05: sent, 2,497 recipients, via sendgrid" in status.stdout
    message_ids = [r.message_id for r in requests]
    for message_id in message_ids:
        assert message_id and message_id in status.stdout

    again = send(site)
    assert again.returncode == 0
    assert "was already sent (2,497 recipients): nothing to do" in again.stdout
    assert len(sendgrid_emulator.mail_requests()) == 3


def test_fault_storms_still_deliver_everyone_exactly_once(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 450, batch_size=100)
    ok = Fault()  # answered normally
    sendgrid_emulator.script(
        Fault(status=429, headers={"Retry-After": "0", "X-RateLimit-Remaining": "0"}),
        ok,
        Fault(status=503),
        Fault(status=503),
        ok,
        Fault(hang=True),  # no answer: the client's 2 s timeout, then a retry
        ok,
        Fault(drop=True),
        Fault(status=500),
        ok,
    )

    result = send(site)

    assert result.returncode == 0, result.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
    requests = sendgrid_emulator.mail_requests()
    assert [r.accepted for r in requests] == [
        False,
        True,
        False,
        False,
        True,
        False,
        True,
        False,
        False,
        True,
        True,
    ]
    assert "SendGrid answered 429 Too Many Requests; retry 1 of 4" in result.stderr
    assert "no answer from SendGrid within 2s; retry 1 of 4" in result.stderr


def test_a_rejected_request_stops_the_send_and_shows_sendgrids_errors(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 250, batch_size=100)
    sendgrid_emulator.script(
        Fault(),  # batch 1 goes through
        Fault(
            status=400,
            errors=[
                {
                    "field": "from.email",
                    "message": "The from address does not match a verified Sender Identity.",
                }
            ],
        ),
    )

    result = send(site)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        "SendGrid refused the request: 400 Bad Request: from.email: The from address does not match a verified Sender Identity."
        in result.stderr
    )
    assert "100 of 250 recipients were submitted" in result.stderr
    assert "Run the same command again to resume" in result.stderr
    assert len(sendgrid_emulator.mail_requests()) == 2  # no retry of a 400, batch 3 never tried
    with ledger(site) as book:
        issue = book.issue("main", dt.date(2024, 3, 5))
        assert issue is not None and issue.status == "failed"
        assert book.sent_story_keys("main", dt.date(2024, 3, 6)) == frozenset()  # not complete yet

    resumed = send(site)

    assert resumed.returncode == 0, resumed.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
    with ledger(site) as book:
        assert book.sent_story_keys("main", dt.date(2024, 3, 6)) == {
            "https://example.com/lead",
            "desk:second.md",
        }
