"""Sender processes: the list planned in parts and the batches claimed from the state
database, each reader once, on SQLite and PostgreSQL (newsletter/senders.py)."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import gc
import json
import multiprocessing
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from newsletter.config import SendGridSettings
from newsletter.delivery import Deliverer, Heartbeat, NoProgress, Outcome
from newsletter.parts import IN_DOUBT
from newsletter.sender_processes import ONE_REQUEST_A_BATCH, Inbox, SenderProcesses
from newsletter.senders import SenderPool, _PipedProgress
from newsletter.state import Ledger
from newsletter.state.issues import PlanContent
from newsletter.transports.base import Message, Recipient
from newsletter.transports.sendgrid import SendGridTransport

from .conftest import SENDGRID_TEST_API_KEY, Site
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .test_send_sendgrid import delivered, env, newsletter, send, setup_site, start_send


def with_senders(site: Site, workers: int) -> None:
    text = site.config_path.read_text()
    site.config_path.write_text(text.replace("workers = 1", f"workers = {workers}"))


def test_senders_plan_the_list_in_parts_and_send_each_reader_once(
    site: Site, sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    # 480 batches: three sender processes and three parts (`processes_for`)
    emails = setup_site(site, sendgrid_emulator, 2400, batch_size=5)
    with_senders(site, 3)
    main = site.root / "subscribers" / "main.csv"
    with main.open("a", encoding="utf-8") as handle:  # one person twice, parts apart
        handle.write(f"{emails[5].upper()},Same again,test\n")
    environ = env(NEWSLETTER_DATABASE_URL=database_url)
    gone = emails[1000:1003]
    assert newsletter(site, "subscribers", "suppress", *gone, environ=environ).returncode == 0

    result = send(site, environ=environ)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "to 2,397 recipients" in result.stdout and "1 duplicate row ignored" in result.stdout
    assert "3 suppressed addresses skipped" in result.stdout
    requests = sendgrid_emulator.mail_requests()
    assert all(r.accepted and r.validated for r in requests)
    assert delivered(sendgrid_emulator) == collections.Counter(set(emails) - set(gone))
    with Ledger(database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        rows = ledger.batches(issue.id)
    assert issue.status == "sent" and issue.recipients == 2397
    assert [b.seq for b in rows] == list(range(1, len(rows) + 1))  # one plan, numbered
    assert {b.status for b in rows} == {"submitted"} and len(rows) == len(requests)


def test_a_sender_fetches_sendgrids_suppressions_and_the_send_retries_a_failure(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """With sender processes, one of them asks SendGrid who it will not deliver to while
    the send renders; a temporary failure is retried by the send, as without them."""
    emails = setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)
    bounced = emails[10:12]
    sendgrid_emulator.suppressions["bounces"] = bounced
    sendgrid_emulator.script(Fault(status=503, path="/v3/suppression/bounces"))

    result = send(site)

    assert result.returncode == 0, result.stderr
    assert "retry 1 of" in result.stderr and "Traceback" not in result.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(set(emails) - set(bounced))
    with Ledger(site.config().database_url) as ledger:
        assert {ledger.suppression_reasons()[e] for e in bounced} == {"bounced"}

    # SendGrid asks for a wait: the send waits that long, not its own shorter delay
    sendgrid_emulator.script(
        Fault(status=429, headers={"Retry-After": "1"}, path="/v3/suppression/bounces")
    )
    waited = send(site, "--date", "2024-03-06", "--allow-empty")
    assert waited.returncode == 0, waited.stderr
    assert "retry 1 of" in waited.stderr and "in 1.0s" in waited.stderr  # else 0s here

    sendgrid_emulator.fail_all(Fault(status=401, path="/v3/suppression/"))
    refused = send(site, "--date", "2024-03-07")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (
        "cannot sync suppressions from SendGrid: SendGrid refused the request: 401"
        in refused.stderr
    )


def test_a_render_that_fails_after_a_sender_fetched_many_suppressions_ends(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """The fetched list, bigger than a pipe holds, is left unread when the render fails:
    the send still ends (its senders' last words are read and dropped), with the error."""
    emails = setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)
    sendgrid_emulator.suppressions["bounces"] = [f"gone{n}@example.org" for n in range(6000)]
    site.template("partials/header.html", "<tr><td>{% if %}</td></tr>\n")

    result = send(site)  # within the helper's timeout, or it hung

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "partials/header.html" in result.stderr
    assert sendgrid_emulator.mail_requests() == [] and emails


def test_a_bad_row_in_the_last_part_stops_the_send_before_anything_goes_out(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)
    main = site.root / "subscribers" / "main.csv"
    with main.open("a", encoding="utf-8") as handle:
        handle.write('not-an-address,"A name\non two lines",test\n')
    line = 1 + 1500 + 1  # the header, the readers, then the bad row

    result = send(site)

    assert result.returncode == 1
    assert f"{main}: line {line}: not a valid email address: 'not-an-address'" in result.stderr
    assert "--skip-invalid" in result.stderr and "Traceback" not in result.stderr
    assert sendgrid_emulator.mail_requests() == []
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        assert ledger.batch_counts(issue.id) == {}  # no draft left behind

    skipped = send(site, "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert len(sendgrid_emulator.recipients()) == 1500


def planned_issue(ledger: Ledger, *, batches: int, readers: int) -> int:
    """The 2024-03-05 issue of list main, claimed and planned: `batches` batches of the same
    `readers` readers (a batch a sender takes, not a list to send once)."""
    issue_id = ledger.claim("main", dt.date(2024, 3, 5), "me", dt.timedelta(hours=1)).issue.id
    rows = [[f"r{n}@example.com", f"R {n}"] for n in range(readers)]
    content = PlanContent(
        subject="s", html="<p>%%email%%</p>", text="%%email:text%%",
        tokens=frozenset({"email"}), story_keys=[], window_start=None,
        window_end=dt.datetime(2024, 3, 5, tzinfo=dt.UTC), transport="sendgrid",
    )  # fmt: skip
    ledger.save_plan(issue_id, content, [(["email", "name"], rows)] * batches)
    return issue_id


def claim_and_count(url: str, issue_id: int, meet: Path, senders: int) -> list[int]:
    """One sender's loop over the state database, as another machine runs it: take the
    next pending batch, record it sent, until none is left. Having taken its first
    batch, it waits until each of the `senders` has one (files in `meet`): else the first
    to start could take them all before the other has imported what it needs."""
    taken = []
    with Ledger(url) as ledger:
        while (next_batch := ledger.take_next_batch(issue_id)) is not None:
            batch, _ = next_batch
            ledger.mark_submitted(batch.id, f"from {Path.cwd().name}")
            taken.append(batch.seq)
            if len(taken) == 1:
                (meet / Path.cwd().name).touch()
                deadline = time.monotonic() + 60
                while len(list(meet.iterdir())) < senders and time.monotonic() < deadline:
                    time.sleep(0.01)
    return taken


def test_two_processes_in_their_own_folders_share_one_issue_each_batch_once(
    database_url: str, tmp_path: Path
) -> None:
    with Ledger(database_url) as ledger:
        issue_id = planned_issue(ledger, batches=400, readers=5)
    script = (
        "import sys; from pathlib import Path; from tests.test_send_senders import "
        "claim_and_count; print(' '.join(map(str, claim_and_count("
        "sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), 2))))"
    )
    meet = tmp_path / "first-batch-taken"
    meet.mkdir()
    repo = Path(__file__).resolve().parents[1]
    folders = [tmp_path / "machine-a", tmp_path / "machine-b"]
    processes = []
    for folder in folders:
        folder.mkdir()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", script, database_url, str(issue_id), str(meet)],
                cwd=folder,
                env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    taken = [list(map(int, p.communicate(timeout=120)[0].split())) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sorted(taken[0] + taken[1]) == list(range(1, 401))  # every batch, once
    assert taken[0] and taken[1]  # both did some of the work
    with Ledger(database_url) as ledger:
        assert ledger.batch_counts(issue_id) == {"submitted": (400, 2000)}


def test_compressed_bodies_are_gzip_and_still_valid(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 1200, batch_size=500, extra="compress = true\n")
    with_senders(site, 2)

    result = send(site)

    assert result.returncode == 0, result.stderr
    requests = sendgrid_emulator.mail_requests()
    assert requests and all(r.accepted and r.validated for r in requests)
    assert {r.headers.get("content-encoding") for r in requests} == {"gzip"}
    plain = sum(len(json.dumps(r.body, separators=(",", ":")).encode()) for r in requests)
    assert sum(r.size for r in requests) * 5 < plain  # sent at under a fifth of the bytes
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


def sender_processes(parent: int) -> list[int]:
    """The spawned senders of a `newsletter send` (not multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def send_killing_a_sender(
    site: Site, emulator: SendGridEmulator, processes: int
) -> tuple[int, str]:
    """`newsletter send` with the first request of each of two senders held: one of its
    `processes` sender processes is killed with -9 (the other sender, if `processes` is
    1, is a thread of the send), then the held requests go on. Its exit code and stderr."""
    emulator.script(Fault(hold=True), Fault(hold=True))
    send_process = start_send(site)
    try:
        assert emulator.wait_for_held(2, timeout=60)
        victim, *others = sender_processes(send_process.pid)
        assert len(others) == processes - 1
        os.kill(victim, signal.SIGKILL)
        emulator.release()
        _, err = send_process.communicate(timeout=60)
    finally:
        send_process.kill()
    return send_process.returncode, err


def test_a_killed_sender_leaves_only_its_request_in_doubt_and_the_others_finish(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """kill -9 of one sender process while its request is in flight: the send goes on
    with the other, names that request's readers in doubt, and sends nobody twice."""
    emails = setup_site(site, sendgrid_emulator, 1200, batch_size=4)  # 300 batches: two processes
    with_senders(site, 2)
    code, err = send_killing_a_sender(site, sendgrid_emulator, processes=2)
    assert code == 1
    assert "stopped without a report" in err and "Traceback" not in err
    assert "4 recipients may or may not have the issue" in err
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        doubt = ledger.in_doubt_addresses(issue.id)
        counts = ledger.batch_counts(issue.id)
    assert len(doubt) == 4 and set(counts) == {"submitted", "submitting"}
    assert counts["submitted"][1] == 1196 and counts["submitting"] == (1, 4)  # the rest went
    got = delivered(sendgrid_emulator)  # the held request of the killed sender went on
    assert max(got.values()) == 1 and set(got) == set(emails)

    rerun = send(site, "--skip-ambiguous")  # its Email Activity shows them delivered
    assert rerun.returncode == 0, rerun.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


def test_a_send_worth_one_process_sends_from_it_and_from_its_own_thread(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """Two workers, a list worth one process (`processes_for`: 60 batches):
    one sender process and a thread of the send take batches side by side. A kill -9 of
    the process leaves its request in doubt; the thread sends the rest, nobody twice."""
    emails = setup_site(site, sendgrid_emulator, 600, batch_size=10)  # 60 batches
    with_senders(site, 2)
    code, err = send_killing_a_sender(site, sendgrid_emulator, processes=1)
    assert code == 1
    assert "stopped without a report" in err and "Traceback" not in err
    assert "10 recipients may or may not have the issue" in err
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        counts = ledger.batch_counts(issue.id)
    assert counts["submitted"][1] == 590 and counts["submitting"] == (1, 10)
    got = delivered(sendgrid_emulator)
    assert max(got.values()) == 1 and set(got) == set(emails)
    assert len({r.client for r in sendgrid_emulator.mail_requests()}) == 2  # a connection each


def test_a_request_leaves_no_reference_cycle_holding_its_body(
    sendgrid_emulator: SendGridEmulator,
) -> None:
    """httpx 0.28 keeps each response in a cycle holding the request's body until a cyclic
    collection (encode/httpx#3733): a sender would keep hundreds of 600 KB bodies."""
    transport = SendGridTransport(
        SendGridSettings(api_url=sendgrid_emulator.url, timeout=5), SENDGRID_TEST_API_KEY
    )
    message = Message("S", "<p>%%email%%</p>", "%%email:text%%", "news@example.com", None,
                      None, frozenset({"email"}), "1", "main")  # fmt: skip
    readers = [
        Recipient(f"r{n}@example.com", "", {"email": f"r{n}@example.com"}) for n in range(50)
    ]
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            transport.send_batch(message, readers)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, httpx.Request | httpx.Response)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        transport.close()
    assert len(sendgrid_emulator.mail_requests()) == 3
    assert left == []


def test_senders_started_before_the_send_knew_are_let_go_if_it_does_not_want_them(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """`newsletter send --yes` starts its senders before it reads the state database;
    a rerun of a sent issue does not want them and stops them. Ones never given work are
    killed where they are; ones given work are told there is nothing more and exit."""
    setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)
    assert send(site).returncode == 0
    requests = len(sendgrid_emulator.mail_requests())
    again = send(site)
    assert again.returncode == 0 and "already sent" in again.stdout, again.stderr
    assert len(sendgrid_emulator.mail_requests()) == requests

    idle = SenderProcesses.spawn(2)
    processes = list(idle.processes)
    idle.close()
    idle.close()  # again: nothing left to let go
    assert [p.exitcode for p in processes] == [-signal.SIGKILL] * 2
    busy = SenderProcesses.spawn(1)
    busy.give(0, None)  # nothing to send: the sender returns
    [sender] = busy.processes
    busy.close()
    assert sender.exitcode == 0


def test_the_transports_worth_a_process_are_the_ones_that_send_a_batch_at_once() -> None:
    assert {
        name for name, in_doubt in IN_DOUBT.items() if in_doubt == "batch"
    } == ONE_REQUEST_A_BATCH


def test_a_sigterm_after_a_sender_died_still_stops_the_others_after_their_batch(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """One of two sender processes is killed; while the send goes on hearing the other's
    progress, a SIGTERM still reaches that one: it ends its batch in flight and stops,
    instead of sending the rest of the list first. The rerun sends the rest, once."""
    emails = setup_site(site, sendgrid_emulator, 1200, batch_size=2)  # 600 batches
    with_senders(site, 2)
    sendgrid_emulator.script(Fault(hold=True), Fault(hold=True))  # one request each, held
    sendgrid_emulator.fail_all(Fault(delay=0.05))  # then 50 ms each: a steady stream
    send_process = start_send(site)
    try:
        assert sendgrid_emulator.wait_for_held(2, timeout=60)
        victim, _ = sender_processes(send_process.pid)
        os.kill(victim, signal.SIGKILL)
        sendgrid_emulator.release()
        deadline = time.monotonic() + 60  # the other sends on; its death is noticed
        while len(sendgrid_emulator.mail_requests()) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        send_process.send_signal(signal.SIGTERM)
        out, err = send_process.communicate(timeout=60)
    finally:
        send_process.kill()
    assert send_process.returncode == 1 and "Traceback" not in err
    assert "stopped without a report" in err
    assert len(sendgrid_emulator.mail_requests()) < 100, out + err  # not the 600
    sendgrid_emulator.clear_faults()
    rerun = send(site, "--skip-ambiguous")
    assert rerun.returncode == 0, rerun.stderr
    got = delivered(sendgrid_emulator)
    assert max(got.values()) == 1 and set(got) == set(emails)


def test_workers_beyond_the_processes_a_list_is_worth_are_threads_of_the_send(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """Four workers, a list worth one process: one process and three threads of the send,
    four requests in flight at once (a slow network is waited on four times over)."""
    emails = setup_site(site, sendgrid_emulator, 1000, batch_size=10)  # 100 batches
    with_senders(site, 4)
    sendgrid_emulator.script(*[Fault(hold=True)] * 4)
    send_process = start_send(site)
    try:
        four = sendgrid_emulator.wait_for_held(4, timeout=60)
        senders = sender_processes(send_process.pid)
        sendgrid_emulator.release()
        _, err = send_process.communicate(timeout=60)
    finally:
        send_process.kill()
    assert four and len(senders) == 1, err
    assert send_process.returncode == 0, err
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


def test_senders_started_before_a_failure_to_start_the_next_are_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C (or no more processes) while the senders are started: the ones started
    already are stopped, not left waiting for a job that never comes (the command would
    then wait for them at exit)."""
    started: list[Any] = []
    start = multiprocessing.get_context("spawn").Process.start

    def start_or_interrupt(process: Any) -> None:
        if started:
            raise KeyboardInterrupt
        start(process)
        started.append(process)

    monkeypatch.setattr(multiprocessing.get_context("spawn").Process, "start", start_or_interrupt)
    with pytest.raises(KeyboardInterrupt):
        SenderProcesses.spawn(2)
    [first] = started
    first.join(timeout=10)
    assert first.exitcode == -signal.SIGKILL


def test_a_bad_list_name_is_said_by_the_send_not_by_the_senders_early_start(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """`send --yes` looks at the list before it starts its senders: a list name it cannot
    take starts none, and the send says what is wrong with it, as without them."""
    setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)

    result = send(site, "--list", "Bad Name")

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "invalid list name 'Bad Name'" in result.stderr
    assert sendgrid_emulator.mail_requests() == []


def _talks_to(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP connection to 127.0.0.1:`port` (read from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].split(":")[1], 16) == port and fields[9] in inodes:
            return True
    return False


def _waiting(pid: int, timeout: float = 60) -> bool:
    """Whether process `pid` comes to sleep, and stays asleep for a quarter of a second
    (waiting for something, not busy importing); False if not within `timeout`."""
    asleep, deadline = 0, time.monotonic() + timeout
    while asleep < 5 and time.monotonic() < deadline:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        asleep = asleep + 1 if state == "S" else 0
        time.sleep(0.05)
    return asleep >= 5


def test_a_sender_killed_while_waiting_for_its_job_ends_the_send_without_hanging_it(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    """Two senders; one fetches the suppressions (held), the other waits for its job and
    is killed with -9 meanwhile. The send says a sender stopped, sends nothing, and
    ends: the survivor is not left waiting on anything the dead one held. The rerun sends
    everyone once."""
    emails = setup_site(site, sendgrid_emulator, 1500, batch_size=5)  # 300 batches: two processes
    with_senders(site, 2)
    sendgrid_emulator.script(Fault(hold=True, path="/v3/"))  # the first suppression page
    send_process = start_send(site)
    try:
        assert sendgrid_emulator.wait_for_held(1, timeout=60)
        senders = sender_processes(send_process.pid)
        port = int(sendgrid_emulator.url.rsplit(":", 1)[1])
        [idle] = [pid for pid in senders if not _talks_to(pid, port)]
        assert _waiting(idle)  # its imports done: it waits for a job
        os.kill(idle, signal.SIGKILL)
        sendgrid_emulator.release()
        _, err = send_process.communicate(timeout=60)
    finally:
        send_process.kill()
    assert send_process.returncode == 1 and "Traceback" not in err
    # noticed while the suppressions are fetched, or when the list is to be planned
    assert re.search(r"sender-\d stopped while (fetching the suppressions|planning the list)", err)
    assert "nothing was sent" in err
    assert sendgrid_emulator.mail_requests() == []
    rerun = send(site)
    assert rerun.returncode == 0, rerun.stderr
    assert delivered(sendgrid_emulator) == collections.Counter(emails)


@pytest.mark.parametrize("beside_processes", [False, True])
def test_a_send_failing_while_a_sender_thread_waits_to_be_heard_stops_it_and_ends(
    beside_processes: bool,
) -> None:
    """The send's own loop fails (its claim's heartbeat, slow, then raising) after a sender
    thread has said more than its pipe holds: the thread is asked to stop and heard out
    meanwhile, and the failure is raised once it has ended, instead of both waiting for
    each other. Threads alone, or beside sender processes (here none are started)."""
    words, ended = [0], threading.Event()

    def sender(pipe: Any, stop: Any, halt: Any) -> None:  # one word a batch, until stopped
        progress = _PipedProgress(pipe, threading.current_thread().name)
        while not stop.is_set():
            progress.advance(5)
            words[0] += 1
        with pipe:
            pipe.send(("done", "sender-1", Outcome()))
        ended.set()

    def beat() -> None:  # the state database, slow until the sender's pipe is full, then gone
        before = -1
        while words[0] != before:
            before = words[0]
            time.sleep(0.2)
        raise RuntimeError("database gone")

    pool = SenderPool(None, None, "sendgrid", 1, NoProgress(), lambda: False)  # type: ignore[arg-type]
    failed: list[BaseException] = []
    stopped: list[bool] = []

    def run() -> None:
        heartbeat = Heartbeat(beat, every=0.0)
        try:
            if beside_processes:
                pool._started = SenderProcesses.spawn(0)
                pool._in_processes(None, heartbeat, sender)  # type: ignore[arg-type]
            else:
                pool._in_this_process(sender, heartbeat, batches=1)
        except RuntimeError as exc:
            failed.append(exc)
            stopped.append(ended.is_set())  # the thread had ended before the failure went on

    send = threading.Thread(target=run, daemon=True)
    send.start()
    send.join(timeout=60)
    assert not send.is_alive() and [str(e) for e in failed] == ["database gone"]
    assert stopped == [True]


def test_a_sender_says_its_progress_only_once_its_batch_is_recorded(
    sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    """A sender's progress can wait to be heard (its pipe full while the send is busy):
    said after the batch is recorded, that wait never holds a sent batch unrecorded, which
    a kill meanwhile would leave in doubt."""
    with Ledger(database_url) as ledger:
        issue_id = planned_issue(ledger, batches=3, readers=4)
        unrecorded: list[int] = []

        class Watching(NoProgress):
            def advance(self, recipients: int) -> None:
                counts = ledger.batch_counts(issue_id)
                unrecorded.append(counts.get("submitting", (0, 0))[0])

        deliverer = Deliverer(
            ledger=ledger,
            make_transport=lambda: SendGridTransport(
                SendGridSettings(api_url=sendgrid_emulator.url, timeout=5), SENDGRID_TEST_API_KEY
            ),
            workers=1,
            progress=Watching(),
            in_doubt="batch",
        )
        message = Message("S", "<p>%%email%%</p>", "%%email:text%%", "news@example.com", None,
                          None, frozenset({"email"}), str(issue_id), "main")  # fmt: skip
        outcome = deliverer.send_claimed(issue_id, message, None, frozenset())
        counts = ledger.batch_counts(issue_id)
    assert outcome.submitted_batches == 3 and counts == {"submitted": (3, 12)}
    assert unrecorded == [0, 0, 0]


def test_a_failure_to_start_a_sender_thread_stops_the_ones_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No more threads (or a Ctrl-C) while the send starts its sender threads: the ones
    started already are asked to stop and waited for, not left taking batches."""
    ended = threading.Event()

    def sender(pipe: Any, stop: Any, halt: Any) -> None:
        while not stop.wait(0.01):
            pass
        with pipe:
            pipe.send(("done", threading.current_thread().name, Outcome()))
        ended.set()

    start = threading.Thread.start
    started: list[threading.Thread] = []

    def start_or_fail(thread: threading.Thread) -> None:
        if thread.name.startswith("sender-") and started:
            raise RuntimeError("can't start new thread")
        start(thread)
        if thread.name.startswith("sender-"):
            started.append(thread)

    monkeypatch.setattr(threading.Thread, "start", start_or_fail)
    pool = SenderPool(None, None, "sendgrid", 2, NoProgress(), lambda: False)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="can't start new thread"):
        pool._in_this_process(sender, Heartbeat(lambda: None), batches=2)
    assert len(started) == 1 and ended.is_set() and not started[0].is_alive()


def test_a_word_cut_by_a_ctrl_c_is_not_read_again() -> None:
    """A Ctrl-C while a sender's word is read leaves the rest of it in the pipe: that pipe
    is dropped (its sender is let go by its process's end), never misread as a new word."""
    heard, said = multiprocessing.Pipe(duplex=False)

    class Interrupt(BaseException):  # as KeyboardInterrupt, without ending pytest if it escapes
        pass

    class CutShort:
        def fileno(self) -> int:
            return heard.fileno()

        def recv(self) -> object:
            os.read(heard.fileno(), 3)  # a part of the word, then the Ctrl-C
            raise Interrupt

        def close(self) -> None:
            self.closed = True

    cut = CutShort()
    inbox = Inbox([cut])  # type: ignore[list-item]
    said.send(("advance", "sender-1", 5))
    with pytest.raises(Interrupt):
        inbox.get(1.0)
    with pytest.raises(queue.Empty):
        inbox.get(0.05)
    assert cut.closed
    heard.close()
    said.close()
