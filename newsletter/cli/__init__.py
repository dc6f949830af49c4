"""The `newsletter` command: parsing arguments and printing results, nothing more.

One module per command or group of commands, each imported only when it runs:
`base` (what they share: consoles, errors to exit codes, options, the lazy root
group), `commands` (the root group), `check`, `preview`, `send` (and `report`:
what a send says when it is done), `serve`, `schedule`, `status`, `subscribers`,
`undo` (cancel, pause, resume), `analytics` (report, events prune), `admin`.
"""

from __future__ import annotations

from newsletter.cli.commands import cli, main

__all__ = ["cli", "main"]
