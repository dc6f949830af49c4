"""Where a send spends its time, phase by phase (`newsletter send --timings FILE`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Timings:
    """Seconds per phase; cheap enough to leave on (one clock read per phase or per batch)."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def timed(self, name: str, items: Iterable[T]) -> Iterator[T]:
        """Count the time spent producing each item (a batch), not consuming it."""
        iterator = iter(items)
        while True:
            start = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                self.add(name, time.perf_counter() - start)
                return
            self.add(name, time.perf_counter() - start)
            yield item

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 4) for name, seconds in self.phases.items()}
