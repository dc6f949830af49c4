"""Several ledgers doing one thing at the same moment, one thread each."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from newsletter.state import Ledger

T = TypeVar("T")


def race(url: str, n: int, action: Callable[[Ledger, int], T]) -> list[T]:
    """Run `action` in n threads, each with its own Ledger, released at the same moment."""
    barrier = threading.Barrier(n, timeout=30)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            with Ledger(url) as ledger:
                barrier.wait()
                results[index] = action(ledger, index)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [results[i] for i in range(n)]
