"""The nouns of the project: stories, issues, rendered emails, subscribers.

See CONTEXT.md for what each word means; these are the shapes that cross
module boundaries.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict


class Story(BaseModel):
    """One item of the day's news, from any source, already sanitised."""

    model_config = ConfigDict(frozen=True)

    id: str
    title: str
    published: dt.datetime
    source: str
    url: str | None = None
    summary: str | None = None
    body_html: str | None = None
    image: str | None = None
    image_alt: str = ""
    author: str | None = None
    tags: tuple[str, ...] = ()
    lead: bool = False  # the editor's pick to open the issue (front matter `lead: true`)

    @property
    def keys(self) -> frozenset[str]:
        """Every identity of the story: the same story may arrive twice by id or by URL."""
        keys = {self.id}
        if self.url:
            keys.add(normalise_url(self.url))
        return frozenset(keys)


_TRACKING_PARAMS = ("utm_", "fbclid", "gclid", "mc_cid", "mc_eid")


def normalise_url(url: str) -> str:
    """A URL's identity for de-duplication: no fragment, no tracking parameters."""
    parts = urlsplit(url.strip())
    query = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if not k.lower().startswith(_TRACKING_PARAMS)
    ]
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, urlencode(query), ""))


def local_time_on(date: dt.date, at: dt.time, tz: dt.tzinfo) -> dt.datetime:
    """`at` on `date` in `tz`; a time the clocks skip (spring forward) moves on by the gap,
    and a time that happens twice (fall back) is its first occurrence."""
    local = dt.datetime.combine(date, at, tzinfo=tz)
    return local.astimezone(dt.UTC).astimezone(tz)


@dataclass(frozen=True)
class Window:
    """The stretch of time an issue covers: (start, end]; start None means no lower bound."""

    start: dt.datetime | None
    end: dt.datetime

    def __contains__(self, moment: dt.datetime) -> bool:
        return (self.start is None or moment > self.start) and moment <= self.end


@dataclass(frozen=True)
class SourceProblem:
    """A source that failed or was partly unreadable; the issue is built without it."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


@dataclass(frozen=True)
class Issue:
    """One day's edition: the stories chosen for a date, before rendering."""

    date: dt.date
    window: Window
    stories: tuple[Story, ...]
    problems: tuple[SourceProblem, ...] = ()
    drafts: tuple[Story, ...] = ()  # dated in the window, left out as drafts

    @property
    def is_empty(self) -> bool:
        return not self.stories


@dataclass(frozen=True)
class RenderedEmail:
    """The issue rendered once, with per-recipient values left as tokens."""

    subject: str
    html: str
    text: str
    preheader: str
    tokens: frozenset[str] = field(default_factory=frozenset)
    warnings: tuple[str, ...] = ()

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))


class Subscriber(NamedTuple):
    """One row of a list file. `fields` holds the extra columns, by token-safe name.

    A tuple, not a dataclass: a send reads a million of them.
    """

    email: str
    name: str = ""
    first_name: str = ""
    fields: Mapping[str, str] = MappingProxyType({})

    @property
    def key(self) -> str:
        """Addresses compare case-insensitively: one person, one key."""
        return self.email.lower()

    def values(self) -> dict[str, str]:
        """The token values this subscriber contributes (the send adds unsubscribe_url)."""
        first = self.first_name or (self.name.split()[0] if self.name.strip() else "")
        return {**self.fields, "email": self.email, "name": self.name, "first_name": first}


# -- a send: what was asked, what a person confirms, what happened ----------------------


@dataclass(frozen=True)
class SendRequest:
    """What `newsletter send` was asked to do."""

    list_name: str | None = None
    date: dt.date | None = None
    transport: str | None = None
    to: tuple[str, ...] = ()
    dry_run: bool = False
    allow_empty: bool = False
    sandbox: bool = False
    resend_ambiguous: bool = False
    skip_ambiguous: bool = False
    skip_invalid: bool = False
    join: bool = False  # help another process that is sending the issue (`joining.py`)
    # SendGrid holds the issue until then, and it can be cancelled until ten minutes
    # before (`scheduling.py`); None: it goes at once
    send_at: dt.datetime | None = None
    replace: bool = False  # send a corrected issue for a date whose issue was cancelled
    # SMTP, outbox: the scheduled send time; readers with a `timezone` of their own are
    # planned to get the issue at that time of day on their clock, in later runs
    reader_mornings: dt.datetime | None = None


@dataclass(frozen=True)
class SendPreview:
    """Shown before a bulk send asks for confirmation."""

    list_name: str
    date: dt.date
    subject: str
    recipients: int
    transport: str
    resuming: bool


@dataclass
class SendReport:
    # sent | already_sent | busy | empty | dry_run | cancelled | failed | stopped | test_sent
    # | helped (batches taken beside another process that claimed the issue)
    # | was_cancelled (the editor cancelled the date's issue: `send --replace` sends anew)
    # | partly_sent (everyone due so far; readers in other zones wait for their morning)
    outcome: str
    list_name: str
    date: dt.date
    subject: str = ""
    transport: str = ""
    recipients: int = 0
    batches: int = 0
    submitted: int = 0
    suppressed: int = 0
    duplicates: int = 0
    ambiguous: list[int] = field(default_factory=list)  # batches left in doubt
    in_doubt: list[str] = field(default_factory=list)  # who they were for
    skipped: list[str] = field(default_factory=list)  # in doubt, not resent (--skip-ambiguous)
    delivered: int = 0  # recipients in submitted batches, over every run of the issue
    errors: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    outbox: Path | None = None
    detail: str = ""
    stories: int | None = None
    permanent: bool = False  # failed in a way a retry cannot fix (a refused request)
    send_at: dt.datetime | None = None  # SendGrid holds it until then (a scheduled send)
    cancel_deadline: dt.datetime | None = None
    schedule_note: str = ""  # an attempt replaced, or why it could not be
    timezone: str = "UTC"  # the newsletter's, for the moments shown
    waiting: int = 0  # readers who get it later, at their own morning (SMTP, outbox)
    next_due: dt.datetime | None = None  # when the first of them is due

    @property
    def ok(self) -> bool:
        return self.outcome in {
            "sent",
            "already_sent",
            "empty",
            "dry_run",
            "cancelled",
            "test_sent",
            "stopped",
            "helped",
            "partly_sent",
        }


TEST_LIST = "test"
TEST_PREFIX = "[TEST] "
