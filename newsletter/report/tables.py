"""Every table of the report as CSV, for a spreadsheet or another tool.

A cell that a spreadsheet would run as a formula (a subject starting with `=`,
`+`, `-` or `@`) is written with a leading apostrophe: data never becomes code.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from newsletter.report.model import Report

Row = list[object]


def _issues(report: Report) -> Iterable[Row]:
    yield ["list", "date", "subject", "transport", "submitted", "delivered", "deferred",
           "bounced_hard", "bounced_soft", "dropped", "spam_reports", "unsubscribes",
           "human_opens", "open_rate", "open_rate_vs_median", "machine_opens", "opens_total",
           "readers_who_clicked", "click_rate", "click_rate_vs_median", "clicks_total"]  # fmt: skip
    for lst in report.lists:
        for line in lst.issues:
            f = line.facts
            events = line.has_events
            yield [
                f.list_name, f.issue_date.isoformat(), f.subject or "", f.transport or "",
                f.submitted,
                *(
                    [line.delivered, line.deferred, line.bounced_hard, line.bounced_soft,
                     line.dropped, line.spam_reports]
                    if events else [""] * 6
                ),
                line.unsubscribes,
                *(
                    [line.opens, _rate(line.open_rate), _rate(line.open_vs_median),
                     line.machine_opens, line.opens_total, line.clickers, _rate(line.click_rate),
                     _rate(line.click_vs_median), line.clicks_total]
                    if events else [""] * 9
                ),
            ]  # fmt: skip


def _links(report: Report) -> Iterable[Row]:
    yield [
        "list",
        "date",
        "link",
        "kind",
        "story",
        "headline",
        "url",
        "readers_who_clicked",
        "clicks",
    ]
    for lst in report.lists:
        for line in lst.detail:
            links = [link for story in line.stories for link in story.links]
            links += [link for group in line.groups for link in group.links]
            for link in sorted(links, key=lambda link: link.number):
                yield [lst.name, line.date.isoformat(), link.number, link.kind,
                       link.position or "", link.title or "", link.url, link.readers, link.clicks]  # fmt: skip


def _stories(report: Report) -> Iterable[Row]:
    yield ["list", "date", "story", "headline", "readers_who_clicked", "clicks"]
    for lst in report.lists:
        for line in lst.detail:
            for story in line.stories:
                yield [lst.name, line.date.isoformat(), story.position, story.title,
                       story.readers, story.clicks]  # fmt: skip


def _growth(report: Report) -> Iterable[Row]:
    yield ["list", "day", "signups", "unsubscribes", "bounces", "complaints", "net"]
    for lst in report.lists:
        for d in lst.days:
            yield [lst.name, d.day.isoformat(), d.signups, d.unsubscribes, d.bounces,
                   d.complaints, d.net]  # fmt: skip


def _clicks_by_reader(report: Report) -> Iterable[Row]:
    yield ["list", "date", "story", "headline", "email"]
    for lst in report.lists:
        for line in lst.detail:
            for story in line.stories:
                for email in story.clickers:
                    yield [lst.name, line.date.isoformat(), story.position, story.title, email]


TABLES: dict[str, Callable[[Report], Iterable[Row]]] = {
    "issues": _issues,
    "stories": _stories,
    "links": _links,
    "list_growth": _growth,
    "clicks_by_reader": _clicks_by_reader,  # only with per-recipient analytics
}


_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _cell(value: object) -> object:
    """A cell a spreadsheet would run as a formula, made text; a number (-0.25, a rate
    below the median) stays a number."""
    if (
        isinstance(value, str)
        and value[:1] in ("=", "+", "-", "@", "\t", "\r")
        and not _NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_table(report: Report, name: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in TABLES[name](report):
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def csv_tables(report: Report) -> dict[str, str]:
    """File name -> CSV text, for every table the report has."""
    names = [n for n in TABLES if n != "clicks_by_reader" or report.query.per_recipient]
    return {f"{name}.csv": csv_table(report, name) for name in names}


def write_csv(report: Report, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in csv_tables(report).items():
        path = folder / name
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(text, encoding="utf-8", newline="")
        temporary.replace(path)
        written.append(path)
    return written
