"""Words for output: counted nouns ("1 story", "2 stories", never "1 stories") and
moments in the newsletter's time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo


def noun(count: int, word: str, words: str | None = None) -> str:
    """The singular for exactly one, else the plural (given, or by English's regular rules)."""
    if count == 1:
        return word
    if words is not None:
        return words
    if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def plural(count: int, word: str, words: str | None = None) -> str:
    """The count with thousands separators, then the noun that goes with it."""
    return f"{count:,} {noun(count, word, words)}"


def moment(when: dt.datetime, zone: str) -> str:
    """A moment as the editor reads it: in the newsletter's time zone, named."""
    return f"{when.astimezone(ZoneInfo(zone)):%Y-%m-%d %H:%M} ({zone})"
