"""Several machines sending one issue: `newsletter send --join`.

The first `send` claims the issue, plans it and closes it. A `send --join` that
finds the issue claimed by a live process elsewhere (another machine, another
folder, against one PostgreSQL) waits for the plan, registers as a helper and
takes pending batches beside the claimant's senders, with the same row locks:
each batch still goes to one sender. What a helper had in flight when it died is
in doubt, reported by the claimant as after any crash. A `--join` that finds
nobody sending does the send itself.

The claimant, for its part, waits for the live helpers' batches before it
settles or reports anything (`wait_for_helpers`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from newsletter.delivery import Deliverer, Heartbeat
from newsletter.errors import ConfigError
from newsletter.models import SendReport
from newsletter.parts import Parts, Route
from newsletter.senders import SenderPool
from newsletter.state import Ledger
from newsletter.state.database import utcnow
from newsletter.state.helpers import HelperStore
from newsletter.state.issues import IssueRow, owner_is_gone, process_owner

log = logging.getLogger(__name__)

POLL = 0.2  # seconds between looks at the claimant's plan, or at the helpers' work


def claimed_elsewhere(issue: IssueRow | None, stale_after: dt.timedelta) -> bool:
    """Whether a live process other than this one is sending the issue."""
    return (
        issue is not None
        and issue.status == "sending"
        and issue.claimed_by not in (None, process_owner())
        and not owner_is_gone(issue.claimed_by or "", issue.heartbeat, utcnow(), stale_after)
    )


def transport_mismatch(issue: IssueRow, transport: str) -> ConfigError:
    return ConfigError(
        f"the {issue.issue_date} issue for list {issue.list_name!r} was started with the "
        f"{issue.transport} transport: resume it with the same one "
        f"(--transport {issue.transport}). Switching half way would leave the "
        "readers it may have reached in doubt on one and unknown to the other."
    )


class Helper:
    """This process helping another send an issue it claimed: its pending batches taken
    beside the claimant's senders, from the plan the claimant stored."""

    def __init__(
        self,
        ledger: Ledger,
        parts: Parts,
        stale_after: dt.timedelta,
        *,
        should_stop: Callable[[], bool],
        sleep: Callable[[float], None],
    ) -> None:
        self.ledger = ledger
        self.parts = parts
        self.stale_after = stale_after
        self.should_stop = should_stop
        self.sleep = sleep

    def help(self, report: SendReport, route: Route, deliverer: Deliverer | SenderPool) -> bool:
        """Help send the issue; False (nothing done) if nobody else is sending it any more,
        so this process can send it itself."""
        owner = process_owner()
        issue = self._joined_issue(report, owner)
        if issue is None:
            return report.outcome != "busy"
        log.info("helping %s send the %s issue", issue.claimed_by, issue.issue_date)
        try:
            # under the claimant's scheduled attempt, if it has one
            message = self.parts.issue_message(issue, self.ledger.latest_attempt(issue.id))
            outcome = deliverer.deliver(
                issue.id,
                message,
                route.links,
                self.ledger.suppressed(report.list_name),
                lambda: self.ledger.beat_helper(issue.id, owner),
                helping=True,
            )
        finally:
            self.ledger.leave_issue(issue.id, owner)
        report.outcome = "failed" if outcome.errors else "helped"
        report.detail = f"claimed by {issue.claimed_by}"
        report.subject, report.recipients = issue.subject or "", issue.recipients
        report.batches, report.submitted = outcome.submitted_batches, outcome.submitted_recipients
        report.errors, report.rejected = outcome.errors, outcome.rejected
        report.permanent = outcome.permanent
        report.suppressed = outcome.dropped_suppressed
        return True

    def _joined_issue(self, report: SendReport, owner: str) -> IssueRow | None:
        """The issue, joined as a helper once its claimant has planned it and opened it to
        helpers; None, with the report saying why (already sent, stopped) or left "busy"
        if nobody is sending it now."""
        waiting = False
        while True:
            issue = self.ledger.issue(report.list_name, report.date)
            if issue is not None and issue.status == "sent":
                self._closed(report)
                return None
            if not claimed_elsewhere(issue, self.stale_after):
                report.outcome = "busy"  # nobody to help: the caller sends it
                return None
            assert issue is not None
            if issue.planned and issue.transport != report.transport:
                raise transport_mismatch(issue, report.transport)
            if issue.planned and self.ledger.join_issue(issue.id, owner):
                return issue
            if self.should_stop():
                report.outcome = "stopped"
                return None
            if not waiting:
                log.warning("waiting for %s to open the issue to helpers", issue.claimed_by)
                waiting = True
            self.sleep(POLL)

    def _closed(self, report: SendReport) -> bool:
        issue = self.ledger.issue(report.list_name, report.date)
        if issue is not None and issue.status == "sent":
            report.outcome, report.recipients = "already_sent", issue.recipients
            return True
        return False


def wait_for_helpers(
    helpers: HelperStore,
    issue_id: int,
    beat: Callable[[], None],
    stale_after: dt.timedelta,
    sleep: Callable[[float], None],
) -> None:
    """Until no live helper is at work on the issue: the claim kept alive meanwhile. The
    batches a helper had in flight are then settled like this process's own; a helper that
    died leaves its request in doubt, never sent twice."""
    told: list[str] = []
    heartbeat = Heartbeat(beat)
    while live := helpers.live_helpers(issue_id, stale_after):
        if live != told:
            log.warning("waiting for %s to finish the batches they took", ", ".join(live))
            told = live
        heartbeat.beat_if_due()
        sleep(POLL)
