"""The root `newsletter` group: global options, and each command loaded when it is run.

A command's module is imported only when that command runs (`LazyGroup`), so
`newsletter status` does not pay for rendering, sending or the web app.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

import click

from newsletter import __version__, logs
from newsletter.cli.base import LazyGroup, Options

# command -> "module:attribute", imported when the command runs (or `--help` lists it)
COMMANDS = {
    "check": "newsletter.cli.check:check",
    "preview": "newsletter.cli.preview:preview",
    "send": "newsletter.cli.send:send",
    "serve": "newsletter.cli.serve:serve",
    "schedule": "newsletter.cli.schedule:schedule",
    "status": "newsletter.cli.status:status",
    "report": "newsletter.cli.analytics:report",
    "events": "newsletter.cli.analytics:events",
    "subscribers": "newsletter.cli.subscribers:subscribers",
    "cancel": "newsletter.cli.undo:cancel",
    "pause": "newsletter.cli.undo:pause",
    "resume": "newsletter.cli.undo:resume",
    "admin": "newsletter.cli.admin:admin",
}


@click.group(cls=LazyGroup, commands=COMMANDS)
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


def main() -> None:
    # A send allocates millions of short-lived rows and tuples; reference counting frees
    # them, and a cycle collection every 700 allocations cost a quarter of the planning
    # time (bench/send.py). Collect far less often; garbage cycles are rare here.
    gc.set_threshold(100_000, 50, 100)
    try:
        cli(prog_name="newsletter")
    finally:
        # everything left is freed as the process ends: a last collection walking every
        # object would only add a fifth of a second to each command (bench/report.py)
        gc.freeze()
