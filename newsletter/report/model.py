"""The report's numbers: per issue, per link and per day, from the counts the state keeps.

Rates are of delivered messages (opens and clicks) or of submitted ones (delivery,
bounces), as mail services quote them; opens marked as machine opens (Apple Mail
Privacy Protection loads every image) are counted apart and left out of the open
rate. An issue sent by SMTP or to the outbox has no events: its rates are None and
the report says so.
"""

from __future__ import annotations

import bisect
import datetime as dt
import statistics
from dataclasses import dataclass, field, replace

from newsletter.links import KINDS, STORY
from newsletter.state.analytics import (
    BOUNCE,
    COMPLAINT,
    SIGNUP,
    UNSUBSCRIBE_EVENT,
    UNSUBSCRIBE_LINK,
)
from newsletter.state.analytics_store import AnalyticsStore, IssueFacts, LinkCount

EVENT_TRANSPORTS = ("sendgrid",)  # transports whose mail service reports events


@dataclass(frozen=True)
class ReportQuery:
    list_name: str | None = None
    since: dt.date | None = None
    last_issues: int | None = None  # only each list's latest issues: a trend over the last N
    detail_issues: int = 10  # the most recent issues shown with their clicks per story
    per_recipient: bool = False
    today: dt.date = field(default_factory=lambda: dt.datetime.now(dt.UTC).date())


@dataclass(frozen=True)
class LinkGroup:
    """Clicks outside the stories, by what the links do."""

    kind: str
    readers: int
    clicks: int
    links: list[LinkCount]


@dataclass(frozen=True)
class StoryClicks:
    position: int
    title: str
    readers: int  # readers who clicked any link of the story (at most the sum of its links)
    clicks: int
    links: list[LinkCount]
    clickers: list[str]  # addresses, only with per-recipient analytics


@dataclass(frozen=True)
class IssueLine:
    facts: IssueFacts
    has_events: bool
    delivered: int
    deferred: int
    bounced_hard: int
    bounced_soft: int
    dropped: int
    spam_reports: int
    unsubscribes: int  # by the mail service's events and by the link, until the next issue
    opens: int  # unique human opens
    machine_opens: int  # unique readers whose mail client opened it for them
    opens_total: int
    clickers: int  # unique readers who clicked
    clicks_total: int
    open_rate: float | None
    click_rate: float | None
    delivery_rate: float | None
    bounce_rate: float | None
    open_vs_median: float | None = None
    click_vs_median: float | None = None
    stories: list[StoryClicks] = field(default_factory=list)
    groups: list[LinkGroup] = field(default_factory=list)

    @property
    def date(self) -> dt.date:
        return self.facts.issue_date


@dataclass(frozen=True)
class DayLine:
    day: dt.date
    signups: int
    unsubscribes: int
    bounces: int
    complaints: int

    @property
    def net(self) -> int:
        return self.signups - self.unsubscribes - self.bounces - self.complaints


@dataclass(frozen=True)
class ListReport:
    name: str
    issues: list[IssueLine]  # oldest first
    days: list[DayLine]
    median_open_rate: float | None
    median_click_rate: float | None
    detail: list[IssueLine]  # newest first, with clicks per story

    @property
    def latest(self) -> IssueLine | None:
        return self.issues[-1] if self.issues else None

    @property
    def has_events(self) -> bool:
        return any(line.has_events for line in self.issues)


@dataclass(frozen=True)
class Report:
    query: ReportQuery
    generated_at: dt.datetime
    lists: list[ListReport]


def build_report(
    store: AnalyticsStore, query: ReportQuery, now: dt.datetime | None = None
) -> Report:
    """Everything the report shows, in a handful of queries over the kept counts; `now`
    (the app's clock) is when it says it was made."""
    facts = store.report_issues(query.list_name, query.since)
    stats = store.issue_stats(f.id for f in facts)
    days = store.list_days(query.list_name, query.since)
    names = sorted({f.list_name for f in facts} | set(days))
    lists = []
    for name in names:
        mine = [f for f in facts if f.list_name == name]
        growth = days.get(name, {})
        if query.last_issues is not None and len(mine) > query.last_issues:
            mine = mine[-query.last_issues :]
            growth = {day: n for day, n in growth.items() if day >= mine[0].issue_date}
        lists.append(_list_report(store, query, name, mine, stats, growth))
    return Report(query=query, generated_at=now or dt.datetime.now(dt.UTC), lists=lists)


def _list_report(
    store: AnalyticsStore,
    query: ReportQuery,
    name: str,
    facts: list[IssueFacts],
    stats: dict[int, dict[str, tuple[int, int]]],
    days: dict[dt.date, dict[str, int]],
) -> ListReport:
    # unsubscribes by the link, day by day: each counts for the issue it follows
    left = sorted((day, counts.get(UNSUBSCRIBE_LINK, 0)) for day, counts in days.items())
    starts = [f.issue_date for f in facts]
    by_issue = [0] * len(facts)
    for day, n in left:
        i = bisect.bisect_right(starts, day) - 1
        if i >= 0 and day <= query.today:
            by_issue[i] += n
    lines = []
    for i, f in enumerate(facts):
        by_link = by_issue[i]
        lines.append(_issue_line(f, stats.get(f.id, {}), by_link))
    opens = [line.open_rate for line in lines if line.open_rate is not None]
    clicks = [line.click_rate for line in lines if line.click_rate is not None]
    median_open = statistics.median(opens) if opens else None
    median_click = statistics.median(clicks) if clicks else None
    lines = [_against(line, median_open, median_click) for line in lines]

    recent = list(reversed(lines))[: query.detail_issues]
    links = store.link_counts(line.facts.id for line in recent if line.has_events)
    clickers = (
        store.readers_of_links(line.facts.id for line in recent) if query.per_recipient else {}
    )
    detail = [_with_links(line, stats.get(line.facts.id, {}), links, clickers) for line in recent]

    day_lines = [
        DayLine(
            day=day,
            signups=counts.get(SIGNUP, 0),
            unsubscribes=counts.get(UNSUBSCRIBE_LINK, 0) + counts.get(UNSUBSCRIBE_EVENT, 0),
            bounces=counts.get(BOUNCE, 0),
            complaints=counts.get(COMPLAINT, 0),
        )
        for day, counts in sorted(days.items())
    ]
    return ListReport(name, lines, day_lines, median_open, median_click, detail)


def _issue_line(f: IssueFacts, stats: dict[str, tuple[int, int]], by_link: int) -> IssueLine:
    def readers(metric: str) -> int:
        return stats.get(metric, (0, 0))[1]

    def total(metric: str) -> int:
        return stats.get(metric, (0, 0))[0]

    has_events = f.transport in EVENT_TRANSPORTS
    delivered = readers("delivered")
    hard, soft = readers("bounce_hard"), readers("bounce_soft")
    return IssueLine(
        facts=f,
        has_events=has_events,
        delivered=delivered,
        deferred=readers("deferred"),
        bounced_hard=hard,
        bounced_soft=soft,
        dropped=readers("dropped"),
        spam_reports=readers("spamreport"),
        unsubscribes=readers("unsubscribe") + by_link,
        opens=readers("open"),
        machine_opens=readers("machine_open"),
        opens_total=total("open"),
        clickers=readers("click"),
        clicks_total=total("click"),
        open_rate=_rate(readers("open"), delivered) if has_events else None,
        click_rate=_rate(readers("click"), delivered) if has_events else None,
        delivery_rate=_rate(delivered, f.submitted) if has_events else None,
        bounce_rate=_rate(hard + soft, f.submitted) if has_events else None,
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _against(line: IssueLine, open_median: float | None, click_median: float | None) -> IssueLine:
    return replace(
        line,
        open_vs_median=_minus(line.open_rate, open_median),
        click_vs_median=_minus(line.click_rate, click_median),
    )


def _minus(value: float | None, median: float | None) -> float | None:
    return None if value is None or median is None else value - median


def _with_links(
    line: IssueLine,
    stats: dict[str, tuple[int, int]],
    links: list[LinkCount],
    clickers: dict[tuple[int, int], list[str]],
) -> IssueLine:
    mine = [link for link in links if link.issue_id == line.facts.id]
    stories: dict[int, list[LinkCount]] = {}
    for link in mine:
        if link.kind == STORY and link.position is not None:
            stories.setdefault(link.position, []).append(link)
    story_lines = []
    for position, story_links in sorted(stories.items()):
        who = sorted(
            {e for link in story_links for e in clickers.get((link.issue_id, link.number), [])}
        )
        story_lines.append(
            StoryClicks(
                position=position,
                title=story_links[0].title or f"Story {position}",
                readers=stats.get(f"story:{position}", (0, 0))[1],
                clicks=sum(link.clicks for link in story_links),
                links=story_links,
                clickers=who,
            )
        )
    groups = []
    for kind in KINDS:
        if kind == STORY:
            continue
        kind_links = [link for link in mine if link.kind == kind and link.clicks]
        if kind_links:
            groups.append(
                LinkGroup(
                    kind=kind,
                    readers=stats.get(f"group:{kind}", (0, 0))[1],  # a reader once
                    clicks=sum(link.clicks for link in kind_links),
                    links=kind_links,
                )
            )
    return replace(line, stories=story_lines, groups=groups)
