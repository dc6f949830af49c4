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
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from newsletter.words import plural

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.faults import (
    BATCH,
    DATE,
    WORKERS,
    OutboxFolder,
    Run,
    named_in_doubt,
    newsletter,
    record,
    send,
    send_killed_when,
    submitted_addresses,
    write_site,
)
from .support.fixtures import HELD
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .support.smtp_server import SmtpServer


@dataclass
class Receiver:
    """The far side of one transport: how many copies of the issue each address got."""

    transport: str
    site: Site
    config: str
    count: Callable[[], collections.Counter[str]]
    # set the far side up so that a kill lands mid-send, once `after` readers or requests
    # went through; returns when that moment has come
    arm: Callable[[int], Callable[[], bool]] = field(default=lambda _: lambda: True)
    disarm: Callable[[], None] = field(default=lambda: None)
    rewritten: Callable[[], list[str]] = field(default=lambda: [])
    # SendGrid with sender processes: a batch per reader, 300 batches for two processes
    batch: int = BATCH

    @property
    def label(self) -> str:
        return f"{self.transport} (sender processes)" if self.batch != BATCH else self.transport


# -- the far sides -------------------------------------------------------------------------


@pytest.fixture
def receiver(request: pytest.FixtureRequest, site: Site) -> Iterator[Receiver]:
    """The transport named by the test's parameter, and its far side, running."""
    kind = request.param
    if kind in ("sendgrid", "sendgrid-processes"):
        with SendGridEmulator(api_key=SENDGRID_TEST_API_KEY) as emulator:
            # the client waits as long as a held request takes (a retry would be a second copy)
            config = f"""
            [sendgrid]
            api_url = "{emulator.url}"
            timeout = {HELD}
            """

            def hold_after(answered: int) -> Callable[[], bool]:
                emulator.script(*[Fault()] * answered, Fault(hold=True))
                return lambda: emulator.wait_for_held(1, timeout=0)

            def let_go() -> None:
                emulator.release()  # the held request is taken: its answer finds nobody
                assert emulator.wait_for_requests(1, timeout=30)

            yield Receiver(
                "sendgrid",
                site,
                config,
                count=lambda: collections.Counter(emulator.recipients()),
                arm=hold_after,
                disarm=let_go,
                batch=1 if kind == "sendgrid-processes" else BATCH,
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

            def slow_after(messages: int) -> Callable[[], bool]:
                server.handler.data_delay = 0.02
                return lambda: sum(received().values()) >= messages

            def fast() -> None:
                server.handler.data_delay = 0.0

            yield Receiver(kind, site, config, count=received, arm=slow_after, disarm=fast)
    else:
        outbox = OutboxFolder(site.root / "outbox" / f"{DATE}-main")
        yield Receiver(kind, site, "", count=outbox.count, rewritten=outbox.rewritten)


def setup(receiver: Receiver) -> list[str]:
    return write_site(receiver.site, receiver.transport, receiver.config, receiver.batch)


def check_promise(receiver: Receiver, emails: list[str], rerun: Run, fault: str) -> set[str]:
    """Everyone once or named as in doubt; nobody counted as sent who was not. Returns the
    addresses named in doubt."""
    got = receiver.count()
    doubt = named_in_doubt(receiver.site, rerun)
    record(receiver.label, fault, emails, got, doubt)
    assert set(got) <= set(emails)
    twice = sorted(a for a, n in got.items() if n > 1) + receiver.rewritten()
    assert not twice, f"sent twice: {twice[:5]}\n{rerun.stderr}"
    missing = set(emails) - set(got)
    assert missing <= doubt, f"lost, not named: {sorted(missing - doubt)[:5]}\n{rerun.stderr}"
    counted = submitted_addresses(receiver.site)
    assert set(counted) <= set(got), "counted as sent but never received"
    if receiver.transport == "smtp":
        assert len(doubt) <= WORKERS  # one message per connection
    elif receiver.transport == "sendgrid":
        assert len(doubt) <= WORKERS * receiver.batch  # the requests in flight
    else:
        assert not doubt  # the folder says who has it
    if doubt:
        assert rerun.code == 1
    else:
        assert rerun.code == 0, rerun.stderr
        assert set(got) == set(emails)
        assert f"to {len(emails):,} recipients" in rerun.stdout
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
        # either flag would be wrong for someone: the issue waits for the editor, and a plain
        # rerun sends nobody and names the same readers again
        again = send(receiver.site)
        assert again.code == 1
        assert named_in_doubt(receiver.site, again) == doubt
        assert receiver.count() == got
        return False
    flag = "--skip-ambiguous" if received else "--resend-ambiguous"
    final = send(receiver.site, flag)
    assert final.code == 0, final.stderr
    assert receiver.count() == collections.Counter(emails)
    assert not receiver.rewritten()
    if flag == "--skip-ambiguous":
        assert f"{plural(len(doubt), 'recipient')} in doubt" in final.stderr
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
    ("outbox", "outbox.written:1"),  # a file written, not yet in place
    ("outbox", "outbox.written:120"),
]
MATRIX = (
    [(t, p) for t in TRANSPORTS for p in EVERYWHERE]
    + ON_ONE_PATH
    # a point reached in a sender process kills the whole send, as a kill -9 of it does
    + [("sendgrid-processes", p) for p in ["deliver.batch_taken:20", "deliver.batch_sent:20"]]
)


@pytest.mark.parametrize(("receiver", "point"), MATRIX, indirect=["receiver"])
def test_killed_at_a_point_then_rerun_sends_everyone_once(receiver: Receiver, point: str) -> None:
    emails = setup(receiver)

    killed = send(receiver.site, failpoints=point)
    assert killed.code == -signal.SIGKILL, killed.stderr
    receiver.count()  # what the far side holds before the rerun (the outbox notes each file)

    rerun = send(receiver.site)
    doubt = check_promise(receiver, emails, rerun, f"SIGKILL at {point}")
    if point == "deliver.message_sent:150":
        assert len(doubt) >= 1  # the message accepted but not recorded is named
    if finish(receiver, emails, doubt):
        assert "already sent" in send(receiver.site).stdout


@pytest.mark.parametrize(
    ("receiver", "after"),
    [("sendgrid", 0), ("sendgrid", 1), ("sendgrid-processes", 60), ("smtp", 2), ("smtp", 40)],
    indirect=["receiver"],
)
def test_killed_while_the_far_side_is_receiving_then_rerun_sends_everyone_once(
    receiver: Receiver, after: int
) -> None:
    """Kill moments chosen from outside: SendGrid holding the request after `after` were
    answered; an SMTP server answering slowly, once `after` messages arrived. (The outbox
    has its own points above: between writing a file and putting it in place.)"""
    emails = setup(receiver)
    reached = receiver.arm(after)
    killed = send_killed_when(receiver.site, reached)
    assert killed.code == -signal.SIGKILL
    receiver.disarm()
    receiver.count()

    rerun = send(receiver.site)
    doubt = check_promise(receiver, emails, rerun, f"SIGKILL after {after} received")
    if finish(receiver, emails, doubt):
        assert "already sent" in send(receiver.site).stdout


@pytest.mark.parametrize("receiver", ["smtp", "sendgrid"], indirect=True)
def test_readers_who_left_after_planning_are_neither_sent_nor_named_after_a_crash(
    receiver: Receiver,
) -> None:
    """Two readers of the first batch unsubscribe between planning and sending, and the send
    is killed with a message in flight: the batch is recorded as it was really sent, so
    the rerun names only that message and never sends it, or anyone, twice."""
    emails = setup(receiver)
    assert send(receiver.site, failpoints="send.planned").code == -signal.SIGKILL
    gone = [emails[0], emails[2]]
    left = newsletter(receiver.site, "subscribers", "suppress", *gone, "--reason", "unsubscribed")
    assert left.code == 0, left.stderr
    point = "deliver.message_sent:3" if receiver.transport == "smtp" else "deliver.batch_sent:1"
    assert send(receiver.site, failpoints=point).code == -signal.SIGKILL
    receiver.count()

    rerun = send(receiver.site)

    staying = [e for e in emails if e not in gone]
    doubt = check_promise(receiver, staying, rerun, f"2 left after planning, SIGKILL at {point}")
    assert doubt.isdisjoint(gone)
    assert not set(gone) & set(receiver.count())
    if finish(receiver, staying, doubt):
        assert "already sent" in send(receiver.site).stdout
