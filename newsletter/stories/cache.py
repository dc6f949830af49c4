"""What a feed source remembers between runs, kept free of HTTP and XML imports
(the ledger stores it, `newsletter/state/feeds.py`, and every command opens the ledger)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class CachedFeed:
    """The last good answer for a feed, so a 304 Not Modified can be served from it."""

    body: bytes
    content_type: str = ""
    etag: str | None = None
    last_modified: str | None = None
    final_url: str | None = None  # after redirects; not stored in the cache


class FeedCache(Protocol):
    def load(self, url: str) -> CachedFeed | None: ...

    def save(self, url: str, feed: CachedFeed) -> None: ...


class MemoryFeedCache:
    """A FeedCache for one process (preview reloads); the ledger keeps one across runs."""

    def __init__(self) -> None:
        self._feeds: dict[str, CachedFeed] = {}

    def load(self, url: str) -> CachedFeed | None:
        return self._feeds.get(url)

    def save(self, url: str, feed: CachedFeed) -> None:
        self._feeds[url] = feed
