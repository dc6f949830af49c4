"""The send's progress bar, drawn by rich into a console we read back, on a clock we move."""

from __future__ import annotations

import io

from rich.console import Console

from newsletter.progress import RichProgress
from newsletter.words import plural


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def drawn(console: Console) -> str:
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return " ".join(text.split())


def test_the_rate_is_recipients_per_second_since_the_start_even_when_batches_finish_together() -> (
    None
):
    clock = Clock()
    console = Console(file=io.StringIO(), width=200, color_system=None)
    progress = RichProgress(console, clock=clock)
    progress.start(400, 4)
    clock.now += 10.0  # two workers' batches of 100 come back within a microsecond
    progress.advance(100)
    clock.now += 0.000001
    progress.advance(100)
    progress.stop()

    line = drawn(console)
    # 200 in 10 s; rich's own speed said 100 per microsecond
    assert "200/400 recipients · 4 batches · 20/s 0:00:10 ETA 0:00:10" in line, line


def test_one_recipient_at_a_time_and_the_last_one() -> None:
    clock = Clock()
    console = Console(file=io.StringIO(), width=200, color_system=None)
    progress = RichProgress(console, clock=clock)
    progress.start(16, 1)
    for _ in range(16):  # an SMTP server taking 8 a second
        clock.now += 0.125
        progress.advance(1)
    progress.stop()

    assert "16/16 recipients · 1 batch · 8/s 0:00:02 ETA 0:00:00" in drawn(console)


def test_plural() -> None:
    assert plural(1, "story") == "1 story"
    assert plural(2, "story") == "2 stories"
    assert plural(0, "batch") == "0 batches"
    assert plural(1_000, "recipient") == "1,000 recipients"
    assert plural(2, "new address") == "2 new addresses"
    assert plural(3, "day") == "3 days"
    assert plural(2, "dropped", "dropped") == "2 dropped"
