"""The report as one self-contained HTML page: no scripts, no requests, prints well.

`newsletter report` writes it to a file; `newsletter serve` shows the same page under
/admin/ with a list filter, the CSV links and a sign-out button around it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup

from newsletter.links import ARCHIVE, OTHER, SHARE, UNSUBSCRIBE
from newsletter.report import charts
from newsletter.report.model import ListReport, Report
from newsletter.report.tables import TABLES
from newsletter.words import plural

RECENT_DAYS = 14
GROUP_NAMES = {
    SHARE: "Share links",
    ARCHIVE: "Web version",
    UNSUBSCRIBE: "Unsubscribe link",
    OTHER: "Other links",
}


@dataclass(frozen=True)
class AdminChrome:
    """What the /admin/ page adds around the report."""

    base: str  # "/admin"
    lists: list[str]  # for the list filter
    query: str  # the current filter as a query string ("" or "?list=main&since=...")
    csrf: str  # the sign-out form's CSRF field


class _ListView:
    """A list's report with its charts drawn, as the template reads it."""

    def __init__(self, report: ListReport) -> None:
        self._report = report
        latest_with_clicks = next((line for line in report.detail if line.has_events), None)
        self.charts = {
            "trend": _markup(
                charts.rate_trend(
                    report.name, report.issues, report.median_open_rate, report.median_click_rate
                )
            ),
            "growth": _markup(charts.list_growth(report.name, report.days)),
            "stories": _markup(
                charts.story_clicks(latest_with_clicks, latest_with_clicks.stories)
                if latest_with_clicks is not None and latest_with_clicks is report.detail[0]
                else None
            ),
        }
        self.recent_days = list(reversed(report.days[-RECENT_DAYS:]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._report, name)


def _markup(svg: str | None) -> Markup | None:
    # matplotlib's own SVG, with every data label escaped by it: safe to put inline
    return Markup(svg) if svg else None


def render_html(
    report: Report,
    *,
    title: str = "Newsletter report",
    accent: str = "#2563eb",
    admin: AdminChrome | None = None,
) -> str:
    template = _environment().get_template("report.html")
    return template.render(
        report=report,
        lists=[_ListView(lst) for lst in report.lists],
        title=title,
        accent=accent,
        admin=admin,
        scope=_scope(report),
        group_names=GROUP_NAMES,
        csv_names=[
            name for name in TABLES if name != "clicks_by_reader" or report.query.per_recipient
        ],
    )


def _scope(report: Report) -> str:
    q = report.query
    which = f"list {q.list_name}" if q.list_name else "every list"
    since = f", issues since {_day(q.since)}" if q.since else ", every issue"
    if q.last_issues is not None:
        last = "issue" if q.last_issues == 1 else f"{q.last_issues} issues"
        since = f", the last {last}" + (f" since {_day(q.since)}" if q.since else "")
    return which + since


_ENV: jinja2.Environment | None = None


def _environment() -> jinja2.Environment:
    global _ENV
    if _ENV is None:
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("newsletter.report", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        env.filters.update(
            many=plural,
            n=_n,
            pct=_pct,
            pts=_pts,
            trend=_trend,
            signed=_signed,
            day=_day,
            moment=_moment,
        )
        _ENV = env
    return _ENV


def _n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.1f}%"


def _pts(value: float | None) -> str:
    """A difference of two rates, in percentage points."""
    return "–" if value is None else f"{value * 100:+.1f} pts"


def _trend(value: float | None) -> str:
    if value is None or abs(value) < 1e-12:
        return ""
    return "up" if value > 0 else "down"


def _signed(value: int) -> str:
    return f"{value:+,}" if value else "0"


def _day(value: dt.date | None) -> str:
    return "" if value is None else f"{value:%a} {value.day} {value:%b %Y}"


def _moment(value: dt.datetime) -> str:
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
