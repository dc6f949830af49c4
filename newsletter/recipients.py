"""A list as a send reads it: its file, its columns against the email's tokens, and its
subscribers a chunk at a time, with invalid rows stopping the send unless skipped.
Shared by the day's send and the test send."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from newsletter.errors import SubscriberError
from newsletter.planning import BUILT_IN_TOKENS
from newsletter.seen import HashedSeen, RepeatedAddresses, Seen
from newsletter.subscribers import (
    Chunk,
    ListReport,
    column_token,
    list_path,
    read_chunks,
    read_header,
)
from newsletter.zones import ZONE_COLUMN

FIX_OR_SKIP = "\nfix these rows (or pass --skip-invalid to send without them)"


def list_file(folder: Path, list_name: str) -> Path:
    return list_path(folder, list_name)


def check_columns(path: Path, tokens: frozenset[str]) -> None:
    """A token the list has no column for would be sent empty: refuse before sending."""
    have = {column_token(h) for h in read_header(path)} if path.exists() else set()
    missing = sorted(set(tokens) - BUILT_IN_TOKENS - have)
    if missing:
        names = ", ".join(f"{{{{ subscriber.{m} }}}}" for m in missing)
        raise SubscriberError(f"{path}: the templates use {names} but the list has no such column")


def plan_tokens(path: Path, tokens: frozenset[str]) -> frozenset[str]:
    """The columns a plan stores: the ones the email uses, and the readers' time zones
    when the list has them (`zones.py`)."""
    if path.exists() and ZONE_COLUMN in {column_token(h) for h in read_header(path)}:
        return frozenset(tokens | {ZONE_COLUMN})
    return frozenset(tokens)


def read_subscribers(
    path: Path, skip_invalid: bool, report: ListReport, seen: Seen | None = None
) -> Iterator[Chunk]:
    """The list's subscribers, a chunk at a time; afterwards, invalid rows stop the send
    unless skipped. With `HashedSeen`, a list that may hold an address twice raises
    `RepeatedAddresses` at its end: read it again with `WatchedSeen` (see `seen.py`)."""
    yield from read_chunks(path, report, seen=seen)
    if isinstance(seen, HashedSeen) and (repeated := seen.repeated()):
        raise RepeatedAddresses(repeated)
    if report.problems and not skip_invalid:
        report.raise_if_problems(FIX_OR_SKIP)
