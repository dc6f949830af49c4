"""Submitting an issue ahead of its send time, so that it can still be taken back.

SendGrid holds a mail/send request that carries `send_at` until then, and every
request of one attempt carries the same `batch_id`, which can be cancelled or
paused until ten minutes before the send time (CANCEL_NOTICE). That gives:

- exactly once: a run that finds a request in doubt (sent whole, never answered)
  before the cancel deadline cancels the attempt, waits for SendGrid to confirm,
  and sends the whole issue again under a new batch ID, so no reader gets it
  twice and none is lost; after the deadline it is in doubt as before;
- undo: `newsletter cancel`, `pause` and `resume` before the deadline.

The attempt (batch ID and send time) is recorded in the state database before
the first request of it leaves (`state/attempts.py`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from zoneinfo import ZoneInfo

from newsletter.errors import NewsletterError
from newsletter.retry import RetryPolicy, with_retries
from newsletter.state.attempts import Attempt
from newsletter.transports.base import PermanentFailure
from newsletter.transports.sendgrid import SendGridTransport
from newsletter.zones import ZONE_COLUMN, ReaderTimes

if TYPE_CHECKING:
    from newsletter.state import Ledger

log = logging.getLogger(__name__)

MAX_AHEAD = dt.timedelta(hours=72)  # SendGrid holds a request at most this long
# a cancel sent this close to the deadline could arrive after it (clocks, retries)
CANCEL_MARGIN = dt.timedelta(minutes=1)
MAX_HELD_BATCHES = 10  # cancelled or paused batches SendGrid keeps at once

T = TypeVar("T")


@dataclass
class AttemptOutcome:
    """The attempt a send goes out under, and what was done to get it."""

    attempt: Attempt | None
    replaced: Attempt | None = None  # cancelled because a request of it was in doubt
    too_late: bool = False  # in doubt after the cancel deadline: the editor decides
    refused: str | None = None  # SendGrid would not cancel (the ten-batch limit)


class Scheduling:
    """The attempts of an issue at SendGrid: created, cancelled, paused, resumed."""

    def __init__(
        self,
        ledger: Ledger,
        make_transport: Callable[[], SendGridTransport],
        policy: RetryPolicy,
        clock: Callable[[], dt.datetime],
        sleep: Callable[[float], None],
        zone: str,
    ) -> None:
        self.zone = zone  # the newsletter's
        self.ledger = ledger
        self.make_transport = make_transport
        self.policy = policy
        self.clock = clock
        self.sleep = sleep

    def attempt_for(self, issue_id: int, send_at: dt.datetime | None) -> AttemptOutcome:
        """The attempt this run sends under: the latest one, a new one for a first
        scheduled send, or a replacement when a request of the latest is in doubt and
        it can still be cancelled. None: sent at once, as without scheduling."""
        latest = self.ledger.latest_attempt(issue_id)
        if latest is not None and latest.status == "cancelled":
            latest = None  # the editor took it back: a corrected issue starts afresh
        if latest is None:
            if send_at is None:
                return AttemptOutcome(None)
            now = self.clock()
            check_send_at(send_at, now)
            # readers with a zone of their own may be due before the newsletter's time
            times = ReaderTimes(send_at, self.zone, now)
            earliest = times.earliest(self.ledger.plan_values(issue_id, ZONE_COLUMN), send_at)
            batch_id = self._call(lambda t: t.create_batch())
            attempt = self.ledger.record_attempt(issue_id, batch_id, send_at, now, earliest)
            return AttemptOutcome(attempt)
        if send_at is not None and send_at != latest.send_at:
            log.warning(
                "this issue is already scheduled for %s: keeping that time", _utc(latest.send_at)
            )
        if not self.ledger.batches(issue_id, ["submitting"]):
            return AttemptOutcome(latest)
        if self.clock() + CANCEL_MARGIN >= latest.cancel_deadline:
            return AttemptOutcome(latest, too_late=True)
        try:
            self._call(lambda t: t.set_batch_status(latest.batch_id, "cancel"))
        except PermanentFailure as exc:
            return AttemptOutcome(latest, refused=_held_limit(str(exc)))
        log.warning(
            "a request of batch %s went without an answer: SendGrid cancelled that batch, "
            "and the whole issue goes again under a new one",
            latest.batch_id,
        )
        batch_id = self._call(lambda t: t.create_batch())
        return AttemptOutcome(self.ledger.replace_attempt(latest, batch_id), replaced=latest)

    def set_status(self, attempt: Attempt, status: str | None) -> None:
        """Cancel, pause (a status), or resume (None) the attempt at SendGrid, refusing
        after the deadline, when SendGrid no longer promises to honour it."""
        now = self.clock()
        if status is not None and now + CANCEL_MARGIN >= attempt.cancel_deadline:
            raise NewsletterError(
                f"too late: the issue goes out at {_utc(attempt.send_at)} and SendGrid only "
                f"promises to {'cancel' if status == 'cancel' else 'pause'} a send until ten "
                f"minutes before ({_utc(attempt.cancel_deadline)}); it is {_utc(now)}"
            )
        try:
            if status is None:
                self._call(lambda t: t.clear_batch_status(attempt.batch_id))
            else:
                self._call(lambda t: t.set_batch_status(attempt.batch_id, status))
        except PermanentFailure as exc:
            raise NewsletterError(_held_limit(str(exc))) from None

    def _call(self, action: Callable[[SendGridTransport], T]) -> T:
        transport = self.make_transport()
        try:
            return with_retries(lambda: action(transport), self.policy, sleep=self.sleep)
        finally:
            transport.close()


def parse_send_time(value: str, date: dt.date, zone: ZoneInfo) -> dt.datetime:
    """`--at`: "HH:MM" on the issue's date in the newsletter's zone, or a date and time
    ("2024-03-05 07:00", ISO 8601, with or without an offset)."""
    text = value.strip()
    try:
        clock = dt.time.fromisoformat(text)
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise NewsletterError(
                f"--at {value!r}: give a time (07:00) or a date and time (2024-03-05 07:00)"
            ) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=zone)
    return dt.datetime.combine(date, clock.replace(tzinfo=None), tzinfo=zone)


def check_send_at(send_at: dt.datetime, now: dt.datetime) -> None:
    if send_at <= now:
        raise NewsletterError(f"the send time {_utc(send_at)} has passed (it is {_utc(now)})")
    if send_at - now > MAX_AHEAD:
        raise NewsletterError(
            f"the send time {_utc(send_at)} is more than 72 hours ahead: SendGrid holds a "
            "scheduled send for 72 hours at most"
        )


def _held_limit(error: str) -> str:
    if "maximum" in error.lower():
        return (
            f"{error}. SendGrid keeps at most {MAX_HELD_BATCHES} cancelled or paused batches "
            "at once: resume one, or wait until one's send time has passed"
        )
    return error


def _utc(moment: dt.datetime) -> str:
    return f"{moment.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
