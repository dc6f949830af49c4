"""The root `newsletter` group and its commands that need no module of their own:
check, preview, send, serve, schedule."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.text import Text

from newsletter import __version__, logs
from newsletter.app import App, empty_issue_message, lint_issue, list_problems, preview_page
from newsletter.cli.analytics import events, report
from newsletter.cli.base import (
    DATE,
    Group,
    Options,
    cannot_write,
    day_of,
    err,
    out,
)
from newsletter.cli.report import _print_report
from newsletter.cli.status import status
from newsletter.cli.subscribers import subscribers
from newsletter.cli.undo import cancel, pause, resume
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.models import SendPreview, SendRequest
from newsletter.progress import RichProgress
from newsletter.scheduling import parse_send_time
from newsletter.send import Sending
from newsletter.timings import Timings
from newsletter.words import plural


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
@click.option(
    "--dns",
    is_flag=True,
    help="Also check the From domain's SPF, DKIM, DMARC and MX records, as receivers do.",
)
@click.option(
    "--dns-server", metavar="HOST[:PORT]", help="Ask this DNS server (default: the system's)."
)
@click.pass_obj
def check(opts: Options, date: dt.datetime | None, dns: bool, dns_server: str | None) -> None:
    """Validate the config, gather and render the issue, lint it for deliverability, and
    list any problems.

    Exits 1 when a story source failed, the lint found an error or a warning, or (with
    --dns) a record is missing or wrong.
    """
    config = opts.config()
    with App(config) as app:
        built = app.build_issue(day_of(date))
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
    from newsletter.catalogues import untranslated  # Babel's extraction: `check` only

    problems += untranslated(app.renderer.language, config.templates.path)
    for problem in problems:
        err.print(Text.assemble(("problem:", "yellow"), f" {problem}"))
    findings = [] if issue.is_empty else lint_issue(config, email)  # nothing would go out
    for finding in findings:
        style = "bold red" if finding.level == "error" else "yellow"
        err.print(Text.assemble((f"{finding.level}:", style), f" {finding}"))
    failed = bool(problems or findings)
    if dns:
        failed |= _check_dns(config, dns_server)
    if failed:
        sys.exit(1)
    out.print(Text("ok", "green"))


def _check_dns(config: Config, server: str | None) -> bool:
    """The From domain's records, a line each; True if one is missing or wrong."""
    from newsletter.dnscheck import DnsUnreachable, check_domain, resolver_for

    domain = config.sender.from_email.rpartition("@")[2]
    out.print(f"DNS of {domain}, for sending with {config.delivery.transport}:")
    try:
        found = check_domain(
            domain, config.delivery.transport, config.smtp.dkim_selector, resolver_for(server)
        )
    except DnsUnreachable as exc:
        raise NewsletterError(f"cannot check the DNS of {domain}: {exc}") from None
    marks = {
        "ok": ("ok:", "green"),
        "warning": ("warning:", "yellow"),
        "error": ("error:", "bold red"),
    }
    for finding in found:
        (out if finding.level == "ok" else err).print(
            Text.assemble(marks[finding.level], f" {finding.record}: {finding.message}")
        )
    return any(f.level == "error" for f in found)


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
        return preview_page(opts.config_path, os.environ, day_of(date))

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
        import webbrowser  # only `preview` opens a browser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        watcher.stop()
        server.server_close()


# -- sending -------------------------------------------------------------------------


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
    "--at",
    "at",
    metavar="TIME",
    help="SendGrid: submit now, delivered at TIME (07:00 on the issue's date, or "
    "2024-03-05 07:00); cancellable until 10 minutes before (newsletter cancel).",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Send a corrected issue for a date whose issue was cancelled.",
)
@click.option(
    "--join",
    is_flag=True,
    help="If another machine is sending this issue (one shared database), help it: take "
    "batches beside it. Otherwise send the issue.",
)
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
    at: str | None,
    replace: bool,
    join: bool,
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
        date=day_of(date),
        transport=transport,
        to=to,
        dry_run=dry_run,
        allow_empty=allow_empty,
        sandbox=sandbox,
        resend_ambiguous=resend_ambiguous,
        skip_ambiguous=skip_ambiguous,
        skip_invalid=skip_invalid,
        join=join,
        replace=replace,
    )
    if timings is not None and not timings.parent.is_dir():  # said before, not after, a send
        raise NewsletterError(f"--timings {timings}: the folder {timings.parent} does not exist")
    phases = Timings()
    config = opts.config()
    if at is not None:
        day = request.date or dt.datetime.now(config.newsletter.tz).date()
        request = dataclasses.replace(
            request, send_at=parse_send_time(at, day, config.newsletter.tz)
        )
    with App(config) as app, stop_on_signal() as stopping:
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


cli.add_command(status)
cli.add_command(subscribers)
cli.add_command(report)
cli.add_command(events)
for undo in (cancel, pause, resume):
    cli.add_command(undo)


def main() -> None:
    # A send allocates millions of short-lived rows and tuples; reference counting frees
    # them, and a cycle collection every 700 allocations cost a quarter of the planning
    # time (bench/send.py). Collect far less often; garbage cycles are rare here.
    gc.set_threshold(100_000, 50, 100)
    cli(prog_name="newsletter")
