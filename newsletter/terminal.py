"""Terminal output that data cannot take over: no markup, no escape sequences.

Subjects, addresses, list columns and what a mail server said are printed as
they are, but an ESC or OSC sequence in them would drive the terminal (set its
title, clear it, forge a line), and `[link=...]` would be rich markup. The
console itself guards every string it prints, so no call site can forget.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from newsletter.controls import masked, printable


class SafeConsole(Console):
    def __init__(self, **options: Any) -> None:
        super().__init__(markup=False, highlight=False, soft_wrap=True, **options)

    def print(self, *objects: Any, **options: Any) -> None:
        super().print(*map(_plain, objects), **options)


def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Text):
        plain = masked(value.plain)
        if plain is not value.plain:
            value = value.copy()
            value.plain = plain
    return value
