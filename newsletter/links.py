"""The links of a sent issue, each with the story it belongs to, and a clicked URL matched
back to one of them.

The stored email is the one truth about what readers could click: a story is the
element with `id="story-N"` (the built-in theme marks each so; the contents list
links to it), and every link inside it is that story's. Links outside a story are
grouped by what they do (share, web version, unsubscribe) so that the report shows
which stories were read apart from the furniture around them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

STORY = "story"
SHARE = "share"
ARCHIVE = "archive"
UNSUBSCRIBE = "unsubscribe"
OTHER = "other"
KINDS = (STORY, SHARE, ARCHIVE, UNSUBSCRIBE, OTHER)

_STORY_ID = re.compile(r"^story-(\d{1,4})$")
# a personalisation token (ours, or a SendGrid substitution tag such as its unsubscribe link)
_TOKEN = re.compile(r"%%([a-z_]+)%%|<%\s*([a-z_]+)\s*%>")
# query parameters that say where a click came from, not where it goes
_TRACKING = re.compile(
    r"^(utm_[a-z_]+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|_hsenc|_hsmi|mkt_tok|ref_src)$", re.I
)
_SHARE_HOSTS = (
    "x.com/intent",
    "twitter.com/intent",
    "twitter.com/share",
    "www.facebook.com/sharer",
    "facebook.com/sharer",
    "www.linkedin.com/sharing",
    "linkedin.com/sharing",
    "bsky.app/intent",
    "wa.me/",
    "api.whatsapp.com/send",
    "t.me/share",
    "reddit.com/submit",
    "www.reddit.com/submit",
    "service.weibo.com/share",
)
MAX_URL = 2048


@dataclass(frozen=True)
class IssueLink:
    """One distinct link of an issue: what it is, and the story it sits in (if any)."""

    number: int  # 1, 2, ... in the order of the email
    kind: str  # one of KINDS
    url: str  # normalised: no tracking parameters, no fragment
    position: int | None = None  # the story's place in the issue (1 = first)
    title: str | None = None  # the story's headline


def normalise(url: str) -> str:
    """The URL as it identifies a page: tracking parameters and the fragment dropped,
    the scheme and host lower-cased, at most MAX_URL characters."""
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url[:MAX_URL]
    if parts.scheme.lower() not in ("http", "https"):
        return url[:MAX_URL]
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k)
    ]
    path = parts.path or "/"
    clean = urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, urlencode(query), ""))
    return clean[:MAX_URL]


def _token(href: str) -> str | None:
    found = _TOKEN.search(href)
    return None if found is None else found.group(1) or found.group(2)


def _kind_of(href: str) -> str:
    """What a link does by its address; inside a story, only a share or an unsubscribe
    link is told apart from a read of the story."""
    token = _token(href)
    if token:
        return UNSUBSCRIBE if "unsubscribe" in token else OTHER
    lowered = href.lower()
    if lowered.startswith("mailto:"):
        return SHARE  # the "forward it by email" link
    without_scheme = lowered.split("://", 1)[-1]
    if without_scheme.startswith(_SHARE_HOSTS):
        return SHARE
    if "/archive" in urlsplit(lowered).path:
        return ARCHIVE
    return OTHER


def issue_links(html: str) -> list[IssueLink]:
    """Every distinct link of the email, numbered in reading order.

    A URL found in a story belongs to the first story it appears in, even if the
    same URL also appears outside one, unless it shares the story or unsubscribes
    (a theme can put share links under each story); in-page anchors (the contents
    list) are not links a reader leaves by.
    """
    if not html.strip():
        return []
    import lxml.html  # only the webhook's first click on an issue parses its email

    root = lxml.html.document_fromstring(html)
    found: dict[str, IssueLink] = {}
    for anchor in root.iter("a"):
        href = (anchor.get("href") or "").strip()
        if not href or href.startswith("#"):
            continue
        story = _story_of(anchor)
        key = _key(href)
        kind = _kind_of(href)
        if story is not None and kind not in (SHARE, UNSUBSCRIBE):
            position, title = story
            known = found.get(key)
            if known is None or known.kind != STORY:
                number = known.number if known else len(found) + 1
                found[key] = IssueLink(number, STORY, key, position, title)
        elif key not in found:
            # a story's own share links are shares (of that story), not reads of it
            position, title = story if story is not None else (None, None)
            found[key] = IssueLink(len(found) + 1, kind, key, position, title)
    return sorted(found.values(), key=lambda link: link.number)


def _key(href: str) -> str:
    token = _token(href)
    if token:
        return f"%%{token}%%"
    return normalise(href)


def without_query(url: str) -> str:
    """A URL the issue did not carry, as it is kept: its page only, since its query may
    name the reader who clicked it (a token of someone else's link, a forwarded email)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url[:MAX_URL]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))[:MAX_URL]


def _story_of(anchor: Any) -> tuple[int, str | None] | None:
    for element in anchor.iterancestors():
        match = _STORY_ID.match(element.get("id") or "")
        if match:
            headline = next(element.iter("h1", "h2", "h3"), None)
            title = " ".join(headline.text_content().split()) if headline is not None else None
            return int(match.group(1)), title
    return None


class LinkMatcher:
    """A clicked URL (as the mail service reports it) to the issue's link it came from."""

    def __init__(self, links: list[IssueLink]) -> None:
        self.links = links
        self._by_url = {link.url: link for link in links}
        self._unsubscribe = next((link for link in links if link.kind == UNSUBSCRIBE), None)
        # a share link's page (its text and URL parameters vary with how it was shared)
        self._share_pages: dict[tuple[str, str], IssueLink] = {}
        for link in links:
            if link.kind == SHARE:
                self._share_pages.setdefault(_page(link.url), link)

    def match(self, url: str) -> IssueLink | None:
        """The link clicked, or None for a URL the issue did not carry as such."""
        key = normalise(url)
        found = self._by_url.get(key)
        if found is not None:
            return found
        if self._unsubscribe is not None and "/unsubscribe" in urlsplit(key).path:
            return self._unsubscribe  # a reader's own unsubscribe link, token filled in
        return self._share_pages.get(_page(key))


def _page(url: str) -> tuple[str, str]:
    """Scheme-less host and path: the page a share link opens, whatever it carries."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ("", url)
    return (parts.netloc.lower(), parts.path)
