"""Helpers: senders on other machines (or in other folders) that join an issue another
process has claimed and planned, and take its pending batches beside it.

The claim stays with one process, which plans the issue, settles what an earlier
run left in doubt, and only then opens the issue to helpers (a row of role
"open"); a helper can join only an open issue, and only takes batches
(`BatchStore.take_next_batch`), so each batch still goes to one sender. A helper
is registered here while it works, and beats like a claim: the claimant closes
the issue and waits for the batches a live helper has in flight before it
reports, and knows a dead helper's batches are in doubt.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from newsletter.state.database import Database, UTCDateTime, metadata, utcnow
from newsletter.state.issues import issues, owner_is_gone

issue_helpers = sa.Table(
    "issue_helpers",
    metadata,
    sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
    sa.Column("owner", sa.String(255), primary_key=True),
    sa.Column("role", sa.String(8), nullable=False),  # "open" (the claimant's) | "helper"
    sa.Column("heartbeat", UTCDateTime(), nullable=False),
)


class HelperStore(Database):
    """Whether an issue is open to helpers, who helps send it, and whether they live."""

    def open_to_helpers(self, issue_id: int, owner: str) -> None:
        """The claimant `owner` is delivering: helpers may join (an earlier claimant's
        opening goes)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(issue_helpers).where(
                    issue_helpers.c.issue_id == issue_id, issue_helpers.c.role == "open"
                )
            )
            conn.execute(
                sa.insert(issue_helpers).values(
                    issue_id=issue_id, owner=owner, role="open", heartbeat=utcnow()
                )
            )

    def close_to_helpers(self, issue_id: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(issue_helpers).where(
                    issue_helpers.c.issue_id == issue_id, issue_helpers.c.role == "open"
                )
            )

    def join_issue(self, issue_id: int, owner: str) -> bool:
        """Register `owner` as a helper, only while the issue is being sent and its
        claimant has opened it (planned, and what a run before left settled); False
        otherwise."""
        opened = sa.exists().where(
            issue_helpers.c.issue_id == issues.c.id,
            issue_helpers.c.role == "open",
            issue_helpers.c.owner == issues.c.claimed_by,
        )
        query = sa.select(
            issues.c.id,
            sa.literal(owner, sa.String(255)),
            sa.literal("helper", sa.String(8)),
            sa.literal(utcnow(), UTCDateTime()),
        ).where(issues.c.id == issue_id, issues.c.status == "sending", opened)
        insert = sa.insert(issue_helpers).from_select(
            ["issue_id", "owner", "role", "heartbeat"], query
        )
        with self.engine.begin() as conn:  # RETURNING: psycopg's rowcount here is -1
            return conn.execute(insert.returning(issue_helpers.c.owner)).first() is not None

    def beat_helper(self, issue_id: int, owner: str) -> None:
        """Show the helper is alive (a helper that stops beating is taken for dead)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(issue_helpers)
                .where(issue_helpers.c.issue_id == issue_id, issue_helpers.c.owner == owner)
                .values(heartbeat=utcnow())
            )

    def leave_issue(self, issue_id: int, owner: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(issue_helpers).where(
                    issue_helpers.c.issue_id == issue_id,
                    issue_helpers.c.owner == owner,
                    issue_helpers.c.role == "helper",
                )
            )

    def live_helpers(self, issue_id: int, stale_after: dt.timedelta) -> list[str]:
        """The helpers still at work on the issue; the rows of those that died are removed
        (what they had in flight stays `submitting`: in doubt, as after any crash)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(issue_helpers.c.owner, issue_helpers.c.heartbeat)
                .where(issue_helpers.c.issue_id == issue_id, issue_helpers.c.role == "helper")
                .order_by(issue_helpers.c.owner)
            ).all()
        now = utcnow()
        gone = [owner for owner, beat in rows if owner_is_gone(owner, beat, now, stale_after)]
        for owner in gone:
            self.leave_issue(issue_id, owner)
        return [owner for owner, _ in rows if owner not in gone]
