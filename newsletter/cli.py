"""The `newsletter` command: parsing arguments and printing results, nothing more."""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import json
import logging
import os
import signal
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.text import Text

from newsletter import __version__, logs
from newsletter.app import App, empty_issue_message, list_problems, preview_page
from newsletter.config import Config, find_config, load_config
from newsletter.controls import printable
from newsletter.errors import NewsletterError, SubscriberError
from newsletter.models import SendPreview, SendReport, SendRequest
from newsletter.progress import RichProgress
from newsletter.send import Sending
from newsletter.state.suppressions import SUPPRESSION_REASONS
from newsletter.subscribers import (
    ImportReport,
    add_subscriber,
    export_csv,
    import_subscribers,
    list_path,
    read_list,
    remove_addresses,
)
from newsletter.terminal import SafeConsole
from newsletter.timings import Timings
from newsletter.words import noun, plural

# messages carry data (subjects, addresses, server replies): never markup, never an escape
err = SafeConsole(stderr=True)
out = SafeConsole()


def _config_here(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.find_object(Options).config_path = value  # type: ignore[union-attr]


class Command(click.Command):
    """A subcommand that also takes `--config` after its name (`newsletter send --config X`),
    since that is where people type it; before the name it is `newsletter`'s own option."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.params.append(
            click.Option(
                ["--config", "config_path"],
                type=click.Path(dir_okay=False, path_type=Path),
                expose_value=False,
                callback=_config_here,
                help="Config file (as `newsletter --config PATH ...`).",
            )
        )


class Group(click.Group):
    """Turns a NewsletterError into one clear line and an exit code, never a traceback."""

    command_class = Command
    group_class = type  # `subscribers` is a Group too, and its commands Commands

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            for line in str(exc).splitlines():
                err.print(Text.assemble(("error:", "bold red"), f" {line}"))
            ctx.exit(exc.exit_code)


class Options:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = find_config(config_path, os.environ)

    def config(self) -> Config:
        return load_config(self.config_path)


DATE = click.DateTime(formats=["%Y-%m-%d"])


def cannot_write(option: str, path: Path, exc: OSError) -> NewsletterError:
    """A file named on the command line that cannot be written, said with the option."""
    if not path.parent.is_dir():
        return NewsletterError(f"{option} {path}: the folder {path.parent} does not exist")
    return NewsletterError(f"{option} {path}: cannot write it ({exc.strerror or exc})")


def _date(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


@click.group(cls=Group)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file (default: $NEWSLETTER_CONFIG, else ./config.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option(
    "--log-format",
    type=click.Choice(["plain", "json"]),
    default="plain",
    show_default=True,
    help="json: one JSON object per log line (journald, containers).",
)
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int, log_format: str) -> None:
    """Run a daily email newsletter: gather, render, preview, send."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logs.configure(level, log_format, sys.stderr, interactive=sys.stderr.isatty())
    ctx.obj = Options(config_path)


@cli.command()
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.pass_obj
def check(opts: Options, date: dt.datetime | None) -> None:
    """Validate the config, gather and render the issue, and list any problems.

    Exits 1 when a story source failed or the email has a warning.
    """
    config = opts.config()
    with App(config) as app:
        built = app.build_issue(_date(date))
    issue, email = built.issue, built.email
    tz = config.newsletter.tz
    out.print(Text(email.subject, "bold"))
    start = f"{issue.window.start.astimezone(tz):%Y-%m-%d %H:%M}" if issue.window.start else "…"
    out.print(f"window: {start} → {issue.window.end:%Y-%m-%d %H:%M} ({config.newsletter.timezone})")
    if issue.is_empty:
        out.print(empty_issue_message(issue))
    else:
        out.print(f"{plural(len(issue.stories), 'story')}:")
        for story in issue.stories:
            out.print(
                Text.assemble(
                    f"  • {story.title} ",
                    (f"({story.source}, {story.published:%Y-%m-%d %H:%M})", "dim"),
                )
            )
    for draft in issue.drafts:
        out.print(
            Text.assemble(
                ("  left out, a draft: ", "yellow"),
                f"{draft.title} ",
                (f"({draft.source}, {draft.published:%Y-%m-%d %H:%M}; draft: true)", "dim"),
            )
        )
    out.print(
        f"HTML {email.html_bytes / 1024:.1f} KB, text {len(email.text.encode()) / 1024:.1f} KB"
    )
    problems = [str(p) for p in issue.problems] + list(email.warnings) + list_problems(config)
    for problem in problems:
        err.print(Text.assemble(("problem:", "yellow"), f" {problem}"))
    if problems:
        sys.exit(1)
    out.print(Text("ok", "green"))


@cli.command()
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8025,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free one).",
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the inlined HTML (sample subscriber filled in) to FILE and exit.",
)
@click.pass_obj
def preview(
    opts: Options, date: dt.datetime | None, port: int, no_browser: bool, output: Path | None
) -> None:
    """Show the issue in a browser as subscribers will get it, reloading on every edit."""

    def build():  # type: ignore[no-untyped-def]
        return preview_page(opts.config_path, os.environ, _date(date))

    if output is not None:
        page = build()
        try:
            output.write_text(page.html, encoding="utf-8")
        except OSError as exc:
            raise cannot_write("--output", output, exc) from None
        for note in page.notes:
            err.print(Text.assemble(("note:", "yellow"), f" {note}"))
        err.print(
            f"wrote {output} ({len(page.html.encode()) / 1024:.1f} KB, "
            f"{plural(page.stories, 'story')})"
        )
        return

    from newsletter.preview import PreviewState, Watcher, make_server

    state = PreviewState(build)
    page = state.rebuild()
    if page.error:
        raise_error = NewsletterError(page.error)
        raise raise_error
    for note in page.notes:
        err.print(Text.assemble(("note:", "yellow"), f" {note}"))
    try:
        server = make_server(state, port)
    except OSError as exc:
        raise NewsletterError(
            f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
            "choose another port, or --port 0 for any free one"
        ) from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    out.print(f"Preview at {url} (Ctrl-C to stop)", soft_wrap=True)
    sys.stdout.flush()
    watcher = Watcher(state)
    watcher.start()
    if not no_browser:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        watcher.stop()
        server.server_close()


# -- sending -------------------------------------------------------------------------


def _confirm(yes: bool) -> Callable[[SendPreview], bool] | None:
    if yes:
        return None  # no question, and no counting the list to ask it

    def confirm(preview: SendPreview) -> bool:
        what = (
            f"{'Resume sending' if preview.resuming else 'Send'} {preview.subject!r} to "
            f"{plural(preview.recipients, 'subscriber')} of list {preview.list_name!r} "
            f"via {preview.transport}?"
        )
        if not sys.stdin.isatty():
            raise NewsletterError(f"{what}\nnot confirmed: pass --yes to send without asking")
        return click.confirm(what, default=False, err=True)

    return confirm


@cli.command()
@click.option(
    "--list", "list_name", help="The list to send to (default: schedule.list, usually main)."
)
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.option(
    "--transport",
    type=click.Choice(["sendgrid", "smtp", "outbox"]),
    help="Override delivery.transport.",
)
@click.option(
    "--to",
    "to",
    multiple=True,
    metavar="ADDRESS",
    help="A one-off test send to this address (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Gather, render and plan; send nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--allow-empty", is_flag=True, help="Send even when no story is in the window.")
@click.option(
    "--sandbox",
    is_flag=True,
    help="SendGrid sandbox mode: validated, delivered to nobody, not recorded.",
)
@click.option(
    "--resend-ambiguous",
    is_flag=True,
    help="Send again to recipients in doubt (a crashed run was handing their message over).",
)
@click.option(
    "--skip-ambiguous",
    is_flag=True,
    help="Do not send again to recipients in doubt; they are recorded as skipped.",
)
@click.option("--skip-invalid", is_flag=True, help="Send without list rows that are not valid.")
@click.option(
    "--timings",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write seconds spent per phase (render, list, ledger, send) to FILE as JSON.",
)
@click.pass_obj
def send(
    opts: Options,
    list_name: str | None,
    date: dt.datetime | None,
    transport: str | None,
    to: tuple[str, ...],
    dry_run: bool,
    yes: bool,
    allow_empty: bool,
    sandbox: bool,
    resend_ambiguous: bool,
    skip_ambiguous: bool,
    skip_invalid: bool,
    timings: Path | None,
) -> None:
    """Send the day's issue to a list, exactly once; `--list test` or `--to` for a test send.

    A rerun after a failure or a crash resumes: batches already submitted are
    not sent again.
    """
    if resend_ambiguous and skip_ambiguous:
        raise click.UsageError("--resend-ambiguous and --skip-ambiguous exclude each other")
    request = SendRequest(
        list_name=list_name,
        date=_date(date),
        transport=transport,
        to=to,
        dry_run=dry_run,
        allow_empty=allow_empty,
        sandbox=sandbox,
        resend_ambiguous=resend_ambiguous,
        skip_ambiguous=skip_ambiguous,
        skip_invalid=skip_invalid,
    )
    if timings is not None and not timings.parent.is_dir():  # said before, not after, a send
        raise NewsletterError(f"--timings {timings}: the folder {timings.parent} does not exist")
    phases = Timings()
    with App(opts.config()) as app, stop_on_signal() as stopping:
        sending = Sending(
            app, progress=RichProgress(err), should_stop=stopping.is_set, timings=phases
        )
        report = sending.send(request, _confirm(yes))
    if timings is not None:
        try:
            timings.write_text(json.dumps(phases.rounded(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:  # the send is done: say so, and do not fail it for this
            err.print(
                Text.assemble(("warning:", "yellow"), f" {cannot_write('--timings', timings, exc)}")
            )
    _print_report(report)
    if not report.ok:
        sys.exit(1)


@contextlib.contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """SIGTERM or Ctrl-C: finish the batch in flight, record it, stop. A second one: now."""
    stopping = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        if stopping.is_set():
            raise KeyboardInterrupt
        err.print(f"{signal.Signals(signum).name}: finishing the current batch, then stopping")
        stopping.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_report(r: SendReport) -> None:
    where = f"list {r.list_name!r}, {r.date}"
    extras = []
    if r.suppressed:
        extras.append(f"{plural(r.suppressed, 'suppressed address')} skipped")
    if r.duplicates:
        extras.append(f"{plural(r.duplicates, 'duplicate row')} ignored")
    tail = f" ({'; '.join(extras)})" if extras else ""
    if r.outcome == "sent":
        of = f" of {r.recipients:,}" if r.skipped else ""
        out.print(
            Text.assemble(("Sent", "green")),
            f"{r.subject!r} to {r.delivered:,}{of} {noun(r.recipients if of else r.delivered, 'recipient')} "
            f"of {where} in {plural(r.batches, 'batch')} via {r.transport}{tail}.",
        )
        if r.transport == "sendgrid":
            out.print("Submitted to SendGrid; delivery is reported by SendGrid's events.")
    elif r.outcome == "test_sent":
        out.print(
            Text.assemble(("Test send", "green")),
            f"{r.subject!r} to {plural(r.recipients, 'recipient')} via {r.transport}{tail}.",
        )
    elif r.outcome == "already_sent":
        out.print(
            f"The issue for {where} was already sent ({plural(r.recipients, 'recipient')}): "
            "nothing to do."
        )
    elif r.outcome == "empty":
        out.print(f"{r.detail} Nothing sent (pass --allow-empty to send anyway).")
    elif r.outcome == "dry_run":
        out.print(
            f"Dry run: would send {r.subject!r} to {plural(r.recipients, 'recipient')} of "
            f"{where} in {plural(r.batches, 'batch')} via {r.transport}{tail}. Nothing was sent."
        )
        if r.detail:
            out.print(r.detail)
    elif r.outcome == "cancelled":
        out.print("Not sent.")
    elif r.outcome == "busy":
        err.print(Text.assemble(("error:", "bold red"), f" {r.detail}; not sending it twice"))
    elif r.outcome == "stopped":
        out.print(
            f"Stopped after {plural(r.submitted, 'recipient')}; "
            "run the same command again to resume."
        )
    if r.outbox is not None and r.outcome in ("sent", "test_sent", "failed", "stopped"):
        out.print(f"Messages written to {r.outbox}/")
    for address, reason in r.rejected[:20]:
        err.print(Text.assemble(("refused:", "yellow"), f" {address}: {reason}"))
    if r.outcome == "failed":
        for error in r.errors:
            err.print(Text.assemble(("error:", "bold red"), f" {error}"))
        if r.submitted:
            err.print(
                f"{r.submitted:,} of {plural(r.recipients, 'recipient')} "
                f"{'was' if r.submitted == 1 else 'were'} submitted before it stopped."
            )
    if r.skipped:
        _print_addresses(
            "skipped:",
            f"{plural(len(r.skipped), 'recipient')} in doubt "
            f"{'was' if len(r.skipped) == 1 else 'were'} not sent again (--skip-ambiguous); "
            "they may not have the issue:",
            r.skipped,
        )
    if r.in_doubt:
        _print_in_doubt(r)
    if r.outcome == "failed" and not r.ambiguous:
        err.print("Run the same command again to resume: submitted batches are not sent twice.")


SHOWN_ADDRESSES = 20


def _print_addresses(label: str, what: str, addresses: list[str]) -> None:
    err.print(Text.assemble((label, "yellow")), what)
    for address in addresses[:SHOWN_ADDRESSES]:
        err.print(f"  {address}")
    if len(addresses) > SHOWN_ADDRESSES:
        err.print(
            f"  ... and {len(addresses) - SHOWN_ADDRESSES:,} more (newsletter status --in-doubt)"
        )


def _print_in_doubt(r: SendReport) -> None:
    """Who may or may not have the issue, and how to find out: it depends on the service."""
    batches = ", ".join(str(s) for s in r.ambiguous)
    if r.transport == "sendgrid":
        where = (
            f"batch {batches} was being submitted to SendGrid when an earlier run stopped; "
            "look its recipients up in SendGrid's Email Activity"
        )
    else:
        where = (
            "a message was being handed to the mail server when an earlier run stopped; "
            "look these addresses up in the mail server's log"
        )
    _print_addresses(
        "in doubt:",
        f"{plural(len(r.in_doubt), 'recipient')} may or may not have the issue ({where}):",
        r.in_doubt,
    )
    err.print(
        "Then run the same command with --resend-ambiguous (send to them again) or "
        "--skip-ambiguous (do not; they are recorded as skipped). Nobody else is affected: "
        "a rerun never sends anyone twice."
    )


@cli.command()
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
            row = ledger.issue(name, _date(date) or app.today())
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
                    f"{row.issue_date}  {row.list_name:<10} {row.status:<8} "
                    f"{row.recipients:>9,} {noun(row.recipients, 'recipient'):<10}  {what}"
                )
            return
        name = list_name or app.config.schedule.list
        row = ledger.issue(name, _date(date))  # type: ignore[arg-type]
        if row is None:
            out.print(f"No issue for list {name!r} on {_date(date)}.")
            return
        out.print(Text(row.subject or "", "bold"))
        out.print(
            f"list {row.list_name}, {row.issue_date}: {row.status}, "
            f"{plural(row.recipients, 'recipient')}, via {row.transport}"
        )
        if row.error:
            out.print(f"error: {row.error}")
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


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--transport",
    type=click.Choice(["sendgrid", "smtp", "outbox"]),
    help="How confirmation emails leave (default: delivery.transport).",
)
@click.pass_obj
def serve(opts: Options, host: str, port: int, transport: str | None) -> None:
    """Run the subscriber web app: sign-up, unsubscribe, SendGrid events, archive.

    Put it behind a reverse proxy that terminates TLS; see README.md.
    """
    import uvicorn

    from newsletter.web import create_app, web_parts

    config = opts.config()
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))  # the access log is what a server is read by
    with App(config) as app:
        asgi = create_app(web_parts(app, transport))
        out.print(f"Serving {config.newsletter.name} on http://{host}:{port} (Ctrl+C stops)")
        # uvicorn finishes the requests in flight, then raises the stop signal again for
        # whatever handler was there before; this one makes that a clean exit 0
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: None)
        uvicorn.run(
            asgi,
            host=host,
            port=port,
            log_config=None,  # our handlers and redaction
            access_log=False,  # ours leaves tokens and addresses out
            proxy_headers=True,
            forwarded_allow_ips=config.serve.forwarded_allow_ips,
            server_header=False,
            timeout_graceful_shutdown=10,
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


@cli.command()
@click.option("--list", "list_name", help="The list to send to (default: schedule.list).")
@click.option(
    "--transport",
    type=click.Choice(["sendgrid", "smtp", "outbox"]),
    help="Override delivery.transport.",
)
@click.option("--dry-run", is_flag=True, help="Print the next run times and exit.")
@click.option("--count", default=5, show_default=True, help="How many run times --dry-run prints.")
@click.pass_obj
def schedule(
    opts: Options, list_name: str | None, transport: str | None, dry_run: bool, count: int
) -> None:
    """Send the day's issue every day at [schedule] time; runs until SIGTERM.

    The schedule is kept in the state database: after a restart, a run missed
    within misfire_grace goes out late, older ones are reported as skipped.
    """
    from newsletter.scheduler import SchedulerService, trigger_for

    config = opts.config()
    if dry_run:
        tz = config.newsletter.tz
        trigger = trigger_for(config)
        out.print(
            f"{trigger!r}, list {list_name or config.schedule.list!r}, misfire_grace {config.schedule.misfire_grace}"
        )
        for moment in trigger.upcoming(dt.datetime.now(dt.UTC), count):
            out.print(
                f"{moment.astimezone(tz):%a %Y-%m-%d %H:%M %Z}  ({moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC)"
            )
        return
    logging.getLogger("newsletter.schedule").setLevel(logging.INFO)
    service = SchedulerService(
        opts.config_path, os.environ, list_name=list_name, transport=transport
    )
    sys.exit(service.serve())


# -- subscribers ---------------------------------------------------------------------


@cli.group()
def subscribers() -> None:
    """Manage list files (subscribers/<list>.csv)."""


def _list_file(app: App, list_name: str) -> Path:
    return list_path(app.config.subscribers.path, list_name)


def _print_import(report: ImportReport, target: Path) -> None:
    # file contents are not markup: "[/]" in a rejected row must print, not crash
    rejected = f", {plural(len(report.rejected), 'row')} rejected" if report.rejected else ""
    out.print(f"{target}: {report.added:,} added, {report.already:,} already on the list{rejected}")
    for problem in report.rejected:
        err.print(Text.assemble(("rejected:", "yellow"), f" line {problem.line}: {problem.reason}"))
    for email in report.suppressed:
        err.print(
            Text.assemble(("not re-subscribed:", "yellow")),
            f"{email} unsubscribed or bounced (--resubscribe overrides)",
        )
    for email in report.resubscribed:
        out.print(f"re-subscribed: {email}")


@subscribers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--list", "list_name", required=True, help="The list to add to (subscribers/LIST.csv)."
)
@click.option(
    "--resubscribe",
    is_flag=True,
    help="Also add addresses that unsubscribed, bounced or complained.",
)
@click.pass_obj
def subscribers_import(opts: Options, file: Path, list_name: str, resubscribe: bool) -> None:
    """Add the valid rows of a CSV file to a list; every rejected row is reported with its line.

    The valid rows are added even when others are rejected, and the exit status
    is then 1, so a script notices; fix the rejected rows and import the file
    again (rows already on the list are not added twice). Addresses kept out
    because they unsubscribed or bounced are not errors.
    """
    with App(opts.config()) as app:
        target = _list_file(app, list_name)
        report = import_subscribers(file, target, app.ledger, resubscribe=resubscribe)
    _print_import(report, target)
    if report.rejected:
        sys.exit(1)


@subscribers.command("add")
@click.argument("email")
@click.option(
    "--list", "list_name", required=True, help="The list to add to (subscribers/LIST.csv)."
)
@click.option("--name", default="", help="The person's name, as emails greet them.")
@click.option(
    "--resubscribe",
    is_flag=True,
    help="Add the address even if it unsubscribed, bounced or complained (with their consent).",
)
@click.pass_obj
def subscribers_add(
    opts: Options, email: str, list_name: str, name: str, resubscribe: bool
) -> None:
    """Add one address to a list."""
    with App(opts.config()) as app:
        target = _list_file(app, list_name)
        report = add_subscriber(
            target,
            email,
            app.ledger,
            name=name,
            resubscribe=resubscribe,
            subscribed_at=app.clock().isoformat(timespec="seconds"),
        )
    if report.rejected:
        raise SubscriberError(f"{email!r}: {report.rejected[0].reason.split(': ', 1)[-1]}")
    _print_import(report, target)


@subscribers.command("remove")
@click.argument("emails", nargs=-1, required=True)
@click.option("--list", "list_name", required=True)
@click.pass_obj
def subscribers_remove(opts: Options, emails: tuple[str, ...], list_name: str) -> None:
    """Remove addresses from a list file (to stop every email, use `suppress`)."""
    with App(opts.config()) as app:
        target = _list_file(app, list_name)
        removed = remove_addresses(target, emails)
    out.print(f"{target}: removed {len(removed)} of {len(emails)}")


@subscribers.command("list")
@click.option("--list", "list_name", required=True)
@click.pass_obj
def subscribers_list(opts: Options, list_name: str) -> None:
    """Print a list's addresses and names."""
    with App(opts.config()) as app:
        for subscriber in read_list(_list_file(app, list_name)):
            # rich would expand the tab; a hand-edited file's ESC must not reach the terminal
            click.echo(f"{printable(subscriber.email)}\t{printable(subscriber.name)}")


@subscribers.command("count")
@click.option("--list", "list_name", help="One list (default: every list).")
@click.pass_obj
def subscribers_count(opts: Options, list_name: str | None) -> None:
    """How many subscribers each list has, and how many of them would be emailed."""
    with App(opts.config()) as app:
        folder = app.config.subscribers.path
        paths = [_list_file(app, list_name)] if list_name else sorted(folder.glob("*.csv"))
        for path in paths:
            suppressed = app.ledger.suppressed(path.stem)
            people = [s.key for s in read_list(path)]
            active = sum(1 for key in people if key not in suppressed)
            out.print(
                f"{path.stem}: {plural(len(people), 'subscriber')}, {active:,} not suppressed"
            )


@subscribers.command("export")
@click.option("--list", "list_name", required=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="File (default: stdout)."
)
@click.pass_obj
def subscribers_export(opts: Options, list_name: str, output: Path | None) -> None:
    """Export a list as CSV, safe to open in a spreadsheet."""
    with App(opts.config()) as app:
        source = _list_file(app, list_name)
        if not source.is_file():  # a mistyped list name is not an empty list
            raise SubscriberError(f"{source}: list file not found")
        if output is None:
            export_csv(source, sys.stdout)
            return
        try:
            with output.open("w", encoding="utf-8", newline="") as handle:
                n = export_csv(source, handle)
        except OSError as exc:
            raise cannot_write("--output", output, exc) from None
    err.print(f"wrote {plural(n, 'row')} to {output}")


@subscribers.command("suppress")
@click.argument("emails", nargs=-1, required=True)
@click.option(
    "--reason", type=click.Choice(SUPPRESSION_REASONS), default="manual", show_default=True
)
@click.pass_obj
def subscribers_suppress(opts: Options, emails: tuple[str, ...], reason: str) -> None:
    """Never email these addresses again, on any list."""
    with App(opts.config()) as app:
        added = app.ledger.suppress([(e, reason) for e in emails], source="cli")
    out.print(f"suppressed {plural(added, 'new address')}")


@subscribers.command("unsuppress")
@click.argument("email")
@click.pass_obj
def subscribers_unsuppress(opts: Options, email: str) -> None:
    """Lift a suppression (only with the person's consent)."""
    with App(opts.config()) as app:
        lifted = app.ledger.unsuppress(email)
    out.print(f"{email}: {'no longer suppressed' if lifted else 'was not suppressed'}")


def main() -> None:
    # A send allocates millions of short-lived rows and tuples; reference counting frees
    # them, and a cycle collection every 700 allocations cost a quarter of the planning
    # time (bench/send.py). Collect far less often; garbage cycles are rare here.
    gc.set_threshold(100_000, 50, 100)
    cli(prog_name="newsletter")
