"""List files: one CSV per list in the subscribers folder (`main.csv`, `test.csv`),
and reading them: whole, in chunks for a send, in parts for its senders, or looking
one address up.

Reading is strict: a bad row names its line. Changing a list (import, add, remove)
and exporting it are `list_editing.py`'s.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, BinaryIO

from newsletter.config import LIST_NAME_PATTERN
from newsletter.controls import CONTROL_CLASS
from newsletter.errors import SubscriberError
from newsletter.models import Subscriber
from newsletter.seen import ExactSeen, Seen

LIST_NAME_RE = re.compile(LIST_NAME_PATTERN)
STANDARD_COLUMNS = ("email", "name", "first_name", "subscribed_at", "source")
# Cheap enough for a million rows, strict enough that the mail service will not
# reject a whole request for one address (nor a header or an SMTP command be
# broken by one); `import` and `add` check fully.
_NOT_IN_ADDRESS = rf"@\s,;<>()\[\]\"\\{CONTROL_CLASS}"
_PLAUSIBLE = re.compile(rf"^[^{_NOT_IN_ADDRESS}]+@[^{_NOT_IN_ADDRESS}]+\.[^{_NOT_IN_ADDRESS}.]+$")
_ADDRESS = rf"[^{_NOT_IN_ADDRESS}]+@[^{_NOT_IN_ADDRESS}]+\.[^{_NOT_IN_ADDRESS}.]+"
_ADDRESS_LINES = re.compile(rf"(?:{_ADDRESS}\n)*{_ADDRESS}")


def all_plausible(emails: Sequence[str]) -> bool:
    """`_PLAUSIBLE` for every address of a chunk, in one regex pass over all of them, one
    per line (a third faster than a match each); a line break inside an address would
    make two lines of one, so their count is checked too."""
    joined = "\n".join(emails)
    return joined.count("\n") == len(emails) - 1 and bool(_ADDRESS_LINES.fullmatch(joined))


_NO_FIELDS: dict[str, str] = {}  # shared by every row without extra columns; never written


def column_token(column: str) -> str:
    """A column name as a template token name: `Company Name` -> `company_name`."""
    token = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_")
    return token if token and token[0].isalpha() else f"col_{token}"


def list_path(folder: Path, name: str) -> Path:
    if not LIST_NAME_RE.match(name):
        raise SubscriberError(
            f"invalid list name {name!r}: use lower-case letters, digits, '-' and '_'"
        )
    return folder / f"{name}.csv"


def list_name(path: Path) -> str:
    """The list a list file holds: its name without `.csv`."""
    return path.stem


def check_address(address: str) -> str:
    """The normalised address, or SubscriberError with the reason (syntax only, no DNS)."""
    # imported here: `import` and `add` check fully, a send only needs _PLAUSIBLE
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise SubscriberError(str(exc)) from None


@dataclass
class RowProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class ListReport:
    """What reading a list found besides its subscribers."""

    path: Path
    duplicates: int = 0
    problems: list[RowProblem] = field(default_factory=list)
    unlisted: int = 0  # more problems, counted but not kept (a list read in parts)

    def raise_if_problems(self, hint: str = "") -> None:
        if self.problems:
            shown = "\n".join(f"{self.path}: {p}" for p in self.problems[:20])
            more = len(self.problems) + self.unlisted - 20
            extra = f"\n... and {more} more" if more > 0 else ""
            raise SubscriberError(f"{shown}{extra}{hint}")


class _Rows:
    """A strict CSV reader over a list file that reports line numbers.

    `lines` may be a part of the file with its header line put first: `line_offset`
    is then what to add to the reader's line numbers to name the file's lines.
    """

    def __init__(self, path: Path, lines: Iterable[str], line_offset: int = 0) -> None:
        self.path = path
        self.line_offset = line_offset
        self.reader = csv.reader(lines, strict=True)
        try:
            header = next(self.reader)
        except StopIteration:
            raise SubscriberError(
                f"{path}: the file is empty (it needs an 'email' header)"
            ) from None
        self.header = [h.strip() for h in header]
        lowered = [h.lower() for h in self.header]
        if "email" not in lowered:
            raise SubscriberError(
                f"{path}: line 1: no 'email' column (the header has: {', '.join(self.header)})"
            )
        self.email_index = lowered.index("email")
        self.name_index = lowered.index("name") if "name" in lowered else None
        self.first_index = lowered.index("first_name") if "first_name" in lowered else None
        self.extra = [
            (i, column_token(h))
            for i, h in enumerate(self.header)
            if h.lower() not in ("email", "name", "first_name")
        ]

    def __iter__(self) -> Iterator[tuple[int, list[str]]]:
        try:
            # a quoted field can span lines: a row is numbered by the line it starts on
            start = self.reader.line_num + 1
            for row in self.reader:
                line, start = start, self.reader.line_num + 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank lines are harmless
                yield line, row
        except csv.Error as exc:
            raise SubscriberError(f"{self.path}: line {self.reader.line_num}: {exc}") from None
        except UnicodeDecodeError:
            raise SubscriberError(
                f"{self.path}: not UTF-8 text near line {self.reader.line_num + 1} "
                "(save it as 'CSV UTF-8')"
            ) from None


@contextlib.contextmanager
def open_rows(path: Path) -> Iterator[_Rows]:
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise SubscriberError(f"{path}: list file not found") from None
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        try:
            yield _Rows(path, handle)
        except UnicodeDecodeError:
            raise SubscriberError(f"{path}: not UTF-8 text (save it as 'CSV UTF-8')") from None


CHUNK_ROWS = 2000


@dataclass(frozen=True, slots=True)
class Chunk:
    """A few thousand rows of a list file, column by column: planning a send reads
    columns, and a million Subscriber tuples would cost more than the reading."""

    emails: list[str]
    keys: list[str]  # the addresses lower-cased: one person, one key
    names: list[str]
    firsts: list[str]
    fields: list[Mapping[str, str]]

    @classmethod
    def of(cls, subscribers: Sequence[Subscriber]) -> Chunk:
        return cls(
            [s.email for s in subscribers],
            [s.key for s in subscribers],
            [s.name for s in subscribers],
            [s.first_name for s in subscribers],
            [s.fields for s in subscribers],
        )

    def __len__(self) -> int:
        return len(self.emails)

    def subscribers(self) -> list[Subscriber]:
        return list(map(Subscriber, self.emails, self.names, self.firsts, self.fields))


CHUNK_ROWS = 2000


def read_list(
    path: Path, report: ListReport | None = None, *, full_check: bool = False
) -> Iterator[Subscriber]:
    """Subscribers of a list file in file order, each address once.

    Rows with problems are skipped and recorded in `report`; the caller decides
    whether that stops a send (it does, unless told otherwise).
    """
    for chunk in read_chunks(path, report, full_check=full_check):
        yield from chunk.subscribers()


def read_chunks(
    path: Path,
    report: ListReport | None = None,
    *,
    full_check: bool = False,
    seen: Seen | None = None,
    part: ListPart | None = None,
) -> Iterator[Chunk]:
    """`read_list` a few thousand rows at a time: a chunk without problems (nearly all
    of them) is checked with C-level set and map calls instead of a loop per row.

    `seen` keeps the addresses met so far (by default every one, exactly; a send keeps
    hashes, see `newsletter.seen`); `part` reads only that part of the file."""
    report = report if report is not None else ListReport(path)
    seen = seen if seen is not None else ExactSeen()
    opened = open_rows(path) if part is None else _open_part(path, part)
    with opened as rows:
        yield from _chunks(rows, report, full_check, seen)


def _chunks(rows: _Rows, report: ListReport, full_check: bool, seen: Seen) -> Iterator[Chunk]:
    reader, offset, path = rows.reader, rows.line_offset, rows.path
    try:
        while True:
            first_line = reader.line_num + 1 + offset
            block = list(islice(reader, CHUNK_ROWS))
            if not block:
                return
            clean = None if full_check else _clean(block, rows, seen)
            yield clean or _checked(block, first_line, rows, seen, report, full_check)
    except csv.Error as exc:
        raise SubscriberError(f"{path}: line {reader.line_num + offset}: {exc}") from None
    except UnicodeDecodeError:
        line = reader.line_num + 1 + offset
        raise SubscriberError(
            f"{path}: not UTF-8 text near line {line} (save it as 'CSV UTF-8')"
        ) from None


@dataclass(frozen=True)
class ListPart:
    """Bytes `start` to `end` of a list file, whole rows, the first on line `first_line`:
    senders each read and plan one (`list_parts`)."""

    start: int
    end: int
    first_line: int


def list_parts(path: Path, count: int) -> list[ListPart]:
    """The rows of a list file in up to `count` parts of about equal size, each beginning
    at the start of a row: after a line break outside quotes (a quoted field can hold
    one; an even number of `"` before a point says it is outside), so no row is cut."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        header = handle.readline()
        position, quotes, breaks = len(header), header.count(b'"'), header.count(b"\n")
        bounds = [(position, 1 + breaks)]  # where each part starts, and its line
        targets = [size * k // count for k in range(1, count)]
        while targets:
            block = handle.read(1 << 20)
            if not block:
                break
            at = 0
            while targets and (at := max(at, targets[0] - position)) < len(block):
                cut = block.find(b"\n", at)
                if cut < 0:
                    break
                head = block[: cut + 1]
                at = cut + 1
                if (quotes + head.count(b'"')) % 2 == 0:  # outside quotes: a row starts here
                    bounds.append((position + at, 1 + breaks + head.count(b"\n")))
                    targets.pop(0)
            quotes += block.count(b'"')
            breaks += block.count(b"\n")
            position += len(block)
    ends = [start for start, _ in bounds[1:]] + [size]
    return [
        ListPart(start, end, line)
        for (start, line), end in zip(bounds, ends, strict=True)
        if end > start
    ]


@contextlib.contextmanager
def _open_part(path: Path, part: ListPart) -> Iterator[_Rows]:
    """A part of a list file read as a list of its own: the header line, then its rows."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SubscriberError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        header = handle.readline().decode("utf-8-sig")
        text = io.TextIOWrapper(
            io.BufferedReader(_Slice(handle, part.start, part.end)), encoding="utf-8", newline=""
        )
        yield _Rows(path, chain([header], text), line_offset=part.first_line - 2)


class _Slice(io.RawIOBase):
    """Bytes `start` to `end` of an open file, as a stream of their own."""

    def __init__(self, handle: BinaryIO, start: int, end: int) -> None:
        self.handle, self.left = handle, end - start
        handle.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self.left)
        if size <= 0:
            return 0
        got = self.handle.readinto(memoryview(buffer)[:size])
        self.left -= got
        return got


def _clean(block: list[list[str]], rows: _Rows, seen: Seen) -> Chunk | None:
    """The block as a Chunk if every row is well formed, plausible and new; else None
    (and `seen` untouched), for the row-by-row path to say what is wrong."""
    if set(map(len, block)) != {len(rows.header)}:
        return None
    at = rows.email_index
    emails = [row[at].strip() for row in block]
    if not all_plausible(emails):
        return None
    keys = list(map(str.lower, emails))
    if len(set(keys)) != len(keys) or not seen.fresh(keys):
        return None
    return _chunk(block, emails, keys, rows)


def _chunk(block: list[list[str]], emails: list[str], keys: list[str], rows: _Rows) -> Chunk:
    count = len(block)
    name_at, first_at, extra = rows.name_index, rows.first_index, rows.extra
    names = [row[name_at].strip() for row in block] if name_at is not None else [""] * count
    firsts = [row[first_at].strip() for row in block] if first_at is not None else [""] * count
    fields = (
        [{token: row[i] for i, token in extra} for row in block] if extra else [_NO_FIELDS] * count
    )
    return Chunk(emails, keys, names, firsts, fields)


def _checked(
    block: list[list[str]],
    first_line: int,
    rows: _Rows,
    seen: Seen,
    report: ListReport,
    full_check: bool,
) -> Chunk:
    """Row by row, naming the line of every problem (a quoted field may span lines)."""
    width = len(rows.header)
    kept: list[list[str]] = []
    emails: list[str] = []
    keys: list[str] = []
    in_block: set[str] = set()  # exact within the block, whatever `seen` keeps
    line = first_line
    for row in block:
        row_line, line = line, line + 1 + sum(field.count("\n") for field in row)
        if len(row) != width:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank lines are harmless
            report.problems.append(
                RowProblem(row_line, f"expected {width} fields like the header, found {len(row)}")
            )
            continue
        email = row[rows.email_index].strip()
        if full_check:
            try:
                email = check_address(email)
            except SubscriberError as exc:
                report.problems.append(RowProblem(row_line, f"{email!r}: {exc}"))
                continue
        elif not _PLAUSIBLE.match(email):
            if width == 1 and not email:
                continue  # a blank line in a one-column file
            report.problems.append(RowProblem(row_line, f"not a valid email address: {email!r}"))
            continue
        key = email.lower()
        if key in in_block or not seen.first(key):
            report.duplicates += 1
            continue
        in_block.add(key)
        kept.append(row)
        emails.append(email)
        keys.append(key)
    return _chunk(kept, emails, keys, rows)


def read_header(path: Path) -> list[str]:
    """The columns of a list file, without reading its rows."""
    with open_rows(path) as rows:
        return rows.header


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows, for editing a list file (which keeps every column)."""
    if not path.exists():
        return list(STANDARD_COLUMNS[:2]), []
    with open_rows(path) as rows:
        return rows.header, [row for _, row in rows]


def on_list(path: Path, email: str) -> bool:
    """Whether a row of the list file has this address in its email column, in any case.

    The bytes are searched a block at a time and only a line holding the address is
    parsed: a list of a million is looked through in a few hundredths of a second, fast
    enough for a web request."""
    key = email.strip().lower()
    if not key:
        return False
    try:
        at = [h.lower() for h in read_header(path)].index("email")
        if not key.isascii():  # bytes fold the case of ASCII letters only: read the rows
            with open_rows(path) as rows:
                return any(len(row) > at and row[at].strip().lower() == key for _, row in rows)
        handle = path.open("rb")
    except (SubscriberError, OSError):
        return False
    needle = key.encode()
    with handle:
        handle.readline()  # the header
        carried = b""  # the block's last line, not yet whole
        while True:
            block = handle.read(1 << 20)
            text = carried + (block.lower() if block else b"\n")
            end = text.rfind(b"\n") + 1
            whole, carried = text[:end], text[end:]
            start = 0
            while (hit := whole.find(needle, start)) >= 0:
                first, last = whole.rfind(b"\n", 0, hit) + 1, whole.find(b"\n", hit)
                line = whole[first:last].decode("utf-8", "replace").rstrip("\r")
                row = next(csv.reader([line]), [])
                if len(row) > at and row[at].strip() == key:
                    return True
                start = last + 1
            if not block:
                return False


def count(path: Path) -> int:
    return sum(1 for _ in read_list(path))


def list_names(folder: Path) -> list[str]:
    """The lists in a folder: its CSV files with a valid list name."""
    return sorted(p.stem for p in folder.glob("*.csv") if LIST_NAME_RE.match(p.stem))
