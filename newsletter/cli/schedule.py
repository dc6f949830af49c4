"""`newsletter schedule`: the daily send, run by APScheduler until SIGTERM."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys

import click

from newsletter.cli.base import Command, Options, out


@click.command(cls=Command)
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
