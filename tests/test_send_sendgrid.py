"""`newsletter send` end to end: the real CLI, the real sendgrid client, the local emulator."""

from __future__ import annotations

import collections
import csv
import datetime as dt
import os
import signal
import socket
import subprocess
import sys

import pytest

from newsletter.signing import Signer, unsubscribe_url
from newsletter.state import Ledger

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.fixtures import HELD
from .support.sendgrid_emulator import Fault, SendGridEmulator, group_key

SECRET = "a-test-signing-secret-of-some-length"
TRICKY_NAME = 'Zoë "Z" O\'Brien & <Co>\\ \u2603'  # quotes, backslash, markup, non-ASCII
DATE = "2024-03-05"


def setup_site(
    site: Site,
    emulator: SendGridEmulator | None,
    subscribers: int,
    *,
    batch_size: int = 1000,
    extra: str = "",
    url: str | None = None,
    timeout: float = 2,
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
        timeout = {timeout}
        categories = ["daily"]
        """
        + extra
    )
    emails = [f"reader{n:05d}@example.com" for n in range(subscribers)]
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    with (folder / "main.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name", "source"])
        for n, e in enumerate(emails):
            writer.writerow([e, TRICKY_NAME if n == 7 else f"Reader {n}", "test"])
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


def start_send(
    site: Site, *args: str, environ: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`send`, left running: for a test that acts while it sends."""
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path),
         "send", "--date", DATE, "--yes", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ or env(),
    )  # fmt: skip


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
    assert body["personalizations"][7]["to"] == [{"email": emails[7], "name": TRICKY_NAME}]
    assert body["subject"] == "Lead story"
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
        Fault(status=502),
        ok,
        Fault(status=500),
        ok,
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
        True,
        True,
    ]
    assert "SendGrid answered 429 Too Many Requests; retry 1 of 4" in result.stderr
    assert "SendGrid answered 503" in result.stderr


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(Fault(hang=True), id="no-answer-in-time"),
        pytest.param(Fault(drop=True), id="connection-closed-without-answer"),
    ],
)
def test_a_request_sent_whole_but_never_answered_is_in_doubt_not_resent(
    site: Site, sendgrid_emulator: SendGridEmulator, fault: Fault
) -> None:
    """SendGrid had the whole second batch and no answer came: it may have taken it, so a
    retry could send 100 readers the issue twice. It is named as in doubt instead."""
    emails = setup_site(site, sendgrid_emulator, 300, batch_size=100)
    sendgrid_emulator.script(Fault(), fault)

    result = send(site)

    assert result.returncode == 1
    assert "SendGrid had the whole request and may have accepted it" in result.stderr
    assert "batch 2 was being submitted to SendGrid" in result.stderr
    assert "100 recipients may or may not have the issue" in result.stderr
    assert len(sendgrid_emulator.mail_requests()) == 2  # the second was never sent again
    assert delivered(sendgrid_emulator) == collections.Counter(emails[:100])

    rerun = send(site)  # the third batch is still owed; the second stays in doubt

    assert rerun.returncode == 1
    assert "100 recipients may or may not have the issue" in rerun.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails[:100] + emails[200:])

    final = send(site, "--resend-ambiguous")  # Email Activity shows nothing for them
    assert final.returncode == 0, final.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


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


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_api_key_is_named(site: Site, sendgrid_emulator: SendGridEmulator) -> None:
    setup_site(site, sendgrid_emulator, 5)
    result = send(site, environ={k: v for k, v in env().items() if k != "SENDGRID_API_KEY"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        "SendGrid needs an API key: set the environment variable SENDGRID_API_KEY" in result.stderr
    )
    assert not sendgrid_emulator.requests
    with ledger(site) as book:
        assert book.issue("main", dt.date(2024, 3, 5)) is None  # nothing claimed


def test_a_wrong_api_key_stops_with_sendgrids_answer(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 5)
    result = send(site, environ=env(SENDGRID_API_KEY="SG.wrong-key-value"))
    assert result.returncode == 1
    # the suppression sync before sending is the first request to meet the bad key
    assert (
        "cannot sync suppressions from SendGrid: SendGrid refused the request: 401 Unauthorized (check the API key"
        in result.stderr
    )
    assert "The provided authorization grant is invalid" in result.stderr
    assert len(sendgrid_emulator.requests) == 1  # a 401 is not retried
    assert not sendgrid_emulator.mail_requests()


def test_an_unreachable_api_is_retried_then_reported(site: Site) -> None:
    setup_site(site, None, 5, url=f"http://127.0.0.1:{closed_port()}")
    site.config_path.write_text(
        site.config_path.read_text().replace(
            'retry_delay = "0s"', 'attempts = 2\nretry_delay = "0s"'
        )
    )
    result = send(site)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot reach SendGrid at http://127.0.0.1:" in result.stderr
    assert "retry 1 of 1" in result.stderr


def test_the_api_key_never_appears_anywhere(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    key = "SG.very-secret-key-that-must-not-leak"
    sendgrid_emulator.api_key = key  # type: ignore[attr-defined]
    setup_site(site, sendgrid_emulator, 30, batch_size=10)
    sendgrid_emulator.script(
        Fault(), Fault(status=400, errors=[{"field": "subject", "message": "bad"}])
    )
    outputs = []
    for args in (("-vv",), ()):
        result = subprocess.run(
            [sys.executable, "-m", "newsletter", *args, "--config", str(site.config_path), "send", "--date", DATE, "--yes"],
            capture_output=True, text=True, timeout=60, env=env(SENDGRID_API_KEY=key),
        )  # fmt: skip
        outputs += [result.stdout, result.stderr]
    outputs.append(
        newsletter(site, "-vv", "status", "--date", DATE, environ=env(SENDGRID_API_KEY=key)).stdout
    )
    assert len(sendgrid_emulator.recipients()) == 30
    for text in outputs:
        assert key not in text
    for path in site.root.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_dry_run_sends_nothing_and_says_what_would_go(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 1200)
    result = send(site, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "Dry run: would send 'Lead story' to 1,200 recipients" in result.stdout
    assert "in 2 batches" in result.stdout
    assert not sendgrid_emulator.requests  # a dry run does not even sync
    with ledger(site) as book:
        assert book.issue("main", dt.date(2024, 3, 5)) is None


def test_an_empty_issue_is_skipped_unless_allowed(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 3)
    result = newsletter(site, "send", "--date", "2024-04-01", "--yes")
    assert result.returncode == 0
    assert "No stories for 2024-04-01" in result.stdout and "Nothing sent" in result.stdout
    assert not sendgrid_emulator.mail_requests()
    forced = newsletter(site, "send", "--date", "2024-04-01", "--yes", "--allow-empty")
    assert forced.returncode == 0, forced.stderr
    assert len(sendgrid_emulator.recipients()) == 3


def test_bulk_send_asks_first_and_refuses_without_a_terminal(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 3)
    result = newsletter(site, "send", "--date", DATE)
    assert result.returncode == 1
    assert "Send 'Lead story' to 3 subscribers of list 'main' via sendgrid?" in result.stderr
    assert "pass --yes" in result.stderr
    assert not sendgrid_emulator.mail_requests()


def test_test_sends_go_every_time_and_are_never_the_days_issue(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 3)
    for _ in range(2):
        result = newsletter(site, "send", "--list", "test", "--date", DATE)  # no --yes needed
        assert result.returncode == 0, result.stderr
        assert "Test send '[TEST] Lead story' to 1 recipient " in result.stdout
    one_off = newsletter(
        site, "send", "--to", "Boss@Example.com", "--to", "second@example.org", "--date", DATE
    )
    assert one_off.returncode == 0, one_off.stderr
    assert sendgrid_emulator.recipients() == [
        "editor@example.com",
        "editor@example.com",
        "Boss@example.com",
        "second@example.org",
    ]
    assert all(body["subject"].startswith("[TEST] ") for body in sendgrid_emulator.accepted())
    assert all(
        p["custom_args"]["issue_id"] == "test"
        for b in sendgrid_emulator.accepted()
        for p in b["personalizations"]
    )
    with ledger(site) as book:
        assert book.recent_issues() == []
    real = send(site)
    assert real.returncode == 0, real.stderr
    assert sendgrid_emulator.recipients()[4:] == emails


def test_sandbox_mode_validates_without_delivering_or_recording(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 5)
    result = send(site, "--sandbox")
    assert result.returncode == 0, result.stderr
    [request] = sendgrid_emulator.mail_requests()
    assert request.status == 200
    assert request.body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    with ledger(site) as book:
        assert book.recent_issues() == []


def test_sendgrid_unsubscribe_mode_syncs_suppressions_first(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 1600)
    text = site.config_path.read_text().replace('mode = "hosted"', 'mode = "sendgrid"')
    site.config_path.write_text(
        text.replace('categories = ["daily"]', 'categories = ["daily"]\nasm_group_id = 42')
    )
    sendgrid_emulator.suppressions[group_key(42)] = emails[:2]
    sendgrid_emulator.suppressions["bounces"] = emails[100:700]  # more than one page of 500
    sendgrid_emulator.suppressions["spam_reports"] = [emails[900]]
    sendgrid_emulator.suppressions["unsubscribes"] = [emails[901].upper()]

    result = send(site)

    assert result.returncode == 0, result.stderr
    expected = set(emails) - set(emails[:2]) - set(emails[100:700]) - {emails[900], emails[901]}
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(expected)
    paths = [r.path for r in sendgrid_emulator.requests if r.method == "GET"]
    assert paths.count("/v3/suppression/bounces") == 2  # paged
    body = sendgrid_emulator.accepted()[0]
    assert body["asm"] == {"group_id": 42}
    assert 'href="<%asm_group_unsubscribe_raw_url%>"' in body["content"][1]["value"]
    assert "Unsubscribe: <%asm_group_unsubscribe_raw_url%>" in body["content"][0]["value"]
    assert "%%unsubscribe_url" not in str(body)
    with ledger(site) as book:
        assert book.suppression_reasons()[emails[100]] == "bounced"


def test_an_unsubscribe_after_planning_is_honoured_on_resume(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 300, batch_size=100)
    sendgrid_emulator.script(
        Fault(), Fault(status=400, errors=[{"field": None, "message": "nope"}])
    )
    assert send(site).returncode == 1
    late = emails[250]
    assert (
        newsletter(site, "subscribers", "suppress", late, "--reason", "unsubscribed").returncode
        == 0
    )
    resumed = send(site)
    assert resumed.returncode == 0, resumed.stderr
    counts = delivered(sendgrid_emulator)
    assert late not in counts
    assert counts == collections.Counter(set(emails) - {late})


def test_a_second_send_while_one_runs_refuses(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    # the first batch is in flight until we say so (the client waits as long as it takes)
    emails = setup_site(site, sendgrid_emulator, 500, batch_size=100, timeout=HELD)
    sendgrid_emulator.script(Fault(hold=True))
    first = start_send(site)
    try:
        held = sendgrid_emulator.wait_for_held(1, timeout=60)
        second = send(site) if held else None
    finally:
        sendgrid_emulator.release()
    _, err = first.communicate(timeout=60)
    assert second is not None, err
    assert second.returncode == 1, second.stdout + second.stderr
    assert "is being sent by" in second.stderr and "not sending it twice" in second.stderr
    assert first.returncode == 0, err
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
    assert len(sendgrid_emulator.mail_requests()) == 5  # the second send asked for nothing


def test_killed_mid_send_resumes_without_sending_anyone_twice(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 1000, batch_size=100, timeout=HELD)
    # three batches answered, the fourth held in flight until the process is dead
    sendgrid_emulator.script(Fault(), Fault(), Fault(), Fault(hold=True))
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "send", "--date", DATE, "--yes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(),
    )  # fmt: skip
    try:
        assert sendgrid_emulator.wait_for_held(1, timeout=60)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        sendgrid_emulator.release()  # SendGrid took the request; its answer finds nobody
    assert sendgrid_emulator.wait_for_requests(4, timeout=30)
    before = delivered(sendgrid_emulator)
    assert sum(before.values()) == 400

    rerun = send(site)

    # the batch in flight is reported by its readers, not resent; the other 600 went out
    assert rerun.returncode == 1
    assert "batch 4 was being submitted to SendGrid" in rerun.stderr
    assert "100 recipients may or may not have the issue" in rerun.stderr
    with ledger(site) as book:
        issue = book.issue("main", dt.date(2024, 3, 5))
        assert issue is not None
        [batch] = book.batches(issue.id, ["submitting"])
        _, rows = book.batch_recipients(batch.id)
    assert {row[0] for row in rows} == set(emails[300:400]) <= set(before)
    assert delivered(sendgrid_emulator) == collections.Counter(emails)

    final = send(site, "--skip-ambiguous")  # SendGrid's activity shows they got it
    assert final.returncode == 0, final.stderr
    assert "Sent" in final.stdout and "to 900 of 1,000 recipients" in final.stdout
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
    assert "already sent" in send(site).stdout
