"""How email leaves: one `send_batch` seam, several transports (SendGrid, SMTP, outbox)."""

from __future__ import annotations

from newsletter.transports.base import (
    Batch,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
    Transport,
)

__all__ = [
    "Batch",
    "Message",
    "PermanentFailure",
    "Receipt",
    "Recipient",
    "TemporaryFailure",
    "Transport",
]
