"""The SQL state of a newsletter (SQLAlchemy Core): one database, any SQLAlchemy URL.

A SQLite file next to the config by default; PostgreSQL when several machines
share the work. The schema is created on first use.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import socket
import sqlite3
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from newsletter.dberrors import database_name, explain, problem_kind
from newsletter.errors import LedgerError
from newsletter.stories.cache import CachedFeed

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A moment stored as UTC and read back aware in UTC, on every database.

    SQLite keeps only the wall time of what it is given (an offset is dropped,
    so 07:00-04:00 would come back as 07:00 UTC); PostgreSQL answers in the
    session's time zone. Converting on the way in and out makes both agree.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.UTC)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: object
    ) -> dt.datetime | None:
        return _aware(value)


feed_cache = sa.Table(
    "feed_cache",
    metadata,
    sa.Column("url", sa.String(2048), primary_key=True),
    sa.Column("etag", sa.String(512)),
    sa.Column("last_modified", sa.String(128)),
    sa.Column("content_type", sa.String(256), nullable=False, default=""),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("fetched_at", UTCDateTime(), nullable=False),
)

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

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("recipients", sa.LargeBinary, nullable=False),
    sa.Column("message_id", sa.String(255)),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("issue_id", "seq", name="uq_batch_seq"),
)
sa.Index("ix_batches_issue_status", batches.c.issue_id, batches.c.status)

# How far a batch handed over one message at a time (SMTP) got: its first `done`
# recipients were accepted, so after a crash only the message in flight, the one at
# `done`, can be in doubt (NOT_STARTED: none was being handed over yet). A row with kind
# "none" marks a batch taken by a transport that can resend it harmlessly (the outbox,
# which sees who already has the issue). Batches sent in one request (SendGrid) have no
# row: a crash leaves all of it in doubt.
batch_progress = sa.Table(
    "batch_progress",
    metadata,
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "message" | "none"
    sa.Column("done", sa.Integer, nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email", sa.String(320), primary_key=True),  # lower-cased
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

# An unsubscribe from one list: the address may still read the others.
list_suppressions = sa.Table(
    "list_suppressions",
    metadata,
    sa.Column("list_name", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320), primary_key=True),  # lower-cased
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)

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

# Proof of a double opt-in: who confirmed, when, from where, agreeing to which words.
consents = sa.Table(
    "consents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("list_name", sa.String(64), nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("signed_up_at", UTCDateTime(), nullable=False),
    sa.Column("confirmed_at", UTCDateTime(), nullable=False),
    sa.Column("ip", sa.String(64)),
    sa.Column("user_agent", sa.String(512)),
    sa.Column("form_version", sa.String(32), nullable=False),
    sa.Column("wording", sa.Text, nullable=False),
)
sa.Index("ix_consents_email", consents.c.email)

issue_stories = sa.Table(
    "issue_stories",
    metadata,
    sa.Column("issue_id", sa.Integer, sa.ForeignKey("issues.id"), primary_key=True),
    sa.Column("story_key", sa.String(2048), primary_key=True),
)

SUPPRESSION_REASONS = ("unsubscribed", "bounced", "spam", "invalid", "manual")
# sources whose suppressions are recorded at the moment the person acted
ACTED_NOW = ("link", "cli")
# a skipped issue can still be sent by hand; failed and stopped ones resume
RESUMABLE = ("failed", "stopped", "skipped")
# batch states that need nothing more: accepted by the service, or left in doubt and not
# resent on the editor's word (--skip-ambiguous)
BATCH_DONE = ("submitted", "skipped")


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
class Claim:
    """The outcome of asking for an issue: ours now (new or resumed), already sent, or busy."""

    state: str  # "new" | "resumed" | "sent" | "busy"
    issue: IssueRow


@dataclass(frozen=True)
class BatchRow:
    id: int
    seq: int
    status: str
    size: int
    message_id: str | None
    error: str | None
    attempts: int


IN_DOUBT_NOTE = "in doubt: being sent when a run stopped"
NOT_STARTED = -1  # batch_progress.done of a batch taken but not yet being handed over
_ADVANCE = (
    sa.update(batch_progress)
    .where(batch_progress.c.batch_id == sa.bindparam("batch"))
    .values(done=sa.bindparam("done"))
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    """All reads and writes of the state database go through here."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            # hide_parameters: an error message must not carry subscribers' addresses
            self.engine = sa.create_engine(url, future=True, hide_parameters=True)
            sa.event.listen(self.engine, "handle_error", self._fixable_error)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            _create_schema(self.engine)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            # a bad port is a ValueError, a missing driver an ImportError: all the user's to fix
            raise LedgerError(
                f"cannot open the state database {database_name(url)}: {_safe(exc, url)}"
            ) from None

    def _fixable_error(self, ctx: sa.engine.ExceptionContext) -> Exception | None:
        """A damaged, read-only or full database, or a lost server, as one LedgerError line.

        Everything else keeps its type: the ledger relies on IntegrityError for
        "somebody else got there first", and an unknown error is a bug.
        """
        kind = problem_kind(ctx.original_exception, ctx.is_disconnect)
        if kind is None:
            return None
        detail = _safe(ctx.original_exception, self.url)  # type: ignore[arg-type]
        return LedgerError(explain(kind, self.url, detail))

    def close(self) -> None:
        self.engine.dispose()

    def create_tables(self, tables: Sequence[sa.Table]) -> None:
        """Create another component's tables (APScheduler's job store) under the schema lock."""
        try:
            _create_schema(self.engine, tables)
        except SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot create {', '.join(t.name for t in tables)}: {_safe(exc, self.url)}"
            ) from None

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[sa.Connection]:
        """A transaction that savepoints cannot end early, on SQLite too.

        Python's sqlite3 opens a transaction only before a write, so a SAVEPOINT
        issued first would start (and its RELEASE commit) one of its own. An
        explicit BEGIN IMMEDIATE takes the write lock at once and keeps the block whole.
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- feed cache (a FeedCache for FeedSource) ---------------------------------

    def load(self, url: str) -> CachedFeed | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(feed_cache).where(feed_cache.c.url == url)).first()
        if row is None:
            return None
        return CachedFeed(
            body=row.body,
            content_type=row.content_type,
            etag=row.etag,
            last_modified=row.last_modified,
        )

    def save(self, url: str, feed: CachedFeed) -> None:
        values = {
            "etag": feed.etag,
            "last_modified": feed.last_modified,
            "content_type": feed.content_type,
            "body": feed.body,
            "fetched_at": utcnow(),
        }
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(feed_cache).where(feed_cache.c.url == url).values(**values)
            ).rowcount
            if not updated:
                conn.execute(sa.insert(feed_cache).values(url=url, **values))

    # -- issues: claim, plan, finish -----------------------------------------------

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
        *,
        subject: str,
        html: str,
        text: str,
        tokens: Iterable[str],
        story_keys: Iterable[str],
        window_start: dt.datetime | None,
        window_end: dt.datetime,
        transport: str,
        batches_of_recipients: Iterable[tuple[Sequence[str], Sequence[Sequence[str]]]],
    ) -> int:
        """Store what will be sent and every batch with its recipients, in one transaction."""
        now = utcnow()
        total = 0
        with self.engine.begin() as conn:
            chunk: list[dict[str, object]] = []
            for seq, (columns, rows) in enumerate(batches_of_recipients, start=1):
                total += len(rows)
                chunk.append(
                    {
                        "issue_id": issue_id,
                        "seq": seq,
                        "status": "pending",
                        "size": len(rows),
                        "recipients": pack_recipients(columns, rows),
                        "attempts": 0,
                        "updated_at": now,
                    }
                )
                if len(chunk) >= 100:
                    conn.execute(sa.insert(batches), chunk)
                    chunk = []
            if chunk:
                conn.execute(sa.insert(batches), chunk)
            conn.execute(
                sa.update(issues)
                .where(issues.c.id == issue_id)
                .values(
                    subject=subject,
                    html=html,
                    text=text,
                    tokens=",".join(sorted(tokens)),
                    story_keys=json.dumps(sorted(story_keys)),
                    window_start=window_start,
                    window_end=window_end,
                    transport=transport,
                    recipients=total,
                    heartbeat=now,
                )
            )
        return total

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

    # -- batches -------------------------------------------------------------------

    def batches(self, issue_id: int, statuses: Sequence[str] | None = None) -> list[BatchRow]:
        query = (
            sa.select(
                batches.c.id,
                batches.c.seq,
                batches.c.status,
                batches.c.size,
                batches.c.message_id,
                batches.c.error,
                batches.c.attempts,
            )
            .where(batches.c.issue_id == issue_id)
            .order_by(batches.c.seq)
        )
        if statuses is not None:
            query = query.where(batches.c.status.in_(statuses))
        with self.engine.connect() as conn:
            return [BatchRow(*row) for row in conn.execute(query)]

    def take_batch(
        self, batch_id: int, from_statuses: Sequence[str], kind: str = "batch"
    ) -> bytes | None:
        """pending/failed -> submitting, and its recipients; None if another sender moved it
        first. From here a crash leaves the batch in doubt: all of it for `kind` "batch"
        (one request), only the message in flight for "message", none of it for "none"."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.update(batches)
                .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
                .values(status="submitting", attempts=batches.c.attempts + 1, updated_at=utcnow())
                .returning(batches.c.recipients)
            ).first()
            if row is not None and kind != "batch":
                conn.execute(sa.delete(batch_progress).where(batch_progress.c.batch_id == batch_id))
                conn.execute(
                    sa.insert(batch_progress).values(batch_id=batch_id, kind=kind, done=NOT_STARTED)
                )
        return row[0] if row is not None else None

    def record_progress(self, batch_id: int, done: int) -> bool:
        """The batch's first `done` recipients were accepted, and the one at `done` is being
        handed over: written before it goes. False if the batch is no longer ours (another
        sender took the issue over and settled it): stop, do not send it.

        On PostgreSQL without waiting for the server's disk: what this guards against is the
        sender dying, and the server keeps what it acknowledged through that.
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return bool(conn.execute(_ADVANCE, {"batch": batch_id, "done": done}).rowcount)

    def split_batch(
        self,
        batch_id: int,
        sent: int,
        *,
        in_doubt: int = 0,
        rest: str = "pending",
        note: str | None = None,
    ) -> None:
        """Cut a batch where its sending stopped, in one transaction.

        Its first `sent` recipients stay as a submitted batch, the next `in_doubt` become
        a batch left `submitting` (they may or may not have got it: named, not resent
        without a flag), and the others a `rest` batch (pending or failed, with `note`),
        still owed. So the counts say exactly who got the issue, and a rerun resends
        nobody twice.
        """
        with self._atomic() as conn:
            found = conn.execute(
                sa.select(batches.c.issue_id, batches.c.recipients).where(batches.c.id == batch_id)
            ).one()
            columns, rows = unpack_recipients(found.recipients)
            parts = [
                ("submitted", rows[:sent], None),
                ("submitting", rows[sent : sent + in_doubt], IN_DOUBT_NOTE),
                (rest, rows[sent + in_doubt :], note),
            ]
            parts = [part for part in parts if part[1]] or [(rest, rows, note)]
            seq = conn.execute(
                sa.select(sa.func.max(batches.c.seq)).where(batches.c.issue_id == found.issue_id)
            ).scalar_one()
            now = utcnow()
            for index, (status, part, error) in enumerate(parts):
                values = {
                    "status": status,
                    "size": len(part),
                    "recipients": pack_recipients(columns, part),
                    "error": error,
                    "updated_at": now,
                }
                if index == 0:
                    conn.execute(sa.update(batches).where(batches.c.id == batch_id).values(values))
                else:
                    seq += 1
                    conn.execute(
                        sa.insert(batches).values(
                            issue_id=found.issue_id, seq=seq, attempts=1, **values
                        )
                    )
            conn.execute(sa.delete(batch_progress).where(batch_progress.c.batch_id == batch_id))

    def settle_interrupted(self, issue_id: int, resend_safely: bool) -> None:
        """After a run died: cut each batch it sent one message at a time where its progress
        says, so only the message in flight stays in doubt; a batch taken by a transport
        that resends harmlessly goes back to pending when this run's can too. Batches sent
        in one request stay `submitting`, whole: nobody can tell what the service got."""
        query = (
            sa.select(batches.c.id, batches.c.size, batch_progress.c.kind, batch_progress.c.done)
            .join(batch_progress, batch_progress.c.batch_id == batches.c.id)
            .where(batches.c.issue_id == issue_id, batches.c.status == "submitting")
        )
        with self.engine.connect() as conn:
            interrupted = conn.execute(query).all()
        for batch_id, size, kind, done in interrupted:
            if kind == "message" and done == NOT_STARTED:
                self.split_batch(batch_id, 0, rest="pending")
            elif kind == "message":
                self.split_batch(batch_id, done, in_doubt=min(1, size - done))
            elif resend_safely:
                self.split_batch(batch_id, 0, rest="pending")

    def replace_batch_recipients(
        self, batch_id: int, columns: Sequence[str], rows: Sequence[Sequence[str]]
    ) -> None:
        """The batch as it is really sent: without readers suppressed since it was planned,
        so nobody who was left out is counted as sent, or named as in doubt."""
        self._set_batch(batch_id, recipients=pack_recipients(columns, rows), size=len(rows))

    def in_doubt_addresses(self, issue_id: int) -> list[str]:
        """Who may or may not have the issue: the message in flight of each batch sent one at
        a time, every reader of a batch sent in one request, nobody for a transport that
        resends harmlessly. Read before a rerun settles anything, as after."""
        query = (
            sa.select(batches.c.recipients, batch_progress.c.kind, batch_progress.c.done)
            .outerjoin(batch_progress, batch_progress.c.batch_id == batches.c.id)
            .where(batches.c.issue_id == issue_id, batches.c.status == "submitting")
            .order_by(batches.c.seq)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        addresses: list[str] = []
        for blob, kind, done in found:
            rows = unpack_recipients(blob)[1]
            if kind is None:
                addresses += [row[0] for row in rows]
            elif kind == "message" and done != NOT_STARTED:
                addresses += [row[0] for row in rows[done : done + 1]]
        return addresses

    def skip_in_doubt(self, issue_id: int, note: str) -> int:
        """Batches left in doubt become `skipped`: not resent, and never counted as sent."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(batches)
                .where(batches.c.issue_id == issue_id, batches.c.status == "submitting")
                .values(status="skipped", error=note, updated_at=utcnow())
            ).rowcount

    def batch_addresses(self, issue_id: int, statuses: Sequence[str]) -> list[str]:
        """The recipients of the issue's batches in these states (who is in doubt, say)."""
        query = (
            sa.select(batches.c.recipients)
            .where(batches.c.issue_id == issue_id, batches.c.status.in_(statuses))
            .order_by(batches.c.seq)
        )
        with self.engine.connect() as conn:
            blobs = list(conn.execute(query).scalars())
        return [row[0] for blob in blobs for row in unpack_recipients(blob)[1]]

    def batch_blob(self, batch_id: int) -> bytes:
        """The batch's recipients, packed; unpack where the work happens."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(batches.c.recipients).where(batches.c.id == batch_id)
            ).scalar_one()

    def batch_recipients(self, batch_id: int) -> tuple[list[str], list[list[str]]]:
        return unpack_recipients(self.batch_blob(batch_id))

    def mark_submitting(self, batch_id: int, from_statuses: Sequence[str]) -> bool:
        """pending/failed -> submitting; from here a crash leaves the batch ambiguous."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    sa.update(batches)
                    .where(batches.c.id == batch_id, batches.c.status.in_(from_statuses))
                    .values(
                        status="submitting",
                        attempts=batches.c.attempts + 1,
                        updated_at=utcnow(),
                    )
                ).rowcount
            )

    def mark_submitted(
        self, batch_id: int, message_id: str | None, note: str | None = None
    ) -> None:
        self.mark_submitted_many([(batch_id, message_id, note)])

    def mark_submitted_many(self, accepted: Sequence[tuple[int, str | None, str | None]]) -> None:
        """(batch id, message id, note) for batches the service accepted, in one write."""
        if not accepted:
            return
        statement = (
            sa.update(batches)
            .where(batches.c.id == sa.bindparam("batch_id"))
            .values(
                status="submitted",
                message_id=sa.bindparam("mid"),
                error=sa.bindparam("note"),
                updated_at=utcnow(),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(statement, [{"batch_id": b, "mid": m, "note": n} for b, m, n in accepted])

    def mark_failed(self, batch_id: int, error: str) -> None:
        self._set_batch(batch_id, status="failed", error=error)

    def _set_batch(self, batch_id: int, **values: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(batches)
                .where(batches.c.id == batch_id)
                .values(updated_at=utcnow(), **values)
            )

    def batch_counts(self, issue_id: int) -> dict[str, tuple[int, int]]:
        """status -> (batches, recipients)."""
        query = (
            sa.select(batches.c.status, sa.func.count(), sa.func.sum(batches.c.size))
            .where(batches.c.issue_id == issue_id)
            .group_by(batches.c.status)
        )
        with self.engine.connect() as conn:
            return {status: (n, int(size or 0)) for status, n, size in conn.execute(query)}

    # -- suppressions --------------------------------------------------------------

    def suppress(
        self, entries: Iterable[tuple[str, str]], source: str, list_name: str | None = None
    ) -> int:
        """Record (address, reason) pairs, for every list or only `list_name`.

        An address already suppressed keeps its first reason; returns how many are new.
        """
        with self._atomic() as conn:
            return _suppress(conn, entries, source, list_name, utcnow())

    def unsuppress(self, email: str) -> bool:
        """Lift every suppression of the address, for all lists (the CLI, with consent)."""
        key = email.strip().lower()
        with self.engine.begin() as conn:
            lifted = conn.execute(sa.delete(suppressions).where(suppressions.c.email == key))
            scoped = conn.execute(
                sa.delete(list_suppressions).where(list_suppressions.c.email == key)
            )
            return bool(lifted.rowcount + scoped.rowcount)

    def resubscribe(self, email: str, list_name: str, other_lists: Iterable[str]) -> bool:
        """Lift the address's suppression for `list_name` only, with its consent.

        A suppression for every list (a bounce, a complaint) becomes one for each
        of `other_lists`, so coming back to one list brings back no other.
        """
        key = email.strip().lower()
        with self._atomic() as conn:
            found = conn.execute(
                sa.select(suppressions.c.reason, suppressions.c.source, suppressions.c.created_at)
                .where(suppressions.c.email == key)
                .with_for_update()  # two lists confirmed at once convert it once
            ).first()
            lifted = conn.execute(
                sa.delete(list_suppressions).where(
                    list_suppressions.c.email == key, list_suppressions.c.list_name == list_name
                )
            ).rowcount
            if found is None:
                return bool(lifted)
            conn.execute(sa.delete(suppressions).where(suppressions.c.email == key))
            for other in sorted(set(other_lists) - {list_name}):
                # the original time: it is not an unsubscribe made today
                _suppress(conn, [(key, found.reason)], found.source, other, found.created_at)
            return True

    def suppressed_since(self, email: str, list_name: str, moment: dt.datetime) -> bool:
        """Whether the reader unsubscribed from `list_name` (or everything) after `moment`.

        Only suppressions stamped when the person acted count: an unsubscribe link or
        the CLI. A sync or a webhook records later what happened earlier.
        """
        key = email.strip().lower()
        with self.engine.connect() as conn:
            broad = conn.execute(
                sa.select(sa.func.count()).where(
                    suppressions.c.email == key,
                    suppressions.c.created_at > moment,
                    suppressions.c.source.in_(ACTED_NOW),
                )
            ).scalar_one()
            scoped = conn.execute(
                sa.select(sa.func.count()).where(
                    list_suppressions.c.email == key,
                    list_suppressions.c.list_name == list_name,
                    list_suppressions.c.created_at > moment,
                    list_suppressions.c.source.in_(ACTED_NOW),
                )
            ).scalar_one()
        return bool(broad or scoped)

    def has_consent(self, email: str, list_name: str, signed_up_at: dt.datetime) -> bool:
        """Whether this very sign-up was confirmed already (its link followed before)."""
        query = sa.select(sa.func.count()).where(
            consents.c.email == email.strip().lower(),
            consents.c.list_name == list_name,
            consents.c.signed_up_at == signed_up_at,
        )
        with self.engine.connect() as conn:
            return bool(conn.execute(query).scalar_one())

    def suppressed(self, list_name: str | None = None) -> frozenset[str]:
        """Every address suppressed for all lists (and for `list_name`), lower-cased."""
        with self.engine.connect() as conn:
            found = set(conn.execute(sa.select(suppressions.c.email)).scalars())
            if list_name is not None:
                found.update(
                    conn.execute(
                        sa.select(list_suppressions.c.email).where(
                            list_suppressions.c.list_name == list_name
                        )
                    ).scalars()
                )
        return frozenset(found)

    def suppression_reasons(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(suppressions.c.email, suppressions.c.reason)).all())

    # -- sign-ups and mail events (`newsletter serve`) ---------------------------

    def record_consent(
        self,
        *,
        list_name: str,
        email: str,
        signed_up_at: dt.datetime,
        confirmed_at: dt.datetime,
        ip: str | None,
        user_agent: str | None,
        form_version: str,
        wording: str,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(consents).values(
                    list_name=list_name,
                    email=email.strip().lower(),
                    signed_up_at=signed_up_at,
                    confirmed_at=confirmed_at,
                    ip=(ip or "")[:64] or None,
                    user_agent=_printable(user_agent or "")[:512] or None,
                    form_version=form_version,
                    wording=wording,
                )
            )

    def consents(self, email: str) -> list[dict[str, object]]:
        query = (
            sa.select(consents)
            .where(consents.c.email == email.strip().lower())
            .order_by(consents.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def apply_mail_events(self, events: Sequence[MailEvent], source: str = "webhook") -> int:
        """Record events not seen before and their suppressions, in one transaction.

        Either all of a delivery is recorded or none of it, so an acknowledged
        batch is never half applied and a redelivered one changes nothing.
        Returns how many events were new.
        """
        now = utcnow()
        with self._atomic() as conn:
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
        return len(fresh)

    def event_counts(self, issue_id: int) -> dict[str, int]:
        query = (
            sa.select(mail_events.c.event, sa.func.count())
            .where(mail_events.c.issue_id == issue_id)
            .group_by(mail_events.c.event)
        )
        with self.engine.connect() as conn:
            return {event: int(n) for event, n in conn.execute(query)}

    def sent_issues(self, list_names: Sequence[str], limit: int = 100) -> list[IssueRow]:
        """Issues that went out to these lists, newest first (the public archive)."""
        query = (
            sa.select(issues)
            .where(issues.c.status == "sent", issues.c.list_name.in_(list(list_names)))
            .order_by(issues.c.issue_date.desc(), issues.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_issue_row(r) for r in conn.execute(query)]

    def sent_issue(self, list_names: Sequence[str], date: dt.date) -> IssueRow | None:
        """The issue of `date` as the first of these lists got it, if one was sent."""
        query = sa.select(issues).where(
            issues.c.status == "sent",
            issues.c.issue_date == date,
            issues.c.list_name.in_(list(list_names)),
        )
        with self.engine.connect() as conn:
            rows = {row.list_name: _issue_row(row) for row in conn.execute(query)}
        return next((rows[name] for name in list_names if name in rows), None)

    def ping(self) -> None:
        """A round trip to the database, for the health check."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))


def _printable(text: str) -> str:
    """Header text as every database stores it: no NUL, no lone surrogates."""
    return text.replace("\0", "").encode("utf-8", "replace").decode("utf-8")


@dataclass(frozen=True)
class MailEvent:
    """One event reported by the mail service, and the suppression it calls for."""

    event_id: str
    event: str
    email: str
    issue_id: int | None
    occurred_at: dt.datetime | None
    suppress: str | None  # a SUPPRESSION_REASONS value, or None


def _suppress(
    conn: sa.Connection,
    entries: Iterable[tuple[str, str]],
    source: str,
    list_name: str | None,
    now: dt.datetime,
) -> int:
    wanted: dict[str, dict[str, object]] = {}
    for email, reason in entries:
        if reason not in SUPPRESSION_REASONS:
            raise LedgerError(f"unknown suppression reason {reason!r}")
        key = email.strip().lower()
        row = {"email": key, "reason": reason, "source": source, "created_at": now}
        wanted.setdefault(key, row if list_name is None else {**row, "list_name": list_name})
    if list_name is None:
        return len(_insert_missing(conn, suppressions, suppressions.c.email, wanted))
    scope = list_suppressions.c.list_name == list_name
    return len(_insert_missing(conn, list_suppressions, list_suppressions.c.email, wanted, scope))


def _insert_missing(
    conn: sa.Connection,
    table: sa.Table,
    key: sa.Column[str],
    rows: dict[str, dict[str, object]],
    scope: sa.ColumnElement[bool] | None = None,
) -> list[str]:
    """Insert the rows whose key is not there yet; returns the keys inserted.

    Portable "insert or ignore": look first, then insert in a savepoint; if
    another writer got in between, go row by row.
    """
    existing: set[str] = set()
    keys = list(rows)
    for i in range(0, len(keys), 500):
        query = sa.select(key).where(key.in_(keys[i : i + 500]))
        if scope is not None:
            query = query.where(scope)
        existing.update(conn.execute(query).scalars())
    new = [k for k in keys if k not in existing]
    try:
        with conn.begin_nested():
            for i in range(0, len(new), 500):
                conn.execute(sa.insert(table), [rows[k] for k in new[i : i + 500]])
        return new
    except sa.exc.IntegrityError:
        inserted = []
        for k in new:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(table), rows[k])
                inserted.append(k)
            except sa.exc.IntegrityError:
                continue
        return inserted


# Any 64-bit key; every process creating the schema of a PostgreSQL database takes it.
SCHEMA_LOCK_KEY = 0x6E6577736C6574  # "newslet"


def _create_schema(engine: sa.Engine, tables: Sequence[sa.Table] | None = None) -> None:
    """Create the missing tables once, however many processes open a new database at once.

    Two creators would race (the loser's CREATE fails: "already exists", or on
    PostgreSQL a unique violation in its catalogue), so creation holds a lock:
    a transaction-level advisory lock on PostgreSQL, the write lock (BEGIN
    IMMEDIATE) on SQLite. Whoever waited finds the tables there and creates
    nothing. DDL is transactional on both, so the lock covers the whole schema.
    """
    wanted = list(metadata.sorted_tables if tables is None else tables)
    with engine.connect() as conn:
        existing = set(sa.inspect(conn).get_table_names())
    if all(table.name in existing for table in wanted):
        return  # the usual case: no lock taken
    with _schema_lock(engine) as conn:
        for table in wanted:  # in dependency order, each with its indexes
            table.create(conn, checkfirst=True)


@contextlib.contextmanager
def _schema_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that no other schema creator runs alongside."""
    if engine.dialect.name == "postgresql":
        # READ COMMITTED: each statement sees what the previous lock holder committed
        options = {"isolation_level": "READ COMMITTED"}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy_timeout) for the write lock
        yield conn


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    # Switching to WAL needs the file to itself and can answer "database is
    # locked" at once, without waiting, while another connection opens it.
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _safe(exc: Exception, url: str | None = None) -> str:
    """A database error without the URL's password in it."""
    text = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
    # the password in the user part, or as a query parameter (libpq takes `?password=`)
    found = re.findall(r"://[^/@:]*:([^/@]+)@|[?&][a-z]*password=([^&]+)", url or "", re.I)
    for secret in {
        unquoted for pair in found for part in pair if part for unquoted in (part, unquote(part))
    }:
        text = text.replace(secret, "***")
    return text


def _same(column: sa.ColumnElement[str], value: str | None) -> sa.ColumnElement[bool]:
    return column.is_(None) if value is None else column == value


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


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
    owner = issue.claimed_by or ""
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False
    return issue.heartbeat is None or now - issue.heartbeat > stale_after


def pack_recipients(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    return zlib.compress(json.dumps([list(columns), rows], separators=(",", ":")).encode(), 1)


def unpack_recipients(blob: bytes) -> tuple[list[str], list[list[str]]]:
    columns, rows = json.loads(zlib.decompress(blob))
    return columns, rows
