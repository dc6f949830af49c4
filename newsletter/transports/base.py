"""The Transport seam: the same issue-level message, a batch of recipients, a receipt.

A transport says how a batch failed and nothing more: `TemporaryFailure` is
worth retrying (rate limits, 5xx, timeouts, dropped connections),
`PermanentFailure` is not (bad key, rejected request). Retrying is the
delivery module's job, the same for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Literal, NamedTuple, Protocol, overload

from newsletter.errors import TransportError

InDoubt = Literal["batch", "message", "none"]


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
    # False for one-to-one mail (a sign-up's confirmation, a note to the admin): it
    # must reach people who left the newsletter, and offers no unsubscribing
    bulk: bool = True
    # SendGrid holds the issue until `send_at` (Unix seconds), under `batch_id`, which
    # can cancel it until ten minutes before (`scheduling.py`); None: at once
    send_at: int | None = None
    batch_id: str | None = None
    # fields every copy carries, as written: List-Id and Feedback-ID of bulk mail
    headers: tuple[tuple[str, str], ...] = ()
    # with both: a reader with a `timezone` gets the send time of day on their own clock,
    # at the first such moment after `anchor` (Unix seconds) (`zones.py`)
    zone: str | None = None
    anchor: int | None = None


class Recipient(NamedTuple):
    """One person: where to send, the token values, and their own headers.

    A tuple, not a dataclass: a million are made per send.
    """

    email: str
    name: str
    values: Mapping[str, str]
    headers: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Batch(Sequence[Recipient]):
    """The recipients of one request, column by column.

    A send builds a million recipients; lists per field cost a fraction of a
    million small objects, and a service that takes JSON (SendGrid) writes the
    columns straight out. Transports that send one message at a time (SMTP,
    outbox) just iterate it as Recipients. `None` in a header column: no header.
    """

    emails: list[str]
    names: list[str]
    values: Mapping[str, list[str]]
    headers: Mapping[str, list[str | None]] = field(default_factory=dict)

    @classmethod
    def of(cls, recipients: Sequence[Recipient]) -> Batch:
        if isinstance(recipients, Batch):
            return recipients
        tokens = sorted({t for r in recipients for t in r.values})
        headers = sorted({h for r in recipients for h in r.headers})
        return cls(
            [r.email for r in recipients],
            [r.name for r in recipients],
            {t: [r.values.get(t, "") for r in recipients] for t in tokens},
            {h: [r.headers.get(h) for r in recipients] for h in headers},
        )

    def __len__(self) -> int:
        return len(self.emails)

    @overload
    def __getitem__(self, index: int) -> Recipient: ...

    @overload
    def __getitem__(self, index: slice) -> Batch: ...

    def __getitem__(self, index: int | slice) -> Recipient | Batch:
        if isinstance(index, slice):
            return Batch(
                self.emails[index],
                self.names[index],
                {k: v[index] for k, v in self.values.items()},
                {k: v[index] for k, v in self.headers.items()},
            )
        return Recipient(
            self.emails[index],
            self.names[index],
            {k: v[index] for k, v in self.values.items()},
            {k: value for k, v in self.headers.items() if (value := v[index]) is not None},
        )


@dataclass(frozen=True)
class Receipt:
    """The service accepted the batch ("submitted", not "delivered")."""

    message_id: str | None = None
    rejected: Sequence[tuple[str, str]] = ()  # (address, reason) refused by an SMTP server


class Transport(Protocol):
    name: str
    # What a crash in the middle of `send_batch` leaves unknown, so a rerun resends
    # nobody twice: "batch" (one request: all of it), "message" (one message at a time:
    # the delivery records each, so only the one in flight), "none" (resending is
    # harmless: the transport sees who already has the issue).
    in_doubt: ClassVar[InDoubt]

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


class InDoubtFailure(BatchFailure):
    """Handed over, but no answer came: it may or may not have gone out.

    Never retried (that could send it twice): the batch, or for a transport that goes
    one message at a time the message at `done`, is left in doubt for the editor.
    """
