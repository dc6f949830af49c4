"""`newsletter report` (what happened to each issue, as an HTML page and CSV files) and
`newsletter events prune` (the raw events go after a while; the counts stay)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from newsletter.app import App
from newsletter.cli.base import DATE, Command, Group, Options, cannot_write, day_of, out
from newsletter.config import KEEP_EVENTS_WHY, MIN_KEEP_EVENTS, _parse_duration
from newsletter.errors import NewsletterError
from newsletter.words import plural


@click.command(cls=Command)
@click.option("--list", "list_name", help="Only this list (default: every list).")
@click.option("--since", type=DATE, help="Only issues from this date on (YYYY-MM-DD).")
@click.option(
    "--issues",
    "last_issues",
    type=click.IntRange(1, 100_000),
    metavar="N",
    help="Only each list's last N issues (and its growth since the first of them).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="The HTML file to write: one page, no scripts, opens from disk.",
)
@click.option(
    "--csv",
    "csv_folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write every table as a CSV file into this folder.",
)
@click.pass_obj
def report(
    opts: Options,
    list_name: str | None,
    since: dt.datetime | None,
    last_issues: int | None,
    output: Path,
    csv_folder: Path | None,
) -> None:
    """What happened to each issue: delivery, opens, clicks per story, list growth."""
    from newsletter.report import ReportQuery, build_report, render_html, write_csv

    with App(opts.config()) as app:
        config = app.config
        query = ReportQuery(
            list_name=list_name,
            since=day_of(since),
            last_issues=last_issues,
            detail_issues=config.analytics.detail_issues,
            per_recipient=config.analytics.per_recipient,
            today=app.today(),
        )
        built = build_report(app.ledger, query, app.clock())
        html = render_html(
            built, title=f"{config.newsletter.name}: report", accent=config.theme.accent_color
        )
        _write(output, html)
        issues = sum(len(lst.issues) for lst in built.lists)
        if not built.lists:
            out.print(f"No issue to report on yet; {output} says so.")
        else:
            lists = ", ".join(lst.name for lst in built.lists)
            out.print(f"Report on {plural(issues, 'issue')} of {lists} written to {output}.")
        if not any(lst.has_events for lst in built.lists) and built.lists:
            out.print(
                "Sent by SMTP or to the outbox: nothing reports deliveries, opens or clicks "
                "for them, so the report shows what was submitted."
            )
        if csv_folder is not None:
            try:
                written = write_csv(built, csv_folder)
            except OSError as exc:
                raise cannot_write("--csv", csv_folder, exc) from None
            out.print(f"CSV: {', '.join(p.name for p in written)} in {csv_folder}.")


def _write(path: Path, text: str) -> None:
    """Temporary file + rename: an old report stays whole if this one cannot be written."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise cannot_write("--output", path, exc) from None


@click.group(cls=Group)
def events() -> None:
    """The mail service's events kept for the report."""


@events.command("prune")
@click.option(
    "--older-than",
    "older_than",
    metavar="DURATION",
    help='Delete raw events older than this ("90d", "12h"; default: [analytics] keep_events).',
)
@click.pass_obj
def events_prune(opts: Options, older_than: str | None) -> None:
    """Delete raw events and per-reader rows past their time; the counts are kept."""
    with App(opts.config()) as app:
        keep = app.config.analytics.keep_events
        if older_than is not None:
            try:
                keep = _parse_duration(older_than)
            except ValueError as exc:
                raise NewsletterError(f"--older-than: {exc}") from None
            if keep < MIN_KEEP_EVENTS:
                raise NewsletterError(f"--older-than {older_than}: {KEEP_EVENTS_WHY}")
        cut = app.clock() - keep
        pruned = app.ledger.prune_events(cut)
        out.print(
            f"Pruned {plural(pruned['events'], 'event')} received before "
            f"{cut.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC, "
            f"{plural(pruned['reader_hashes'], 'reader hash', 'reader hashes')} of "
            f"{plural(pruned['issues'], 'issue')} and "
            f"{plural(pruned['activity'], 'per-recipient row')}; the counts are kept."
        )
