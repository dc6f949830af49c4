"""Several senders sharing one issue: each takes the next pending batch from the state
database, sends it and records it, until none is left.

For a transport that sends a batch in one request (SendGrid), the work per batch
is CPU (signing links, writing JSON) and one thread cannot use a second core:
`[delivery] workers` sender processes do it, started with `spawn` (never a fork of
a process holding threads and database connections). The batches are claimed in
the database (`BatchStore.take_next_batch`: row locks skipped on PostgreSQL), so
processes here and `newsletter send` on another machine against one PostgreSQL
work the same way. This process plans, shows progress, keeps the claim alive
and adds up what the senders did.

A sender dies with this process (a kill -9 of the send stops every part of it,
leaving only the requests in flight in doubt), ignores Ctrl-C and SIGTERM (the
stop is passed on: each finishes its batch), and stops taking batches after one
of them fails, as do the others.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Set
from dataclasses import dataclass
from typing import Any

from newsletter.config import Config
from newsletter.delivery import Deliverer, Heartbeat, Outcome, Progress
from newsletter.planning import UnsubscribeLinks
from newsletter.transports.base import Message

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks at a stop request and at the senders
DRAIN = 1.0  # seconds to wait for the last word of a sender that has exited


@dataclass(frozen=True)
class SenderJob:
    """What a sender process needs to rebuild its parts: all of it picklable."""

    config: Config
    transport: str
    issue_id: int
    message: Message
    suppressed: frozenset[str]


class _QueueProgress:
    """A sender's progress, passed to the process that shows it."""

    def __init__(self, events: Any, name: str) -> None:
        self.events = events
        self.name = name

    def start(self, recipients: int, batches: int) -> None:
        pass

    def advance(self, recipients: int) -> None:
        if recipients:
            self.events.put(("advance", self.name, recipients))

    def stop(self) -> None:
        pass


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this process when its parent dies. Elsewhere the loop's
    look at the parent (`_parent_gone`) stops it after the batch in hand."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # died before the line above
        os._exit(1)


def _sender_process(job: SenderJob, events: Any, stop: Any, halt: Any, parent: int) -> None:
    """A spawned sender: its own database connection and transport, the shared loop."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from newsletter import failpoints
    from newsletter.parts import Parts
    from newsletter.state import Ledger

    failpoints.kill_parent_too()
    name = multiprocessing.current_process().name
    try:
        parts = Parts(job.config, dt.datetime.now)
        with Ledger(job.config.database_url) as ledger:
            deliverer = Deliverer(
                ledger=ledger,
                make_transport=parts.transport_factory(job.transport, None),
                policy=parts.retry_policy(),
                workers=1,
                progress=_QueueProgress(events, name),
                should_stop=lambda: stop.is_set() or halt.is_set() or os.getppid() != parent,
                in_doubt="batch",
            )
            links = parts.unsubscribe_links(job.message.list_name, job.transport)
            outcome = deliverer.send_claimed(job.issue_id, job.message, links, job.suppressed)
    except Exception as exc:  # reported, never a traceback in a child's stderr
        outcome = Outcome(errors=[f"a sender process failed: {exc}"], permanent=True)
    if outcome.permanent or outcome.failed_batches:
        halt.set()
    events.put(("done", name, outcome))


@dataclass
class SenderPool:
    """Delivers an issue's batches with `workers` senders claiming from the database.

    One sender runs here, in a thread (nothing to gain from a process); more are
    spawned processes, each rebuilding its transport and links from `job`.
    """

    deliverer: Deliverer  # this process's: its ledger, transport factory and hooks
    config: Config
    transport: str
    workers: int
    progress: Progress
    should_stop: Callable[[], bool]
    heartbeat_every: float = 5.0

    def deliver(
        self,
        issue_id: int,
        message: Message,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
        owner: str,
        *,
        resend_ambiguous: bool = False,
    ) -> Outcome:
        ledger = self.deliverer.ledger
        # owed again: what failed before, and what was in doubt if the editor says resend
        ledger.requeue(issue_id, ["failed", *(["submitting"] if resend_ambiguous else [])])
        todo = ledger.batches(issue_id, ["pending"])
        self.progress.start(sum(b.size for b in todo), len(todo))
        heartbeat = Heartbeat(lambda: ledger.beat(issue_id, owner), self.heartbeat_every)
        try:
            if min(self.workers, len(todo)) <= 1:
                return self._in_this_process(issue_id, message, links, suppressed, heartbeat)
            job = SenderJob(self.config, self.transport, issue_id, message, frozenset(suppressed))
            return self._in_processes(job, min(self.workers, len(todo)), heartbeat)
        finally:
            self.progress.stop()

    def _in_this_process(
        self,
        issue_id: int,
        message: Message,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
        heartbeat: Heartbeat,
    ) -> Outcome:
        events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
        stop = threading.Event()
        one = self.deliverer
        one.progress = _QueueProgress(events, "sender")
        one.should_stop = stop.is_set

        def run() -> None:
            try:
                outcome = one.send_claimed(issue_id, message, links, suppressed)
            except Exception as exc:
                outcome = Outcome(errors=[f"sending failed: {exc}"], permanent=True)
                log.exception("the sender failed")
            events.put(("done", "sender", outcome))

        thread = threading.Thread(target=run, name="sender", daemon=True)
        thread.start()
        return self._gather([thread], events, stop, heartbeat)

    def _in_processes(self, job: SenderJob, count: int, heartbeat: Heartbeat) -> Outcome:
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        stop, halt = context.Event(), context.Event()
        senders = [
            context.Process(
                target=_sender_process,
                args=(job, events, stop, halt, os.getpid()),
                name=f"sender-{n + 1}",
                daemon=True,
            )
            for n in range(count)
        ]
        for sender in senders:
            sender.start()
        try:
            return self._gather(senders, events, stop, heartbeat)
        finally:
            for sender in senders:
                sender.join()
            events.close()

    def _gather(self, senders: list[Any], events: Any, stop: Any, heartbeat: Heartbeat) -> Outcome:
        """Progress and the senders' outcomes as they come; the claim kept alive; a stop
        request passed on; a sender that died without a word is an error (its batch in
        flight stays `submitting`: in doubt, as after a crash)."""
        outcome = Outcome()
        finished: set[str] = set()
        while len(finished) < len(senders):
            try:
                kind, name, value = events.get(timeout=POLL)
            except queue.Empty:
                heartbeat.beat_if_due()
                if self.should_stop():
                    stop.set()
                for sender in senders:
                    if sender.name not in finished and not sender.is_alive():
                        self._last_words(sender, events, outcome, finished)
                continue
            self._take(kind, name, value, outcome, finished)
        return outcome

    def _take(self, kind: str, name: str, value: Any, outcome: Outcome, finished: set[str]) -> None:
        if kind == "advance":
            self.progress.advance(value)
        elif kind == "done":
            outcome.add(value)
            finished.add(name)

    def _last_words(self, sender: Any, events: Any, outcome: Outcome, finished: set[str]) -> None:
        """A sender exited: read what it said before it went; nothing means it died."""
        while sender.name not in finished:
            try:
                self._take(*events.get(timeout=DRAIN), outcome, finished)
            except queue.Empty:
                code = getattr(sender, "exitcode", None)
                outcome.errors.append(f"{sender.name} stopped without a report (exit {code})")
                outcome.permanent = True
                finished.add(sender.name)
