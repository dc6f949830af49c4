"""The SQL state of a newsletter (SQLAlchemy Core): one database, any SQLAlchemy URL.

A SQLite file next to the config by default; PostgreSQL when several machines
share the work. The schema is created on first use.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from newsletter.errors import LedgerError
from newsletter.stories.feed import CachedFeed

metadata = sa.MetaData()

feed_cache = sa.Table(
    "feed_cache",
    metadata,
    sa.Column("url", sa.String(2048), primary_key=True),
    sa.Column("etag", sa.String(512)),
    sa.Column("last_modified", sa.String(128)),
    sa.Column("content_type", sa.String(256), nullable=False, default=""),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ledger:
    """All reads and writes of the state database go through here."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = sa.create_engine(url, future=True)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            metadata.create_all(self.engine)
        except SQLAlchemyError as exc:
            raise LedgerError(f"cannot open the state database: {_safe(exc)}") from None

    def close(self) -> None:
        self.engine.dispose()

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


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _safe(exc: Exception) -> str:
    """A database error without the URL's password in it."""
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
    return text
