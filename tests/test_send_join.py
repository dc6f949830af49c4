"""`newsletter send --join`: a second machine (here, a second folder) helps send an issue
another process claimed, against one state database, each reader once (joining.py)."""

from __future__ import annotations

import collections
import datetime as dt
import shutil
import signal
import socket
import subprocess

from newsletter.state import Ledger

from .conftest import Site
from .support.fixtures import HELD
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .test_send_sendgrid import DATE, delivered, env, newsletter, send, setup_site, start_send


def two_machines(site: Site) -> Site:
    """A copy of the newsletter folder, as a second machine holds it."""
    other = Site(site.root.parent / "machine-b")
    shutil.copytree(site.root, other.root)
    return other


def both_at_work(
    site: Site, emulator: SendGridEmulator, database_url: str, readers: int
) -> tuple[list[str], subprocess.Popen[str], subprocess.Popen[str]]:
    """The first machine's send and a `--join` from a second folder, each with its first
    request held by SendGrid until the test's word: (emails, first, helper)."""
    emails = setup_site(site, emulator, readers, batch_size=10, timeout=HELD)
    machine_b = two_machines(site)
    environ = env(NEWSLETTER_DATABASE_URL=database_url)
    emulator.script(Fault(hold=True), Fault(hold=True))
    first = start_send(site, environ=environ)
    try:
        assert emulator.wait_for_held(1, timeout=60)
        helper = start_send(machine_b, "--join", environ=environ)
        assert emulator.wait_for_held(2, timeout=60)
    except BaseException:
        first.kill()
        raise
    return emails, first, helper


def test_a_second_machine_joins_the_send_and_each_reader_gets_it_once(
    site: Site, sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    # the first request of each machine waits for the test's word: both are at work
    emails, first, helper = both_at_work(site, sendgrid_emulator, database_url, 500)
    try:
        sendgrid_emulator.release()
        out_b, err_b = helper.communicate(timeout=60)
        out_a, err_a = first.communicate(timeout=60)
    finally:
        sendgrid_emulator.release()
        first.kill()

    assert helper.returncode == 0, err_b
    assert first.returncode == 0, err_a
    assert "Traceback" not in err_a + err_b
    said = " ".join(out_b.split())
    assert "Helped send 'Lead story' to list 'main'" in said
    assert f"(claimed by {socket.gethostname()}:{first.pid})" in said
    assert "Sent" in out_a and "to 500 recipients" in out_a
    assert delivered(sendgrid_emulator) == collections.Counter(emails)  # each once
    helped = int(said.split("this process submitted ")[1].split()[0])
    assert 10 <= helped <= 490  # both machines did part of the work
    with Ledger(database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        assert issue.status == "sent" and issue.recipients == 500
        assert ledger.batch_counts(issue.id) == {"submitted": (50, 500)}
        assert ledger.live_helpers(issue.id, dt.timedelta(minutes=15)) == []


def test_a_killed_helpers_request_is_in_doubt_and_the_claimant_finishes_the_rest(
    site: Site, sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    emails, first, helper = both_at_work(site, sendgrid_emulator, database_url, 300)
    try:
        helper.send_signal(signal.SIGKILL)  # its request is in flight
        helper.wait(timeout=10)
        sendgrid_emulator.release()  # SendGrid took it: its answer finds nobody
        _, err = first.communicate(timeout=60)
    finally:
        sendgrid_emulator.release()
        first.kill()

    assert first.returncode == 1, err
    assert "Traceback" not in err
    assert "10 recipients may or may not have the issue" in err
    got = delivered(sendgrid_emulator)
    assert set(got) == set(emails) and max(got.values()) == 1  # nobody twice, nobody lost
    with Ledger(database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        assert ledger.batch_counts(issue.id) == {"submitted": (29, 290), "submitting": (1, 10)}
        doubt = ledger.in_doubt_addresses(issue.id)
    assert len(doubt) == 10 and set(doubt) <= set(got)

    environ = env(NEWSLETTER_DATABASE_URL=database_url)
    rerun = send(site, "--skip-ambiguous", environ=environ)  # SendGrid shows them delivered
    assert rerun.returncode == 0, rerun.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


def test_join_with_nobody_sending_sends_the_issue_itself(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 30, batch_size=10)

    result = send(site, "--join")

    assert result.returncode == 0, result.stderr
    assert "Sent" in result.stdout and "to 30 recipients" in result.stdout
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
    again = send(site, "--join")
    assert again.returncode == 0 and "already sent" in again.stdout


def test_a_busy_issue_points_to_join(site: Site, sendgrid_emulator: SendGridEmulator) -> None:
    setup_site(site, sendgrid_emulator, 30, batch_size=10)
    with Ledger(site.config().database_url) as ledger:  # a live claim on another machine
        ledger.claim("main", dt.date(2024, 3, 5), "elsewhere:1", dt.timedelta(minutes=15))

    result = newsletter(site, "send", "--date", DATE, "--yes")

    assert result.returncode == 1
    assert "is being sent by elsewhere:1" in result.stderr and "--join" in result.stderr
    assert sendgrid_emulator.mail_requests() == []
