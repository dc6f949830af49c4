"""The day's send: an issue to a list exactly once; a rerun resumes from the ledger.

Claim the issue, store what will be sent and its batches (the plan), deliver
them, report. Test sends (`--list test`, `--to`, `--sandbox`) go to `trial.py`
and are never recorded as the day's issue.

Nothing is built here: the transports and their secrets, the signed unsubscribe
links, the retry policy, the `Deliverer`, outbox folders and the `Message` come
from the composition root (`App.parts`, see `parts.py`). `SendRequest` (what was
asked), `SendPreview` (what a person confirms) and `SendReport` (what happened)
are in `models.py`; reading the list is `recipients.py`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from newsletter.app import App, BuiltIssue, empty_issue_message, lint_issue
from newsletter.delivery import Deliverer, NoProgress, Outcome, Progress
from newsletter.errors import ConfigError, LedgerError, LintError
from newsletter.failpoints import failpoint
from newsletter.joining import Helper, claimed_elsewhere, transport_mismatch, wait_for_helpers
from newsletter.meanwhile import Later, Meanwhile, Pending
from newsletter.models import TEST_LIST, SendPreview, SendReport, SendRequest
from newsletter.parts import Parts, Route
from newsletter.plan_parts import PlanJob, put_together
from newsletter.planning import plan_batches
from newsletter.recipients import (
    FIX_OR_SKIP,
    check_columns,
    list_file,
    plan_tokens,
    read_subscribers,
)
from newsletter.retry import with_retries
from newsletter.seen import HashedSeen, RepeatedAddresses, Seen, WatchedSeen
from newsletter.sender_processes import SenderProcesses, batches_in_file
from newsletter.senders import SenderPool, SuppressionJob
from newsletter.state.attempts import Attempt
from newsletter.state.batches import BATCH_DONE
from newsletter.state.issues import IssueRow, PlanContent, process_owner
from newsletter.subscribers import ListPart, ListReport, list_parts, read_list
from newsletter.timings import Timings
from newsletter.transports.base import BatchFailure
from newsletter.trial import TrialSend
from newsletter.words import moment
from newsletter.zones import ZONE_COLUMN, ReaderTimes, group_by_reader_time

log = logging.getLogger(__name__)


class Sending:
    """The day's issue to a list, once (a test send is handed to `TrialSend`).

    `app` gives the state database, the issue (gathered and rendered once) and the
    parts of sending (`app.parts`, or `parts` to swap them); `progress`, `should_stop`,
    `sleep`, `timings` and `senders` are the caller's: a progress bar, a stop request
    (SIGTERM), the wait between retries, the time each phase took, and sender processes
    started before the send was asked for (taken over if they are wanted, else left
    to the caller to let go).
    """

    def __init__(
        self,
        app: App,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
        timings: Timings | None = None,
        parts: Parts | None = None,
        senders: SenderProcesses | None = None,
    ) -> None:
        self.timings = timings or Timings()
        self.senders = senders
        self.app = app
        self.config = app.config
        self.parts = parts or app.parts
        self.progress = progress or NoProgress()
        self.should_stop = should_stop
        self.sleep = sleep

    def list_file(self, list_name: str) -> Path:
        return list_file(self.config.subscribers.path, list_name)

    def fetch_suppressions(
        self, transport: str, deliverer: Deliverer | SenderPool
    ) -> Pending[list[tuple[str, str]]] | None:
        """Before a SendGrid send, start learning who SendGrid already refuses to deliver
        to (several requests, paged) while the issue renders: in a sender process when
        there are some (the service's client and its imports stay out of this one), else
        in a thread. Retried here, with this process's waits."""
        fetch = self.parts.suppressions_at_service(transport)  # a missing API key: now
        if fetch is None:
            return None
        policy = self.parts.retry_policy()
        if not isinstance(deliverer, SenderPool) or not deliverer.planners:
            return Meanwhile(lambda: with_retries(fetch, policy, sleep=self.sleep), "suppressions")
        job = SuppressionJob(self.config, transport)
        deliverer.ask_suppressions(job)  # the first attempt, beside the render
        asked = True

        def attempt() -> list[tuple[str, str]]:
            nonlocal asked
            if not asked:  # a retry
                deliverer.ask_suppressions(job)
            asked = False
            return deliverer.suppressions()

        return Later(lambda: with_retries(attempt, policy, sleep=self.sleep))

    def store_suppressions(self, fetching: Pending[list[tuple[str, str]]]) -> int:
        """The fetched suppressions, stored before anything is planned."""
        try:
            found = fetching.result()
        except BatchFailure as exc:  # keeps its kind: a scheduler retries only temporary ones
            raise type(exc)(f"cannot sync suppressions from SendGrid: {exc}") from None
        added = self.app.ledger.suppress(found, source="sendgrid")
        log.info("synced %d suppressions from SendGrid (%d new)", len(found), added)
        return added

    # -- use cases -----------------------------------------------------------------------

    def send(
        self, request: SendRequest, confirm: Callable[[SendPreview], bool] | None = None
    ) -> SendReport:
        """The day's issue to a list, once: check it is still owed, on the same transport;
        build its route, learn the suppressions, gather and render it (unless a run before
        planned it), confirm; then claim, plan, deliver, report. A rerun resumes."""
        list_name = request.list_name or self.config.schedule.list
        if request.to or list_name == TEST_LIST or request.sandbox:
            return TrialSend(self.app, self.parts, self.progress, self.sleep).send(
                request, list_name
            )
        date = request.date or self.app.today()
        transport = self.parts.transport_name(request.transport)
        report = SendReport(
            "failed", list_name, date, transport=transport, timezone=self.config.newsletter.timezone
        )
        self.parts.require_unsubscribe()
        if request.send_at is not None and transport != "sendgrid":
            raise ConfigError(
                f"--at needs the sendgrid transport, which holds the issue until then; "
                f"{transport} sends at once (the scheduler sends it at its time)"
            )
        ledger = self.app.ledger
        existing = ledger.issue(list_name, date)
        if existing is not None and existing.status == "cancelled":
            if not request.replace:
                report.outcome = "was_cancelled"
                return report
            ledger.forget_plan(existing.id)  # a corrected issue: gathered and planned anew
            existing = ledger.issue(list_name, date)
        if existing is not None and existing.status == "sent":
            report.outcome, report.subject = "already_sent", existing.subject or ""
            report.recipients = existing.recipients
            return report
        if existing is not None and existing.planned and existing.transport != transport:
            raise transport_mismatch(existing, transport)
        route = self.parts.route(list_name, date, transport, test=False)
        deliverer = self.parts.deliverer(
            route,
            ledger,
            progress=self.progress,
            should_stop=self.should_stop,
            sleep=self.sleep,
        )
        try:
            stale = self.config.delivery.stale_claim
            if request.join and not request.dry_run and claimed_elsewhere(existing, stale):
                if self._helper().help(report, route, deliverer):
                    return report
                existing, report.outcome = ledger.issue(list_name, date), "failed"
            if isinstance(deliverer, SenderPool) and confirm is None and not request.dry_run:
                deliverer.warm_up(self._batches_expected(list_name, existing), self.senders)
            return self._send_route(request, confirm, report, route, deliverer, existing)
        finally:
            if isinstance(deliverer, SenderPool):
                deliverer.close()

    def _batches_expected(self, list_name: str, existing: IssueRow | None) -> int:
        """About how many batches a send will have, before reading the list: a guess from
        the file's size (a row of an address and a name is about 40 bytes), or the plan's
        count when resuming."""
        if existing is not None and existing.planned:
            return existing.recipients // self.config.delivery.batch_size + 1
        return batches_in_file(self.list_file(list_name), self.config.delivery.batch_size)

    def _send_route(
        self,
        request: SendRequest,
        confirm: Callable[[SendPreview], bool] | None,
        report: SendReport,
        route: Route,
        deliverer: Deliverer | SenderPool,
        existing: IssueRow | None,
    ) -> SendReport:
        """The send once its route is known: suppressions, the issue, confirmation, then
        claim, plan, deliver, report."""
        list_name, date, transport = report.list_name, report.date, report.transport
        ledger = self.app.ledger
        with self.timings.phase("suppressions"):
            fetching = None if request.dry_run else self.fetch_suppressions(transport, deliverer)

        built: BuiltIssue | None = None
        if existing is None or not existing.planned:
            with self.timings.phase("gather and render"):
                built = self.app.build_issue(date, list_name)
        with self.timings.phase("suppressions"):
            if fetching is not None:
                self.store_suppressions(fetching)
            suppressed = ledger.suppressed(list_name)
        if built is not None:
            for problem in built.issue.problems:
                log.warning("story source problem: %s", problem)
            if built.issue.is_empty and not request.allow_empty:
                report.outcome, report.detail = "empty", empty_issue_message(built.issue)
                return report
            check_columns(self.list_file(list_name), built.email.tokens)
            self._lint(built)
            report.subject = built.email.subject
            report.stories = len(built.issue.stories)
        else:
            report.subject = existing.subject or ""

        if request.dry_run:
            return self._dry_run(report, built, existing, suppressed, request)
        if confirm is not None:  # None: confirmed already (--yes, the scheduler)
            preview = SendPreview(
                list_name,
                date,
                report.subject,
                self._count(list_name, suppressed, built, existing),
                transport,
                resuming=existing is not None,
            )
            if not confirm(preview):
                report.outcome = "cancelled"
                return report

        owner = process_owner()
        issue_row = self._claim(report, owner)
        if issue_row is None:
            if report.outcome == "busy" and request.join:  # claimed at the same moment
                self._helper().help(report, route, deliverer)
            return report
        failpoint("send.claimed")
        try:
            left_out = suppressed  # a plan of an earlier run: whoever was suppressed since
            if not issue_row.planned:
                issue_row = self._plan(report, issue_row, built, suppressed, request, deliverer)
                failpoint("send.planned")
                left_out = frozenset()  # this plan left them out: no row to look at again
            outcome = self._deliver(report, issue_row, route, deliverer, left_out, request, owner)
            return self._report(report, issue_row, outcome)
        except BaseException as exc:
            status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._record_end(issue_row.id, status, exc)
            raise

    def _lint(self, built: BuiltIssue) -> None:
        """The deliverability lint before a bulk send: its errors stop the send, with the
        reason, before anything is claimed; its warnings are said."""
        findings = lint_issue(self.config, built.email)
        for finding in findings:
            if finding.level == "warning":
                log.warning("deliverability: %s", finding)
        errors = [str(f) for f in findings if f.level == "error"]
        if errors:
            raise LintError(
                "not sent, the issue would not reach readers as it should:\n  "
                + "\n  ".join(errors)
                + "\n(newsletter check lists every finding)"
            )

    def _helper(self) -> Helper:
        return Helper(
            self.app.ledger,
            self.parts,
            self.config.delivery.stale_claim,
            should_stop=self.should_stop,
            sleep=self.sleep,
        )

    def _claim(self, report: SendReport, owner: str) -> IssueRow | None:
        """The issue, claimed for this process; None (and why, in the report) if it cannot be."""
        list_name, date = report.list_name, report.date
        claim = self.app.ledger.claim(list_name, date, owner, self.config.delivery.stale_claim)
        if claim.state == "sent":
            report.outcome = "already_sent"
            return None
        if claim.state == "busy":
            report.outcome = "busy"
            report.detail = (
                f"the {date} issue for list {list_name!r} is being sent by "
                f"{claim.issue.claimed_by} (last seen {claim.issue.heartbeat:%Y-%m-%d %H:%M} UTC)"
            )
            return None
        return claim.issue

    def _plan(
        self,
        report: SendReport,
        issue_row: IssueRow,
        built: BuiltIssue | None,
        suppressed: frozenset[str],
        request: SendRequest,
        deliverer: Deliverer | SenderPool,
    ) -> IssueRow:
        """Store the rendered issue and every batch of recipients: the plan, whole or not
        at all. Read by the sender processes in parts when there are some, else here."""
        if built is None:
            built = self.app.build_issue(report.date, report.list_name)
        email, issue = built.email, built.issue
        content = PlanContent(
            subject=email.subject,
            html=email.html,
            text=email.text,
            tokens=email.tokens,
            story_keys=[k for s in issue.stories for k in s.keys],
            window_start=issue.window.start,
            window_end=issue.window.end,
            transport=report.transport,
        )
        path = self.list_file(report.list_name)
        in_parts = isinstance(deliverer, SenderPool) and deliverer.planners >= 2
        if in_parts and path.exists() and request.reader_mornings is None:
            try:
                self._plan_in_parts(report, issue_row, content, suppressed, request, deliverer)
            except BaseException:
                with contextlib.suppress(LedgerError):
                    self.app.ledger.drop_drafts(issue_row.id)
                raise
        else:
            self._plan_here(report, issue_row, content, suppressed, request)
        return self.app.ledger.issue(report.list_name, report.date) or issue_row

    def _plan_here(
        self,
        report: SendReport,
        issue_row: IssueRow,
        content: PlanContent,
        suppressed: frozenset[str],
        request: SendRequest,
    ) -> None:
        """The plan in one transaction, read in this process.

        The list streams by with an 8-byte hash per reader to catch an address met
        twice; if two hashes are equal (a list edited by hand), the plan is rolled back
        and the list read again, keeping the exact addresses of just those hashes."""
        path = self.list_file(report.list_name)
        plan_started = time.perf_counter()
        seen: Seen = HashedSeen()
        while True:
            list_report = ListReport(path)
            skipped: list[str] = []
            people = read_subscribers(path, request.skip_invalid, list_report, seen)
            tokens = plan_tokens(path, content.tokens)
            size = self.config.delivery.batch_size
            batches = plan_batches(people, suppressed, tokens, size, skipped)
            later: dict[int, dt.datetime] = {}
            if request.reader_mornings is not None and ZONE_COLUMN in tokens:
                zone = self.config.newsletter.timezone
                times = ReaderTimes(request.reader_mornings, zone, request.reader_mornings)
                batches = group_by_reader_time(batches, times, size, later)
            try:
                timed = self.timings.timed("load list and plan", batches)
                self.app.ledger.save_plan(issue_row.id, content, timed, later)
                break
            except RepeatedAddresses as repeated:
                log.info("the list may hold an address twice: reading it again (%s)", repeated)
                seen = WatchedSeen(repeated.hashes)
        self.timings.add(
            "ledger writes",
            time.perf_counter() - plan_started - self.timings.phases["load list and plan"],
        )
        report.suppressed, report.duplicates = len(skipped), list_report.duplicates

    def _plan_in_parts(
        self,
        report: SendReport,
        issue_row: IssueRow,
        content: PlanContent,
        suppressed: frozenset[str],
        request: SendRequest,
        senders: SenderPool,
    ) -> None:
        """The plan read by the senders, a part each, stored as drafts, then published in
        one transaction (`plan_parts.py`); a list that may hold an address twice is read
        again by one sender, watching the hashes met twice."""
        ledger = self.app.ledger
        path = self.list_file(report.list_name)
        ledger.drop_drafts(issue_row.id)  # of a run that died planning

        def job(part: ListPart, index: int, watch: frozenset[int] | None = None) -> PlanJob:
            return PlanJob(
                self.config.database_url,
                issue_row.id,
                path,
                part,
                index,
                plan_tokens(path, content.tokens),
                suppressed,
                self.config.delivery.batch_size,
                hashes=None if watch else Path(hashes),
                watch=watch,
            )

        # the parts hand their readers' hashes over in files, compared a range at a time
        with (
            self.timings.phase("load list and plan"),
            tempfile.TemporaryDirectory(prefix="newsletter-hashes-") as hashes,
        ):
            parts = list_parts(path, senders.planners)
            whole = put_together(path, senders.plan_parts([job(p, k) for k, p in enumerate(parts)]))
            if whole.repeated:
                log.info("the list may hold an address twice: reading it again")
                ledger.drop_drafts(issue_row.id)
                [everything] = list_parts(path, 1)
                again = senders.plan_parts([job(everything, 0, whole.repeated)])
                whole = put_together(path, again)
        if whole.report.problems and not request.skip_invalid:
            whole.report.raise_if_problems(FIX_OR_SKIP)
        with self.timings.phase("ledger writes"):
            ledger.publish_plan(issue_row.id, whole.numbering, content)
        report.suppressed, report.duplicates = whole.suppressed, whole.report.duplicates

    def _record_end(self, issue_id: int, status: str, exc: BaseException) -> None:
        """Record why a send ended early; if the database fails here too (a full disk),
        the first error is the one to show, so this one is only logged."""
        try:
            self.app.ledger.finish(issue_id, status, str(exc) or type(exc).__name__)
        except LedgerError as also:
            if not isinstance(exc, LedgerError):
                log.warning("could not record the issue as %s: %s", status, also)

    def _deliver(
        self,
        report: SendReport,
        issue_row: IssueRow,
        route: Route,
        deliverer: Deliverer | SenderPool,
        suppressed: frozenset[str],
        request: SendRequest,
        owner: str,
    ) -> Outcome:
        """Send the batches still owed, after settling what a run that died left behind."""
        ledger = self.app.ledger
        report.subject = issue_row.subject or ""
        report.recipients = issue_row.recipients
        report.outbox = route.outbox
        beat = functools.partial(ledger.beat, issue_row.id, owner)
        stale = self.config.delivery.stale_claim
        # helpers of a claimant that died first finish what they took (`joining.py`)
        wait_for_helpers(ledger, issue_row.id, beat, stale, self.sleep)
        # what a run that died left `submitting`: cut to the message in flight where the
        # transport went one message at a time; the rest is in doubt until the editor says
        ledger.settle_interrupted(issue_row.id, resend_safely=route.in_doubt == "none")
        attempt = None
        if route.transport == "sendgrid":  # a request in doubt before the deadline: resent
            attempt = self._attempt(report, issue_row.id, request.send_at)
        if request.skip_ambiguous:
            ledger.skip_in_doubt(issue_row.id, "in doubt, not resent (--skip-ambiguous)")
        message = self.parts.issue_message(issue_row, attempt)
        with self.timings.phase("send"):
            ledger.open_to_helpers(issue_row.id, owner)  # settled: others may take batches
            try:
                outcome = deliverer.deliver(
                    issue_row.id,
                    message,
                    route.links,
                    suppressed,
                    beat,
                    resend_ambiguous=request.resend_ambiguous,
                    due_by=self.app.clock(),
                )
            finally:
                ledger.close_to_helpers(issue_row.id)
            wait_for_helpers(ledger, issue_row.id, beat, stale, self.sleep)
        # a worker that failed unexpectedly left its batch `submitting`: cut it now, so the
        # report names only the message it had in flight
        ledger.settle_interrupted(issue_row.id, resend_safely=route.in_doubt == "none")
        return outcome

    def _attempt(
        self, report: SendReport, issue_id: int, send_at: dt.datetime | None
    ) -> Attempt | None:
        """The scheduled attempt this run submits under (`scheduling.py`), if any; what
        happened to one in doubt goes into the report."""
        found = self.parts.scheduling(self.app.ledger, self.sleep).attempt_for(issue_id, send_at)
        attempt = found.attempt
        if attempt is None:
            return None
        report.send_at, report.cancel_deadline = attempt.send_at, attempt.cancel_deadline
        if found.replaced is not None:
            report.schedule_note = (
                f"A request of batch {found.replaced.batch_id} went without an answer, so "
                "SendGrid cancelled that batch, and the whole issue went again under batch "
                f"{attempt.batch_id}. Nobody gets it twice."
            )
        elif found.too_late:
            report.schedule_note = (
                "Too late to cancel the batch in doubt and send it again: SendGrid only "
                f"promises a cancel until {moment(attempt.cancel_deadline, report.timezone)}."
            )
        elif found.refused:
            report.schedule_note = f"Could not cancel the batch in doubt: {found.refused}."
        return attempt

    def _report(self, report: SendReport, issue_row: IssueRow, outcome: Outcome) -> SendReport:
        """Say what the batches now are, and record how the issue ended."""
        ledger = self.app.ledger
        counts = ledger.batch_counts(issue_row.id)
        report.batches = sum(n for n, _ in counts.values())
        report.delivered = counts.get("submitted", (0, 0))[1]
        report.submitted = outcome.submitted_recipients
        report.errors = outcome.errors
        report.rejected = outcome.rejected
        report.permanent = outcome.permanent
        report.suppressed += outcome.dropped_suppressed
        report.ambiguous = [b.seq for b in ledger.batches(issue_row.id, ["submitting"])]
        report.in_doubt = ledger.in_doubt_addresses(issue_row.id)
        report.skipped = ledger.batch_addresses(issue_row.id, ["skipped"])
        unfinished = {k: v for k, v in counts.items() if k not in BATCH_DONE}
        report.waiting, report.next_due = ledger.later_batches(issue_row.id, self.app.clock())
        waiting_only = set(unfinished) == {"pending"} and unfinished["pending"][1] == report.waiting
        if waiting_only and not outcome.errors and not outcome.stopped:
            assert report.next_due is not None
            when = moment(report.next_due, report.timezone)
            ledger.finish(
                issue_row.id, "partial", f"{report.waiting} readers get it later; next at {when}"
            )
            report.outcome = "partly_sent"
        elif not unfinished:
            failpoint("send.finishing")
            ledger.finish(issue_row.id, "sent")
            report.outcome = "sent"
        elif outcome.stopped and not outcome.errors:
            ledger.finish(issue_row.id, "stopped", "stopped before every batch was sent")
            report.outcome = "stopped"
        else:
            waiting = f"{len(report.in_doubt)} recipient(s) in doubt, waiting for the editor"
            summary = "; ".join(outcome.errors[:3]) or waiting
            ledger.finish(issue_row.id, "failed", summary)
            report.outcome = "failed"
            if set(unfinished) == {"submitting"}:
                # only the editor can say whether they got it: trying again changes nothing
                report.permanent, report.detail = True, waiting
        return report

    def _count(
        self,
        list_name: str,
        suppressed: frozenset[str],
        built: BuiltIssue | None,
        existing: IssueRow | None,
    ) -> int:
        if existing is not None and existing.planned:
            counts = self.app.ledger.batch_counts(existing.id)
            return sum(size for status, (_, size) in counts.items() if status not in BATCH_DONE)
        return sum(1 for s in read_list(self.list_file(list_name)) if s.key not in suppressed)

    def _dry_run(
        self,
        report: SendReport,
        built: BuiltIssue | None,
        existing: IssueRow | None,
        suppressed: frozenset[str],
        request: SendRequest,
    ) -> SendReport:
        report.outcome = "dry_run"
        if existing is not None and existing.planned:
            counts = self.app.ledger.batch_counts(existing.id)
            report.batches = sum(n for n, _ in counts.values())
            report.recipients = existing.recipients
            report.detail = "resuming: " + ", ".join(
                f"{n} {status}" for status, (n, _) in sorted(counts.items())
            )
            return report
        assert built is not None
        list_report = ListReport(self.list_file(report.list_name))
        skipped: list[str] = []
        for _, rows in plan_batches(
            read_subscribers(self.list_file(report.list_name), request.skip_invalid, list_report),
            suppressed,
            built.email.tokens,
            self.config.delivery.batch_size,
            skipped,
        ):
            report.batches += 1
            report.recipients += len(rows)
        report.suppressed, report.duplicates = len(skipped), list_report.duplicates
        return report
