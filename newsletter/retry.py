"""Retrying calls to a mail service: exponential backoff with full jitter, the same for
every transport. A transport says how a batch failed (temporary, permanent, in doubt);
only temporary failures are tried again, and a batch resumes after the recipients
already done, so a retry never sends anyone twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from newsletter.transports.base import (
    InDoubtFailure,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
    Transport,
)

log = logging.getLogger("newsletter.delivery")  # the name operators' log filters know
T = TypeVar("T")
_RANDOM = random.Random()  # retry jitter; seeding one per batch costs more than the batch


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded; the service's own hint wins."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, attempt: int, hint: float | None, rng: random.Random) -> float:
        if hint is not None:
            return min(hint, self.max_delay)
        return rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))


def with_retries(
    action: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> T:
    """Any idempotent call to the service (reads), retried on temporary failures."""
    rng = rng or _RANDOM
    for attempt in range(1, policy.attempts + 1):
        try:
            return action()
        except TemporaryFailure as exc:
            if attempt == policy.attempts:
                raise
            delay = policy.delay(attempt, exc.retry_after, rng)
            log.warning("%s; retry %d of %d in %.1fs", exc, attempt, policy.attempts - 1, delay)
            sleep(delay)
    raise AssertionError("unreachable")


def send_with_retries(
    transport: Transport,
    message: Message,
    recipients: Sequence[Recipient],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> Receipt:
    """One batch, retried on temporary failures; never resends recipients already done."""
    rng = rng or _RANDOM
    remaining = recipients
    rejected: list[tuple[str, str]] = []
    attempt = 0
    while True:
        attempt += 1
        try:
            receipt = transport.send_batch(message, remaining)
        except TemporaryFailure as exc:
            remaining = remaining[exc.done :]
            rejected.extend(exc.rejected)
            if attempt >= policy.attempts:
                exc.done = len(recipients) - len(remaining)
                exc.rejected = rejected
                raise
            delay = policy.delay(attempt, exc.retry_after, rng)
            log.warning("%s; retry %d of %d in %.1fs", exc, attempt, policy.attempts - 1, delay)
            sleep(delay)
            continue
        except (PermanentFailure, InDoubtFailure) as exc:  # never retried
            exc.done += len(recipients) - len(remaining)
            exc.rejected = rejected + exc.rejected
            raise
        rejected.extend(receipt.rejected)
        return Receipt(message_id=receipt.message_id, rejected=rejected)
