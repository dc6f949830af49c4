"""Retry timing: the service's own hints first, else exponential backoff with jitter, bounded."""

from __future__ import annotations

import random
from email.message import Message as Headers

import pytest

from newsletter.config import SendGridSettings
from newsletter.retry import RetryPolicy, send_with_retries
from newsletter.transports.base import (
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
)
from newsletter.transports.sendgrid import SendGridTransport


def headers(**values: str) -> Headers:
    h = Headers()
    for name, value in values.items():
        h[name.replace("_", "-")] = value
    return h


@pytest.fixture
def transport() -> SendGridTransport:
    return SendGridTransport(SendGridSettings(), "SG.unused", clock=lambda: 1_000_000.0)


def test_retry_after_seconds_and_http_date(transport: SendGridTransport) -> None:
    assert transport._retry_after(headers(Retry_After="7")) == 7.0
    assert transport._retry_after(headers(Retry_After="Mon, 12 Jan 1970 13:46:50 GMT")) == 10.0


def test_rate_limit_reset_is_an_epoch_time(transport: SendGridTransport) -> None:
    assert transport._retry_after(headers(X_RateLimit_Reset="1000003")) == 3.0
    assert transport._retry_after(headers(X_RateLimit_Reset="999990")) == 0.0  # already past
    assert transport._retry_after(headers()) is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(attempts=10, base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
    assert policy.delay(1, 30.0, rng) == 8.0  # a hint is honoured, up to the cap
    assert policy.delay(5, 2.5, rng) == 2.5


class Flaky:
    name = "flaky"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls: list[int] = []

    def send_batch(self, message: Message, recipients: list[Recipient]) -> Receipt:  # type: ignore[override]
        self.calls.append(len(recipients))
        if self.failures:
            raise self.failures.pop(0)
        return Receipt(message_id="m-1")

    def close(self) -> None:
        pass


MESSAGE = Message("s", "h", "t", "a@example.com", None, None, frozenset(), "1", "main")
PEOPLE = [Recipient(f"p{n}@example.com", "", {}) for n in range(4)]


def test_hints_are_slept_and_attempts_are_bounded() -> None:
    slept: list[float] = []
    flaky = Flaky([TemporaryFailure("429", retry_after=3), TemporaryFailure("503")])
    receipt = send_with_retries(flaky, MESSAGE, PEOPLE, RetryPolicy(3, 0.5, 10), sleep=slept.append)
    assert receipt.message_id == "m-1"
    assert slept[0] == 3 and 0 <= slept[1] <= 1.0
    failing = Flaky([TemporaryFailure("503")] * 5)
    with pytest.raises(TemporaryFailure):
        send_with_retries(failing, MESSAGE, PEOPLE, RetryPolicy(3, 0, 0), sleep=slept.append)
    assert len(failing.calls) == 3


def test_a_retry_resends_only_the_recipients_not_yet_done() -> None:
    flaky = Flaky([TemporaryFailure("dropped", done=3), PermanentFailure("554", done=0)])
    with pytest.raises(PermanentFailure) as info:
        send_with_retries(flaky, MESSAGE, PEOPLE, RetryPolicy(3, 0, 0), sleep=lambda _: None)
    assert flaky.calls == [4, 1]
    assert info.value.done == 3
