"""The `newsletter` command: parsing arguments and printing results, nothing more."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import webbrowser
from pathlib import Path

import click
from rich.console import Console
from rich.logging import RichHandler

from newsletter import __version__
from newsletter.app import App, empty_issue_message, preview_page
from newsletter.config import Config, find_config, load_config
from newsletter.errors import NewsletterError
from newsletter.preview import PreviewState, Watcher, make_server

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class Group(click.Group):
    """Turns a NewsletterError into one clear line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NewsletterError as exc:
            for line in str(exc).splitlines():
                err.print(f"[bold red]error:[/] {line}", markup=True, highlight=False)
            ctx.exit(exc.exit_code)


class Options:
    def __init__(self, config_path: Path | None) -> None:
        self.config_path = find_config(config_path, os.environ)

    def config(self) -> Config:
        return load_config(self.config_path)


DATE = click.DateTime(formats=["%Y-%m-%d"])


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
@click.version_option(__version__, prog_name="newsletter")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """Run a daily email newsletter: gather, render, preview, send."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=False)],
    )
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
    out.print(f"[bold]{email.subject}[/]")
    start = f"{issue.window.start.astimezone(tz):%Y-%m-%d %H:%M}" if issue.window.start else "…"
    out.print(f"window: {start} → {issue.window.end:%Y-%m-%d %H:%M} ({config.newsletter.timezone})")
    if issue.is_empty:
        out.print(empty_issue_message(issue))
    else:
        out.print(f"{len(issue.stories)} stories:")
        for story in issue.stories:
            out.print(
                f"  • {story.title} [dim]({story.source}, {story.published:%Y-%m-%d %H:%M})[/]"
            )
    out.print(
        f"HTML {email.html_bytes / 1024:.1f} KB, text {len(email.text.encode()) / 1024:.1f} KB"
    )
    problems = [str(p) for p in issue.problems] + list(email.warnings)
    for problem in problems:
        err.print(f"[yellow]problem:[/] {problem}")
    if problems:
        sys.exit(1)
    out.print("[green]ok[/]")


@cli.command()
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.option(
    "--port", default=8025, show_default=True, help="Port on 127.0.0.1 (0: any free one)."
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
        output.write_text(page.html, encoding="utf-8")
        for note in page.notes:
            err.print(f"[yellow]note:[/] {note}")
        err.print(
            f"wrote {output} ({len(page.html.encode()) / 1024:.1f} KB, {page.stories} stories)"
        )
        return

    state = PreviewState(build)
    page = state.rebuild()
    if page.error:
        raise_error = NewsletterError(page.error)
        raise raise_error
    for note in page.notes:
        err.print(f"[yellow]note:[/] {note}")
    server = make_server(state, port)
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


def main() -> None:
    cli(prog_name="newsletter")
