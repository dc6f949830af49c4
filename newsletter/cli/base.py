"""What every command shares: the consoles (data never markup, never an escape), the
error-to-exit-code group, `--config` before or after the command, dates and paths."""

from __future__ import annotations

import datetime as dt
import importlib
import os
from pathlib import Path
from typing import Any

import click
from rich.text import Text

from newsletter.config import Config, find_config, load_config
from newsletter.errors import NewsletterError
from newsletter.terminal import SafeConsole

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


def day_of(value: dt.datetime | None) -> dt.date | None:
    return value.date() if value else None


class LazyGroup(Group):
    """The root group: each command's module imported when it is needed, not at start-up."""

    def __init__(self, *args: Any, commands: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, _, attribute = self.lazy[name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), self.lazy[name]
        return command
