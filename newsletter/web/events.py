"""SendGrid's Event Webhook: check the signature, then read the events into MailEvents.

SendGrid signs `timestamp + raw body` with ECDSA (P-256, SHA-256) and retries any
answer that is not 2xx for 24 hours, so a batch is either rejected whole (bad
signature, stale, malformed) or applied whole, once, by `sg_event_id`.
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook

from newsletter.errors import ConfigError
from newsletter.state.analytics import ReaderKeys, metric_of
from newsletter.state.events import MailEvent

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# dropped because the address itself is bad: never send there again
_DROPPED = {
    "Invalid": "invalid",
    "Bounced Address": "bounced",
    "Spam Reporting Address": "spam",
    "Unsubscribed Address": "unsubscribed",
}


class Rejected(Exception):
    """The request is not a genuine, fresh, well-formed event batch; `status` says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class SignatureChecker:
    def __init__(self, public_key: str, max_age: dt.timedelta) -> None:
        try:
            self._verifier = EventWebhook("".join(public_key.split()))
            if not isinstance(self._verifier.public_key, ec.EllipticCurvePublicKey):
                raise ValueError("not an elliptic-curve key")
        except ValueError:
            raise ConfigError(
                "sendgrid.webhook_public_key is not a valid public key (paste the "
                "verification key from SendGrid's Event Webhook settings)"
            ) from None
        self.max_age = max_age

    def check(
        self, body: bytes, signature: str | None, timestamp: str | None, now: dt.datetime
    ) -> None:
        """Raise Rejected unless SendGrid signed exactly this body, recently."""
        if not signature or not timestamp:
            raise Rejected(401, "missing signature headers")
        try:
            sent = dt.datetime.fromtimestamp(int(timestamp), dt.UTC)
        except (ValueError, OverflowError, OSError):
            raise Rejected(403, "bad timestamp") from None
        if abs(now - sent) > self.max_age:
            raise Rejected(403, "stale timestamp")
        try:
            genuine = self._verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
        except (UnicodeDecodeError, binascii.Error, ValueError):
            genuine = False
        if not genuine:
            raise Rejected(403, "bad signature")


def parse_events(body: bytes, readers: ReaderKeys | None = None) -> tuple[list[MailEvent], int]:
    """The events of a batch, and how many were skipped as malformed.

    A body that is not a JSON array is refused (Rejected(400)); one odd event in a
    genuine batch is skipped, not the batch: SendGrid would resend the same body
    for a day and then drop it, bounces and complaints included.
    """
    try:
        items = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, a 5,000-digit number, too deep
        raise Rejected(400, "body is not JSON") from None
    if not isinstance(items, list):
        raise Rejected(400, "body is not a JSON array of events")
    events = [e for e in (_event(item, readers) for item in items) if e is not None]
    return events, len(items) - len(events)


def _event(item: Any, readers: ReaderKeys | None = None) -> MailEvent | None:
    """One event, or None if it lacks what is needed to apply it once (logged, skipped)."""
    if not isinstance(item, dict):
        return None
    event_id, kind, email = item.get("sg_event_id"), item.get("event"), item.get("email")
    for value, limit in ((event_id, 128), (kind, 32), (email, 320)):
        if not _storable(value, limit):
            return None
    stamp = item.get("timestamp")
    occurred = None
    if isinstance(stamp, int) and not isinstance(stamp, bool):
        try:
            occurred = dt.datetime.fromtimestamp(stamp, dt.UTC)
        except (OverflowError, OSError, ValueError):
            occurred = None
    issue_id = _issue_id(item.get("issue_id"))
    url = item.get("url") if kind == "click" else None
    bounce_type = item.get("type")
    list_name = item.get("list")
    return MailEvent(
        event_id=event_id,
        event=kind,
        email=email,
        issue_id=issue_id,
        occurred_at=occurred,
        suppress=_suppression(kind, item),
        metric=metric_of(
            kind,
            bounce_type if isinstance(bounce_type, str) else None,
            item.get("sg_machine_open") is True,
        ),
        reader=readers(issue_id, email) if readers is not None and issue_id is not None else None,
        url=url if _storable(url, 8192) else None,
        list_name=list_name if _storable(list_name, 200) else None,
    )


def _suppression(kind: str, item: dict[str, Any]) -> str | None:
    if kind == "bounce":
        # "blocked" is a temporary refusal (a full mailbox, a greylist); only hard bounces stick
        return None if item.get("type") == "blocked" else "bounced"
    if kind == "dropped":
        return _DROPPED.get(str(item.get("reason", "")))
    if kind == "spamreport":
        return "spam"
    if kind in ("unsubscribe", "group_unsubscribe"):
        # SendGrid's unsubscribe group is the whole newsletter's, and each send syncs its
        # members as suppressions for every list: a group unsubscribe is one too
        return "unsubscribed"
    return None


def _storable(value: Any, limit: int) -> bool:
    """Text every database keeps as sent: UTF-8, no NUL, short enough even lower-cased."""
    if not isinstance(value, str) or not value or "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
        return False
    return len(value.lower()) <= limit


def _issue_id(value: Any) -> int | None:
    """The ledger id sent in custom_args; anything else (a test send's "test") matches none."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)
    return None
