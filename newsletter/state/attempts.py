"""Scheduled attempts: an issue submitted ahead of its send time under one SendGrid
batch ID, which can be cancelled until ten minutes before it goes out.

An attempt is recorded before its first request leaves. A run that finds a
request in doubt before the cancel deadline cancels the attempt and sends the
whole issue again under a new one (`replace_attempt`, in one transaction), so
nobody gets it twice; an editor's cancel or pause is an attempt's status too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.state.batches import batch_progress, batch_times, batches
from newsletter.state.database import Database, UTCDateTime, metadata, utcnow
from newsletter.state.issues import PLAN_COLUMNS, issue_stories, issues

scheduled_attempts = sa.Table(
    "scheduled_attempts",
    metadata,
    sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("batch_id", sa.String(128), nullable=False),
    sa.Column("send_at", UTCDateTime(), nullable=False),
    # readers with their own zone get the send time of day on their clock, at the first
    # such moment after `anchor` (`zones.py`); `earliest` is the first anyone is due
    sa.Column("anchor", UTCDateTime(), nullable=False),
    sa.Column("earliest", UTCDateTime(), nullable=False),
    # active | paused | replaced (cancelled to send again) | cancelled (by the editor)
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

CANCEL_NOTICE = dt.timedelta(minutes=10)  # SendGrid: later cancels are not guaranteed


@dataclass(frozen=True)
class Attempt:
    issue_id: int
    attempt: int
    batch_id: str
    send_at: dt.datetime
    status: str
    anchor: dt.datetime
    earliest: dt.datetime

    @property
    def cancel_deadline(self) -> dt.datetime:
        """The last moment SendGrid promises to honour a cancel or pause: ten minutes
        before the first reader is due."""
        return self.earliest - CANCEL_NOTICE


class AttemptStore(Database):
    """The scheduled attempts of each issue; the latest one is the one that counts."""

    def latest_attempt(self, issue_id: int) -> Attempt | None:
        query = (
            sa.select(scheduled_attempts)
            .where(scheduled_attempts.c.issue_id == issue_id)
            .order_by(scheduled_attempts.c.attempt.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return _attempt(row) if row is not None else None

    def attempts(self, issue_id: int) -> list[Attempt]:
        query = (
            sa.select(scheduled_attempts)
            .where(scheduled_attempts.c.issue_id == issue_id)
            .order_by(scheduled_attempts.c.attempt)
        )
        with self.engine.connect() as conn:
            return [_attempt(row) for row in conn.execute(query)]

    def record_attempt(
        self,
        issue_id: int,
        batch_id: str,
        send_at: dt.datetime,
        anchor: dt.datetime,
        earliest: dt.datetime,
    ) -> Attempt:
        """A new attempt, active: recorded before any of its requests leaves."""
        attempt = Attempt(issue_id, 0, batch_id, send_at, "active", anchor, earliest)
        with self._atomic() as conn:
            attempt = dataclasses.replace(attempt, attempt=_next_number(conn, issue_id))
            conn.execute(_insert(attempt))
        return attempt

    def replace_attempt(self, old: Attempt, batch_id: str) -> Attempt:
        """After SendGrid confirmed `old` cancelled: every batch of the issue is owed again,
        under a new attempt with the same send time, in one transaction (a crash leaves
        either the old attempt, to cancel again, or the new one, to send)."""
        with self._atomic() as conn:
            conn.execute(_set_status(old, "replaced"))
            new = dataclasses.replace(
                old, attempt=_next_number(conn, old.issue_id), batch_id=batch_id, status="active"
            )
            conn.execute(_insert(new))
            ids = sa.select(batches.c.id).where(batches.c.issue_id == old.issue_id)
            conn.execute(sa.delete(batch_progress).where(batch_progress.c.batch_id.in_(ids)))
            conn.execute(
                sa.update(batches)
                .where(batches.c.issue_id == old.issue_id, batches.c.status != "draft")
                .values(status="pending", error=None, message_id=None, updated_at=utcnow())
            )
        return new

    def set_attempt_status(self, attempt: Attempt, status: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(_set_status(attempt, status))

    def cancel_issue(self, attempt: Attempt, note: str) -> None:
        """The editor's undo, once SendGrid confirmed it: the issue is `cancelled`, its
        stories are free for the next issue, and the archive no longer shows it."""
        with self._atomic() as conn:
            conn.execute(_set_status(attempt, "cancelled"))
            conn.execute(
                sa.update(issues)
                .where(issues.c.id == attempt.issue_id)
                .values(status="cancelled", error=note, claimed_by=None, finished_at=utcnow())
            )
            conn.execute(
                sa.delete(issue_stories).where(issue_stories.c.issue_id == attempt.issue_id)
            )

    def forget_plan(self, issue_id: int) -> None:
        """A cancelled issue made ready for a corrected one (`send --replace`): its batches
        and stored email go, its attempts stay as history, and the next send claims it,
        gathers, renders and plans it anew."""
        with self._atomic() as conn:
            status = conn.execute(
                sa.select(issues.c.status).where(issues.c.id == issue_id)
            ).scalar_one()
            if status != "cancelled":
                return
            ids = sa.select(batches.c.id).where(batches.c.issue_id == issue_id)
            for table in (batch_progress, batch_times):
                conn.execute(sa.delete(table).where(table.c.batch_id.in_(ids)))
            conn.execute(sa.delete(batches).where(batches.c.issue_id == issue_id))
            conn.execute(
                sa.update(issues)
                .where(issues.c.id == issue_id)
                .values(
                    status="failed",
                    error="cancelled: a corrected issue replaces it",
                    **dict.fromkeys(PLAN_COLUMNS),
                    recipients=0,
                )
            )


def _set_status(attempt: Attempt, status: str) -> sa.Update:
    return (
        sa.update(scheduled_attempts)
        .where(
            scheduled_attempts.c.issue_id == attempt.issue_id,
            scheduled_attempts.c.attempt == attempt.attempt,
        )
        .values(status=status)
    )


def _next_number(conn: sa.Connection, issue_id: int) -> int:
    latest = conn.execute(
        sa.select(sa.func.max(scheduled_attempts.c.attempt)).where(
            scheduled_attempts.c.issue_id == issue_id
        )
    ).scalar_one()
    return int(latest or 0) + 1


def _insert(attempt: Attempt) -> sa.Insert:
    return sa.insert(scheduled_attempts).values(**dataclasses.asdict(attempt), created_at=utcnow())


def _attempt(row: sa.Row) -> Attempt:  # type: ignore[type-arg]
    m = row._mapping
    return Attempt(**{f.name: m[f.name] for f in dataclasses.fields(Attempt)})
