"""The test send: the issue to the test list, a few addresses or SendGrid's sandbox, any
time and as often as asked, never recorded as the day's issue. Subjects get `[TEST] `.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from newsletter.app import App, empty_issue_message
from newsletter.delivery import Progress
from newsletter.models import TEST_LIST, TEST_PREFIX, SendReport, SendRequest, Subscriber
from newsletter.parts import Parts, Route
from newsletter.planning import build_batch, plan_batches
from newsletter.recipients import check_columns, list_file, read_subscribers
from newsletter.retry import send_with_retries
from newsletter.subscribers import Chunk, ListReport, check_address
from newsletter.transports.base import BatchFailure, Message


class TrialSend:
    """One test send; the parts, progress bar and retry wait are the bulk send's own."""

    def __init__(
        self,
        app: App,
        parts: Parts,
        progress: Progress,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.app = app
        self.parts = parts
        self.progress = progress
        self.sleep = sleep

    def send(self, request: SendRequest, list_name: str) -> SendReport:
        """Any time, as often as asked; never recorded as the day's issue.

        The issue as planned (or rendered now), to the test list, `--to` addresses or
        the list in sandbox mode: pick the people, build the route, plan, deliver, report.
        """
        date = request.date or self.app.today()
        transport = self.parts.transport_name(request.transport)
        report = SendReport("failed", list_name, date, transport=transport)
        target_list = (
            self.app.config.schedule.list if list_name == TEST_LIST or request.to else list_name
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
            check_columns(list_file(self.app.config.subscribers.path, list_name), tokens)
            list_report = ListReport(list_file(self.app.config.subscribers.path, list_name))
            people = list(
                read_subscribers(
                    list_file(self.app.config.subscribers.path, list_name),
                    request.skip_invalid,
                    list_report,
                )
            )
        route = self.parts.route(list_name, date, transport, test=True)
        skipped: list[str] = []
        batches = list(
            plan_batches(people, suppressed, tokens, self.app.config.delivery.batch_size, skipped)
        )
        report.suppressed = len(skipped)
        report.recipients = sum(len(rows) for _, rows in batches)
        report.batches = len(batches)
        report.outbox = route.outbox
        if request.dry_run:
            report.outcome = "dry_run"
            return report
        message = self.parts.message(
            subject=report.subject,
            html=html,
            text=text,
            tokens=tokens,
            issue_id="test",
            list_name=list_name,
            sandbox=request.sandbox,
            date=report.date,
        )
        return self._deliver_test(report, route, message, batches, suppressed)

    def _deliver_test(
        self,
        report: SendReport,
        route: Route,
        message: Message,
        batches: list[tuple[list[str], list[Sequence[str]]]],
        suppressed: frozenset[str],
    ) -> SendReport:
        """One transport, batch after batch, nothing recorded: a failure ends the test send."""
        policy = self.parts.retry_policy()
        transport_obj = route.make_transport()
        self.progress.start(report.recipients, report.batches)
        try:
            for columns, rows in batches:
                recipients, _ = build_batch(columns, rows, route.links, suppressed)
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
