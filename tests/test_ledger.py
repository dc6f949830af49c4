"""The state database, on SQLite and on PostgreSQL (the `database_url` fixture runs both).

Claims must have exactly one winner however many processes ask at once, a
dead or silent claimant must be taken over, a plan must round-trip with its
batches, and every moment must come back as an aware UTC datetime.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import zoneinfo
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import TypeVar

import pytest
import sqlalchemy as sa

from newsletter.errors import LedgerError
from newsletter.state import Ledger
from newsletter.state.events import MailEvent
from newsletter.state.feeds import feed_cache
from newsletter.state.issues import Claim, PlanContent, issues
from newsletter.stories.feed import CachedFeed

from .support.race import race

T = TypeVar("T")

DAY = dt.date(2024, 3, 5)
HOUR = dt.timedelta(hours=1)
HOST = socket.gethostname()
# claimants on other machines: only a stale heartbeat lets anyone take over from them
ALICE = "alice.example:101"
BOB = "bob.example:202"
CAROL = "carol.example:303"
COLUMNS = ["email", "first_name"]
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


SEND_TIME = utc(2024, 3, 5, 7)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    with Ledger(database_url) as ledger:
        yield ledger


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process of this host that has finished (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return proc.pid


def claim(
    ledger: Ledger,
    owner: str,
    *,
    date: dt.date = DAY,
    list_name: str = "main",
    stale_after: dt.timedelta = HOUR,
) -> Claim:
    return ledger.claim(list_name, date, owner, stale_after)


def plan(
    ledger: Ledger,
    issue_id: int,
    *,
    batches: Iterable[tuple[Sequence[str], Sequence[Sequence[str]]]] = (),
    story_keys: Iterable[str] = (),
    window_start: dt.datetime | None = None,
    window_end: dt.datetime = SEND_TIME,
) -> int:
    return ledger.save_plan(
        issue_id,
        PlanContent(
            subject="The Test Times",
            html="<p>Hello %%first_name%%</p>",
            text="Hello %%first_name:text%%",
            tokens=frozenset({"first_name", "email"}),
            story_keys=story_keys,
            window_start=window_start,
            window_end=window_end,
            transport="outbox",
        ),
        batches,
    )


def set_heartbeat(ledger: Ledger, issue_id: int, moment: dt.datetime) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(issues).where(issues.c.id == issue_id).values(heartbeat=moment))


def heartbeat(ledger: Ledger, date: dt.date = DAY) -> dt.datetime:
    row = ledger.issue("main", date)
    assert row is not None and row.heartbeat is not None
    return row.heartbeat


# -- claims ------------------------------------------------------------------------


def test_first_claim_is_new_and_a_live_one_keeps_others_out(ledger: Ledger) -> None:
    first = claim(ledger, ALICE)
    assert first.state == "new"
    assert first.issue.status == "sending"
    assert first.issue.claimed_by == ALICE
    assert not first.issue.planned

    second = claim(ledger, BOB)
    assert second.state == "busy"
    assert second.issue.id == first.issue.id
    assert second.issue.claimed_by == ALICE
    row = ledger.issue("main", DAY)
    assert row is not None and row.claimed_by == ALICE and row.status == "sending"


def test_a_sent_issue_is_never_claimed_again(ledger: Ledger) -> None:
    first = claim(ledger, ALICE)
    ledger.finish(first.issue.id, "sent")

    for owner in (BOB, ALICE):
        again = claim(ledger, owner, stale_after=dt.timedelta(0))
        assert again.state == "sent"
        assert again.issue.id == first.issue.id
    row = ledger.issue("main", DAY)
    assert row is not None
    assert row.status == "sent" and row.claimed_by is None and row.finished_at is not None


@pytest.mark.parametrize("ending", ["failed", "stopped", "skipped"])
def test_failed_stopped_and_skipped_issues_are_resumed_by_the_next_claimant(
    ledger: Ledger, ending: str
) -> None:
    if ending == "skipped":
        assert ledger.record_skipped("main", DAY, "missed the misfire grace time")
        issue_id = None
    else:
        first = claim(ledger, ALICE)
        issue_id = first.issue.id
        ledger.finish(issue_id, ending, error="boom")
    before = ledger.issue("main", DAY)
    assert before is not None and before.status == ending and before.claimed_by is None

    resumed = claim(ledger, BOB)
    assert resumed.state == "resumed"
    assert resumed.issue.id == (issue_id or before.id)
    assert resumed.issue.status == "sending"
    assert resumed.issue.claimed_by == BOB
    assert resumed.issue.error is None
    row = ledger.issue("main", DAY)
    assert row is not None and row.claimed_by == BOB

    # resumed means taken: the next claimant finds it busy
    assert claim(ledger, CAROL).state == "busy"


def test_record_skipped_leaves_an_issue_that_exists_alone(ledger: Ledger) -> None:
    first = claim(ledger, ALICE)
    assert not ledger.record_skipped("main", DAY, "late")
    row = ledger.issue("main", DAY)
    assert row is not None
    assert row.id == first.issue.id and row.status == "sending" and row.claimed_by == ALICE


def test_lists_and_dates_do_not_interfere(ledger: Ledger) -> None:
    tomorrow = DAY + dt.timedelta(days=1)
    main_today = claim(ledger, ALICE)
    assert main_today.state == "new"
    assert claim(ledger, BOB, date=tomorrow).state == "new"
    assert claim(ledger, CAROL, list_name="test").state == "new"

    ledger.finish(main_today.issue.id, "sent")
    assert claim(ledger, CAROL).state == "sent"
    assert claim(ledger, ALICE, date=tomorrow).state == "busy"
    assert claim(ledger, ALICE, list_name="test").state == "busy"
    rows = [ledger.issue("main", DAY), ledger.issue("main", tomorrow), ledger.issue("test", DAY)]
    assert [(row.status, row.claimed_by) for row in rows if row] == [
        ("sent", None),
        ("sending", BOB),
        ("sending", CAROL),
    ]
    assert len({row.id for row in rows if row}) == 3


# -- stale claims ------------------------------------------------------------------


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(
    ledger: Ledger, dead_pid: int
) -> None:
    dead = f"{HOST}:{dead_pid}"
    assert claim(ledger, dead).state == "new"

    taken = claim(ledger, BOB, stale_after=dt.timedelta(days=1))
    assert taken.state == "resumed"
    assert taken.issue.claimed_by == BOB


def test_a_claim_of_a_live_process_on_this_host_is_kept(ledger: Ledger) -> None:
    assert claim(ledger, f"{HOST}:{os.getpid()}").state == "new"
    assert claim(ledger, BOB).state == "busy"


def test_a_live_process_on_this_host_is_never_taken_over_however_slow(ledger: Ledger) -> None:
    first = claim(ledger, f"{HOST}:{os.getpid()}")
    set_heartbeat(ledger, first.issue.id, dt.datetime.now(dt.UTC) - 2 * HOUR)

    assert claim(ledger, BOB, stale_after=HOUR).state == "busy"
    # the process itself, coming back to an issue its earlier attempt left open
    assert claim(ledger, f"{HOST}:{os.getpid()}").state == "resumed"


def test_a_claim_from_another_host_is_taken_over_only_once_its_heartbeat_is_stale(
    ledger: Ledger,
) -> None:
    first = claim(ledger, ALICE)
    assert claim(ledger, BOB).state == "busy"

    set_heartbeat(ledger, first.issue.id, dt.datetime.now(dt.UTC) - 2 * HOUR)
    assert claim(ledger, CAROL, stale_after=3 * HOUR).state == "busy"
    taken = claim(ledger, BOB, stale_after=HOUR)
    assert taken.state == "resumed"
    assert taken.issue.claimed_by == BOB
    assert taken.issue.heartbeat is not None
    assert dt.datetime.now(dt.UTC) - taken.issue.heartbeat < dt.timedelta(minutes=1)

    # a tiny stale_after: silence for a fraction of a second is enough
    time.sleep(0.05)
    again = claim(ledger, CAROL, stale_after=dt.timedelta(milliseconds=10))
    assert again.state == "resumed"
    assert again.issue.claimed_by == CAROL


def test_beat_keeps_a_claim_fresh_for_its_owner_only(ledger: Ledger) -> None:
    first = claim(ledger, ALICE)
    issue_id = first.issue.id
    long_ago = dt.datetime.now(dt.UTC) - 2 * HOUR

    set_heartbeat(ledger, issue_id, long_ago)
    ledger.beat(issue_id, BOB)  # not the owner: nothing changes
    assert heartbeat(ledger) == long_ago
    ledger.beat(issue_id, ALICE)
    assert dt.datetime.now(dt.UTC) - heartbeat(ledger) < dt.timedelta(minutes=1)
    assert claim(ledger, BOB).state == "busy"

    # once taken over, the old owner's beats no longer count
    set_heartbeat(ledger, issue_id, long_ago)
    assert claim(ledger, BOB).state == "resumed"
    set_heartbeat(ledger, issue_id, long_ago)
    ledger.beat(issue_id, ALICE)
    assert heartbeat(ledger) == long_ago


def test_helpers_join_only_a_planned_issue_being_sent_and_count_while_alive(
    ledger: Ledger, dead_pid: int
) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    plan(ledger, issue_id, batches=[(COLUMNS, [["a@example.com", "A"]])])
    assert not ledger.join_issue(issue_id, BOB)  # the claimant has not opened it yet
    ledger.open_to_helpers(issue_id, CAROL)  # not the claimant: no opening
    assert not ledger.join_issue(issue_id, BOB)
    ledger.open_to_helpers(issue_id, ALICE)
    here_dead = f"{socket.gethostname()}:{dead_pid}"
    for helper in (BOB, CAROL, here_dead):
        assert ledger.join_issue(issue_id, helper)
    ledger.beat_helper(issue_id, BOB)

    # elsewhere: alive while beating; here: alive while the process is
    assert ledger.live_helpers(issue_id, HOUR) == [BOB, CAROL]
    assert ledger.live_helpers(issue_id, dt.timedelta(0)) == []  # all silent: gone
    assert ledger.live_helpers(issue_id, HOUR) == []  # and their rows removed

    assert ledger.join_issue(issue_id, BOB)
    ledger.leave_issue(issue_id, BOB)
    assert ledger.live_helpers(issue_id, HOUR) == []
    ledger.close_to_helpers(issue_id)  # delivering is over: nobody joins any more
    assert not ledger.join_issue(issue_id, BOB)
    ledger.open_to_helpers(issue_id, ALICE)
    ledger.finish(issue_id, "sent")
    assert not ledger.join_issue(issue_id, BOB)  # closed: nothing to help with


# -- exactly one winner ----------------------------------------------------------------


def test_threads_claiming_at_once_have_exactly_one_winner(
    ledger: Ledger, database_url: str
) -> None:
    owners = [f"thread-{i}.example:1" for i in range(8)]
    states = race(database_url, 8, lambda other, i: claim(other, owners[i]).state)

    assert sorted(states) == ["busy"] * 7 + ["new"]
    row = ledger.issue("main", DAY)
    assert row is not None and row.claimed_by == owners[states.index("new")]


def _claim_in_process(
    url: str, index: int, barrier: Barrier, results: Queue[tuple[int, str]]
) -> None:
    """A separate process: its own interpreter, its own Ledger."""
    try:
        with Ledger(url) as ledger:
            barrier.wait()
            results.put((index, claim(ledger, f"proc-{index}.example:1").state))
    except BaseException as exc:
        results.put((index, f"error: {exc!r}"))


def test_processes_claiming_at_once_have_exactly_one_winner(
    ledger: Ledger, database_url: str
) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4, timeout=60)
    results: Queue[tuple[int, str]] = ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_process, args=(database_url, i, barrier, results))
        for i in range(4)
    ]
    for proc in procs:
        proc.start()
    try:
        states = dict(results.get(timeout=90) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]

    assert sorted(states.values()) == ["busy", "busy", "busy", "new"]
    winner = next(i for i, state in states.items() if state == "new")
    row = ledger.issue("main", DAY)
    assert row is not None and row.claimed_by == f"proc-{winner}.example:1"


def test_threads_resuming_a_failed_issue_at_once_have_exactly_one_winner(
    ledger: Ledger, database_url: str
) -> None:
    ledger.finish(claim(ledger, ALICE).issue.id, "failed", error="HTTP 500")
    owners = [f"resumer-{i}.example:1" for i in range(6)]

    states = race(database_url, 6, lambda other, i: claim(other, owners[i]).state)

    assert sorted(states) == ["busy"] * 5 + ["resumed"]
    row = ledger.issue("main", DAY)
    assert row is not None
    assert row.status == "sending" and row.claimed_by == owners[states.index("resumed")]


def test_many_ledgers_opening_a_new_database_at_once_all_succeed(database_url: str) -> None:
    # no `ledger` fixture: the database has no tables yet, all eight create them
    states = race(database_url, 8, lambda other, i: claim(other, f"opener-{i}.example:1").state)
    assert sorted(states) == ["busy"] * 7 + ["new"]


# -- plans and batches -----------------------------------------------------------------

FIRST = [["ann@example.com", "Ann"], ["bo@example.com", "Bø"], ["cy@example.com", ""]]
SECOND = [["di@example.com", "Di"], ["ed@example.com", "Ed"]]


def test_save_plan_stores_the_email_and_its_batches(ledger: Ledger) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    start, end = utc(2024, 3, 4, 7), utc(2024, 3, 5, 7)

    total = plan(
        ledger,
        issue_id,
        batches=[(COLUMNS, FIRST), (COLUMNS, SECOND)],
        story_keys=["url:b", "id:a"],
        window_start=start,
        window_end=end,
    )

    assert total == 5
    row = ledger.issue("main", DAY)
    assert row is not None and row.planned
    assert row.subject == "The Test Times"
    assert row.html == "<p>Hello %%first_name%%</p>"
    assert row.text == "Hello %%first_name:text%%"
    assert row.tokens == frozenset({"first_name", "email"})
    assert row.story_keys == ("id:a", "url:b")
    assert (row.window_start, row.window_end) == (start, end)
    assert row.transport == "outbox"
    assert row.recipients == 5

    found = ledger.batches(issue_id)
    assert [(b.seq, b.status, b.size, b.attempts, b.message_id) for b in found] == [
        (1, "pending", 3, 0, None),
        (2, "pending", 2, 0, None),
    ]
    assert ledger.batch_recipients(found[0].id) == (COLUMNS, FIRST)
    assert ledger.batch_recipients(found[1].id) == (COLUMNS, SECOND)
    assert ledger.batch_counts(issue_id) == {"pending": (2, 5)}


def test_batches_move_pending_submitting_submitted_or_failed(ledger: Ledger) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    plan(ledger, issue_id, batches=[(COLUMNS, FIRST), (COLUMNS, SECOND)])
    one, two = ledger.batches(issue_id)

    assert ledger.mark_submitting(one.id, ["pending"])
    # already submitting: a second caller does not take it, whatever it accepts
    assert not ledger.mark_submitting(one.id, ["pending"])
    assert not ledger.mark_submitting(one.id, ["pending", "failed"])
    assert [(b.id, b.attempts) for b in ledger.batches(issue_id, ["submitting"])] == [(one.id, 1)]
    ledger.mark_submitted(one.id, "msg-1", note="2 addresses refused")
    assert not ledger.mark_submitting(one.id, ["pending", "failed"])

    assert ledger.mark_submitting(two.id, ["pending", "failed"])
    ledger.mark_failed(two.id, "HTTP 503 from SendGrid")
    assert not ledger.mark_submitting(two.id, ["pending"])
    assert ledger.mark_submitting(two.id, ["failed"])

    after = {b.seq: b for b in ledger.batches(issue_id)}
    assert (after[1].status, after[1].message_id, after[1].error, after[1].attempts) == (
        "submitted",
        "msg-1",
        "2 addresses refused",
        1,
    )
    assert (after[2].status, after[2].attempts) == ("submitting", 2)
    assert ledger.batch_counts(issue_id) == {"submitted": (1, 3), "submitting": (1, 2)}

    ledger.mark_failed(two.id, "timed out")
    failed = ledger.batches(issue_id, ["failed"])
    assert [(b.seq, b.error) for b in failed] == [(2, "timed out")]
    assert ledger.batches(issue_id, ["pending"]) == []

    # after a partial send the part that went out counts as submitted, and only who is
    # still owed is left to send
    ledger.split_batch(two.id, 1, rest="failed", note="timed out")
    assert ledger.batch_recipients(two.id) == (COLUMNS, SECOND[:1])
    [rest] = ledger.batches(issue_id, ["failed"])
    assert ledger.batch_recipients(rest.id) == (COLUMNS, SECOND[1:])
    assert (rest.seq, rest.size, rest.error) == (3, 1, "timed out")
    assert ledger.batch_counts(issue_id) == {"submitted": (2, 4), "failed": (1, 1)}


def test_only_one_of_several_callers_takes_a_batch(ledger: Ledger, database_url: str) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    plan(ledger, issue_id, batches=[(COLUMNS, FIRST)])
    (batch,) = ledger.batches(issue_id)

    taken = race(database_url, 6, lambda other, _: other.mark_submitting(batch.id, ["pending"]))

    assert sorted(taken) == [False] * 5 + [True]
    (after,) = ledger.batches(issue_id)
    assert (after.status, after.attempts) == ("submitting", 1)


def test_a_batch_sent_one_message_at_a_time_is_cut_where_a_dead_run_left_it(
    ledger: Ledger,
) -> None:
    """The SMTP path: a run takes three batches and dies. The one not started goes back to
    pending, the one half sent is cut at the message in flight, and only that message is
    named in doubt; before the rerun settles anything, status names the same."""
    issue_id = claim(ledger, ALICE).issue.id
    third = [["fa@example.com", "Fa"], ["gi@example.com", "Gi"]]
    plan(ledger, issue_id, batches=[(COLUMNS, FIRST), (COLUMNS, SECOND), (COLUMNS, third)])
    one, two, three = ledger.batches(issue_id)
    for batch in (one, two):
        assert ledger.take_batch(batch.id, ["pending"], "message") is not None
    assert ledger.take_batch(three.id, ["pending"], "none") is not None
    assert ledger.record_progress(one.id, 0) and ledger.record_progress(one.id, 2)

    assert ledger.in_doubt_addresses(issue_id) == ["cy@example.com"]  # two: not started

    ledger.settle_interrupted(issue_id, resend_safely=False)

    after = {b.seq: (b.status, b.size) for b in ledger.batches(issue_id)}
    assert after == {
        1: ("submitted", 2),
        2: ("pending", 2),
        3: ("submitting", 2),  # the outbox's own: left for a run that can resend it safely
        4: ("submitting", 1),
    }
    assert ledger.batch_addresses(issue_id, ["submitted"]) == ["ann@example.com", "bo@example.com"]
    assert ledger.in_doubt_addresses(issue_id) == ["cy@example.com"]
    # the first run, if it were still alive, finds the batch is no longer its own
    assert not ledger.record_progress(one.id, 3)

    ledger.settle_interrupted(issue_id, resend_safely=True)
    assert ledger.batches(issue_id, ["pending"])[-1].seq == 3

    assert ledger.skip_in_doubt(issue_id, "not resent") == 1
    assert ledger.in_doubt_addresses(issue_id) == []
    assert ledger.batch_addresses(issue_id, ["skipped"]) == ["cy@example.com"]
    assert ledger.batch_counts(issue_id) == {
        "submitted": (1, 2),
        "pending": (2, 4),
        "skipped": (1, 1),
    }


def test_a_batch_sent_in_one_request_is_in_doubt_whole_and_rows_left_out_are_dropped(
    ledger: Ledger,
) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    plan(ledger, issue_id, batches=[(COLUMNS, FIRST)])
    (batch,) = ledger.batches(issue_id)
    assert ledger.take_batch(batch.id, ["pending"]) is not None

    # a reader unsubscribed since planning: the batch is recorded as really sent
    ledger.replace_batch_recipients(batch.id, COLUMNS, [FIRST[0], FIRST[2]])
    ledger.settle_interrupted(issue_id, resend_safely=True)  # nothing to cut in a request

    assert ledger.in_doubt_addresses(issue_id) == ["ann@example.com", "cy@example.com"]
    assert ledger.batch_counts(issue_id) == {"submitting": (1, 2)}


def test_a_plan_of_25000_recipients_is_saved_in_one_go(ledger: Ledger) -> None:
    issue_id = claim(ledger, ALICE).issue.id
    people = [[f"reader{i:05d}@example.com", f"Reader {i}"] for i in range(25_000)]
    chunks = ((COLUMNS, people[i : i + 1000]) for i in range(0, len(people), 1000))

    assert plan(ledger, issue_id, batches=chunks) == 25_000

    found = ledger.batches(issue_id)
    assert [b.seq for b in found] == list(range(1, 26))
    assert {b.size for b in found} == {1000}
    assert ledger.batch_counts(issue_id) == {"pending": (25, 25_000)}
    assert ledger.batch_recipients(found[12].id) == (COLUMNS, people[12_000:13_000])
    row = ledger.issue("main", DAY)
    assert row is not None and row.recipients == 25_000


def test_a_plan_that_fails_half_way_stores_nothing(ledger: Ledger) -> None:
    issue_id = claim(ledger, ALICE).issue.id

    def chunks() -> Iterator[tuple[list[str], list[list[str]]]]:
        yield COLUMNS, FIRST
        raise OSError("the list file vanished")

    with pytest.raises(OSError):
        plan(ledger, issue_id, batches=chunks())
    assert ledger.batches(issue_id) == []
    row = ledger.issue("main", DAY)
    assert row is not None and not row.planned and row.recipients == 0


# -- story history ---------------------------------------------------------------------


def send(
    ledger: Ledger,
    date: dt.date,
    keys: list[str],
    status: str = "sent",
    list_name: str = "main",
) -> dt.datetime:
    """An issue of `date` planned with `keys` and finished with `status`; its window end."""
    end = dt.datetime.combine(date, dt.time(7), dt.UTC)
    issue_id = claim(ledger, ALICE, date=date, list_name=list_name).issue.id
    plan(ledger, issue_id, story_keys=keys, window_start=end - 24 * HOUR, window_end=end)
    ledger.finish(issue_id, status, error=None if status == "sent" else "boom")
    return end


def test_sent_issues_record_their_stories_for_later_issues_of_the_list(ledger: Ledger) -> None:
    day1, day2, day3, day4 = (DAY + dt.timedelta(days=n) for n in range(4))
    end1 = send(ledger, day1, ["id:a", "url:b"])
    send(ledger, day2, ["id:c"], status="failed")
    test_end = send(ledger, day2, ["id:d"], list_name="test")
    end3 = send(ledger, day3, ["id:e"])

    assert ledger.sent_story_keys("main", before=day1) == frozenset()
    assert ledger.sent_story_keys("main", before=day2) == {"id:a", "url:b"}
    # not the failed issue, not the other list, not the issue of the same date
    assert ledger.sent_story_keys("main", before=day3) == {"id:a", "url:b"}
    assert ledger.sent_story_keys("main", before=day4) == {"id:a", "url:b", "id:e"}
    assert ledger.sent_story_keys("test", before=day4) == {"id:d"}

    assert ledger.previous_issue_end("main", before=day1) is None
    assert ledger.previous_issue_end("main", before=day2) == end1
    assert ledger.previous_issue_end("main", before=day3) == end1  # day 2 failed
    assert ledger.previous_issue_end("main", before=day4) == end3
    assert ledger.previous_issue_end("test", before=day4) == test_end

    # the failed issue, resumed and sent, now counts
    resumed = claim(ledger, BOB, date=day2)
    assert resumed.state == "resumed" and resumed.issue.planned
    ledger.finish(resumed.issue.id, "sent")
    assert ledger.sent_story_keys("main", before=day3) == {"id:a", "url:b", "id:c"}


# -- suppressions ----------------------------------------------------------------------


def test_suppress_lower_cases_and_keeps_the_first_reason(ledger: Ledger) -> None:
    added = ledger.suppress(
        [
            ("  Ann@Example.COM ", "bounced"),
            ("ann@example.com", "spam"),
            ("bob@example.com", "unsubscribed"),
        ],
        "sendgrid",
    )
    assert added == 2
    assert ledger.suppressed() == {"ann@example.com", "bob@example.com"}

    assert ledger.suppress([("ANN@example.com", "spam")], "manual") == 0
    assert ledger.suppression_reasons() == {
        "ann@example.com": "bounced",
        "bob@example.com": "unsubscribed",
    }


def test_an_unknown_suppression_reason_is_refused(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="unknown suppression reason 'annoyed'"):
        ledger.suppress([("cy@example.com", "manual"), ("di@example.com", "annoyed")], "cli")
    assert ledger.suppressed() == frozenset()


def test_thousands_of_addresses_are_suppressed_in_one_call(ledger: Ledger) -> None:
    everyone = [f"Person{i}@Example.com" for i in range(2000)]
    assert ledger.suppress([(e, "manual") for e in everyone[:100]], "cli") == 100

    assert ledger.suppress([(e, "bounced") for e in everyone], "sendgrid") == 1900

    assert ledger.suppressed() == {e.lower() for e in everyone}
    reasons = ledger.suppression_reasons()
    assert reasons["person0@example.com"] == "manual"
    assert reasons["person1999@example.com"] == "bounced"


def test_unsuppress(ledger: Ledger) -> None:
    ledger.suppress([("ann@example.com", "unsubscribed"), ("bob@example.com", "bounced")], "x")

    assert ledger.unsuppress("  ANN@example.com")
    assert not ledger.unsuppress("ann@example.com")
    assert ledger.suppressed() == {"bob@example.com"}
    assert ledger.suppress([("ann@example.com", "manual")], "cli") == 1
    assert ledger.suppression_reasons()["ann@example.com"] == "manual"


def test_a_list_suppression_stops_that_list_only(ledger: Ledger) -> None:
    assert ledger.suppress([("Ann@example.com", "unsubscribed")], "link", list_name="daily") == 1
    assert ledger.suppress([("ann@example.com", "unsubscribed")], "link", list_name="daily") == 0
    ledger.suppress([("bob@example.com", "bounced")], "webhook")
    assert ledger.suppressed("daily") == {"ann@example.com", "bob@example.com"}
    assert ledger.suppressed("weekly") == {"bob@example.com"}
    assert ledger.suppressed() == {"bob@example.com"}

    # coming back to one list (a confirmed sign-up) lifts that list's suppression only
    ledger.suppress([("ann@example.com", "unsubscribed")], "link", list_name="weekly")
    assert ledger.resubscribe("ann@example.com", "daily", ["daily", "weekly"])
    assert "ann@example.com" not in ledger.suppressed("daily")
    assert "ann@example.com" in ledger.suppressed("weekly")
    # a suppression for every list stays one for every other list
    assert ledger.resubscribe("bob@example.com", "daily", ["daily", "weekly", "test"])
    assert "bob@example.com" not in ledger.suppressed("daily")
    assert "bob@example.com" in ledger.suppressed("weekly")
    assert "bob@example.com" in ledger.suppressed("test")
    assert not ledger.resubscribe("cy@example.com", "daily", ["weekly"])
    # without a list (the CLI): every suppression of the address
    assert ledger.unsuppress("ann@example.com")
    assert "ann@example.com" not in ledger.suppressed("weekly")


def mail_event(
    n: int, kind: str = "delivered", suppress: str | None = None, **kw: object
) -> MailEvent:
    fields: dict[str, object] = {"event_id": f"ev{n}", "event": kind, "email": f"p{n}@example.com", "issue_id": 7, "occurred_at": None, "suppress": suppress}  # fmt: skip
    return MailEvent(**{**fields, **kw})  # type: ignore[arg-type]


def test_mail_events_are_applied_once_with_their_suppressions(ledger: Ledger) -> None:
    batch = [mail_event(1), mail_event(2, "open"), mail_event(3, "bounce", "bounced"),
             mail_event(4, "group_unsubscribe", "unsubscribed")]  # fmt: skip
    assert ledger.apply_mail_events(batch) == 4
    assert ledger.apply_mail_events([*batch, mail_event(5)]) == 1
    assert ledger.event_counts(7) == {
        "delivered": 2,
        "open": 1,
        "bounce": 1,
        "group_unsubscribe": 1,
    }
    assert ledger.suppression_reasons() == {
        "p3@example.com": "bounced",
        "p4@example.com": "unsubscribed",
    }
    assert ledger.suppressed("daily") == {"p3@example.com", "p4@example.com"}
    assert ledger.event_counts(8) == {}


def test_a_bad_event_applies_nothing_of_its_batch(ledger: Ledger) -> None:
    with pytest.raises(LedgerError):
        ledger.apply_mail_events(
            [mail_event(1, "bounce", "bounced"), mail_event(2, suppress="annoyed")]
        )
    assert ledger.event_counts(7) == {}
    assert ledger.suppressed() == frozenset()


def test_concurrent_deliveries_of_one_event_batch_count_it_once(database_url: str) -> None:
    """SendGrid retries a batch it timed out on while the first delivery is still running."""
    batch = [mail_event(n, "bounce" if n % 10 == 0 else "delivered", "bounced" if n % 10 == 0 else None) for n in range(600)]  # fmt: skip
    new = race(database_url, 4, lambda ledger, _: ledger.apply_mail_events(batch))
    assert sum(new) == 600
    with Ledger(database_url) as ledger:
        assert ledger.event_counts(7) == {"delivered": 540, "bounce": 60}
        assert len(ledger.suppressed()) == 60


def test_consents_are_kept_per_confirmation(ledger: Ledger) -> None:
    moment = dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.UTC)
    for list_name in ("daily", "weekly"):
        ledger.record_consent(list_name=list_name, email="Ann@Example.com", signed_up_at=moment,
                              confirmed_at=moment + dt.timedelta(minutes=3), ip="203.0.113.9",
                              user_agent="x" * 600, form_version="abc123", wording="Yes please.")  # fmt: skip
    first, second = ledger.consents("ann@example.com")
    assert (first["list_name"], second["list_name"]) == ("daily", "weekly")
    assert first["confirmed_at"] == moment + dt.timedelta(minutes=3)
    assert first["ip"] == "203.0.113.9" and len(first["user_agent"]) == 512
    assert first["wording"] == "Yes please."


# -- feed cache ------------------------------------------------------------------------


def test_the_feed_cache_round_trips_bytes_and_updates_in_place(ledger: Ledger) -> None:
    url = "https://example.com/feed.xml"
    assert ledger.load(url) is None

    body = bytes(range(256)) * 40  # every byte value, NUL included
    ledger.save(
        url,
        CachedFeed(
            body=body,
            content_type="application/rss+xml; charset=utf-8",
            etag='W/"v1"',
            last_modified="Tue, 05 Mar 2024 06:00:00 GMT",
            final_url="https://cdn.example.com/feed.xml",
        ),
    )
    assert ledger.load(url) == CachedFeed(
        body=body,
        content_type="application/rss+xml; charset=utf-8",
        etag='W/"v1"',
        last_modified="Tue, 05 Mar 2024 06:00:00 GMT",
    )  # final_url is not cached

    ledger.save(url, CachedFeed(body=b"<rss/>", content_type="text/xml"))
    ledger.save("https://example.com/other.xml", CachedFeed(body=b"<feed/>"))
    assert ledger.load(url) == CachedFeed(body=b"<rss/>", content_type="text/xml")
    with ledger.engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(feed_cache).where(feed_cache.c.url == url)
        ).scalar_one()
    assert count == 1


# -- time zones ------------------------------------------------------------------------


def _in_new_york(url: str) -> str:
    """The same database; on PostgreSQL a session that answers in New York time."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return url
    parsed = parsed.update_query_dict({"options": "-c TimeZone=America/New_York"})
    return parsed.render_as_string(hide_password=False)


def _assert_utc(moment: dt.datetime | None) -> None:
    assert moment is not None
    assert moment.tzinfo is not None and moment.utcoffset() == dt.timedelta(0)


def test_datetimes_come_back_aware_in_utc(ledger: Ledger, database_url: str) -> None:
    # the window is in the newsletter's zone, as App.window makes it
    start = dt.datetime(2024, 3, 4, 7, tzinfo=NEW_YORK)
    end = dt.datetime(2024, 3, 5, 7, tzinfo=NEW_YORK)  # 12:00 UTC
    issue_id = claim(ledger, ALICE).issue.id
    plan(ledger, issue_id, window_start=start, window_end=end)
    ledger.finish(issue_id, "sent")

    with Ledger(_in_new_york(database_url)) as other:
        if other.engine.dialect.name == "postgresql":
            with other.engine.connect() as conn:
                zone = conn.execute(sa.text("SHOW TimeZone")).scalar_one()
            assert zone == "America/New_York"
        for reader in (ledger, other):
            row = reader.issue("main", DAY)
            assert row is not None
            for moment in (row.created_at, row.heartbeat, row.finished_at):
                _assert_utc(moment)
            assert (row.window_start, row.window_end) == (start, end)
            _assert_utc(row.window_start)
            _assert_utc(row.window_end)
            previous = reader.previous_issue_end("main", before=DAY + dt.timedelta(days=1))
            assert previous == end
            _assert_utc(previous)

    # stored as UTC, so SQL comparisons and max() order moments correctly
    with ledger.engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT window_end FROM issues")).scalar_one()
    assert str(raw).startswith("2024-03-05 12:00:00")


# -- opening the database ----------------------------------------------------------------


def test_a_database_that_cannot_be_opened_is_a_ledger_error_without_the_password(
    database_url: str, tmp_path: Path
) -> None:
    bad = [
        "postgresql+psycopg://nobody@127.0.0.1:1/x",
        "postgresql+psycopg://u:s3cret@127.0.0.1:1/x",
        "postgresql+psycopg://u:s3cret@127.0.0.1:s3cret/x",  # a port that is not a number
    ]
    url = sa.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        bad.append(f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'state.db'}")
    else:
        # the real server: a wrong password, and a port nobody listens on
        bad.append(url.set(password="s3cret").render_as_string(hide_password=False))
        bad.append(url.set(password="s3cret", port=1).render_as_string(hide_password=False))

    for text in bad:
        with pytest.raises(LedgerError) as caught:
            Ledger(text)
        message = str(caught.value)
        # the database named, without its password: the file, or the URL with ***
        assert message.startswith(("cannot open the state database ", "the state database ")), (
            message
        )
        assert "s3cret" not in message, message
        if text.startswith("sqlite"):
            assert str(sa.make_url(text).database) in message


def test_concurrent_suppressions_of_the_same_addresses_never_fail(database_url: str) -> None:
    addresses = [(f"same{n}@example.com", "unsubscribed") for n in range(300)]
    added = race(database_url, 4, lambda ledger, _: ledger.suppress(addresses, source="race"))
    assert sum(added) == 300
    with Ledger(database_url) as ledger:
        assert len(ledger.suppressed()) == 300


def test_a_database_made_before_an_index_gets_it_when_opened(database_url: str) -> None:
    """The pending batches in order: a database made before that index existed gets it
    the next time it is opened, and taking the next batch then reads it instead of
    sorting every pending batch (on SQLite, the plan says so)."""
    with Ledger(database_url) as ledger, ledger.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_batches_pending_order")
        conn.exec_driver_sql("CREATE INDEX ix_batches_issue_status ON batches (issue_id, status)")
    with Ledger(database_url) as ledger:
        issue_id = claim(ledger, ALICE).issue.id
        plan(ledger, issue_id, batches=[(COLUMNS, [[f"r{n}@example.com", "R"]]) for n in range(30)])
        with ledger.engine.connect() as conn:
            assert "ix_batches_pending_order" in {
                index["name"] for index in sa.inspect(conn).get_indexes("batches")
            }
            if conn.dialect.name == "sqlite":
                steps = " | ".join(
                    str(row[-1])
                    for row in conn.exec_driver_sql(
                        "EXPLAIN QUERY PLAN SELECT id FROM batches WHERE issue_id = ? AND "
                        "status = 'pending' ORDER BY seq LIMIT 1",
                        (issue_id,),
                    )
                )
                assert "ix_batches_pending_order" in steps and "TEMP B-TREE" not in steps, steps
        taken = [ledger.take_next_batch(issue_id) for _ in range(3)]
        assert [t[0].seq for t in taken if t is not None] == [1, 2, 3]
