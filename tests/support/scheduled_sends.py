"""SendGrid's scheduled sends, as the emulator keeps them: batches, cancel/pause statuses, and
mail waiting for its `send_at`, on a clock the test moves.

Why a module of its own: the rules (72-hour horizon, the 10-minute cancel window, at most 10
statuses, pauses expiring after 72 hours) are state, not HTTP; keeping them here lets the
emulator stay routing and validation, and lets the rules be read in one place. Where SendGrid's
docs are vague this takes the worst case for a sender, e.g. a cancel set less than 10 minutes
before `send_at` never stops that mail.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CANCEL_WINDOW",
    "MAX_STATUSES",
    "NO_STATUS",
    "SCHEDULE_HORIZON",
    "STATUS_EXISTS",
    "TOO_FAR",
    "TOO_MANY",
    "UNKNOWN_BATCH",
    "Delivery",
    "ScheduleError",
    "ScheduledSends",
    "StatusNotFound",
]

SCHEDULE_HORIZON = 72 * 3600  # send_at at most this far ahead; paused mail expires this late
CANCEL_WINDOW = 600  # a cancel/pause set closer than this to send_at is not guaranteed
MAX_STATUSES = 10  # cancel/pause statuses that may be in force at once
STATUSES = ("cancel", "pause")

UNKNOWN_BATCH = "The batch ID is not valid."
TOO_FAR = "The send_at parameter must be no more than 72 hours from now."
STATUS_EXISTS = (
    "This batch ID already has a cancel or pause status; change it with PATCH "
    "/v3/user/scheduled_sends/{batch_id} or remove it with DELETE."
)
TOO_MANY = f"The maximum number of cancellations/pauses ({MAX_STATUSES}) has been reached."
NO_STATUS = "This batch ID has no cancel or pause status."

_ALPHABET = string.ascii_letters + string.digits


class ScheduleError(Exception):
    """A refused request: which field, and SendGrid-style message."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class StatusNotFound(ScheduleError):
    """The batch has no cancel/pause status to change or delete (a 404, not a 400)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One `to` address that went out: when (emulator clock), in which batch, which request."""

    email: str
    at: float
    batch_id: str | None
    message_id: str | None


@dataclass(slots=True)
class _Item:
    """One `to` address waiting for its send_at; `anyway` once a late cancel/pause missed it."""

    email: str
    batch_id: str | None
    send_at: float
    message_id: str | None
    seq: int
    anyway: bool = False


@dataclass(slots=True)
class _Status:
    """`engaged` once the batch had waiting mail under this status: from then on the status
    lapses when none is left (every item delivered or discarded)."""

    status: str
    engaged: bool = False


def _number(value: Any) -> float | None:
    """A usable send_at; tolerant, as bodies are not always schema-checked (validate sampling)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _envelopes(body: Mapping[str, Any]) -> list[tuple[str | None, float | None, list[str]]]:
    """Per personalization: the error field of its own send_at (None if it has none), the
    effective send_at (its own overrides the top-level one) and its `to` addresses."""
    top = _number(body.get("send_at"))
    out: list[tuple[str | None, float | None, list[str]]] = []
    personalizations = body.get("personalizations")
    for i, p in enumerate(personalizations if isinstance(personalizations, list) else []):
        if not isinstance(p, dict):
            continue
        own = "send_at" in p
        to = p.get("to")
        emails = [
            t["email"]
            for t in (to if isinstance(to, list) else [])
            if isinstance(t, dict) and isinstance(t.get("email"), str)
        ]
        out.append(
            (
                f"personalizations.{i}.send_at" if own else None,
                _number(p["send_at"]) if own else top,
                emails,
            )
        )
    return out


class ScheduledSends:
    """Batches, statuses and waiting mail; thread-safe (request threads and the test share it).

    `keep_log=False` keeps no `Delivery` per address (the emulator's count-only mode, where
    millions of immediate sends would otherwise pile up); scheduling still works.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, keep_log: bool = True) -> None:
        self._clock = clock
        self._offset = 0.0
        self.keep_log = keep_log
        self._lock = threading.Lock()
        self._batches: set[str] = set()
        self._statuses: dict[str, _Status] = {}
        self._waiting: list[_Item] = []
        self._log: list[Delivery] = []
        self._seq = 0

    # ---- the clock

    def now(self) -> float:
        with self._lock:
            return self._now()

    def _now(self) -> float:
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock forward, then deliver or discard what fell due."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            start = self._now()
            self._offset += seconds
            self._settle(start)

    def advance_to(self, epoch: float) -> None:
        """Move the clock to `epoch` (left alone if already past it), then settle as `advance`."""
        with self._lock:
            start = self._now()
            self._offset += max(0.0, epoch - start)
            self._settle(start)

    def _settle(self, start: float) -> None:
        """Deliver due items in send_at order unless their batch is cancelled (discarded) or
        paused (kept, until 72 hours late); an overdue item goes out at `start`."""
        now = self._now()
        due = sorted(
            (i for i in self._waiting if i.send_at <= now), key=lambda i: (i.send_at, i.seq)
        )
        done: set[int] = set()
        for item in due:
            entry = self._statuses.get(item.batch_id) if item.batch_id else None
            status = None if entry is None or item.anyway else entry.status
            if status == "pause" and now - item.send_at <= SCHEDULE_HORIZON:
                continue
            if status is None:
                self._deliver(item.email, max(item.send_at, start), item.batch_id, item.message_id)
            done.add(item.seq)
        self._waiting = [i for i in self._waiting if i.seq not in done]
        left = {i.batch_id for i in self._waiting}
        for batch_id, entry in list(self._statuses.items()):
            if entry.engaged and batch_id not in left:
                del self._statuses[batch_id]  # it stops counting towards MAX_STATUSES

    def _deliver(self, email: str, at: float, batch_id: str | None, message_id: str | None) -> None:
        if self.keep_log:
            self._log.append(Delivery(email, at, batch_id, message_id))

    # ---- batches and mail

    def create_batch(self) -> str:
        batch_id = "".join(secrets.choice(_ALPHABET) for _ in range(32))
        with self._lock:
            self._batches.add(batch_id)
        return batch_id

    def has_batch(self, batch_id: str) -> bool:
        with self._lock:
            return batch_id in self._batches

    def submit(
        self, body: Mapping[str, Any], message_id: str | None, *, deliver: bool = True
    ) -> list[ScheduleError]:
        """Check a mail/send body's batch_id and send_at, then deliver or schedule its `to`
        addresses (unless `deliver=False`: sandbox mode checks but sends nothing).
        Returns the errors; nothing is kept when there are any."""
        batch_id = body.get("batch_id")
        if not isinstance(batch_id, str):
            batch_id = None
        scheduling = batch_id is not None or "send_at" in body
        personalizations = body.get("personalizations")
        if not scheduling and isinstance(personalizations, list):
            scheduling = any(isinstance(p, dict) and "send_at" in p for p in personalizations)
        if not scheduling and not (deliver and self.keep_log):
            return []  # the hot path of count-only runs: nothing to check or keep
        envelopes = _envelopes(body)
        with self._lock:
            now = self._now()
            errors: list[ScheduleError] = []
            if batch_id is not None and batch_id not in self._batches:
                errors.append(ScheduleError("batch_id", UNKNOWN_BATCH))
            top = _number(body.get("send_at"))
            if top is not None and top - now > SCHEDULE_HORIZON:
                errors.append(ScheduleError("send_at", TOO_FAR))
            for own, send_at, _ in envelopes:
                if own and send_at is not None and send_at - now > SCHEDULE_HORIZON:
                    errors.append(ScheduleError(own, TOO_FAR))
            if errors or not deliver:
                return errors
            for _, send_at, emails in envelopes:
                for email in emails:
                    if send_at is None or send_at <= now:
                        self._deliver(email, now, batch_id, message_id)
                    else:
                        self._seq += 1
                        self._waiting.append(_Item(email, batch_id, send_at, message_id, self._seq))
                        entry = self._statuses.get(batch_id) if batch_id else None
                        if entry is not None:
                            entry.engaged = True
            return []

    # ---- cancel / pause

    def set_status(self, batch_id: str, status: str) -> None:
        """POST /v3/user/scheduled_sends: a new status for a batch that has none."""
        with self._lock:
            if batch_id not in self._batches:
                raise ScheduleError("batch_id", UNKNOWN_BATCH)
            if batch_id in self._statuses:
                raise ScheduleError("batch_id", STATUS_EXISTS)
            if len(self._statuses) >= MAX_STATUSES:
                raise ScheduleError(None, TOO_MANY)
            self._statuses[batch_id] = _Status(status)
            self._apply(batch_id)

    def change_status(self, batch_id: str, status: str) -> None:
        """PATCH /v3/user/scheduled_sends/{batch_id}."""
        with self._lock:
            entry = self._statuses.get(batch_id)
            if entry is None:
                raise StatusNotFound("batch_id", NO_STATUS)
            entry.status = status
            self._apply(batch_id)

    def delete_status(self, batch_id: str) -> None:
        """DELETE /v3/user/scheduled_sends/{batch_id}: paused mail goes out at the next advance."""
        with self._lock:
            if self._statuses.pop(batch_id, None) is None:
                raise StatusNotFound("batch_id", NO_STATUS)

    def _apply(self, batch_id: str) -> None:
        """The 10-minute rule, worst case: mail due within CANCEL_WINDOW goes out regardless."""
        if status := self._statuses.get(batch_id):
            cutoff = self._now() + CANCEL_WINDOW
            for item in self._waiting:
                if item.batch_id == batch_id:
                    status.engaged = True
                    if item.send_at < cutoff:
                        item.anyway = True

    # ---- inspection

    def statuses(self) -> dict[str, str]:
        """The statuses in force (those counting towards MAX_STATUSES), by batch_id."""
        with self._lock:
            return {batch_id: entry.status for batch_id, entry in self._statuses.items()}

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._log)

    def scheduled(self) -> int:
        """How many addresses still wait (scheduled ahead, or held by a pause)."""
        with self._lock:
            return len(self._waiting)

    def reset(self) -> None:
        """Forget batches, statuses and mail; keep the clock (a test may have moved it)."""
        with self._lock:
            self._batches.clear()
            self._statuses.clear()
            self._waiting.clear()
            self._log.clear()
