"""Catching an address a list holds twice, while the list streams by.

A set of every address read (`ExactSeen`) costs a Python string per reader:
about 110 MB at a million, a gigabyte at ten. A send keeps instead an 8-byte
hash per reader (`HashedSeen`), in sorted runs by hash range, and answers only
at the end of the list whether two rows may be one person: two equal hashes.
Then, and only then (a list edited by hand; `import` and `add` never write a
duplicate), the send reads the list again with `WatchedSeen`, which keeps the
exact addresses of just those hashes: the second row of a real duplicate is
skipped, and two different addresses that share a hash both get the issue.

Within one chunk of rows every reader checks exactly, with the chunk's own set.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Protocol

BUCKETS = 64
_SPAN = 1 << 58  # hash values per bucket: 2**64 / 64
_EDGES = [-(1 << 63) + _SPAN * n for n in range(1, BUCKETS)]


class Seen(Protocol):
    """The addresses (lower-cased keys) a read of a list has met so far."""

    def fresh(self, keys: Sequence[str]) -> bool:
        """True, and the keys recorded, if none was met before (the keys are distinct);
        False, and nothing recorded, if one may have been."""
        ...

    def first(self, key: str) -> bool:
        """True, and the key recorded, unless it was met before."""
        ...


class ExactSeen:
    """Every key, as it is: for reads that must name each duplicate as they meet it."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def fresh(self, keys: Sequence[str]) -> bool:
        if not self.keys.isdisjoint(keys):
            return False
        self.keys.update(keys)
        return True

    def first(self, key: str) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        return True


class HashedSeen:
    """An 8-byte hash per key; whether two were equal is known at the end (`repeated`).

    Python's string hash is salted per process: both reads of one send run in it.
    """

    def __init__(self) -> None:
        self._buckets = [array("q") for _ in range(BUCKETS)]
        self._loose: list[int] = []  # met one at a time, filed a few thousand at once

    def fresh(self, keys: Sequence[str]) -> bool:
        self._file(list(map(hash, keys)))
        return True

    def first(self, key: str) -> bool:
        self._loose.append(hash(key))
        if len(self._loose) >= 4096:
            self._file(self._loose)
            self._loose = []
        return True

    def _file(self, hashes: list[int]) -> None:
        hashes.sort()
        start = 0
        for bucket, edge in zip(self._buckets, _EDGES, strict=False):
            end = bisect_left(hashes, edge, start)
            bucket.extend(hashes[start:end])
            start = end
        self._buckets[-1].extend(hashes[start:])

    def repeated(self) -> frozenset[int]:
        """The hashes met more than once: empty for nearly every list."""
        return repeated_across([self])

    def filed(self) -> list[array[int]]:
        """The hashes, by range (for `repeated_across`)."""
        self._file(self._loose)
        self._loose = []
        return self._buckets

    def __len__(self) -> int:
        return sum(map(len, self._buckets)) + len(self._loose)


def repeated_across(reads: Sequence[HashedSeen]) -> frozenset[int]:
    """The hashes met more than once in any of these reads (the parts of one list), a
    range at a time: never more than one range's set in memory."""
    return _repeated(zip(*(read.filed() for read in reads), strict=True))


def _repeated(by_range: Iterable[Sequence[array[int]]]) -> frozenset[int]:
    found: set[int] = set()
    for ranges in by_range:
        count = sum(map(len, ranges))
        if len(set(chain.from_iterable(ranges))) != count:
            tally = Counter(chain.from_iterable(ranges))
            found.update(h for h, n in tally.items() if n > 1)
    return frozenset(found)


@dataclass(frozen=True)
class SavedHashes:
    """A read's hashes in a file, range after range (a part of the list read by a sender
    process hands its hashes over this way: 8 bytes a reader, 80 MB at ten million)."""

    path: Path
    sizes: tuple[int, ...]

    @classmethod
    def save(cls, seen: HashedSeen, path: Path) -> SavedHashes:
        with path.open("wb") as out:
            ranges = seen.filed()
            for hashes in ranges:
                hashes.tofile(out)
        return cls(path, tuple(map(len, ranges)))

    def ranges(self) -> Iterator[array[int]]:
        with self.path.open("rb") as handle:
            for size in self.sizes:
                hashes = array("q")
                hashes.fromfile(handle, size)
                yield hashes


def repeated_in_files(saved: Sequence[SavedHashes]) -> frozenset[int]:
    """`repeated_across` for reads saved to files, read back a range at a time."""
    return _repeated(zip(*(s.ranges() for s in saved), strict=True))


class WatchedSeen:
    """The second read: exact keys, kept only for the hashes the first read met twice."""

    def __init__(self, watch: frozenset[int]) -> None:
        self.watch = watch
        self.keys: set[str] = set()

    def fresh(self, keys: Sequence[str]) -> bool:
        if self.watch.isdisjoint(map(hash, keys)):
            return True
        watched = [key for key in keys if hash(key) in self.watch]
        if not self.keys.isdisjoint(watched):
            return False
        self.keys.update(watched)
        return True

    def first(self, key: str) -> bool:
        if hash(key) not in self.watch:
            return True
        if key in self.keys:
            return False
        self.keys.add(key)
        return True


class RepeatedAddresses(Exception):
    """A streamed read met equal hashes: read the list again, watching these."""

    def __init__(self, hashes: frozenset[int]) -> None:
        super().__init__(f"{len(hashes)} address hash(es) met twice")
        self.hashes = hashes
