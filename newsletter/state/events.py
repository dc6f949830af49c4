"""Mail events: what the mail service reported per recipient, applied once each.

Each event is recorded by its id, so a redelivered batch changes nothing, and
its suppression (a bounce, a complaint) is recorded in the same transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa

from newsletter.state.analytics import Counted, add_counts
from newsletter.state.database import Database, UTCDateTime, _insert_missing, metadata, utcnow
from newsletter.state.issues import lists_of
from newsletter.state.suppressions import _suppress

# One row per SendGrid event applied: the id makes a redelivered event a no-op,
# and the rows are the per-issue counts that `newsletter status` shows.
mail_events = sa.Table(
    "mail_events",
    metadata,
    sa.Column("event_id", sa.String(128), primary_key=True),  # SendGrid's sg_event_id
    sa.Column("issue_id", sa.Integer),  # from the custom_args sent with each recipient
    sa.Column("event", sa.String(32), nullable=False),
    sa.Column("occurred_at", UTCDateTime()),
    sa.Column("received_at", UTCDateTime(), nullable=False),
)
sa.Index("ix_mail_events_issue", mail_events.c.issue_id, mail_events.c.event)


@dataclass(frozen=True)
class MailEvent:
    """One event reported by the mail service, and the suppression it calls for."""

    event_id: str
    event: str
    email: str
    issue_id: int | None
    occurred_at: dt.datetime | None
    suppress: str | None  # a SUPPRESSION_REASONS value, or None
    metric: str | None = None  # what it adds to in the issue's counts (analytics.metric_of)
    reader: int | None = None  # the reader's keyed hash for this issue (analytics.ReaderKeys)
    url: str | None = None  # the link clicked
    list_name: str | None = None  # the list the message was sent to (custom_args)


class EventStore(Database):
    """Mail events and their per-issue counts: what the webhook and `status` need."""

    def apply_mail_events(
        self, events: Sequence[MailEvent], source: str = "webhook", per_recipient: bool = False
    ) -> int:
        """Record events not seen before, their suppressions and their counts, in one
        transaction.

        Either all of a delivery is recorded or none of it, so an acknowledged
        batch is never half applied and a redelivered one changes nothing.
        Returns how many events were new.
        """
        now = utcnow()
        with self._atomic() as conn:
            events = _of_these_issues(conn, events)
            rows = {
                e.event_id: {
                    "event_id": e.event_id,
                    "issue_id": e.issue_id,
                    "event": e.event,
                    "occurred_at": e.occurred_at,
                    "received_at": now,
                }
                for e in events
            }
            fresh = set(_insert_missing(conn, mail_events, mail_events.c.event_id, rows))
            # for every list: SendGrid's verdicts are about the address itself
            found = [(e.email, e.suppress) for e in events if e.event_id in fresh and e.suppress]
            _suppress(conn, found, source, None, now)
            counted = [
                Counted(
                    issue_id=e.issue_id,
                    metric=e.metric,
                    reader=e.reader,
                    email=e.email,
                    url=e.url,
                    day=self.local_day(e.occurred_at or now),
                    occurred_at=e.occurred_at or now,
                )
                for e in {e.event_id: e for e in events}.values()
                if e.event_id in fresh
                and e.issue_id is not None
                and e.metric is not None
                and e.reader is not None
            ]
            add_counts(conn, counted, per_recipient)
        return len(fresh)

    def event_counts(self, issue_id: int) -> dict[str, int]:
        query = (
            sa.select(mail_events.c.event, sa.func.count())
            .where(mail_events.c.issue_id == issue_id)
            .group_by(mail_events.c.event)
        )
        with self.engine.connect() as conn:
            return {event: int(n) for event, n in conn.execute(query)}


def _of_these_issues(conn: sa.Connection, events: Sequence[MailEvent]) -> list[MailEvent]:
    """The events, those of another list's message left without an issue: an issue id is
    only this database's (a state database made anew, or a second newsletter on the same
    SendGrid account, numbers its issues from 1 again), so the list must agree too."""
    lists = lists_of(conn, (e.issue_id for e in events if e.issue_id is not None and e.list_name))
    return [
        replace(e, issue_id=None, metric=None, reader=None, url=None)
        if e.list_name and e.issue_id in lists and lists[e.issue_id] != e.list_name
        else e
        for e in events
    ]
