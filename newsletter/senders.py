"""Several senders sharing one issue: each takes the next pending batch from the state
database, sends it and records it, until none is left.

For a transport that sends a batch in one request (SendGrid), the work per batch
is CPU (signing links, writing JSON) and one thread cannot use a second core:
sender processes do it, started with `spawn` (never a fork of a process holding
threads and database connections), and with two or more each also plans a part
of the list (`plan_parts.py`). A process costs its imports: a short list is sent
by threads of the send's own process, a longer one by a process beside a thread
here, the longest by up to `[delivery] workers` processes (`processes_for`, in
`sender_processes.py`, which starts and stops them). The batches are claimed in the database
(`BatchStore.take_next_batch`: row locks skipped on PostgreSQL), so senders here
and a sender on another machine against one PostgreSQL take turns the same way.
This process shows progress, keeps the claim alive and adds up what the senders
did.

A sender dies with this process (a kill -9 of the send stops every part of it,
leaving only the requests in flight in doubt), ignores Ctrl-C and SIGTERM (the
stop is passed on: each finishes its batch), and stops taking batches after one
of them fails, as do the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from newsletter.config import Config
from newsletter.delivery import Deliverer, Heartbeat, Outcome, Progress
from newsletter.errors import NewsletterError
from newsletter.plan_parts import PartPlan, PlanJob, plan_part
from newsletter.planning import UnsubscribeLinks
from newsletter.sender_processes import POLL, Inbox, SenderProcesses, processes_for, thread_pipe
from newsletter.transports.base import Message, PermanentFailure, TemporaryFailure

log = logging.getLogger(__name__)

DRAIN = 1.0  # seconds to wait for the last word of a sender that has exited


@dataclass(frozen=True)
class SenderJob:
    """What a sender process needs to rebuild its parts: all of it picklable."""

    config: Config
    transport: str
    issue_id: int
    message: Message
    suppressed: frozenset[str]


@dataclass(frozen=True)
class SuppressionJob:
    """Ask the mail service who it refuses to deliver to, once (the send retries): a
    sender does it while the send renders, so the service's client, its imports and
    their memory stay out of the send's own process."""

    config: Config
    transport: str


class _PipedProgress:
    """A sender's progress, passed to the process that shows it."""

    def __init__(self, pipe: Connection, name: str) -> None:
        self.pipe = pipe
        self.name = name

    def start(self, recipients: int, batches: int) -> None:
        pass

    def advance(self, recipients: int) -> None:
        if recipients:
            _say(self.pipe, ("advance", self.name, recipients))

    def stop(self) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies. Elsewhere the sender
    looks at its parent before each batch (`os.getppid()`) and stops after the one in
    hand."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the line above
        os._exit(1)


def sender_main(pipe: Connection, stop: Any, halt: Any, parent: int) -> None:
    """A spawned sender: imports what it needs while the send plans, then waits for its
    jobs on its pipe (None, or the pipe closed: nothing to send) and runs the shared loop
    with its own database connection and transport, saying how it goes on the pipe."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from newsletter import failpoints
    from newsletter.parts import Parts
    from newsletter.state import Ledger

    failpoints.kill_parent_too()
    # garbage collection left as Python sets it: each request leaves a cycle holding
    # its 600 KB body (httpx), which raised thresholds would keep by the hundred
    name = multiprocessing.current_process().name
    while isinstance(job := _next_job(pipe), (PlanJob, SuppressionJob)):
        if isinstance(job, SuppressionJob):
            _say(pipe, ("suppressions", name, _suppressions(job)))
        else:
            _say(pipe, ("planned", name, _plan(job)))
    if job is None:
        return
    try:
        parts = Parts(job.config, dt.datetime.now)
        with Ledger(job.config.database_url) as ledger:
            deliverer = Deliverer(
                ledger=ledger,
                make_transport=parts.transport_factory(job.transport, None),
                policy=parts.retry_policy(),
                workers=1,
                progress=_PipedProgress(pipe, name),
                should_stop=lambda: stop.is_set() or halt.is_set() or os.getppid() != parent,
                in_doubt="batch",
            )
            links = parts.unsubscribe_links(job.message.list_name, job.transport)
            outcome = deliverer.send_claimed(job.issue_id, job.message, links, job.suppressed)
    except Exception as exc:  # reported, never a traceback in a child's stderr
        outcome = Outcome(errors=[f"a sender process failed: {exc}"], permanent=True)
    if outcome.permanent or outcome.failed_batches:
        halt.set()
    _say(pipe, ("done", name, outcome))
    _exit_now(pipe)


def _say(pipe: Connection, word: tuple[str, str, Any]) -> None:
    """A word to the send; none if it has gone (where its senders do not die with it, the
    next look for a job or at the parent ends this one)."""
    with contextlib.suppress(OSError):
        pipe.send(word)


def _next_job(pipe: Connection) -> object:
    """The send's next job; None when the send has gone."""
    try:
        return pipe.recv()
    except (EOFError, OSError):
        return None


def _exit_now(pipe: Connection) -> None:
    """Its report sent, a sender has nothing left to do: the process ends without tearing
    down the interpreter (freeing its objects one by one took a tenth of a second that
    the send waited for). Its report is in the pipe already; its database connection is
    closed; the kernel closes its sockets."""
    pipe.close()
    for stream in (sys.stdout, sys.stderr):  # a warning it logged, if still buffered
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def _suppressions(
    job: SuppressionJob,
) -> list[tuple[str, str]] | tuple[str, str, float | None]:
    """The service's suppressions, or (kind, message) of why not: a failure crosses to the
    send as plain data, which rebuilds it (`SenderPool.suppressions`)."""
    from newsletter.parts import Parts

    try:
        fetch = Parts(job.config, dt.datetime.now).suppressions_at_service(job.transport)
        return fetch() if fetch is not None else []
    except TemporaryFailure as exc:  # with the wait the service asked for
        return ("temporary", str(exc), exc.retry_after)
    except PermanentFailure as exc:
        return ("permanent", str(exc), None)
    except Exception as exc:
        return ("error", str(exc) or type(exc).__name__, None)


def _plan(job: PlanJob) -> PartPlan:
    """A part of the list planned here (`plan_parts.py`); a failure is reported, not raised."""
    from newsletter.state import Ledger

    try:
        with Ledger(job.database_url) as ledger:
            return plan_part(job, ledger)
    except Exception as exc:
        return PartPlan(job.index, job.first_seq, error=f"planning a part of the list: {exc}")


@dataclass
class SenderPool:
    """Delivers an issue's batches with `workers` senders claiming from the database.

    Senders are spawned processes, each rebuilding its transport and links from a
    `SenderJob`, and a thread here when there are fewer processes than workers; a send
    too small for a process has threads here only.
    """

    deliverer: Deliverer  # this process's: its ledger, transport factory and hooks
    config: Config
    transport: str
    workers: int
    progress: Progress
    should_stop: Callable[[], bool]
    heartbeat_every: float = 5.0

    _started: SenderProcesses | None = None

    def warm_up(self, batches: int, started: SenderProcesses | None = None) -> None:
        """Start the sender processes now, for a send of about `batches` batches: they
        import what they need while this process gathers, renders and plans. `started`:
        ones the command started before it knew more, taken over (and let go by `close`)."""
        count = processes_for(batches, self.workers)
        if self._started is not None or not count:
            return
        if started is not None and started.processes:
            self._started = started
        else:
            self._started = SenderProcesses.spawn(count)

    def close(self) -> None:
        """The senders are let go (ones never given a job as well)."""
        if self._started is not None:
            self._started.close()
            self._started = None

    @property
    def _senders(self) -> list[Any]:
        return self._started.processes if self._started is not None else []

    @property
    def planners(self) -> int:
        """How many senders can plan parts of the list: the ones started."""
        return len(self._senders)

    def ask_suppressions(self, job: SuppressionJob) -> None:
        """One sender starts fetching the suppressions; `suppressions()` waits for them."""
        assert self._started is not None
        self._started.give(0, job)

    def suppressions(self) -> list[tuple[str, str]]:
        """What `ask_suppressions` fetched; its failure raised here, of the same kind."""
        value = self._wait_for("suppressions", "fetching the suppressions")
        if isinstance(value, list):
            return value
        why, message, retry_after = value
        if why == "temporary":
            raise TemporaryFailure(message, retry_after)
        if why == "permanent":
            raise PermanentFailure(message)
        raise NewsletterError(message)

    def _wait_for(self, wanted: str, doing: str) -> Any:
        """The next event of this kind from any sender; a sender that dies meanwhile is
        an error."""
        assert self._started is not None
        while True:
            try:
                kind, _, value = self._started.inbox.get(POLL)
            except queue.Empty:
                dead = [s.name for s in self._senders if not s.is_alive()]
                if dead:
                    raise NewsletterError(
                        f"{', '.join(dead)} stopped while {doing}: nothing was sent"
                    ) from None
                continue
            if kind == wanted:
                return value

    def plan_parts(self, jobs: Sequence[PlanJob]) -> list[PartPlan]:
        """Each job planned by a sender (no more jobs than senders); a sender that dies
        meanwhile is an error."""
        assert self._started is not None
        for n, job in enumerate(jobs):
            self._started.give(n, job)
        return [self._wait_for("planned", "planning the list") for _ in jobs]

    def deliver(
        self,
        issue_id: int,
        message: Message,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
        beat: Callable[[], None],
        *,
        resend_ambiguous: bool = False,
        helping: bool = False,
        due_by: dt.datetime | None = None,
    ) -> Outcome:
        """As `Deliverer.deliver`, by the senders side by side; a helper leaves what
        failed or is in doubt to the claimant. (Every batch is due: readers' own mornings
        are SendGrid's `send_at`, not later runs.)"""
        ledger = self.deliverer.ledger
        if not helping:  # owed again: what failed, and what was in doubt if the editor says
            ledger.requeue(issue_id, ["failed", *(["submitting"] if resend_ambiguous else [])])
        todo = ledger.batches(issue_id, ["pending"])
        self.progress.start(sum(b.size for b in todo), len(todo))
        heartbeat = Heartbeat(beat, self.heartbeat_every)
        try:
            self.warm_up(len(todo))
            here = functools.partial(self._one, issue_id, message, links, suppressed)
            if not self._senders or len(todo) <= 1:
                return self._in_this_process(here, heartbeat, len(todo))
            job = SenderJob(self.config, self.transport, issue_id, message, frozenset(suppressed))
            return self._in_processes(job, heartbeat, here)
        finally:
            self.progress.stop()

    def _in_this_process(
        self, here: Callable[..., None], heartbeat: Heartbeat, batches: int
    ) -> Outcome:
        """`workers` threads here, each claiming batches (their network waits overlap): for a
        send too small to pay for starting processes."""
        inbox = Inbox([])
        stop, halt = threading.Event(), threading.Event()
        count = max(1, min(self.workers, batches))
        try:
            return self._with_threads(here, count, "sender", [], (inbox, stop, halt), heartbeat)
        finally:
            inbox.close()

    def _in_processes(
        self, job: SenderJob, heartbeat: Heartbeat, here: Callable[..., None]
    ) -> Outcome:
        """The sender processes, each given the job; and as many senders as `workers` has
        beyond them in threads of this process, running `here` (a send worth one process,
        not two, still uses both cores)."""
        started = self._started
        assert started is not None
        for n in range(len(self._senders)):
            started.give(n, job)
        count = self.workers - len(self._senders)
        channels = (started.inbox, started.stop, started.halt)
        return self._with_threads(here, count, "here", self._senders, channels, heartbeat)

    def _with_threads(
        self,
        here: Callable[..., None],
        count: int,
        name: str,
        processes: list[Any],
        channels: tuple[Inbox, Any, Any],
        heartbeat: Heartbeat,
    ) -> Outcome:
        """`count` senders in threads of this process running `here`, each with a pipe of
        its own into the inbox, gathered with the sender `processes` until all have ended.
        Should this process fail meanwhile (or while it starts them), every sender is asked
        to stop and the threads are waited for, heard out meanwhile (one waiting to be
        heard would never end): a batch they had in flight is recorded before the send goes
        on. A second Ctrl-C ends it now instead."""
        inbox, stop, halt = channels
        threads: list[threading.Thread] = []
        try:
            for n in range(count):
                heard, said = thread_pipe()
                inbox.add(heard)
                thread = threading.Thread(
                    target=here, args=(said, stop, halt), name=f"{name}-{n + 1}", daemon=True
                )
                thread.start()
                threads.append(thread)
            return self._gather([*processes, *threads], inbox, stop, heartbeat)
        except BaseException as exc:
            stop.set()
            if not isinstance(exc, KeyboardInterrupt):
                for thread in threads:
                    while thread.is_alive():
                        with contextlib.suppress(queue.Empty):
                            inbox.get(POLL)
            raise

    def _one(
        self,
        issue_id: int,
        message: Message,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
        pipe: Connection,
        stop: Any,
        halt: Any,
    ) -> None:
        """A sender in a thread of this process: the shared loop, its progress and outcome
        told on its pipe as a sender process tells them; it stops at once when asked, or
        when one of the others failed (and makes them stop when it fails)."""
        name = threading.current_thread().name
        asked = self.should_stop
        one = dataclasses.replace(  # its own hooks; its transport is made per thread
            self.deliverer,
            progress=_PipedProgress(pipe, name),
            should_stop=lambda: stop.is_set() or halt.is_set() or asked(),
        )
        try:
            outcome = one.send_claimed(issue_id, message, links, suppressed)
        except Exception as exc:
            outcome = Outcome(errors=[f"sending failed: {exc}"], permanent=True)
            log.exception("the sender failed")
        if outcome.permanent or outcome.failed_batches:
            halt.set()
        with pipe:
            _say(pipe, ("done", name, outcome))  # unheard if the send ended first (a 2nd Ctrl-C)

    def _gather(self, senders: list[Any], inbox: Inbox, stop: Any, heartbeat: Heartbeat) -> Outcome:
        """Progress and the senders' outcomes as they come; the claim kept alive and a stop
        request passed on all along; a sender that exited and gave no report within
        `DRAIN` seconds died: an error (its batch in flight stays `submitting`: in doubt,
        as after a crash), while the others go on."""
        outcome = Outcome()
        finished: set[str] = set()
        exited: dict[str, float] = {}  # a sender found gone, and when: its report may follow
        look_at = time.monotonic()
        while len(finished) < len(senders):
            heartbeat.beat_if_due()
            if self.should_stop():
                stop.set()
            with contextlib.suppress(queue.Empty):
                self._take(*inbox.get(POLL), outcome, finished)
            if (now := time.monotonic()) < look_at:
                continue
            look_at = now + POLL
            for sender in senders:
                if sender.name in finished or sender.is_alive():
                    continue
                if now - exited.setdefault(sender.name, now) >= DRAIN:
                    code = getattr(sender, "exitcode", None)
                    outcome.errors.append(f"{sender.name} stopped without a report (exit {code})")
                    outcome.permanent = True
                    finished.add(sender.name)
        return outcome

    def _take(self, kind: str, name: str, value: Any, outcome: Outcome, finished: set[str]) -> None:
        if kind == "advance":
            self.progress.advance(value)
        elif kind == "done":
            outcome.add(value)
            finished.add(name)
