"""A result the caller asks for later: a call run in a daemon thread while the caller
does other work (a send fetches SendGrid's suppressions, mostly waiting on the network,
while it renders the issue), or one made elsewhere and collected when asked for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    def result(self) -> T_co: ...


class Later(Generic[T]):
    """`call()` made when the result is asked for: work already started elsewhere."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call

    def result(self) -> T:
        return self._call()


class Meanwhile(Generic[T]):
    """`call()`, started at once in a daemon thread; `result()` waits for it and returns
    its value or raises its exception. A daemon: a caller that fails first exits without
    waiting for a call it no longer needs."""

    def __init__(self, call: Callable[[], T], name: str) -> None:
        self._call = call
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    def result(self) -> T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
