"""The feed cache: each feed's last good answer, so a conditional GET can be served
from it across runs (a `FeedCache` for `FeedSource`)."""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.state.database import Database, UTCDateTime, metadata, utcnow
from newsletter.stories.cache import CachedFeed

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


class FeedCacheStore(Database):
    """The feed cache table: what `FeedSource` needs across runs, and nothing else."""

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
