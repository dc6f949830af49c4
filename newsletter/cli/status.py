"""`newsletter status`: the recent issues, or one issue's batches, events and readers in
doubt."""

from __future__ import annotations

import datetime as dt

import click
from rich.text import Text

from newsletter.app import App
from newsletter.cli.base import DATE, Command, Options, day_of, out
from newsletter.cli.report import SHOWN_ADDRESSES
from newsletter.state.issues import IssueRow
from newsletter.words import moment, noun, plural

REPORT_HINT = (
    "Open and click rates, clicks per story, list growth: `newsletter report` (writes report.html)."
)

# SendGrid event name -> how `status` says one, and several
EVENT_WORDS = {
    "delivered": ("delivered", "delivered"),
    "open": ("open", "opens"),
    "click": ("click", "clicks"),
    "bounce": ("bounce", "bounces"),
    "dropped": ("dropped", "dropped"),
    "deferred": ("deferred", "deferred"),
    "spamreport": ("spam report", "spam reports"),
    "unsubscribe": ("unsubscribe", "unsubscribes"),
    "group_unsubscribe": ("group unsubscribe", "group unsubscribes"),
}


def _event_summary(counts: dict[str, int], short: bool = False) -> str:
    shown = ("delivered", "open", "click") if short else tuple(EVENT_WORDS)
    parts = [plural(counts[e], *EVENT_WORDS[e]) for e in shown if counts.get(e)]
    return ", ".join(parts) or "no deliveries yet"


@click.command(cls=Command)
@click.option("--date", type=DATE, help="Show this issue (default: the recent ones).")
@click.option("--list", "list_name", help="Only this list.")
@click.option(
    "--in-doubt",
    is_flag=True,
    help="Print only the addresses of the issue (--date, default today) that are in doubt "
    "or were skipped as in doubt, one per line.",
)
@click.pass_obj
def status(opts: Options, date: dt.datetime | None, list_name: str | None, in_doubt: bool) -> None:
    """The recent issues, or one issue's batches: states, message ids, errors."""
    with App(opts.config()) as app:
        ledger = app.ledger
        if in_doubt:
            name = list_name or app.config.schedule.list
            row = ledger.issue(name, day_of(date) or app.today())
            if row is not None:
                for address in ledger.in_doubt_addresses(row.id):
                    click.echo(address)
                for address in ledger.batch_addresses(row.id, ["skipped"]):
                    click.echo(address)
            return
        if date is None:
            tz = app.config.newsletter.tz
            from newsletter.scheduler import next_run

            upcoming = next_run(ledger)
            if upcoming is None:
                out.print("Scheduler: not started yet (`newsletter schedule`).")
            else:
                out.print(
                    f"Next scheduled run: {upcoming.astimezone(tz):%Y-%m-%d %H:%M %Z} "
                    f"({upcoming.astimezone(dt.UTC):%H:%M} UTC)"
                )
            rows = ledger.recent_issues(list_name)
            if rows:
                last = rows[0]
                outcome = last.status + (f": {last.error}" if last.error else "")
                out.print(f"Last issue: {last.issue_date} ({last.list_name}) {outcome}")
            else:
                out.print("No issue has been sent yet.")
            for row in rows:
                what = row.subject or ""
                if row.status in ("skipped", "failed", "stopped") and row.error:
                    what = f"{what}  ({row.error})" if what else row.error
                events = ledger.event_counts(row.id)
                if events:
                    what = f"{what}  [{_event_summary(events, short=True)}]"
                out.print(
                    f"{row.issue_date}  {row.list_name:<10} {_state(app, row):<9} "
                    f"{row.recipients:>9,} {noun(row.recipients, 'recipient'):<10}  {what}"
                )
            if rows:
                out.print(REPORT_HINT)
            return
        name = list_name or app.config.schedule.list
        row = ledger.issue(name, day_of(date))  # type: ignore[arg-type]
        if row is None:
            out.print(f"No issue for list {name!r} on {day_of(date)}.")
            return
        out.print(Text(row.subject or "", "bold"))
        out.print(
            f"list {row.list_name}, {row.issue_date}: {row.status}, "
            f"{plural(row.recipients, 'recipient')}, via {row.transport}"
        )
        if row.error:
            out.print(f"error: {row.error}")
        zone = app.config.newsletter.timezone
        for attempt in ledger.attempts(row.id):
            out.print(
                f"attempt {attempt.attempt}: SendGrid batch {attempt.batch_id}, "
                f"for {moment(attempt.send_at, zone)}, {attempt.status}"
                + (
                    f" (cancel, pause: until {moment(attempt.cancel_deadline, zone)})"
                    if attempt.status in ("active", "paused")
                    and app.clock() < attempt.cancel_deadline
                    else ""
                )
            )
        counts = ledger.batch_counts(row.id)
        out.print(
            "batches: "
            + ", ".join(
                f"{n} {s} ({plural(size, 'recipient')})" for s, (n, size) in sorted(counts.items())
            )
        )
        events = ledger.event_counts(row.id)
        out.print(
            "events reported by SendGrid: "
            + (_event_summary(events) if events else "none yet (see `newsletter serve`)")
        )
        out.print(REPORT_HINT)
        for batch in ledger.batches(row.id):
            note = f"  {batch.error}" if batch.error else ""
            out.print(
                f"  #{batch.seq:<5} {batch.status:<10} {batch.size:>5}  {batch.message_id or '-'}{note}"
            )
        for label, addresses in (
            ("in doubt", ledger.in_doubt_addresses(row.id)),
            ("skipped as in doubt", ledger.batch_addresses(row.id, ["skipped"])),
        ):
            if addresses:
                shown = ", ".join(addresses[:SHOWN_ADDRESSES])
                more = len(addresses) - SHOWN_ADDRESSES
                tail = f" and {more:,} more (--in-doubt lists them all)" if more > 0 else ""
                out.print(f"{label}: {shown}{tail}")


def _state(app: App, row: IssueRow) -> str:
    """The issue's state, with "scheduled" or "paused" for one SendGrid still holds."""
    if row.status != "sent":
        return row.status
    attempt = app.ledger.latest_attempt(row.id)
    if attempt is not None and attempt.status == "paused":
        return "paused"
    if attempt is None or attempt.send_at <= app.clock():
        return row.status
    return "scheduled"
