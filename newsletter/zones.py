"""Each reader's own morning: a list's optional `timezone` column (an IANA name).

A scheduled SendGrid issue goes to a reader with a zone at the newsletter's send
time of day on the reader's clock, at the first such moment after the issue was
built (its attempt's anchor), so everyone gets the same issue within SendGrid's
72 hours. A reader without a zone, or with one nobody knows, gets the
newsletter's send time.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Iterator, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from newsletter.models import local_time_on

ZONE_COLUMN = "timezone"


@functools.lru_cache(maxsize=1024)
def known_zone(name: str) -> ZoneInfo | None:
    """The zone of that IANA name, or None: blank, unknown, or not a zone name at all."""
    text = name.strip()
    if not text or text.startswith(("/", ".")) or ".." in text:
        return None
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def reader_send_at(zone: ZoneInfo, at: dt.time, anchor: dt.datetime) -> dt.datetime:
    """The first moment at or after `anchor` at which `zone`'s clocks show `at` (a time
    the clocks skip moves on by the gap; one that happens twice is its first)."""
    day = anchor.astimezone(zone).date() - dt.timedelta(days=1)
    while (moment := local_time_on(day, at, zone)) < anchor:
        day += dt.timedelta(days=1)
    return moment


class ReaderTimes:
    """Each reader's `send_at`, from the newsletter's: None for the newsletter's own (its
    zone, no zone, an unknown one), so the request's top-level time applies."""

    def __init__(self, send_at: dt.datetime, zone: str, anchor: dt.datetime) -> None:
        self.own = ZoneInfo(zone)
        self.at = send_at.astimezone(self.own).time()
        self.anchor = anchor
        self._found: dict[str, int | None] = {}

    def of(self, name: str) -> int | None:
        if name not in self._found:
            zone = known_zone(name)
            self._found[name] = (
                None
                if zone is None or zone.key == self.own.key
                else int(reader_send_at(zone, self.at, self.anchor).timestamp())
            )
        return self._found[name]

    def earliest(self, names: Iterable[str], send_at: dt.datetime) -> dt.datetime:
        """The first moment any of these readers (or the newsletter's own) is due."""
        times = [t for t in map(self.of, set(names)) if t is not None]
        first = min(times, default=None)
        return min(send_at, dt.datetime.fromtimestamp(first, dt.UTC)) if first else send_at


def group_by_reader_time(
    planned: Iterable[tuple[list[str], list[Sequence[str]]]],
    times: ReaderTimes,
    batch_size: int,
    later: dict[int, dt.datetime],
) -> Iterator[tuple[list[str], list[Sequence[str]]]]:
    """The plan's batches regrouped so that each holds readers due at one moment (SMTP
    and the outbox, which cannot hold mail until then, send each group at its time);
    `later` gets each batch number that is not due at once, with its moment."""
    groups: dict[int | None, list[Sequence[str]]] = {}
    seq = 0

    def batch(due: int | None) -> list[Sequence[str]]:
        nonlocal seq
        seq += 1
        if due is not None:
            later[seq] = dt.datetime.fromtimestamp(due, dt.UTC)
        return groups.pop(due)

    columns: list[str] = []
    for columns, rows in planned:
        index = columns.index(ZONE_COLUMN)
        for row in rows:
            due = times.of(row[index])
            groups.setdefault(due, []).append(row)
            if len(groups[due]) == batch_size:
                yield columns, batch(due)
    for due in sorted(groups, key=lambda moment: moment or 0):
        yield columns, batch(due)
