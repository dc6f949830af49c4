"""A rich progress bar for long sends: recipients, batches, rate and time left.

The rate is recipients done divided by the time since the send started. Rich's
own speed divides the last steps by the time between them, and batches that
finish together (several workers, or one write per batch) are microseconds
apart: it showed thousands a second for an SMTP server taking sixty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from newsletter.words import noun, plural


class RichProgress:
    def __init__(
        self,
        console: Console,
        label: str = "sending",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.label = label
        self.clock = clock
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()  # workers may advance at once
        self._started = 0.0
        self._done = 0
        self._total = 0

    def start(self, recipients: int, batches: int) -> None:
        self._started, self._done, self._total = self.clock(), 0, recipients
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{noun(recipients, 'recipient')} · {plural(batches, 'batch')}"),
            TextColumn("· {task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=self.console,
            transient=False,
            get_time=self.clock,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.label, total=recipients, rate="0", eta="-:--:--")

    def advance(self, recipients: int) -> None:
        if self._progress is None or self._task is None:
            return
        with self._lock:
            self._done += recipients
            done = self._done
            elapsed = self.clock() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        left = max(self._total - done, 0)
        eta = _duration(left / rate) if rate else "-:--:--"
        self._progress.update(self._task, advance=recipients, rate=f"{rate:,.0f}", eta=eta)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _duration(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
