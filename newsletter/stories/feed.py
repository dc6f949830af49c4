"""Stories from an RSS 2.0 or Atom feed, fetched over HTTP."""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import logging
import time
from typing import Any

import feedparser
import httpx

from newsletter import __version__
from newsletter.errors import SourceError
from newsletter.models import SourceProblem, Story
from newsletter.stories.base import SourceResult
from newsletter.stories.cache import CachedFeed, FeedCache
from newsletter.stories.sanitize import clean_html, plain_text

log = logging.getLogger(__name__)

TOTAL_TIME_FACTOR = 3  # a whole download may take this many times the per-read timeout
FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, */*;q=0.5"
USER_AGENT = f"newsletter/{__version__} (+https://pypi.org/project/newsletter/)"


class FeedSource:
    """One feed URL; conditional GET with the remembered ETag and Last-Modified."""

    def __init__(
        self,
        name: str,
        url: str,
        client: httpx.Client,
        cache: FeedCache,
        *,
        timeout: float = 10.0,
        max_bytes: int = 5_000_000,
    ) -> None:
        self.name = name
        self.url = url
        self.client = client
        self.cache = cache
        self.timeout = timeout
        self.max_bytes = max_bytes

    def fetch(self) -> SourceResult:
        feed = self.download()
        parsed = feedparser.parse(
            feed.body,
            # relative links resolve against where the feed really came from
            response_headers={
                "content-type": feed.content_type,
                "content-location": feed.final_url or self.url,
            },
            sanitize_html=False,  # nh3 does it, with the email allowlist
        )
        if (parsed.bozo and not parsed.entries) or not parsed.get("version"):
            # version is "" or missing for well-formed XML that is no feed (an XHTML page)
            # and for an empty body; neither sets bozo.
            reason = parsed.get("bozo_exception") or "no RSS or Atom root element"
            raise SourceError(f"not a valid RSS or Atom feed: {reason}")
        result = SourceResult()
        undated = 0
        for entry in parsed.entries:
            story = self._story(entry)
            if story is None:
                undated += 1
            else:
                result.stories.append(story)
        if undated:
            result.problems.append(
                SourceProblem(self.name, f"{undated} entries without a date were skipped")
            )
        return result

    def download(self) -> CachedFeed:
        cached = self.cache.load(self.url)
        headers = {"User-Agent": USER_AGENT, "Accept": FEED_ACCEPT}
        if cached is not None:
            if cached.etag:
                headers["If-None-Match"] = cached.etag
            if cached.last_modified:
                headers["If-Modified-Since"] = cached.last_modified
        try:
            with self.client.stream(
                "GET", self.url, headers=headers, timeout=self.timeout, follow_redirects=True
            ) as response:
                if response.status_code == 304:
                    if cached is None:  # we sent no conditional headers: the server is wrong
                        raise SourceError(
                            f"HTTP 304 Not Modified from {self.url}, but no cached copy to reuse"
                        )
                    log.debug("feed %s not modified", self.url)
                    return cached
                if response.status_code >= 400:
                    raise SourceError(
                        f"HTTP {response.status_code} {response.reason_phrase} from {self.url}"
                    )
                body = bytearray()
                # httpx's timeout is per read; a server trickling bytes must not hold us
                deadline = time.monotonic() + TOTAL_TIME_FACTOR * self.timeout
                for chunk in response.iter_bytes():
                    body += chunk
                    if time.monotonic() > deadline:
                        raise SourceError(
                            f"timed out: still downloading after "
                            f"{TOTAL_TIME_FACTOR * self.timeout:g}s: {self.url}"
                        )
                    if len(body) > self.max_bytes:
                        raise SourceError(
                            f"feed is larger than max_bytes ({self.max_bytes} bytes): {self.url}"
                        )
        except httpx.TimeoutException:
            raise SourceError(f"timed out after {self.timeout:g}s: {self.url}") from None
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot fetch {self.url}: {exc}") from None
        fresh = CachedFeed(
            body=bytes(body),
            final_url=str(response.url),
            content_type=response.headers.get("content-type", ""),
            etag=response.headers.get("etag"),
            last_modified=response.headers.get("last-modified"),
        )
        if fresh.etag or fresh.last_modified:
            self.cache.save(self.url, fresh)
        return fresh

    def _story(self, entry: Any) -> Story | None:
        moment = entry.get("published_parsed") or entry.get("updated_parsed")
        if moment is None:
            return None
        published = dt.datetime.fromtimestamp(calendar.timegm(moment), tz=dt.UTC)
        title = plain_text(entry.get("title", "")) or "(untitled)"
        link = entry.get("link") or None
        if link and not link.startswith(("http://", "https://")):
            link = None
        contents = entry.get("content") or []
        summary_html = entry.get("summary", "")
        body_html = clean_html(contents[0].get("value", "") if contents else summary_html)
        summary = plain_text(summary_html) if contents and summary_html else None
        story_id = entry.get("id") or link or _digest(self.url, title, published)
        # the name alone: RSS <author> is "email (Name)", Atom's becomes "Name (email)"
        author = entry.get("author_detail", {}).get("name") or entry.get("author", "")
        return Story(
            id=story_id,
            title=title,
            published=published,
            source=self.name,
            url=link,
            summary=summary or None,
            body_html=body_html or None,
            image=_image(entry),
            image_alt=title,
            author=plain_text(author) or None,
            tags=tuple(t.get("term", "") for t in entry.get("tags", []) if t.get("term")),
        )


def _image(entry: Any) -> str | None:
    candidates = [m.get("url") for m in entry.get("media_thumbnail", [])]
    candidates += [
        m.get("url")
        for m in entry.get("media_content", [])
        if m.get("medium") == "image" or str(m.get("type", "")).startswith("image/")
    ]
    candidates += [
        e.get("href")
        for e in entry.get("enclosures", [])
        if str(e.get("type", "")).startswith("image/")
    ]
    for url in candidates:
        if url and url.startswith(("http://", "https://")):
            return url
    return None


def _digest(*parts: object) -> str:
    return "feed:" + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]
