"""Scheduled sends on SendGrid (newsletter/scheduling.py): the issue submitted ahead under
one batch ID, resent exactly once after a crash before the cancel deadline, taken back
with `newsletter cancel` (or held with `pause`), replaced with `send --replace`.

The real `newsletter send` runs against the emulator, which holds each scheduled request
until its clock, moved by the test, reaches `send_at`, and applies cancels and pauses as
SendGrid documents (a cancel inside the last ten minutes is not honoured).
"""

from __future__ import annotations

import collections
import datetime as dt
import signal

import pytest

from newsletter.state import Ledger

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.faults import (
    DATE,
    PEOPLE,
    Run,
    named_in_doubt,
    newsletter,
    record,
    send,
    send_killed_when,
    write_site,
)
from .support.fixtures import HELD
from .support.sendgrid_emulator import Fault, SendGridEmulator

MINUTE = 60
AHEAD = "sendgrid (submitted ahead)"  # RELIABILITY.md's label for these runs


@pytest.fixture
def emulator() -> SendGridEmulator:
    with SendGridEmulator(api_key=SENDGRID_TEST_API_KEY) as emulator:
        yield emulator


def scheduled_site(site: Site, emulator: SendGridEmulator) -> list[str]:
    # the client waits as long as a held request takes (a retry would be a second copy)
    return write_site(
        site,
        "sendgrid",
        f"""
        [sendgrid]
        api_url = "{emulator.url}"
        timeout = {HELD}
        """,
    )


def minutes_ahead(emulator: SendGridEmulator, minutes: float) -> str:
    """`--at` for a moment `minutes` after now (the project's clock is the real one)."""
    moment = dt.datetime.fromtimestamp(emulator.now() + minutes * MINUTE, dt.UTC)
    return moment.replace(microsecond=0).isoformat()


def delivered_at_once_each(emulator: SendGridEmulator, emails: list[str], at: str) -> None:
    """Everyone got the issue exactly once, when it was due, and nobody before."""
    assert emulator.delivered() == collections.Counter()  # held until its time
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp())
    assert emulator.delivered() == collections.Counter(emails)
    when = {d.at for d in emulator.deliveries()}
    assert when == {dt.datetime.fromisoformat(at).timestamp()}


def attempts(site: Site) -> list[tuple[str, str]]:
    with Ledger(site.config().database_url) as ledger:
        issue = ledger.issue("main", dt.date(2024, 3, 5))
        assert issue is not None
        return [(a.batch_id, a.status) for a in ledger.attempts(issue.id)]


def test_a_scheduled_send_is_held_until_its_time_under_one_batch(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)

    result = send(site, "--at", at)

    assert result.code == 0, result.stderr
    assert "Scheduled 'Lead story'" in result.stdout and "300 recipients" in result.stdout
    assert "it can be taken back: newsletter cancel --list main --date 2024-03-05" in " ".join(
        result.stdout.split()
    )
    [(batch_id, state)] = attempts(site)
    assert state == "active"
    paths = [r.path for r in emulator.requests]
    assert paths.index("/v3/mail/batch") < paths.index("/v3/mail/send")  # recorded first
    bodies = emulator.accepted()
    assert {b["batch_id"] for b in bodies} == {batch_id}
    assert {b["send_at"] for b in bodies} == {int(dt.datetime.fromisoformat(at).timestamp())}
    status = newsletter(site, "status")
    assert "scheduled" in status.stdout
    delivered_at_once_each(emulator, emails, at)


KILL_POINTS = [
    "send.planned",
    "deliver.batch_taken:2",
    "deliver.batch_sent:2",  # a whole request accepted, not yet recorded: in doubt
    "deliver.batches_recorded:2",
    "send.finishing",
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_anywhere_then_rerun_before_the_deadline_delivers_everyone_exactly_once(
    site: Site, emulator: SendGridEmulator, point: str
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)
    killed = send(site, "--at", at, failpoints=point)
    assert killed.code == -signal.SIGKILL, killed.stderr

    rerun = send(site, "--at", at)

    assert rerun.code == 0, rerun.stderr
    assert "in doubt" not in rerun.stderr
    assert named_in_doubt(site, rerun) == set()
    if point == "deliver.batch_sent:2":  # the request in doubt: its batch cancelled, all again
        assert "SendGrid cancelled that batch" in rerun.stderr
        (first, old), (_, new) = attempts(site)
        assert (old, new) == ("replaced", "active")
        assert emulator.statuses() == {first: "cancel"}
    delivered_at_once_each(emulator, emails, at)
    record(AHEAD, f"at {point}", emails, emulator.delivered(), named_in_doubt(site, rerun))
    assert "already sent" in send(site, "--at", at).stdout


def test_killed_with_a_request_in_flight_then_rerun_before_the_deadline_resends_it_once(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)
    emulator.script(Fault(), Fault(hold=True))  # the second request: taken, never answered
    killed = send_killed_when(site, lambda: emulator.wait_for_held(1, timeout=0), "--at", at)
    assert killed.code == -signal.SIGKILL
    emulator.release()
    assert emulator.wait_for_requests(2, timeout=30)

    rerun = send(site, "--at", at)

    assert rerun.code == 0, rerun.stderr
    assert "SendGrid cancelled that batch" in rerun.stderr
    delivered_at_once_each(emulator, emails, at)
    record(AHEAD, "after 1 received", emails, emulator.delivered(), set())


def test_in_doubt_after_the_deadline_falls_back_to_naming_the_readers(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 10.5)  # the deadline passes before a rerun can cancel
    killed = send(site, "--at", at, failpoints="deliver.batch_sent:2")
    assert killed.code == -signal.SIGKILL

    rerun = send(site, "--at", at)

    assert rerun.code == 1
    assert "Too late to cancel the batch in doubt" in rerun.stderr
    doubt = named_in_doubt(site, rerun)
    assert 100 <= len(doubt) <= 200  # the requests in flight, one per sender
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp())
    got = once_each_or_named(emulator, emails, doubt)
    fault = "at deliver.batch_sent:2, rerun after the cancel deadline"
    record(AHEAD, fault, emails, got, doubt)
    final = send(site, "--skip-ambiguous")  # the editor looked them up in SendGrid's activity
    assert final.code == 0, final.stderr
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp() + MINUTE)
    assert emulator.delivered() == got  # nobody twice, nothing new


def test_cancel_before_the_deadline_then_a_corrected_issue_replaces_it(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)
    assert send(site, "--at", at).code == 0

    cancelled = newsletter(site, "cancel", "--date", DATE)

    assert cancelled.code == 0, cancelled.stderr
    assert "Cancelled the 2024-03-05 issue for list 'main'" in cancelled.stdout
    status = newsletter(site, "status", "--date", DATE)
    assert "cancelled" in status.stdout
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp())
    assert emulator.delivered() == collections.Counter()  # nobody got the mistake
    with Ledger(site.config().database_url) as ledger:  # nor does the archive or the history
        assert ledger.sent_issue(["main"], dt.date(2024, 3, 5)) is None
        assert ledger.sent_story_keys("main", dt.date(2024, 3, 6)) == frozenset()
    again = send(site, "--at", minutes_ahead(emulator, 30))
    assert again.code == 1 and "was cancelled" in again.stderr and "--replace" in again.stderr

    site.story("lead", title="Lead story, corrected", url="https://example.com/lead")
    later = minutes_ahead(emulator, 30)
    replaced = send(site, "--replace", "--at", later)

    assert replaced.code == 0, replaced.stderr
    delivered_at_once_each(emulator, emails, later)
    subjects = {
        b["content"][1]["value"].count("Lead story, corrected") > 0
        for b in emulator.accepted()[-3:]
    }
    assert subjects == {True}
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        assert issue.status == "sent" and issue.recipients == PEOPLE
        assert [a.status for a in ledger.attempts(issue.id)] == ["cancelled", "active"]
        assert ledger.sent_issue(["main"], dt.date(2024, 3, 5)) is not None


def test_cancel_after_the_deadline_is_refused_and_names_it(
    site: Site, emulator: SendGridEmulator
) -> None:
    scheduled_site(site, emulator)
    assert send(site, "--at", minutes_ahead(emulator, 10.5)).code == 0

    late = newsletter(site, "cancel", "--date", DATE)

    assert late.code == 1
    assert "too late" in late.stderr and "ten minutes before" in late.stderr
    assert "Traceback" not in late.stderr
    assert emulator.statuses() == {}


def test_pause_holds_the_issue_past_its_time_until_resume(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)
    assert send(site, "--at", at).code == 0

    paused = newsletter(site, "pause", "--date", DATE)
    assert paused.code == 0, paused.stderr
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp() + 5 * MINUTE)
    assert emulator.delivered() == collections.Counter()
    assert "paused" in newsletter(site, "status").stdout

    resumed = newsletter(site, "resume", "--date", DATE)
    assert resumed.code == 0, resumed.stderr
    emulator.advance(1)
    assert emulator.delivered() == collections.Counter(emails)


def test_sendgrids_limit_of_ten_held_batches_is_said(
    site: Site, emulator: SendGridEmulator
) -> None:
    scheduled_site(site, emulator)
    assert send(site, "--at", minutes_ahead(emulator, 30)).code == 0
    hold_ten_batches(emulator)

    refused = newsletter(site, "cancel", "--date", DATE)

    assert refused.code == 1
    assert "The maximum number of cancellations/pauses (10) has been reached" in refused.stderr
    assert "at most 10 cancelled or paused batches" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert "scheduled" in newsletter(site, "status").stdout  # still going out


def test_at_is_refused_where_nothing_can_hold_the_issue(site: Site) -> None:
    write_site(site, "outbox", "")
    result: Run = send(site, "--at", "07:00")
    assert result.code == 2  # a setting to change, as every config error
    assert "--at needs the sendgrid transport" in result.stderr


def test_the_scheduler_submits_ahead_and_sendgrid_holds_the_issue_until_its_time(
    site: Site, emulator: SendGridEmulator
) -> None:
    """`[schedule] submit_ahead`: the daily run fires that long before the send time, for
    that day's issue, and SendGrid delivers it at the send time."""
    from newsletter.scheduler import trigger_for

    from .test_scheduler_service import Clock, real_site, service

    send_time = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)).replace(microsecond=0)
    emails = real_site(site, emulator, send_time, 40, batch_size=10)
    text = site.config_path.read_text()
    site.config_path.write_text(text.replace("[schedule]\n", '[schedule]\nsubmit_ahead = "20m"\n'))
    trigger = trigger_for(site.config())
    fire = trigger.fire_time(trigger.issue_date(send_time - dt.timedelta(minutes=20)))
    assert fire == send_time - dt.timedelta(minutes=20)

    report = service(site, Clock(fire + dt.timedelta(seconds=5))).run_issue(fire)

    assert report is not None and report.outcome == "sent", report
    assert report.send_at == send_time and report.date == trigger.issue_date(fire)
    assert {b["send_at"] for b in emulator.accepted()} == {int(send_time.timestamp())}
    assert emulator.delivered() == collections.Counter()
    emulator.advance_to(send_time.timestamp())
    assert emulator.delivered() == collections.Counter(emails)


def test_a_rerun_that_cannot_cancel_for_sendgrids_limit_says_so_and_names_the_readers(
    site: Site, emulator: SendGridEmulator
) -> None:
    emails = scheduled_site(site, emulator)
    at = minutes_ahead(emulator, 30)
    killed = send(site, "--at", at, failpoints="deliver.batch_sent:2")
    assert killed.code == -signal.SIGKILL
    hold_ten_batches(emulator)

    rerun = send(site, "--at", at)

    assert rerun.code == 1
    assert "Could not cancel the batch in doubt" in rerun.stderr
    assert "at most 10 cancelled or paused batches" in rerun.stderr
    doubt = named_in_doubt(site, rerun)  # as without scheduling: named, never resent
    assert 100 <= len(doubt) <= 200
    emulator.advance_to(dt.datetime.fromisoformat(at).timestamp())
    once_each_or_named(emulator, emails, doubt)


def once_each_or_named(
    emulator: SendGridEmulator, emails: list[str], doubt: set[str]
) -> collections.Counter[str]:
    """The promise after a kill at `deliver.batch_sent:2`: the batch whose answer was cut
    went through; the other sender's request may have been killed before or after it
    reached SendGrid. Nobody got it twice, and whoever did not get it is named."""
    got = emulator.delivered()
    assert max(got.values()) == 1
    assert set(emails) - set(got) <= doubt
    assert len(got) >= len(emails) - len(doubt) + 100
    return got


def hold_ten_batches(emulator: SendGridEmulator) -> None:
    """Ten other sends cancelled already: SendGrid's limit of held batches is reached."""
    import sendgrid

    client = sendgrid.SendGridAPIClient(api_key=SENDGRID_TEST_API_KEY, host=emulator.url)
    for _ in range(10):
        batch = client.client.mail.batch.post().to_dict["batch_id"]
        client.client.user.scheduled_sends.post(
            request_body={"batch_id": batch, "status": "cancel"}
        )


@pytest.mark.parametrize(
    ("at", "says"),
    [
        ("soon", "--at 'soon': give a time (07:00) or a date and time"),
        ("2020-01-01 07:00", "the send time 2020-01-01 07:00 UTC has passed"),
        ("2099-01-01 07:00", "is more than 72 hours ahead"),
    ],
)
def test_a_send_time_that_cannot_be_held_is_named(
    site: Site, emulator: SendGridEmulator, at: str, says: str
) -> None:
    scheduled_site(site, emulator)
    result = send(site, "--at", at)
    assert result.code == 1 and "Traceback" not in result.stderr
    assert says in result.stderr
    assert emulator.mail_requests() == []
