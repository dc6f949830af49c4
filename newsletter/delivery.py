"""Sending an issue's batches: worker threads, progress, resume.

The ledger's batches (`newsletter/state/batches.py`) are the source of truth
(Ghost's batch state machine): a batch is pending -> submitting -> submitted |
failed. It is marked `submitting` before the request leaves, so a crash in
between leaves it visibly ambiguous rather than silently resent.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence, Set
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from newsletter.errors import LedgerError, NewsletterError
from newsletter.failpoints import failpoint
from newsletter.planning import UnsubscribeLinks, build_batch
from newsletter.retry import RetryPolicy, send_with_retries
from newsletter.state.batches import BatchRow, unpack_recipients
from newsletter.transports.base import (
    Batch,
    BatchFailure,
    InDoubt,
    InDoubtFailure,
    Message,
    PermanentFailure,
    Receipt,
    Transport,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Progress(Protocol):
    def start(self, recipients: int, batches: int) -> None: ...

    def advance(self, recipients: int) -> None: ...

    def stop(self) -> None: ...


class NoProgress:
    def start(self, recipients: int, batches: int) -> None:
        pass

    def advance(self, recipients: int) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class BatchResult:
    """What a worker did with one batch."""

    receipt: Receipt | None = None
    sent: int = 0  # recipients the service accepted (or refused by name)
    dropped: int = 0  # suppressed since planning: left out
    failure: BatchFailure | None = None
    stopped: bool = False  # a stop was asked for between two messages
    handled: int = 0  # stored rows dealt with, from the start: where to cut the batch
    advanced: int = 0  # recipients already shown on the progress bar


@dataclass
class Outcome:
    """What one delivery run did, in the ledger's words."""

    submitted_batches: int = 0
    submitted_recipients: int = 0
    failed_batches: int = 0
    dropped_suppressed: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: bool = False
    permanent: bool = False

    def add(self, other: Outcome) -> None:
        """Another sender's outcome, added to this one."""
        self.submitted_batches += other.submitted_batches
        self.submitted_recipients += other.submitted_recipients
        self.failed_batches += other.failed_batches
        self.dropped_suppressed += other.dropped_suppressed
        self.rejected += other.rejected
        self.errors += other.errors
        self.stopped |= other.stopped
        self.permanent |= other.permanent


class DeliveryState(Protocol):
    """What delivering uses of the state database: the batch state machine
    (`newsletter.state.batches.BatchStore`), and nothing else (the sender's heartbeat,
    a claimant's or a helper's, is handed to `deliver`)."""

    def batches(
        self,
        issue_id: int,
        statuses: Sequence[str] | None = None,
        due_by: dt.datetime | None = None,
    ) -> list[BatchRow]: ...

    def take_batch(
        self, batch_id: int, from_statuses: Sequence[str], kind: str = "batch"
    ) -> bytes | None: ...

    def take_next_batch(self, issue_id: int) -> tuple[BatchRow, bytes] | None: ...

    def record_progress(self, batch_id: int, done: int) -> bool: ...

    def replace_batch_recipients(
        self, batch_id: int, columns: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> None: ...

    def split_batch(
        self,
        batch_id: int,
        sent: int,
        *,
        in_doubt: int = 0,
        rest: str = "pending",
        note: str | None = None,
    ) -> None: ...

    def mark_submitted_many(
        self, accepted: Sequence[tuple[int, str | None, str | None]]
    ) -> None: ...


@dataclass
class Deliverer:
    """Sends an issue's unsent batches from the ledger with worker threads.

    `in_doubt` is what a crash can leave unknown with this transport: "batch" (one
    request per batch: SendGrid), "message" (one message at a time, progress recorded
    after each: SMTP), or "none" (resending is harmless: the outbox).
    """

    ledger: DeliveryState
    make_transport: Callable[[], Transport]
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    workers: int = 4
    progress: Progress = field(default_factory=NoProgress)
    should_stop: Callable[[], bool] = lambda: False
    sleep: Callable[[float], None] = time.sleep
    in_doubt: InDoubt = "batch"
    heartbeat_every: float = 5.0  # seconds between signs of life while batches are in flight
    _local: threading.local = field(default_factory=threading.local)
    _transports: list[Transport] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _transport(self) -> Transport:
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = self.make_transport()  # one per worker: clients are not thread-safe
            self._local.transport = transport
            with self._lock:
                self._transports.append(transport)
        return transport

    def _work(
        self,
        batch_id: int,
        message: Message,
        blob: bytes,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
    ) -> BatchResult:
        columns, rows = unpack_recipients(blob)
        recipients, dropped = build_batch(columns, rows, links, suppressed)
        if dropped:  # the batch as really sent: who was left out is neither sent nor in doubt
            rows = [row for row in rows if row[0].lower() not in suppressed]
            self.ledger.replace_batch_recipients(batch_id, columns, rows)
        result = BatchResult(dropped=dropped, handled=len(rows))
        if not recipients:
            return result
        if self.in_doubt == "message":
            return self._one_at_a_time(batch_id, message, recipients, result)
        try:
            result.receipt = send_with_retries(
                self._transport(), message, recipients, self.policy, sleep=self.sleep
            )
            result.sent = len(recipients)
            failpoint("deliver.batch_sent")
        except BatchFailure as exc:
            result.failure = exc
            result.sent = result.handled = min(exc.done, len(recipients))
        return result

    def _one_at_a_time(
        self, batch_id: int, message: Message, recipients: Batch, result: BatchResult
    ) -> BatchResult:
        """Each message handed over on its own, its place recorded before it goes: a crash
        leaves only the message in flight in doubt, and a stop ends between two."""
        transport = self._transport()
        rejected: list[tuple[str, str]] = []
        for index in range(len(recipients)):
            if index and self.should_stop():
                result.stopped, result.handled = True, index
                break
            if not self.ledger.record_progress(batch_id, index):
                raise LedgerError(
                    f"batch taken over by another sender after {index} messages: this run "
                    "stops (the other sends the rest)"
                )
            try:
                receipt = send_with_retries(
                    transport, message, recipients[index : index + 1], self.policy, sleep=self.sleep
                )
            except BatchFailure as exc:
                exc.rejected = rejected + exc.rejected
                result.failure, result.handled = exc, index
                return result
            failpoint("deliver.message_sent")
            rejected.extend(receipt.rejected)
            result.sent += 1
            self.progress.advance(1)
            result.advanced += 1
        result.receipt = Receipt(message_id=None, rejected=rejected)
        return result

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
        """The issue's batches still owed (and due by `due_by`: readers waiting for their
        own morning stay for a later run), `workers` at a time; `beat` shows the sender is
        alive meanwhile. A helper (`helping`) takes only pending batches: what failed or is
        in doubt is for the claimant to settle."""
        outcome = Outcome()
        if helping:
            sendable = ["pending"]
        else:
            sendable = ["pending", "failed", *(["submitting"] if resend_ambiguous else [])]
        todo = self.ledger.batches(issue_id, sendable, due_by)
        self.progress.start(sum(b.size for b in todo), len(todo))
        in_flight: dict[Future[BatchResult], BatchRow] = {}
        heartbeat = Heartbeat(beat, self.heartbeat_every)
        pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="send")
        try:
            for batch in todo:
                # at most one batch per worker: a stop or a refusal leaves nothing queued
                while len(in_flight) >= self.workers:
                    self._collect(in_flight, outcome, heartbeat)
                if self.should_stop() or outcome.permanent or outcome.failed_batches:
                    outcome.stopped = outcome.stopped or self.should_stop()
                    break
                blob = self.ledger.take_batch(batch.id, sendable, self.in_doubt)
                if blob is None:
                    continue  # someone else moved it: not ours to send
                failpoint("deliver.batch_taken")
                future = pool.submit(self._work, batch.id, message, blob, links, suppressed)
                in_flight[future] = batch
                self._collect(in_flight, outcome, None)
                heartbeat.beat_if_due()
            while in_flight:
                self._collect(in_flight, outcome, heartbeat)
        finally:
            pool.shutdown(wait=True)
            for transport in self._transports:
                transport.close()
            self._transports.clear()
            self.progress.stop()
        return outcome

    def _collect(
        self,
        in_flight: dict[Future[BatchResult], BatchRow],
        outcome: Outcome,
        heartbeat: Heartbeat | None,
    ) -> None:
        """Record the batches that finished; with a heartbeat, wait for one, showing the
        claim is alive meanwhile (a batch over a slow SMTP relay can take many minutes)."""
        if not in_flight:
            return
        while True:
            done, _ = wait(
                list(in_flight),
                timeout=0 if heartbeat is None else heartbeat.every,
                return_when=FIRST_COMPLETED,
            )
            if done or heartbeat is None:
                break
            heartbeat.beat_if_due()
        submitted: list[tuple[int, str | None, str | None]] = []
        advanced = 0
        for future in done:
            batch = in_flight.pop(future)
            try:
                result = future.result()
            except Exception as exc:
                self._crashed(batch, exc, outcome)
                continue
            advanced += self._settle(batch, result, outcome, submitted)
        self._record_submitted(submitted)
        if advanced:
            self.progress.advance(advanced)

    def _crashed(self, batch: BatchRow, exc: Exception, outcome: Outcome) -> None:
        """Unknown: it may or may not have gone out; left `submitting` (in doubt, or for a
        batch sent one message at a time, cut where its progress says)."""
        outcome.errors.append(f"batch {batch.seq}: {_reason(exc)}")
        outcome.permanent = True
        if not isinstance(exc, NewsletterError):
            log.exception("batch %d crashed", batch.seq)

    def _settle(
        self,
        batch: BatchRow,
        result: BatchResult,
        outcome: Outcome,
        submitted: list[tuple[int, str | None, str | None]],
    ) -> int:
        """What one batch's result means: counted, cut where it failed or stopped, or added
        to `submitted` (recorded together with the others that finished with it). Returns
        the readers to show as done, once that is recorded: progress is said after the
        record (a sender whose progress waits to be heard holds no batch unrecorded)."""
        outcome.submitted_recipients += result.sent
        outcome.dropped_suppressed += result.dropped
        finished = result.failure is None and not result.stopped
        advance = (batch.size if finished else result.sent) - result.advanced
        if result.failure is not None:
            self._record_failure(batch, result, outcome)
            return advance
        receipt = result.receipt
        if receipt is not None:
            outcome.rejected.extend(receipt.rejected)
        if result.stopped:
            self.ledger.split_batch(batch.id, result.handled, rest="pending")
            outcome.stopped = True
            return advance
        notes = []
        if result.dropped:
            notes.append(f"{result.dropped} suppressed since planning")
        if receipt is not None and receipt.rejected:
            notes.append(f"{len(receipt.rejected)} refused by the server")
        submitted.append(
            (batch.id, receipt.message_id if receipt else None, "; ".join(notes) or None)
        )
        outcome.submitted_batches += 1
        return advance

    def _record_submitted(self, submitted: list[tuple[int, str | None, str | None]]) -> None:
        # what finished together is recorded together: one write, and no batch waits
        # for one that is still in flight
        self.ledger.mark_submitted_many(submitted)
        if submitted:
            failpoint("deliver.batches_recorded")

    def send_claimed(
        self,
        issue_id: int,
        message: Message,
        links: UnsubscribeLinks | None,
        suppressed: Set[str],
    ) -> Outcome:
        """One sender's loop beside others (processes, or machines sharing one database):
        take the next pending batch from the state database, send it, record it, until none
        is left, a stop is asked for, or a batch fails. Each batch is taken by one sender."""
        outcome = Outcome()
        try:
            while not self.should_stop():
                taken = self.ledger.take_next_batch(issue_id)
                if taken is None:
                    break
                batch, blob = taken
                failpoint("deliver.batch_taken")
                try:
                    result = self._work(batch.id, message, blob, links, suppressed)
                except Exception as exc:
                    self._crashed(batch, exc, outcome)
                    break
                submitted: list[tuple[int, str | None, str | None]] = []
                advance = self._settle(batch, result, outcome, submitted)
                self._record_submitted(submitted)
                self.progress.advance(advance)
                if outcome.permanent or outcome.failed_batches:
                    break
            outcome.stopped = outcome.stopped or self.should_stop()
        finally:
            # this thread's client only: other threads may run this loop beside it
            transport = getattr(self._local, "transport", None)
            if transport is not None:
                self._local.transport = None
                with self._lock:
                    self._transports.remove(transport)
                transport.close()
        return outcome

    def _record_failure(self, batch: BatchRow, result: BatchResult, outcome: Outcome) -> None:
        """Cut the batch where it stopped: the part that went out is submitted, the rest is
        owed; what was handed over without an answer stays in doubt, never resent."""
        failure = result.failure
        assert failure is not None
        outcome.rejected.extend(failure.rejected)
        outcome.failed_batches += 1
        outcome.errors.append(f"batch {batch.seq}: {failure}")
        outcome.permanent |= isinstance(failure, PermanentFailure)
        if not isinstance(failure, InDoubtFailure):
            self.ledger.split_batch(batch.id, result.handled, rest="failed", note=str(failure))
        elif self.in_doubt == "message":
            self.ledger.split_batch(
                batch.id, result.handled, in_doubt=1, rest="failed", note=str(failure)
            )
        # else: the whole request is in doubt, and stays `submitting`


class Heartbeat:
    """Shows the claim is alive every `every` seconds, so nobody takes over a live send."""

    def __init__(self, beat: Callable[[], None], every: float = 5.0) -> None:
        self._beat = beat
        self.every = every
        self._last = time.monotonic()

    def beat_if_due(self) -> None:
        if time.monotonic() - self._last > self.every:
            self._beat()
            self._last = time.monotonic()


def _reason(exc: BaseException) -> str:
    """A worker's error as the report shows it: ours as written, anything else by its kind."""
    return str(exc) if isinstance(exc, NewsletterError) else f"unexpected {exc!r}"
