"""`newsletter send`: the day's issue to a list, exactly once, or a test send."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import click
from rich.text import Text

from newsletter.cli.base import DATE, Command, Options, cannot_write, day_of, err
from newsletter.cli.report import _print_report
from newsletter.config import Config
from newsletter.errors import NewsletterError, SubscriberError
from newsletter.models import TEST_LIST, SendPreview, SendRequest
from newsletter.sender_processes import SenderProcesses, for_a_send
from newsletter.subscribers import list_path
from newsletter.timings import Timings
from newsletter.words import plural


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


@click.command(cls=Command)
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
    with started_early(config, request, confirmed=yes) as senders:
        # imported once the senders are started: they import theirs beside these
        from newsletter.app import App
        from newsletter.progress import RichProgress
        from newsletter.scheduling import parse_send_time
        from newsletter.send import Sending

        if at is not None:
            day = request.date or dt.datetime.now(config.newsletter.tz).date()
            request = dataclasses.replace(
                request, send_at=parse_send_time(at, day, config.newsletter.tz)
            )
        with App(config) as app, stop_on_signal() as stopping:
            sending = Sending(
                app,
                progress=RichProgress(err),
                should_stop=stopping.is_set,
                timings=phases,
                senders=senders,
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
def started_early(
    config: Config, request: SendRequest, *, confirmed: bool
) -> Iterator[SenderProcesses | None]:
    """The day's send of a large list, confirmed already: its sender processes start now,
    before this process imports what it needs to render and plan (a second core does
    their imports meanwhile). Let go at the end, whether the send took them or not."""
    senders = None
    list_name = request.list_name or config.schedule.list
    trial = request.to or request.sandbox or list_name == TEST_LIST
    if confirmed and not (trial or request.dry_run or request.join):
        d = config.delivery
        with contextlib.suppress(SubscriberError):  # a bad list name: the send says so
            path = list_path(config.subscribers.path, list_name)
            senders = for_a_send(request.transport or d.transport, d.workers, path, d.batch_size)
    try:
        yield senders
    finally:
        if senders is not None:
            senders.close()


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
