"""Named points in a send where a test can have the process killed (SIGKILL).

The promise (nobody lost, nobody sent twice, at most the messages in flight in
doubt) is proven by killing the real `newsletter send` at each of these points
and counting what the receiving side got (tests/test_crash_matrix.py,
RELIABILITY.md). Timed kills from outside reach most moments; these reach the
narrow ones (between a message's acceptance and its record) every time.

Off unless the environment says otherwise, and then only for the points named:

    NEWSLETTER_FAILPOINTS="deliver.message_sent:3"   # killed at the 3rd time it is reached
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = frozenset(
    {
        "send.claimed",  # the issue is ours, nothing planned yet
        "send.planned",  # batches stored, none taken
        "deliver.batch_taken",  # a batch is `submitting`, nothing handed over
        "deliver.message_sent",  # one message accepted, not yet recorded (SMTP)
        "deliver.batch_sent",  # a whole batch accepted, not yet recorded
        "deliver.batches_recorded",  # batches recorded as submitted, the next not taken
        "send.finishing",  # every batch recorded, the issue not yet closed
        "outbox.written",  # a message's temporary file written, not yet renamed
    }
)


def _armed(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"NEWSLETTER_FAILPOINTS: unknown point {name!r}")
        armed[name] = int(nth or 1)
    return armed


_ARMED = _armed(os.environ.get("NEWSLETTER_FAILPOINTS", ""))
_LOCK = threading.Lock()


_PARENT: list[int] = []  # in a sender process: the send, killed first


def kill_parent_too() -> None:
    """Called in a sender process (newsletter/senders.py): a point reached here kills the
    whole send, as a kill -9 of `newsletter send` does, not only this sender."""
    _PARENT[:] = [os.getppid()]


def failpoint(name: str) -> None:
    """Kill this process here if a test armed `name` and its count is reached; else nothing."""
    if not _ARMED or name not in _ARMED:
        return
    with _LOCK:
        _ARMED[name] -= 1
        if _ARMED[name] == 0:
            for pid in [*_PARENT, os.getpid()]:
                os.kill(pid, signal.SIGKILL)
