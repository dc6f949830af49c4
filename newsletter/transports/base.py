"""The Transport seam: the same issue-level message, a batch of recipients, a receipt.

A transport says how a batch failed and nothing more: `TemporaryFailure` is
worth retrying (rate limits, 5xx, timeouts, dropped connections),
`PermanentFailure` is not (bad key, rejected request). Retrying is the
delivery module's job, the same for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol

from newsletter.errors import TransportError


@dataclass(frozen=True)
class Message:
    """What every recipient of an issue gets, before personalisation."""

    subject: str
    html: str
    text: str
    from_email: str
    from_name: str | None
    reply_to: str | None
    tokens: frozenset[str]
    issue_id: str  # for matching the service's events later ("test" for test sends)
    list_name: str
    sandbox: bool = False


class Recipient(NamedTuple):
    """One person: where to send, the token values, and their own headers.

    A tuple, not a dataclass: a million are made per send.
    """

    email: str
    name: str
    values: Mapping[str, str]
    headers: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Receipt:
    """The service accepted the batch ("submitted", not "delivered")."""

    message_id: str | None = None
    rejected: Sequence[tuple[str, str]] = ()  # (address, reason) refused by an SMTP server


class Transport(Protocol):
    name: str

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt: ...

    def close(self) -> None: ...


class BatchFailure(TransportError):
    """A batch that did not go out; `done` recipients at its start already did.

    Services that take a whole batch in one request always say 0; SMTP, which
    sends one message at a time, says how far it got, so nobody gets two.
    """

    def __init__(self, message: str, *, done: int = 0) -> None:
        super().__init__(message)
        self.done = done
        # recipients the server refused among the `done` ones, so a report keeps them
        self.rejected: list[tuple[str, str]] = []


class TemporaryFailure(BatchFailure):
    """Worth retrying; `retry_after` is the service's own hint, in seconds."""

    def __init__(self, message: str, retry_after: float | None = None, *, done: int = 0) -> None:
        super().__init__(message, done=done)
        self.retry_after = retry_after


class PermanentFailure(BatchFailure):
    """Retrying would fail the same way: stop and show the reason."""
