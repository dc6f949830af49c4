"""Batches and the send state machine: pending -> submitting -> submitted | failed.

A batch's recipients are stored with it (packed), so a resumed send sends
exactly what was planned. A batch is taken (`submitting`) before it is handed
over; how much of it a crash leaves in doubt depends on the transport, and
`batch_progress` records how far one sent a message at a time got.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from newsletter.state.database import Database, UTCDateTime, metadata, utcnow

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
# an issue's batches by state, the pending ones in order: `take_next_batch` reads the
# first without sorting them all (ten thousand at ten million readers: 0.6 ms a take, not
# 0.13). Added to databases made before it when they are opened (`_create_schema`)
sa.Index("ix_batches_pending_order", batches.c.issue_id, batches.c.status, batches.c.seq)

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

# Batches of readers who get the issue later, at their own morning (a list's `timezone`
# column, on a transport that cannot hold mail until a time: SMTP, the outbox); a batch
# without a row is due at once. `zones.py` groups the readers, the scheduler comes back.
batch_times = sa.Table(
    "batch_times",
    metadata,
    sa.Column("batch_id", sa.Integer, sa.ForeignKey("batches.id"), primary_key=True),
    sa.Column("not_before", UTCDateTime(), nullable=False),
)

# batch states that need nothing more: accepted by the service, or left in doubt and not
# resent on the editor's word (--skip-ambiguous)
BATCH_DONE = ("submitted", "skipped")


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
# The statements a send runs per batch (and per message, for SMTP), written for the
# driver: through SQLAlchemy's compiler they cost ten times as much, a thousand times
# per million readers. `?` placeholders; `Database._driver` adapts them.
_TAKE_NEXT = """UPDATE batches SET status = 'submitting', attempts = attempts + 1, updated_at = ?
WHERE status = 'pending' AND id = (
    SELECT id FROM batches WHERE issue_id = ? AND status = 'pending' ORDER BY seq LIMIT 1
    {skip_locked}
) RETURNING id, seq, status, size, message_id, error, attempts, recipients"""
_SUBMITTED = (
    "UPDATE batches SET status = 'submitted', message_id = ?, error = ?, updated_at = ? "
    "WHERE id = ?"
)
_ADVANCE = "UPDATE batch_progress SET done = ? WHERE batch_id = ?"


class BatchStore(Database):
    """The batches of every issue and their state machine: what delivering needs, and what
    `status` and a rerun read of who was sent, who is owed and who is in doubt."""

    def batches(
        self,
        issue_id: int,
        statuses: Sequence[str] | None = None,
        due_by: dt.datetime | None = None,
    ) -> list[BatchRow]:
        """The issue's batches in these states; with `due_by`, only those due by then."""
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
        if due_by is not None:
            later = sa.select(batch_times.c.batch_id).where(batch_times.c.not_before > due_by)
            query = query.where(batches.c.id.not_in(later))
        with self.engine.connect() as conn:
            return [BatchRow(*row) for row in conn.execute(query)]

    def later_batches(self, issue_id: int, after: dt.datetime) -> tuple[int, dt.datetime | None]:
        """Readers of pending batches not due until after `after`, and the first time due."""
        query = (
            sa.select(
                sa.func.coalesce(sa.func.sum(batches.c.size), 0),
                sa.func.min(batch_times.c.not_before),
            )
            .join(batch_times, batch_times.c.batch_id == batches.c.id)
            .where(
                batches.c.issue_id == issue_id,
                batches.c.status == "pending",
                batch_times.c.not_before > after,
            )
        )
        with self.engine.connect() as conn:
            readers, first = conn.execute(query).one()
        return int(readers), first

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

    def take_next_batch(self, issue_id: int) -> tuple[BatchRow, bytes] | None:
        """The issue's first pending batch, now `submitting`, and its recipients; None when
        none is left. Several senders (processes, or machines sharing one PostgreSQL) call
        this side by side and each batch goes to one of them: PostgreSQL skips the rows
        another sender has locked, SQLite runs one writer at a time."""
        with self.engine.begin() as conn:
            row = self._driver(conn, _TAKE_NEXT, (self._now(conn), issue_id)).fetchone()
        if row is None:
            return None
        return BatchRow(*row[:-1]), bytes(row[-1])

    def requeue(self, issue_id: int, statuses: Sequence[str]) -> int:
        """Batches in these states become pending again: owed, for `take_next_batch`."""
        with self.engine.begin() as conn:
            return conn.execute(
                sa.update(batches)
                .where(batches.c.issue_id == issue_id, batches.c.status.in_(statuses))
                .values(status="pending", updated_at=utcnow())
            ).rowcount

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
            return bool(self._driver(conn, _ADVANCE, (done, batch_id)).rowcount)

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

    def plan_values(self, issue_id: int, column: str) -> set[str]:
        """The distinct values of one stored column over the issue's batches (the readers'
        time zones, say); empty if the plan has no such column."""
        query = sa.select(batches.c.recipients).where(batches.c.issue_id == issue_id)
        found: set[str] = set()
        with self.engine.connect() as conn:
            for blob in conn.execute(query).scalars():
                columns, rows = unpack_recipients(blob)
                if column not in columns:
                    return found
                index = columns.index(column)
                found.update(row[index] for row in rows)
        return found

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
        with self.engine.begin() as conn:
            now = self._now(conn)
            self._driver(
                conn, _SUBMITTED, [(mid, note, now, batch) for batch, mid, note in accepted]
            )

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


def pack_recipients(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    """A batch's recipients as stored: JSON `[columns, rows]`, compressed (orjson: a
    thousand batches are packed per million readers, and unpacked again to be sent)."""
    return zlib.compress(orjson.dumps([list(columns), list(rows)]), 1)


def unpack_recipients(blob: bytes) -> tuple[list[str], list[list[str]]]:
    columns, rows = orjson.loads(zlib.decompress(blob))
    return columns, rows
