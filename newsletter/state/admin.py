"""The editor's sign-ins to /admin/: sessions and the sign-in forms already used.

Kept in the state database, so that every `serve` worker (and machine) sees the same
sessions: a sign-out or an expiry on one is a sign-out everywhere. Only a hash of each
session cookie and each sign-in nonce is stored: a copy of the database signs nobody in.
"""

from __future__ import annotations

import datetime as dt
import hashlib

import sqlalchemy as sa

from newsletter.state.database import Database, UTCDateTime, metadata

admin_sessions = sa.Table(
    "admin_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # SHA-256 of the cookie, hex
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)

# a sign-in form's nonce, once it has been posted: the same form cannot be posted twice
admin_nonces = sa.Table(
    "admin_nonces",
    metadata,
    sa.Column("nonce_hash", sa.String(64), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class AdminSessionStore(Database):
    """Sessions of the editor's report pages, and the sign-in nonces already used."""

    def create_admin_session(self, token: str, now: dt.datetime, expires_at: dt.datetime) -> None:
        """Record a new session (its cookie's hash); expired ones go at the same time."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(admin_sessions).where(admin_sessions.c.expires_at <= now))
            conn.execute(
                sa.insert(admin_sessions).values(
                    token_hash=_digest(token), created_at=now, expires_at=expires_at
                )
            )

    def admin_session_valid(self, token: str, now: dt.datetime) -> bool:
        """Whether `token` is the cookie of a session that is neither revoked nor expired."""
        query = sa.select(admin_sessions.c.expires_at).where(
            admin_sessions.c.token_hash == _digest(token)
        )
        with self.engine.connect() as conn:
            expires_at = conn.execute(query).scalar_one_or_none()
        return expires_at is not None and now < expires_at

    def revoke_admin_session(self, token: str) -> bool:
        """End a session (sign-out); False if there was none."""
        with self.engine.begin() as conn:
            gone = conn.execute(
                sa.delete(admin_sessions).where(admin_sessions.c.token_hash == _digest(token))
            ).rowcount
        return bool(gone)

    def prune_admin_sessions(self, now: dt.datetime) -> int:
        """Delete expired sessions and expired nonces; returns how many sessions went."""
        with self.engine.begin() as conn:
            conn.execute(sa.delete(admin_nonces).where(admin_nonces.c.expires_at <= now))
            return conn.execute(
                sa.delete(admin_sessions).where(admin_sessions.c.expires_at <= now)
            ).rowcount

    def use_admin_nonce(self, nonce: str, now: dt.datetime, expires_at: dt.datetime) -> bool:
        """Mark a sign-in form's nonce used; False if it was used before (a replay).

        Kept until the nonce itself would have expired, after which its form is refused
        for its age anyway. One insert decides, so two workers cannot both accept it.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.delete(admin_nonces).where(admin_nonces.c.expires_at <= now))
                conn.execute(
                    sa.insert(admin_nonces).values(nonce_hash=_digest(nonce), expires_at=expires_at)
                )
        except sa.exc.IntegrityError:
            return False
        return True
