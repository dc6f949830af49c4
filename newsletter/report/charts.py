"""The report's charts: matplotlib figures saved as SVG and put inline in the page.

Text stays text (`svg.fonttype = none`: selectable, printed sharp, in the page's
font), each chart gets its own id salt (two charts on one page never share an
element id), and the XML prologue and fixed size are dropped so that a chart
scales to the width of a phone. Labels that come from data (headlines) are
escaped for matplotlib's mathtext: a `$` in a headline is a dollar sign.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from newsletter.report.model import DayLine, IssueLine, StoryClicks

INK = "#1f2933"
MUTED = "#6b7280"
GRID = "#e5e7eb"
OPEN = "#2563eb"
CLICK = "#d97706"
GAIN = "#059669"
LOSS = "#dc2626"

_STYLE = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 12,
    "axes.titlesize": 14,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.edgecolor": GRID,
    "axes.labelcolor": MUTED,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "text.color": INK,
    "legend.frameon": False,
}


def _figure(
    width: float = 6.0,
    height: float = 3.6,
    margins: tuple[float, float, float, float] = (0.75, 0.2, 0.4, 1.1),
) -> tuple[Any, Any]:
    """A figure with fixed margins in inches (left, right, top, bottom): room for the
    ticks, the axis labels and the legend below. Measured layout (constrained) cost
    half of the drawing time for the same picture."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    left, right, top, bottom = margins
    figure.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height
    )
    return figure, figure.subplots()


def _legend(figure: Any, columns: int) -> None:
    figure.legend(loc="lower center", bbox_to_anchor=(0.5, 0.0), ncols=columns, fontsize=10)


def _svg(figure: Any, name: str, label: str) -> str:
    """The figure as an <svg> element for inline use: scalable, ids unique to `name`."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({**_STYLE, "svg.hashsalt": f"newsletter-{name}"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r"<svg\1", text, count=1)
    text = text.replace("<svg", f'<svg class="chart" role="img" aria-label="{_attr(label)}"', 1)
    return re.sub(r"<metadata>.*?</metadata>", "", text, count=1, flags=re.S)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _plain(text: str) -> str:
    """Data as matplotlib shows it literally (no mathtext, no control characters)."""
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return text.replace("$", r"\$")


@contextlib.contextmanager
def _drawing() -> Iterator[None]:
    """The report's style; glyph warnings (a headline in a script DejaVu lacks) silenced:
    the SVG keeps the text, and the page's fonts draw it."""
    import matplotlib

    with warnings.catch_warnings(), matplotlib.rc_context(_STYLE):
        warnings.simplefilter("ignore")
        logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
        yield


def rate_trend(name: str, lines: Sequence[IssueLine], median_open: float | None,
               median_click: float | None) -> str | None:  # fmt: skip
    """Open and click rates of each issue with events, and the list's medians."""
    shown = [line for line in lines if line.open_rate is not None]
    if not shown:
        return None
    with _drawing():
        from matplotlib.ticker import PercentFormatter

        figure, ax = _figure()
        dates = [line.date for line in shown]
        ax.plot(dates, [line.open_rate * 100 for line in shown], color=OPEN, lw=2,
                marker="o" if len(shown) < 40 else None, ms=4, label="Open rate (human opens)")  # fmt: skip
        ax.plot(dates, [(line.click_rate or 0) * 100 for line in shown], color=CLICK, lw=2,
                marker="o" if len(shown) < 40 else None, ms=4, label="Click rate")  # fmt: skip
        for median, colour in ((median_open, OPEN), (median_click, CLICK)):
            if median is not None:
                ax.axhline(median * 100, color=colour, lw=1, ls="--", alpha=0.6)
        ax.set_title(f"Open and click rate per issue, list {_plain(name)}")
        ax.set_ylabel("% of delivered")
        ax.set_xlabel(f"Issue date, {_between(dates)} (dashed: the list's median)")
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", color=GRID)
        _legend(figure, 2)
        _date_axis(ax, dates)
        return _svg(figure, f"trend-{name}", f"Open and click rate per issue, list {name}")


def list_growth(name: str, days: Sequence[DayLine]) -> str | None:
    """Sign-ups above the line, losses below it, and the net change, per day (per week
    past three months, when daily bars would be too thin to read).

    Each series is one stepped shape over every day or week from the first to the
    last (not a bar each): a year is four shapes, drawn in a fraction of the time.
    """
    if not days:
        return None
    step = 1 if (days[-1].day - days[0].day).days < 92 else 7
    first = days[0].day - dt.timedelta(days[0].day.weekday() if step == 7 else 0)
    buckets = (days[-1].day - first).days // step + 1
    totals = [[0, 0, 0, 0, 0] for _ in range(buckets)]
    for d in days:
        row = totals[(d.day - first).days // step]
        for i, value in enumerate((d.signups, -d.unsubscribes, -d.bounces, -d.complaints, d.net)):
            row[i] += value
    edges = [first + dt.timedelta(n * step) for n in range(buckets + 1)]
    unit = "day" if step == 1 else "week"
    with _drawing():
        figure, ax = _figure()
        column = [[row[i] for row in totals] for i in range(5)]
        if any(column[0]):
            ax.stairs(column[0], edges, fill=True, color=GAIN, label="Sign-ups")
        bottom = [0] * buckets
        for values, colour, label in (
            (column[1], LOSS, "Unsubscribes"),
            (column[2], "#9333ea", "Bounces"),
            (column[3], "#111827", "Complaints"),
        ):
            if any(values):
                top = [b + v for b, v in zip(bottom, values, strict=True)]
                ax.stairs(top, edges, baseline=bottom, fill=True, color=colour, label=label)
                bottom = top
        if buckets > 1:  # one day's net change is a dot: the bars say it
            ax.stairs(column[4], edges, color=INK, lw=1.5, label="Net change")
        ax.axhline(0, color=MUTED, lw=0.8)
        ax.set_title(f"List growth per {unit}, list {_plain(name)}")
        ax.set_ylabel(f"Readers per {unit}")
        ax.set_xlabel(f"{'Day' if step == 1 else 'Week from Monday'}, {_between(edges[:-1])}")
        ax.grid(axis="y", color=GRID)
        _legend(figure, 3)
        _date_axis(ax, edges)
        return _svg(figure, f"growth-{name}", f"List growth per {unit}, list {name}")


def story_clicks(line: IssueLine, stories: Sequence[StoryClicks]) -> str | None:
    """Readers who clicked each story of one issue, in the order of the issue."""
    if not stories or not any(s.readers for s in stories):
        return None
    with _drawing():
        figure, ax = _figure(6.0, 1.0 + 0.42 * len(stories), (2.95, 0.45, 0.45, 0.55))
        labels = [_plain(_short(f"{s.position}. {s.title}", 32)) for s in stories]
        values = [s.readers for s in stories]
        bars = ax.barh(labels, values, color=OPEN)
        ax.invert_yaxis()
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=4, color=INK, fontsize=10)
        # over the whole figure: the headlines take the left of the axes
        figure.suptitle(
            f"Readers who clicked each story, {line.date:%d %b %Y}",
            x=0.01, ha="left", fontsize=14, fontweight="bold", color=INK,
        )  # fmt: skip
        ax.set_xlabel("Readers (unique clicks)")
        ax.spines["left"].set_visible(False)
        ax.tick_params(axis="y", length=0)
        ax.margins(x=0.15)
        ax.grid(axis="x", color=GRID)
        return _svg(
            figure, f"stories-{line.facts.id}", f"Readers who clicked each story, {line.date}"
        )


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _date_axis(ax: Any, dates: Sequence[dt.date]) -> None:
    """Ticks on whole days (never hours between daily issues), the year in the label
    rather than an offset that would sit on the axis title."""
    import matplotlib.dates as mdates

    first, last = min(dates), max(dates)
    span = (last - first).days
    if span < 8:
        locator: Any = mdates.DayLocator(interval=max(1, span // 4 or 1))
        ax.set_xlim(first - dt.timedelta(days=1), last + dt.timedelta(days=1))
    else:
        locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
        locator.intervald[mdates.HOURLY] = []  # a day is the smallest step
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=False))


def _between(dates: Sequence[dt.date]) -> str:
    first, last = min(dates), max(dates)
    if first == last:
        return f"{first.day} {first:%b %Y}"
    return f"{first.day} {first:%b %Y} to {last.day} {last:%b %Y}"
