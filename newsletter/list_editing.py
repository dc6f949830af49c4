"""Changing list files, and exporting them: import a CSV, add or remove an address,
export for a spreadsheet.

Writing is atomic (temp file, fsync, rename) under a lock file, so a crash or a
concurrent command never leaves half a list behind. Every address added is
checked in full (`check_address`), and a value that could become a header line or
a terminal command is refused with its line.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

from newsletter.controls import find_control
from newsletter.errors import SubscriberError
from newsletter.subscribers import (
    STANDARD_COLUMNS,
    RowProblem,
    check_address,
    list_name,
    list_names,
    open_rows,
    read_table,
)
from newsletter.zones import ZONE_COLUMN, known_zone

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of one list file, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_table(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Replace the file atomically: readers see the old list or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; keep the list's own mode (or the umask's default)
        os.fchmod(fd, _mode_of(path))
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@dataclass
class ImportReport:
    added: int = 0
    already: int = 0
    suppressed: list[str] = field(default_factory=list)
    rejected: list[RowProblem] = field(default_factory=list)
    resubscribed: list[str] = field(default_factory=list)


def merge_rows(
    path: Path,
    incoming: Sequence[tuple[int, dict[str, str]]],
    suppressed: Set[str],
    *,
    resubscribe: bool,
    on_resubscribe: Callable[[str], None],
) -> ImportReport:
    """Add rows (line number, column -> value) to a list file, validating each address.

    Suppressed addresses stay out unless `resubscribe`; then `on_resubscribe`
    lifts their suppression. The file is rewritten once, atomically, under lock.
    """
    report = ImportReport()
    with locked(path):
        header, rows = read_table(path)
        lowered = [h.lower() for h in header]
        existing = {row[lowered.index("email")].strip().lower() for row in rows if row}
        added_rows: list[dict[str, str]] = []
        for line, values in incoming:
            raw = values.get("email", "").strip()
            try:
                email = check_address(raw)
            except SubscriberError as exc:
                report.rejected.append(
                    RowProblem(line, f"{raw!r}: {exc}" if raw else "no email address")
                )
                continue
            control = _control_in(values) or _bad_zone(values)
            if control is not None:
                report.rejected.append(RowProblem(line, control))
                continue
            key = email.lower()
            if key in existing:
                report.already += 1
                if resubscribe and key in suppressed:  # still in the file, unsubscribed
                    report.resubscribed.append(email)
                continue
            if key in suppressed:
                if not resubscribe:
                    report.suppressed.append(email)
                    continue
                report.resubscribed.append(email)
            existing.add(key)
            added_rows.append({**values, "email": email})
            report.added += 1
        if added_rows:
            for values in added_rows:
                for column in values:
                    if column.lower() not in lowered:
                        header.append(column)
                        lowered.append(column.lower())
            width = len(header)
            rows = [row + [""] * (width - len(row)) for row in rows]
            for values in added_rows:
                by_lower = {k.lower(): v for k, v in values.items()}
                rows.append([by_lower.get(column, "") for column in lowered])
            write_table(path, header, rows)
        # lifted only once they are on the list: a failed write leaves them suppressed
        for email in report.resubscribed:
            on_resubscribe(email.lower())
    return report


def _control_in(values: Mapping[str, str]) -> str | None:
    """Why a row cannot be added, if a value holds a control character: a line break in
    a name would be a header line of its own in every email, an ESC a terminal command.
    Columns of the list's own (a postal address) may span lines: they only reach bodies."""
    for column, value in values.items():
        one_line = column.lower() in STANDARD_COLUMNS
        code = find_control(value if one_line else value.replace("\r\n", "").replace("\n", ""))
        if code is not None:
            kind = "one line of plain text" if one_line else "plain text"
            return f"{column} contains a control character ({code}); it must be {kind}"
    return None


def _bad_zone(values: Mapping[str, str]) -> str | None:
    """Why a reader's `timezone` cannot be used: a zone nobody knows would quietly fall
    back to the newsletter's, sending them the issue at the wrong hour."""
    zone = values.get(ZONE_COLUMN, "")
    if zone and known_zone(zone) is None:
        return (
            f"timezone {zone!r} is not a time zone name (an IANA name such as "
            "America/New_York; leave it empty for the newsletter's own)"
        )
    return None


def read_import_file(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[RowProblem]]:
    """Rows of a CSV to import, as (line, column -> value), with malformed rows set aside."""
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[RowProblem] = []
    with open_rows(path) as table:
        width = len(table.header)
        for line, row in table:
            if len(row) != width:
                problems.append(
                    RowProblem(line, f"expected {width} fields like the header, found {len(row)}")
                )
                continue
            values = {
                column.lower(): value.strip()
                for column, value in zip(table.header, row, strict=True)
            }
            rows.append((line, values))
    return rows, problems


def remove_addresses(path: Path, addresses: Sequence[str]) -> list[str]:
    """Remove addresses from a list file; returns the ones that were there."""
    wanted = {a.strip().lower() for a in addresses}
    with locked(path):
        header, rows = read_table(path)
        index = [h.lower() for h in header].index("email")
        kept = [row for row in rows if row[index].strip().lower() not in wanted]
        removed = [row[index] for row in rows if row[index].strip().lower() in wanted]
        if removed:
            write_table(path, header, kept)
    return removed


def export_csv(path: Path, out: TextIO) -> int:
    """Write a list as CSV that spreadsheets cannot mistake for formulas."""
    header, rows = read_table(path)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([_formula_safe(h) for h in header])
    for row in rows:
        writer.writerow([_formula_safe(cell) for cell in row])
    return len(rows)


def _formula_safe(cell: str) -> str:
    """Cells starting with = + - @ (or tab/CR) run as formulas in Excel; a quote defuses them."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


class SuppressionStore(Protocol):
    """What list editing needs of the suppressions: `newsletter.state.suppressions`'s
    store of the same name, or a test's stand-in."""

    def suppressed(self, list_name: str | None = None) -> frozenset[str]: ...

    def resubscribe(self, email: str, list_name: str, other_lists: Iterable[str]) -> bool: ...


def other_lists(target: Path) -> list[str]:
    """The lists beside `target` in its folder."""
    return [name for name in list_names(target.parent) if name != target.stem]


def import_subscribers(
    source: Path, target: Path, store: SuppressionStore, *, resubscribe: bool = False
) -> ImportReport:
    """Validate and merge a CSV into a list; suppressed people stay out unless asked explicitly."""
    rows, problems = read_import_file(source)
    report = merge_rows(
        target,
        rows,
        store.suppressed(list_name(target)),
        resubscribe=resubscribe,
        on_resubscribe=lambda email: store.resubscribe(
            email, list_name(target), other_lists(target)
        ),
    )
    report.rejected = sorted(problems + report.rejected, key=lambda p: p.line)
    return report


def add_subscriber(
    target: Path,
    email: str,
    store: SuppressionStore,
    *,
    name: str = "",
    resubscribe: bool = False,
    source: str = "cli",
    subscribed_at: str = "",
    also_lists: Iterable[str] = (),
) -> ImportReport:
    """Add one address; `also_lists`: lists without a file yet that a lifted suppression keeps."""
    values = {"email": email, "name": name, "subscribed_at": subscribed_at, "source": source}
    return merge_rows(
        target,
        [(0, values)],
        store.suppressed(list_name(target)),
        resubscribe=resubscribe,
        on_resubscribe=lambda email: store.resubscribe(
            email, list_name(target), [*other_lists(target), *also_lists]
        ),
    )
