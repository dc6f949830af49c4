"""The send use cases: the day's issue to a list exactly once, or a test send any time.

A bulk send claims the issue in the ledger, stores what it will send and its
batches, then delivers them; a rerun resumes from the ledger. Test sends
(`--list test`, `--to`, `--sandbox`) are never recorded as the day's issue.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.app import App, BuiltIssue, empty_issue_message
from newsletter.delivery import (
    BUILT_IN_TOKENS,
    Deliverer,
    NoProgress,
    Progress,
    RetryPolicy,
    UnsubscribeLinks,
    build_batch,
    plan_batches,
    send_with_retries,
    with_retries,
)
from newsletter.errors import ConfigError, LedgerError, SubscriberError
from newsletter.failpoints import failpoint
from newsletter.models import Subscriber
from newsletter.signing import DEVELOPMENT_SECRET, Signer
from newsletter.state.batches import BATCH_DONE
from newsletter.state.issues import IssueRow, process_owner
from newsletter.subscribers import (
    Chunk,
    ListReport,
    check_address,
    column_token,
    list_path,
    read_chunks,
    read_header,
    read_list,
)
from newsletter.timings import Timings
from newsletter.transports.base import BatchFailure, InDoubt, Message, Transport
from newsletter.transports.outbox import OutboxTransport
from newsletter.transports.sendgrid import SendGridTransport
from newsletter.transports.smtp import SmtpTransport

log = logging.getLogger(__name__)

IN_DOUBT: dict[str, InDoubt] = {
    t.name: t.in_doubt for t in (SendGridTransport, SmtpTransport, OutboxTransport)
}


@dataclass(frozen=True)
class SendRequest:
    """What `newsletter send` was asked to do."""

    list_name: str | None = None
    date: dt.date | None = None
    transport: str | None = None
    to: tuple[str, ...] = ()
    dry_run: bool = False
    allow_empty: bool = False
    sandbox: bool = False
    resend_ambiguous: bool = False
    skip_ambiguous: bool = False
    skip_invalid: bool = False


@dataclass(frozen=True)
class SendPreview:
    """Shown before a bulk send asks for confirmation."""

    list_name: str
    date: dt.date
    subject: str
    recipients: int
    transport: str
    resuming: bool


@dataclass
class SendReport:
    # sent | already_sent | busy | empty | dry_run | cancelled | failed | stopped | test_sent
    outcome: str
    list_name: str
    date: dt.date
    subject: str = ""
    transport: str = ""
    recipients: int = 0
    batches: int = 0
    submitted: int = 0
    suppressed: int = 0
    duplicates: int = 0
    ambiguous: list[int] = field(default_factory=list)  # batches left in doubt
    in_doubt: list[str] = field(default_factory=list)  # who they were for
    skipped: list[str] = field(default_factory=list)  # in doubt, not resent (--skip-ambiguous)
    delivered: int = 0  # recipients in submitted batches, over every run of the issue
    errors: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    outbox: Path | None = None
    detail: str = ""
    stories: int | None = None
    permanent: bool = False  # failed in a way a retry cannot fix (a refused request)

    @property
    def ok(self) -> bool:
        return self.outcome in {
            "sent",
            "already_sent",
            "empty",
            "dry_run",
            "cancelled",
            "test_sent",
            "stopped",
        }


TEST_LIST = "test"
TEST_PREFIX = "[TEST] "


class Sending:
    """The send use cases: the day's issue to a list (once), or a test send (any time)."""

    def __init__(
        self,
        app: App,
        *,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], None] = time.sleep,
        timings: Timings | None = None,
    ) -> None:
        self.timings = timings or Timings()
        self.app = app
        self.config = app.config
        self.progress = progress or NoProgress()
        self.should_stop = should_stop
        self.sleep = sleep

    # -- parts -------------------------------------------------------------------------

    def transport_name(self, request: SendRequest) -> str:
        return request.transport or self.config.delivery.transport

    def transport_factory(self, name: str, outbox: Path | None) -> Callable[[], Transport]:
        cfg = self.config
        if name == "sendgrid":
            key = cfg.secret(cfg.sendgrid.api_key_env)
            if not key:
                raise ConfigError(
                    f"SendGrid needs an API key: set the environment variable "
                    f"{cfg.sendgrid.api_key_env} (named by sendgrid.api_key_env in {cfg.path.name})"
                )
            return lambda: SendGridTransport(cfg.sendgrid, key)
        if name == "smtp":
            password = cfg.secret(cfg.smtp.password_env)
            if cfg.smtp.username and not password:
                raise ConfigError(
                    f"SMTP login as {cfg.smtp.username} needs a password: set the environment "
                    f"variable {cfg.smtp.password_env} (named by smtp.password_env)"
                )
            return lambda: SmtpTransport(cfg.smtp, password)
        assert outbox is not None
        return lambda: OutboxTransport(outbox)

    def unsubscribe_links(self, list_name: str, transport: str) -> UnsubscribeLinks | None:
        """Per-recipient links for `hosted` mode; SendGrid makes its own in `sendgrid` mode."""
        u = self.config.unsubscribe
        if u.mode == "sendgrid":
            if transport != "sendgrid":
                raise ConfigError(
                    f'{self.config.path.name}: unsubscribe.mode = "sendgrid" works only with the '
                    f"sendgrid transport (this send uses {transport})"
                )
            if self.config.sendgrid.asm_group_id is None:
                raise ConfigError(
                    f"{self.config.path.name}: unsubscribe.mode = "
                    '"sendgrid" needs sendgrid.asm_group_id'
                )
            return None
        if u.mode is None:
            return None
        if not u.base_url:
            raise ConfigError(
                f'{self.config.path.name}: unsubscribe.mode = "hosted" needs unsubscribe.base_url'
            )
        return UnsubscribeLinks(self.signer(transport), u.base_url, list_name, u.mailto)

    def signer(self, transport: str) -> Signer:
        """Signs (and checks) subscriber links with the secret named by unsubscribe.secret_env."""
        u = self.config.unsubscribe
        secret = self.config.secret(u.secret_env)
        if not secret:
            if transport != "outbox":
                raise ConfigError(
                    f"unsubscribe links are signed with a secret: set the environment variable "
                    f"{u.secret_env} (named by unsubscribe.secret_env) to a long random string"
                )
            log.warning(
                "%s is not set: outbox links are signed with a development secret", u.secret_env
            )
            secret = DEVELOPMENT_SECRET
        return Signer(secret)

    def sync_suppressions(self, transport: str) -> int:
        """Before a SendGrid send, learn who SendGrid already refuses to deliver to."""
        if transport != "sendgrid":
            return 0
        client = self.transport_factory("sendgrid", None)()
        assert isinstance(client, SendGridTransport)
        try:
            found = with_retries(
                lambda: client.fetch_suppressions(self.config.sendgrid.asm_group_id),
                self.retry_policy(),
                sleep=self.sleep,
            )
        except BatchFailure as exc:  # keeps its kind: a scheduler retries only temporary ones
            raise type(exc)(f"cannot sync suppressions from SendGrid: {exc}") from None
        added = self.app.ledger.suppress(found, source="sendgrid")
        log.info("synced %d suppressions from SendGrid (%d new)", len(found), added)
        return added

    def list_file(self, list_name: str) -> Path:
        return list_path(self.config.subscribers.path, list_name)

    def check_columns(self, list_name: str, tokens: frozenset[str]) -> None:
        """A token the list has no column for would be sent empty: refuse before sending."""
        path = self.list_file(list_name)
        have = {column_token(h) for h in read_header(path)} if path.exists() else set()
        missing = sorted(set(tokens) - BUILT_IN_TOKENS - have)
        if missing:
            names = ", ".join(f"{{{{ subscriber.{m} }}}}" for m in missing)
            raise SubscriberError(
                f"{path}: the templates use {names} but the list has no such column"
            )

    def subscribers(
        self, list_name: str, skip_invalid: bool, report: ListReport
    ) -> Iterator[Chunk]:
        """The list's subscribers, a chunk at a time; afterwards, invalid rows stop the
        send unless skipped."""
        yield from read_chunks(self.list_file(list_name), report)
        if report.problems and not skip_invalid:
            report.raise_if_problems(
                "\nfix these rows (or pass --skip-invalid to send without them)"
            )

    def message(
        self,
        *,
        subject: str,
        html: str,
        text: str,
        tokens: frozenset[str],
        issue_id: str,
        list_name: str,
        sandbox: bool,
    ) -> Message:
        s = self.config.sender
        return Message(
            subject=subject,
            html=html,
            text=text,
            from_email=s.from_email,
            from_name=s.from_name,
            reply_to=s.reply_to,
            tokens=tokens,
            issue_id=issue_id,
            list_name=list_name,
            sandbox=sandbox,
        )

    def retry_policy(self) -> RetryPolicy:
        d = self.config.delivery
        return RetryPolicy(
            d.attempts, d.retry_delay.total_seconds(), d.max_retry_delay.total_seconds()
        )

    def deliverer(self, factory: Callable[[], Transport], transport: str) -> Deliverer:
        d = self.config.delivery
        return Deliverer(
            ledger=self.app.ledger,
            make_transport=factory,
            policy=self.retry_policy(),
            workers=1 if transport == "outbox" else d.workers,
            progress=self.progress,
            should_stop=self.should_stop,
            sleep=self.sleep,
            in_doubt=IN_DOUBT[transport],
        )

    def outbox_folder(self, list_name: str, date: dt.date, test: bool) -> Path:
        suffix = f"-{self.app.clock():%H%M%S}" if test else ""
        return self.config.outbox.path / f"{date.isoformat()}-{list_name}{suffix}"

    # -- use cases -----------------------------------------------------------------------

    def send(
        self, request: SendRequest, confirm: Callable[[SendPreview], bool] | None = None
    ) -> SendReport:
        list_name = request.list_name or self.config.schedule.list
        if request.to or list_name == TEST_LIST or request.sandbox:
            return self.send_test(request, list_name)
        date = request.date or self.app.today()
        transport = self.transport_name(request)
        report = SendReport("failed", list_name, date, transport=transport)
        if self.config.unsubscribe.mode is None:
            raise ConfigError(
                f"{self.config.path.name}: a bulk send needs an unsubscribe link: "
                'set unsubscribe.mode ("hosted" or "sendgrid")'
            )
        ledger = self.app.ledger
        existing = ledger.issue(list_name, date)
        if existing is not None and existing.status == "sent":
            report.outcome, report.subject = "already_sent", existing.subject or ""
            report.recipients = existing.recipients
            return report
        if existing is not None and existing.planned and existing.transport != transport:
            raise ConfigError(
                f"the {date} issue for list {list_name!r} was started with the "
                f"{existing.transport} transport: resume it with the same one "
                f"(--transport {existing.transport}). Switching half way would leave the "
                "readers it may have reached in doubt on one and unknown to the other."
            )
        outbox = self.outbox_folder(list_name, date, test=False) if transport == "outbox" else None
        factory = self.transport_factory(transport, outbox)
        links = self.unsubscribe_links(list_name, transport)
        with self.timings.phase("suppressions"):
            if not request.dry_run:
                self.sync_suppressions(transport)
            suppressed = ledger.suppressed(list_name)

        built: BuiltIssue | None = None
        if existing is None or not existing.planned:
            with self.timings.phase("gather and render"):
                built = self.app.build_issue(date, list_name)
            for problem in built.issue.problems:
                log.warning("story source problem: %s", problem)
            if built.issue.is_empty and not request.allow_empty:
                report.outcome, report.detail = "empty", empty_issue_message(built.issue)
                return report
            self.check_columns(list_name, built.email.tokens)
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
        claim = ledger.claim(list_name, date, owner, self.config.delivery.stale_claim)
        if claim.state == "sent":
            report.outcome = "already_sent"
            return report
        if claim.state == "busy":
            report.outcome = "busy"
            report.detail = (
                f"the {date} issue for list {list_name!r} is being sent by "
                f"{claim.issue.claimed_by} (last seen {claim.issue.heartbeat:%Y-%m-%d %H:%M} UTC)"
            )
            return report
        issue_row = claim.issue
        failpoint("send.claimed")
        try:
            if not issue_row.planned:
                if built is None:
                    built = self.app.build_issue(date, list_name)
                list_report = ListReport(self.list_file(list_name))
                skipped: list[str] = []
                plan_started = time.perf_counter()
                ledger.save_plan(
                    issue_row.id,
                    subject=built.email.subject,
                    html=built.email.html,
                    text=built.email.text,
                    tokens=built.email.tokens,
                    story_keys=[k for s in built.issue.stories for k in s.keys],
                    window_start=built.issue.window.start,
                    window_end=built.issue.window.end,
                    transport=transport,
                    batches_of_recipients=self.timings.timed(
                        "load list and plan",
                        plan_batches(
                            self.subscribers(list_name, request.skip_invalid, list_report),
                            suppressed,
                            built.email.tokens,
                            self.config.delivery.batch_size,
                            skipped,
                        ),
                    ),
                )
                self.timings.add(
                    "ledger writes",
                    time.perf_counter() - plan_started - self.timings.phases["load list and plan"],
                )
                report.suppressed, report.duplicates = len(skipped), list_report.duplicates
                issue_row = ledger.issue(list_name, date) or issue_row
                failpoint("send.planned")
            return self._deliver(
                report, issue_row, factory, links, suppressed, request, owner, transport, outbox
            )
        except BaseException as exc:
            status = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
            self._record_end(issue_row.id, status, exc)
            raise

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
        factory: Callable[[], Transport],
        links: UnsubscribeLinks | None,
        suppressed: frozenset[str],
        request: SendRequest,
        owner: str,
        transport: str,
        outbox: Path | None,
    ) -> SendReport:
        ledger = self.app.ledger
        report.subject = issue_row.subject or ""
        report.recipients = issue_row.recipients
        report.outbox = outbox
        # what a run that died left `submitting`: cut to the message in flight where the
        # transport went one message at a time; the rest is in doubt until the editor says
        ledger.settle_interrupted(issue_row.id, resend_safely=IN_DOUBT[transport] == "none")
        if request.skip_ambiguous:
            ledger.skip_in_doubt(issue_row.id, "in doubt, not resent (--skip-ambiguous)")
        message = self.message(
            subject=issue_row.subject or "",
            html=issue_row.html or "",
            text=issue_row.text or "",
            tokens=issue_row.tokens,
            issue_id=str(issue_row.id),
            list_name=report.list_name,
            sandbox=False,
        )
        with self.timings.phase("send"):
            outcome = self.deliverer(factory, transport).deliver(
                issue_row.id,
                message,
                links,
                suppressed,
                owner,
                resend_ambiguous=request.resend_ambiguous,
            )
        # a worker that failed unexpectedly left its batch `submitting`: cut it now, so the
        # report names only the message it had in flight
        ledger.settle_interrupted(issue_row.id, resend_safely=IN_DOUBT[transport] == "none")
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
        if not unfinished:
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
            self.subscribers(report.list_name, request.skip_invalid, list_report),
            suppressed,
            built.email.tokens,
            self.config.delivery.batch_size,
            skipped,
        ):
            report.batches += 1
            report.recipients += len(rows)
        report.suppressed, report.duplicates = len(skipped), list_report.duplicates
        return report

    def send_test(self, request: SendRequest, list_name: str) -> SendReport:
        """Any time, as often as asked; never recorded as the day's issue."""
        date = request.date or self.app.today()
        transport = self.transport_name(request)
        report = SendReport("failed", list_name, date, transport=transport)
        target_list = (
            self.config.schedule.list if list_name == TEST_LIST or request.to else list_name
        )
        existing = self.app.ledger.issue(target_list, date)
        if existing is not None and existing.planned:
            subject, html, text, tokens = (
                existing.subject or "",
                existing.html or "",
                existing.text or "",
                existing.tokens,
            )
        else:
            built = self.app.build_issue(date, target_list)
            if built.issue.is_empty and not request.allow_empty:
                report.outcome, report.detail = "empty", empty_issue_message(built.issue)
                return report
            subject, html, text, tokens = (
                built.email.subject,
                built.email.html,
                built.email.text,
                built.email.tokens,
            )
        prefix = (
            "" if request.sandbox and not request.to and list_name != TEST_LIST else TEST_PREFIX
        )
        report.subject = prefix + subject
        suppressed = self.app.ledger.suppressed(list_name)
        if request.to:
            people = [Chunk.of([Subscriber(email=check_address(a)) for a in request.to])]
        else:
            self.check_columns(list_name, tokens)
            list_report = ListReport(self.list_file(list_name))
            people = list(self.subscribers(list_name, request.skip_invalid, list_report))
        outbox = self.outbox_folder(list_name, date, test=True) if transport == "outbox" else None
        factory = self.transport_factory(transport, outbox)
        links = self.unsubscribe_links(list_name, transport)
        skipped: list[str] = []
        batches = list(
            plan_batches(people, suppressed, tokens, self.config.delivery.batch_size, skipped)
        )
        report.suppressed = len(skipped)
        report.recipients = sum(len(rows) for _, rows in batches)
        report.batches = len(batches)
        report.outbox = outbox
        if request.dry_run:
            report.outcome = "dry_run"
            return report
        message = self.message(
            subject=report.subject,
            html=html,
            text=text,
            tokens=tokens,
            issue_id="test",
            list_name=list_name,
            sandbox=request.sandbox,
        )
        policy = self.retry_policy()
        transport_obj = factory()
        self.progress.start(report.recipients, report.batches)
        try:
            for columns, rows in batches:
                recipients, _ = build_batch(columns, rows, links, suppressed)
                receipt = send_with_retries(
                    transport_obj, message, recipients, policy, sleep=self.sleep
                )
                report.submitted += len(recipients)
                report.rejected.extend(receipt.rejected)
                self.progress.advance(len(rows))
        except BatchFailure as exc:
            report.submitted += exc.done
            report.rejected.extend(exc.rejected)
            report.errors.append(str(exc))
            return report
        finally:
            transport_obj.close()
            self.progress.stop()
        report.outcome = "test_sent"
        return report
