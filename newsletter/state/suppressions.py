"""Who may be emailed: suppressions (for every list or one) and sign-up consents.

A suppression outranks every list file and a re-import never lifts it; only
a resubscribe with consent does. A consent record is the proof of a
confirmed sign-up (double opt-in).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import sqlalchemy as sa

from newsletter.errors import LedgerError
from newsletter.state.analytics import SIGNUP, UNSUBSCRIBE_LINK, add_list_days
from newsletter.state.database import (
    Database,
    UTCDateTime,
    _insert_missing,
    lock_for_transaction,
    metadata,
    utcnow,
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

SUPPRESSION_REASONS = ("unsubscribed", "bounced", "spam", "invalid", "manual")
# sources whose suppressions are recorded at the moment the person acted
ACTED_NOW = ("link", "cli")


class SuppressionStore(Database):
    """Suppressions and consents: what list editing, sign-up and unsubscribing need."""

    def suppress(
        self,
        entries: Iterable[tuple[str, str]],
        source: str,
        list_name: str | None = None,
        *,
        loss: bool = False,
    ) -> int:
        """Record (address, reason) pairs, for every list or only `list_name`.

        An address already suppressed keeps its first reason; returns how many are new.
        `loss`: readers of `list_name` who left it, counted in its growth for the day.
        """
        now = utcnow()
        with self._atomic() as conn:
            new = _suppress(conn, entries, source, list_name, now)
            if loss and list_name is not None and new:
                # a reader who left by the link in an email: the list's loss that day
                add_list_days(conn, {(list_name, self.local_day(now), UNSUBSCRIBE_LINK): new})
            return new

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
        with self.engine.connect() as conn:
            return _consented(conn, email.strip().lower(), list_name, signed_up_at)

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
    ) -> bool:
        """Record a confirmed sign-up, and count it in the list's growth, once: a link
        followed twice at once (a mail scanner and the reader) records it once. Returns
        whether this call recorded it."""
        key = email.strip().lower()
        with self._atomic() as conn:  # SQLite: the write lock; PostgreSQL: a lock on the key
            lock_for_transaction(conn, "consent", list_name, key)
            if _consented(conn, key, list_name, signed_up_at):
                return False
            add_list_days(conn, {(list_name, self.local_day(confirmed_at), SIGNUP): 1})
            conn.execute(
                sa.insert(consents).values(
                    list_name=list_name,
                    email=key,
                    signed_up_at=signed_up_at,
                    confirmed_at=confirmed_at,
                    ip=(ip or "")[:64] or None,
                    user_agent=_printable(user_agent or "")[:512] or None,
                    form_version=form_version,
                    wording=wording,
                )
            )
        return True

    def consents(self, email: str) -> list[dict[str, object]]:
        query = (
            sa.select(consents)
            .where(consents.c.email == email.strip().lower())
            .order_by(consents.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _printable(text: str) -> str:
    """Header text as every database stores it: no NUL, no lone surrogates."""
    return text.replace("\0", "").encode("utf-8", "replace").decode("utf-8")


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


def _consented(conn: sa.Connection, key: str, list_name: str, signed_up_at: dt.datetime) -> bool:
    """Whether this sign-up (address, list, moment asked) has its consent recorded."""
    query = sa.select(sa.func.count()).where(
        consents.c.email == key,
        consents.c.list_name == list_name,
        consents.c.signed_up_at == signed_up_at,
    )
    return bool(conn.execute(query).scalar_one())
