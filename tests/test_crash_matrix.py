"""The promise under SIGKILL, on every transport: nobody lost, nobody sent twice.

The real `newsletter send` process is killed at each named point of a send
(newsletter/failpoints.py) and at moments chosen from outside (the receiving
side has seen some messages), then run again with the default options. What
the receiving side actually got is counted per address: everyone exactly once,
or named as in doubt by the rerun (at most the messages in flight: one per
connection for SMTP, the requests in flight for SendGrid, none for the outbox),
and nobody the ledger counts as sent who did not get it. RELIABILITY.md has the
table of these runs.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from newsletter.ledger import Ledger

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .support.smtp_server import SmtpServer

SECRET = "a-test-signing-secret-of-some-length"
DATE = "2024-03-05"
PEOPLE = 300
BATCH = 100
WORKERS = 2


@dataclass
class Receiver:
    """The far side of one transport: how many copies of the issue each address got."""

    transport: str
    site: Site
    config: str
    count: Callable[[], collections.Counter[str]]
    slow: Callable[[], None]  # answer slowly from now on, so a kill lands mid-send
    fast: Callable[[], None]
    rewritten: Callable[[], list[str]] = field(default=lambda: [])


@dataclass
class Run:
    """One `newsletter send` process and what it said."""

    code: int
    stdout: str
    stderr: str


def write_site(site: Site, transport: str, receiver_config: str) -> list[str]:
    site.story("lead", title="Lead story", url="https://example.com/lead")
    site.story("second", title="Second story", date="2024-03-05 05:00:00+00:00")
    site.write_config(
        extra=f"""
        [delivery]
        transport = "{transport}"
        batch_size = {BATCH}
        workers = {WORKERS}
        retry_delay = "0s"
        max_retry_delay = "1s"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        """
        + receiver_config
    )
    emails = [f"reader{n:04d}@example.com" for n in range(PEOPLE)]
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    with (folder / "main.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        writer.writerows([e, f"Reader {n}"] for n, e in enumerate(emails))
    return emails


def environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return {**base, "SENDGRID_API_KEY": SENDGRID_TEST_API_KEY, "NEWSLETTER_SECRET": SECRET, **extra}


def command(site: Site, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "newsletter", "--config", str(site.config_path),
        "send", "--date", DATE, "--yes", *flags,
    ]  # fmt: skip


def send(site: Site, *flags: str, failpoints: str = "") -> Run:
    extra = {"NEWSLETTER_FAILPOINTS": failpoints} if failpoints else {}
    done = subprocess.run(
        command(site, *flags), capture_output=True, text=True, timeout=120, env=environment(**extra)
    )
    return Run(done.returncode, done.stdout, done.stderr)


def send_killed_when(site: Site, reached: Callable[[], bool]) -> Run:
    """Start a send and SIGKILL it once `reached()` (what the far side has seen) holds."""
    process = subprocess.Popen(
        command(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    deadline = time.monotonic() + 60
    while not reached() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=30)
    return Run(process.returncode, stdout, stderr)


def submitted_addresses(site: Site) -> list[str]:
    """Everyone the ledger counts as sent: the recipients of its submitted batches."""
    with Ledger(site.config().database_url) as ledger:
        issue = ledger.issue("main", dt.date(2024, 3, 5))
        return [] if issue is None else ledger.batch_addresses(issue.id, ["submitted"])


def named_in_doubt(site: Site, run: Run) -> set[str]:
    """Who the run's report names as in doubt: the first few in the report itself, all of
    them from `newsletter status --in-doubt` (where the report sends the editor)."""
    listed = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path),
         "status", "--in-doubt", "--date", DATE],
        capture_output=True, text=True, timeout=60, env=environment(),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    everyone = set(listed.stdout.split())
    if "in doubt:" not in run.stderr:
        return set()
    section = run.stderr.split("in doubt:", 1)[1].split("Then run the same command", 1)[0]
    assert f"{len(everyone):,} recipients may or may not have the issue" in section
    shown = {line.strip() for line in section.splitlines()[1:] if "@" in line}
    assert shown and shown <= everyone
    return everyone


# -- the far sides -------------------------------------------------------------------------


@pytest.fixture
def receiver(request: pytest.FixtureRequest, site: Site) -> Iterator[Receiver]:
    """The transport named by the test's parameter, and its far side, running."""
    kind = request.param
    if kind == "sendgrid":
        with SendGridEmulator(api_key=SENDGRID_TEST_API_KEY) as emulator:
            config = f"""
            [sendgrid]
            api_url = "{emulator.url}"
            timeout = 5
            """
            yield Receiver(
                kind,
                site,
                config,
                count=lambda: collections.Counter(emulator.recipients()),
                slow=lambda: emulator.fail_all(Fault(delay=0.3)),
                fast=emulator.clear_faults,
            )
    elif kind == "smtp":
        with SmtpServer() as server:
            config = f"""
            [smtp]
            host = "127.0.0.1"
            port = {server.port}
            security = "none"
            timeout = 5
            """

            def received() -> collections.Counter[str]:
                return collections.Counter(m.rcpt_tos[0] for m in list(server.messages))

            def slow() -> None:
                server.handler.data_delay = 0.02

            def fast() -> None:
                server.handler.data_delay = 0.0

            yield Receiver(kind, site, config, count=received, slow=slow, fast=fast)
    else:
        folder = site.root / "outbox" / f"{DATE}-main"
        seen: dict[str, int] = {}  # file -> inode when first counted: a rewrite is a second copy

        def files() -> collections.Counter[str]:
            found: collections.Counter[str] = collections.Counter()
            for path in folder.glob("*.eml") if folder.is_dir() else []:
                address = path.read_bytes().split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0]
                found[address.decode().rsplit("<", 1)[-1].rstrip(">")] += 1
                seen.setdefault(path.name, path.stat().st_ino)
            return found

        def rewritten() -> list[str]:
            return [n for n, ino in seen.items() if (folder / n).stat().st_ino != ino]

        yield Receiver(
            kind, site, "", count=files, slow=lambda: None, fast=lambda: None, rewritten=rewritten
        )


def setup(receiver: Receiver) -> list[str]:
    return write_site(receiver.site, receiver.transport, receiver.config)


def check_promise(receiver: Receiver, emails: list[str], rerun: Run) -> set[str]:
    """Everyone once or named as in doubt; nobody counted as sent who was not. Returns the
    addresses named in doubt."""
    got = receiver.count()
    assert set(got) <= set(emails)
    twice = sorted(a for a, n in got.items() if n > 1) + receiver.rewritten()
    assert not twice, f"sent twice: {twice[:5]}\n{rerun.stderr}"
    doubt = named_in_doubt(receiver.site, rerun)
    missing = set(emails) - set(got)
    assert missing <= doubt, f"lost, not named: {sorted(missing - doubt)[:5]}\n{rerun.stderr}"
    counted = submitted_addresses(receiver.site)
    assert set(counted) <= set(got), "counted as sent but never received"
    if receiver.transport == "smtp":
        assert len(doubt) <= WORKERS  # one message per connection
    elif receiver.transport == "sendgrid":
        assert len(doubt) <= WORKERS * BATCH  # the requests in flight
    else:
        assert not doubt  # the folder says who has it
    if doubt:
        assert rerun.code == 1
    else:
        assert rerun.code == 0, rerun.stderr
        assert set(got) == set(emails)
        assert f"to {PEOPLE:,} recipients" in rerun.stdout
    return doubt


def finish(receiver: Receiver, emails: list[str], doubt: set[str]) -> bool:
    """The editor's last step: with what the far side says, resend or skip those in doubt.
    False where the issue stays unfinished: some in doubt got it, others did not, and
    either flag would be wrong for someone."""
    if not doubt:
        return True
    got = receiver.count()
    received = {a for a in doubt if got[a]}
    if received and received != doubt:
        return False
    flag = "--skip-ambiguous" if received else "--resend-ambiguous"
    final = send(receiver.site, flag)
    assert final.code == 0, final.stderr
    assert receiver.count() == collections.Counter(emails)
    assert not receiver.rewritten()
    if flag == "--skip-ambiguous":
        assert f"{len(doubt):,} recipients in doubt were not sent again" in final.stderr
    return True


# -- the matrix ------------------------------------------------------------------------------

TRANSPORTS = ("sendgrid", "smtp", "outbox")
# (point, nth time reached): before the first batch, inside one, between two, at the end
EVERYWHERE = [
    "send.claimed",
    "send.planned",
    "deliver.batch_taken:2",
    "deliver.batches_recorded:2",
    "send.finishing",
]
ON_ONE_PATH = [
    ("smtp", "deliver.message_sent:150"),  # one message accepted, not yet recorded
    ("sendgrid", "deliver.batch_sent:2"),  # a whole request accepted, not yet recorded
    ("outbox", "deliver.batch_sent:2"),
    ("outbox", "outbox.written:120"),  # a file written, not yet in place
]
MATRIX = [(t, p) for t in TRANSPORTS for p in EVERYWHERE] + ON_ONE_PATH


@pytest.mark.parametrize(("receiver", "point"), MATRIX, indirect=["receiver"])
def test_killed_at_a_point_then_rerun_sends_everyone_once(receiver: Receiver, point: str) -> None:
    emails = setup(receiver)

    killed = send(receiver.site, failpoints=point)
    assert killed.code == -signal.SIGKILL, killed.stderr

    rerun = send(receiver.site)
    doubt = check_promise(receiver, emails, rerun)
    if point == "deliver.message_sent:150":
        assert len(doubt) >= 1  # the message accepted but not recorded is named
    if finish(receiver, emails, doubt):
        assert "already sent" in send(receiver.site).stdout


@pytest.mark.parametrize("receiver", TRANSPORTS, indirect=True)
@pytest.mark.parametrize("after", [1, 5, 40])
def test_killed_while_the_far_side_is_receiving_then_rerun_sends_everyone_once(
    receiver: Receiver, after: int
) -> None:
    """Kill moments chosen from outside: when the far side has taken `after` recipients."""
    emails = setup(receiver)
    receiver.slow()
    killed = send_killed_when(receiver.site, lambda: sum(receiver.count().values()) >= after)
    assert killed.code == -signal.SIGKILL
    receiver.fast()

    rerun = send(receiver.site)
    doubt = check_promise(receiver, emails, rerun)
    finish(receiver, emails, doubt)
