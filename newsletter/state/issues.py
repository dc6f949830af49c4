"""Issues: the per-(list, date) claim, the stored plan, the finish, and the history.

An issue row is claimed atomically by its unique key, so exactly one sender
sends it; the rendered email and its batches are stored in one transaction
before anything leaves; a sent issue records its stories so later issues of
the list skip them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from newsletter.state.batches import batch_times, batches, pack_recipients
from newsletter.state.database import Database, UTCDateTime, _aware, chunks, metadata, utcnow

# One row per (list, date): claimed atomically by the unique constraint. The
# rendered email is stored with the plan, so a resumed send sends the same thing.
issues = sa.Table(
    "issues",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("list_name", sa.String(64), nullable=False),
    sa.Column("issue_date", sa.Date, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("claimed_by", sa.String(255)),
    sa.Column("heartbeat", UTCDateTime()),
    sa.Column("window_start", UTCDateTime()),
    sa.Column("window_end", UTCDateTime()),
    sa.Column("subject", sa.Text),
    sa.Column("html", sa.Text),
    sa.Column("text", sa.Text),
    sa.Column("tokens", sa.Text),
    sa.Column("story_keys", sa.Text),
    sa.Column("transport", sa.String(16)),
    sa.Column("recipients", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("finished_at", UTCDateTime()),
    sa.UniqueConstraint("list_name", "issue_date", name="uq_issue_per_list_and_date"),
)

issue_stories = sa.Table(
    "issue_stories",
    metadata,
    sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
    sa.Column("story_key", sa.String(2048), primary_key=True),
)

# a skipped issue can still be sent by hand; failed and stopped ones resume, and so does
# a partial one (readers still waiting for their own morning)
RESUMABLE = ("failed", "stopped", "skipped", "partial")
# what a plan stores on its issue (`_plan_fields`); a cancelled plan clears them
PLAN_COLUMNS = (
    "subject", "html", "text", "tokens", "story_keys", "window_start", "window_end", "transport",
)  # fmt: skip


@dataclass(frozen=True)
class IssueRow:
    id: int
    list_name: str
    issue_date: dt.date
    status: str
    claimed_by: str | None
    heartbeat: dt.datetime | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    subject: str | None
    html: str | None
    text: str | None
    tokens: frozenset[str]
    story_keys: tuple[str, ...]
    transport: str | None
    recipients: int
    error: str | None
    created_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def planned(self) -> bool:
        return self.subject is not None


@dataclass(frozen=True)
class PlanContent:
    """What an issue will send, stored with its plan so that a resumed send sends it."""

    subject: str
    html: str
    text: str
    tokens: frozenset[str]
    story_keys: Iterable[str]
    window_start: dt.datetime | None
    window_end: dt.datetime
    transport: str


@dataclass(frozen=True)
class Claim:
    """The outcome of asking for an issue: ours now (new or resumed), already sent, or busy."""

    state: str  # "new" | "resumed" | "sent" | "busy"
    issue: IssueRow


class IssueStore(Database):
    """Issues: claim, plan, beat, finish, and what earlier issues of a list sent."""

    def issue(self, list_name: str, date: dt.date) -> IssueRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(issues).where(
                    issues.c.list_name == list_name, issues.c.issue_date == date
                )
            ).first()
        return _issue_row(row) if row is not None else None

    def claim(self, list_name: str, date: dt.date, owner: str, stale_after: dt.timedelta) -> Claim:
        """Take the issue for this process, atomically; exactly one claimant wins.

        A claim whose owner died (same host, pid gone) or stopped beating for
        `stale_after` is taken over; a failed or stopped issue is resumed.
        """
        now = utcnow()
        if self._insert_issue(list_name, date, status="sending", claimed_by=owner, heartbeat=now):
            issue = self.issue(list_name, date)
            assert issue is not None
            return Claim("new", issue)
        issue = self.issue(list_name, date)
        assert issue is not None
        if issue.status == "sent":
            return Claim("sent", issue)
        takeover = issue.status in RESUMABLE or (
            issue.status == "sending"
            # this very process, whose earlier attempt ended without closing the issue
            and (issue.claimed_by == owner or _claim_is_stale(issue, now, stale_after))
        )
        if takeover:
            with self.engine.begin() as conn:
                won = conn.execute(
                    sa.update(issues)
                    .where(
                        issues.c.id == issue.id,
                        issues.c.status == issue.status,
                        _same(issues.c.claimed_by, issue.claimed_by),
                    )
                    .values(status="sending", claimed_by=owner, heartbeat=now, error=None)
                ).rowcount
            fresh = self.issue(list_name, date)
            assert fresh is not None
            if won:
                return Claim("resumed", fresh)
            return Claim("sent" if fresh.status == "sent" else "busy", fresh)
        return Claim("busy", issue)

    def record_skipped(self, list_name: str, date: dt.date, reason: str) -> bool:
        """Say that a scheduled issue did not go out, unless something already happened to it."""
        return self._insert_issue(
            list_name, date, status="skipped", error=reason, finished_at=utcnow()
        )

    def _insert_issue(self, list_name: str, date: dt.date, **values: object) -> bool:
        """A new issue row; False if (list, date) has one already: the unique key decides."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.insert(issues).values(
                        list_name=list_name,
                        issue_date=date,
                        recipients=0,
                        created_at=utcnow(),
                        **values,
                    )
                )
        except sa.exc.IntegrityError:
            return False
        return True

    def save_plan(
        self,
        issue_id: int,
        content: PlanContent,
        batches_of_recipients: Iterable[tuple[Sequence[str], Sequence[Sequence[str]]]],
        later: Mapping[int, dt.datetime] | None = None,
    ) -> int:
        """Store what will be sent and every batch with its recipients, in one transaction;
        `later` (filled while the batches stream by): batch number -> when it is due, for
        readers who get the issue at their own morning."""
        now = utcnow()
        total = 0
        with self.engine.begin() as conn:
            conn.execute(_DROP_DRAFTS, {"issue": issue_id})
            for chunk in _batch_rows(issue_id, 1, "pending", batches_of_recipients, now):
                conn.execute(sa.insert(batches), chunk)
                total += sum(row["size"] for row in chunk)
            if later:
                ids = dict(
                    conn.execute(
                        sa.select(batches.c.seq, batches.c.id).where(batches.c.issue_id == issue_id)
                    ).all()
                )
                rows = [{"batch_id": ids[seq], "not_before": due} for seq, due in later.items()]
                conn.execute(sa.insert(batch_times), rows)
            conn.execute(_plan_fields(issue_id, content, total, now))
        return total

    # -- a plan made in parts, by several senders at once -------------------------------

    def add_draft_batches(
        self,
        issue_id: int,
        first_seq: int,
        batches_of_recipients: Iterable[tuple[Sequence[str], Sequence[Sequence[str]]]],
    ) -> tuple[int, int]:
        """One part's batches as drafts, numbered from `first_seq`: stored, not yet owed
        (no sender takes a draft), until `publish_plan` makes the whole plan pending at
        once. Committed a hundred at a time, so parts stored side by side on SQLite take
        turns instead of one waiting for the other's whole part. (batches, recipients)"""
        count = total = 0
        for chunk in _batch_rows(issue_id, first_seq, "draft", batches_of_recipients, utcnow()):
            with self.engine.begin() as conn:
                conn.execute(sa.insert(batches), chunk)
            count, total = count + len(chunk), total + sum(row["size"] for row in chunk)
        return count, total

    def publish_plan(
        self, issue_id: int, parts: Sequence[tuple[int, int]], content: PlanContent
    ) -> int:
        """The drafts of every part become the plan, in one transaction: numbered 1, 2, ...
        in the order of the parts (`parts`: each one's first draft number and count),
        pending, with what will be sent."""
        total = 0
        with self.engine.begin() as conn:
            seq = 1
            for first, count in parts:
                conn.execute(
                    sa.update(batches)
                    .where(
                        batches.c.issue_id == issue_id,
                        batches.c.status == "draft",
                        batches.c.seq >= first,
                        batches.c.seq < first + count,
                    )
                    .values(seq=batches.c.seq - first + seq, status="pending")
                )
                seq += count
            total = conn.execute(
                sa.select(sa.func.coalesce(sa.func.sum(batches.c.size), 0)).where(
                    batches.c.issue_id == issue_id, batches.c.status == "pending"
                )
            ).scalar_one()
            conn.execute(_plan_fields(issue_id, content, total, utcnow()))
        return int(total)

    def drop_drafts(self, issue_id: int) -> None:
        """Forget a plan in parts that was not published (a bad row, a crash)."""
        with self.engine.begin() as conn:
            conn.execute(_DROP_DRAFTS, {"issue": issue_id})

    def beat(self, issue_id: int, owner: str) -> None:
        """Show the claim is alive; a claim that stops beating can be taken over."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(issues)
                .where(issues.c.id == issue_id, issues.c.claimed_by == owner)
                .values(heartbeat=utcnow())
            )

    def finish(self, issue_id: int, status: str, error: str | None = None) -> None:
        """Close the issue; a sent one records its stories so later issues skip them."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(issues)
                .where(issues.c.id == issue_id)
                .values(status=status, error=error, finished_at=utcnow(), claimed_by=None)
            )
            if status == "sent":
                keys = conn.execute(
                    sa.select(issues.c.story_keys).where(issues.c.id == issue_id)
                ).scalar_one()
                rows = [{"issue_id": issue_id, "story_key": k} for k in json.loads(keys or "[]")]
                if rows:
                    conn.execute(sa.insert(issue_stories), rows)

    def sent_story_keys(self, list_name: str, before: dt.date) -> frozenset[str]:
        """Stories earlier issues of this list carried: a story goes out once."""
        query = (
            sa.select(issue_stories.c.story_key)
            .join(issues, issues.c.id == issue_stories.c.issue_id)
            .where(
                issues.c.list_name == list_name,
                issues.c.status == "sent",
                issues.c.issue_date < before,
            )
        )
        with self.engine.connect() as conn:
            return frozenset(conn.execute(query).scalars())

    def previous_issue_end(self, list_name: str, before: dt.date) -> dt.datetime | None:
        query = sa.select(sa.func.max(issues.c.window_end)).where(
            issues.c.list_name == list_name,
            issues.c.status == "sent",
            issues.c.issue_date < before,
        )
        with self.engine.connect() as conn:
            return _aware(conn.execute(query).scalar())

    def recent_issues(self, list_name: str | None = None, limit: int = 10) -> list[IssueRow]:
        query = (
            sa.select(issues).order_by(issues.c.issue_date.desc(), issues.c.id.desc()).limit(limit)
        )
        if list_name:
            query = query.where(issues.c.list_name == list_name)
        with self.engine.connect() as conn:
            return [_issue_row(r) for r in conn.execute(query)]


_DROP_DRAFTS = sa.delete(batches).where(
    batches.c.issue_id == sa.bindparam("issue"), batches.c.status == "draft"
)


def _batch_rows(
    issue_id: int,
    first_seq: int,
    status: str,
    batches_of_recipients: Iterable[tuple[Sequence[str], Sequence[Sequence[str]]]],
    now: dt.datetime,
) -> Iterator[list[dict[str, Any]]]:
    """Batches as rows of the batches table, numbered from `first_seq`, a hundred at a
    time (one insert each)."""
    chunk: list[dict[str, Any]] = []
    for seq, (columns, rows) in enumerate(batches_of_recipients, start=first_seq):
        chunk.append(
            {
                "issue_id": issue_id,
                "seq": seq,
                "status": status,
                "size": len(rows),
                "recipients": pack_recipients(columns, rows),
                "attempts": 0,
                "updated_at": now,
            }
        )
        if len(chunk) >= 100:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _plan_fields(
    issue_id: int, content: PlanContent, recipients: int, now: dt.datetime
) -> sa.Update:
    """What will be sent, stored on the issue with its plan: from here it is `planned`."""
    return (
        sa.update(issues)
        .where(issues.c.id == issue_id)
        .values(
            subject=content.subject,
            html=content.html,
            text=content.text,
            tokens=",".join(sorted(content.tokens)),
            story_keys=json.dumps(sorted(content.story_keys)),
            window_start=content.window_start,
            window_end=content.window_end,
            transport=content.transport,
            recipients=recipients,
            heartbeat=now,
        )
    )


def _same(column: sa.ColumnElement[str], value: str | None) -> sa.ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _issue_row(row: sa.Row) -> IssueRow:  # type: ignore[type-arg]
    m = row._mapping
    return IssueRow(
        id=m["id"],
        list_name=m["list_name"],
        issue_date=m["issue_date"],
        status=m["status"],
        claimed_by=m["claimed_by"],
        heartbeat=_aware(m["heartbeat"]),
        window_start=_aware(m["window_start"]),
        window_end=_aware(m["window_end"]),
        subject=m["subject"],
        html=m["html"],
        text=m["text"],
        tokens=frozenset(t for t in (m["tokens"] or "").split(",") if t),
        story_keys=tuple(json.loads(m["story_keys"] or "[]")),
        transport=m["transport"],
        recipients=m["recipients"] or 0,
        error=m["error"],
        created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
        finished_at=_aware(m["finished_at"]),
    )


def process_owner() -> str:
    """Who holds a claim: host and pid, so a dead owner on this host is recognised."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _claim_is_stale(issue: IssueRow, now: dt.datetime, stale_after: dt.timedelta) -> bool:
    """A dead owner on this host, or one elsewhere that stopped beating. A live process on
    this host is never taken over, however slow: two senders would send the same rows."""
    return owner_is_gone(issue.claimed_by or "", issue.heartbeat, now, stale_after)


def owner_is_gone(
    owner: str, heartbeat: dt.datetime | None, now: dt.datetime, stale_after: dt.timedelta
) -> bool:
    """Whether the process `owner` (`process_owner()`) is gone: dead, if it ran on this
    host; silent for `stale_after`, if it runs elsewhere."""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False
    return heartbeat is None or now - heartbeat > stale_after


def lists_of(conn: sa.Connection, ids: Iterable[int]) -> dict[int, str]:
    """issue id -> its list, for the ids that are issues of this database."""
    found: dict[int, str] = {}
    for chunk in chunks(sorted(set(ids))):
        query = sa.select(issues.c.id, issues.c.list_name).where(issues.c.id.in_(chunk))
        found.update((row.id, row.list_name) for row in conn.execute(query))
    return found
