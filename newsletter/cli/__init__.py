"""The `newsletter` command: parsing arguments and printing results, nothing more.

One module per group of commands: `base` (what they share: consoles, errors to
exit codes, options), `commands` (the root group: check, preview, send, serve,
schedule), `report` (what a send says when it is done), `status`, `subscribers`.
"""

from __future__ import annotations

from newsletter.cli.admin import admin
from newsletter.cli.commands import cli, main

cli.add_command(admin)

__all__ = ["cli", "main"]
