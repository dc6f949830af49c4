"""`newsletter cancel`, `pause` and `resume`: an issue submitted ahead, taken back (or
held, or let go) before SendGrid delivers it (`newsletter/undo.py`)."""

from __future__ import annotations

import datetime as dt

import click

from newsletter.app import App
from newsletter.cli.base import DATE, Command, Options, day_of, out
from newsletter.undo import change_schedule

HELP = {
    "cancel": "Take back an issue submitted ahead (send --at, [schedule] submit_ahead): "
    "SendGrid does not deliver it. Until 10 minutes before its send time.",
    "pause": "Hold an issue submitted ahead past its send time, until `resume` (at most 72 "
    "hours). Until 10 minutes before its send time.",
    "resume": "Let a paused issue go: at its send time, or at once if that has passed.",
}


def _command(action: str) -> click.Command:
    @click.command(name=action, cls=Command, help=HELP[action])
    @click.option("--list", "list_name", help="The issue's list (default: schedule.list).")
    @click.option("--date", type=DATE, help="The issue's date (default: today).")
    @click.pass_obj
    def command(opts: Options, list_name: str | None, date: dt.datetime | None) -> None:
        with App(opts.config()) as app:
            name = list_name or app.config.schedule.list
            out.print(change_schedule(app, name, day_of(date) or app.today(), action))

    return command


cancel, pause, resume = (_command(action) for action in ("cancel", "pause", "resume"))
