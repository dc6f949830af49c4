"""`newsletter subscribers`: list files (import, add, remove, list, count, export) and
suppressions."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.text import Text

from newsletter.app import App
from newsletter.cli.base import Group, Options, cannot_write, err, out
from newsletter.controls import printable
from newsletter.errors import SubscriberError
from newsletter.list_editing import (
    ImportReport,
    add_subscriber,
    export_csv,
    import_subscribers,
    remove_addresses,
)
from newsletter.state.suppressions import SUPPRESSION_REASONS
from newsletter.subscribers import list_path, read_list
from newsletter.words import plural


@click.group(cls=Group)
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
