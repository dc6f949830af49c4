"""A rich progress bar for long sends: recipients, batches, rate and time left."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class RichProgress:
    def __init__(self, console: Console, label: str = "sending") -> None:
        self.console = console
        self.label = label
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._batches = 0

    def start(self, recipients: int, batches: int) -> None:
        self._batches = batches
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("recipients · {task.fields[batches]} batches"),
            TextColumn("· {task.fields[rate]}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            self.label, total=recipients, batches=batches, rate="0"
        )

    def advance(self, recipients: int) -> None:
        if self._progress is None or self._task is None:
            return
        self._progress.advance(self._task, recipients)
        task = self._progress.tasks[0]
        speed = task.speed or 0
        self._progress.update(self._task, rate=f"{speed:,.0f}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
