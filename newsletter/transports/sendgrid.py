"""The SendGrid transport: one v3 mail/send request per batch, with the official client.

One personalization per recipient (at most 1,000 per request), the tokens
filled by SendGrid's `substitutions`, per-recipient unsubscribe headers and
`custom_args` for matching webhook events to an issue.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import urllib.error
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.client import HTTPException
from typing import Any

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient

from newsletter.config import SendGridSettings
from newsletter.tokens import substitutions
from newsletter.transports.base import (
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
)

log = logging.getLogger(__name__)

MAX_PERSONALIZATIONS = 1000
SUPPRESSION_PAGE = 500


class SendGridTransport:
    name = "sendgrid"

    def __init__(
        self,
        settings: SendGridSettings,
        api_key: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        # one client per transport, and one transport per worker thread: the client
        # shares mutable request headers between its sub-clients
        self.api = SendGridAPIClient(api_key=api_key, host=settings.api_url.rstrip("/"))
        self.api.client.timeout = settings.timeout
        self.clock = clock

    def request_body(self, message: Message, recipients: Sequence[Recipient]) -> dict[str, Any]:
        if len(recipients) > MAX_PERSONALIZATIONS:
            raise PermanentFailure(f"a batch has {len(recipients)} recipients; SendGrid takes 1000")
        s = self.settings
        custom_args = {"issue_id": message.issue_id, "list": message.list_name}
        personalizations = []
        for r in recipients:
            to: dict[str, str] = {"email": r.email}
            if r.name:
                to["name"] = r.name
            p: dict[str, Any] = {"to": [to], "custom_args": custom_args}
            if message.tokens:
                p["substitutions"] = substitutions(r.values, message.tokens)
            if r.headers:
                p["headers"] = dict(r.headers)
            personalizations.append(p)
        sender: dict[str, str] = {"email": message.from_email}
        if message.from_name:
            sender["name"] = message.from_name
        body: dict[str, Any] = {
            "personalizations": personalizations,
            "from": sender,
            "subject": message.subject,
            "content": [
                {"type": "text/plain", "value": message.text},
                {"type": "text/html", "value": message.html},
            ],
            "tracking_settings": {
                "click_tracking": {"enable": s.click_tracking, "enable_text": False},
                "open_tracking": {"enable": s.open_tracking},
                "subscription_tracking": {"enable": False},
            },
        }
        if message.reply_to:
            body["reply_to"] = {"email": message.reply_to}
        if s.categories:
            body["categories"] = list(s.categories)
        if s.asm_group_id is not None:
            body["asm"] = {"group_id": s.asm_group_id}
        if s.ip_pool_name:
            body["ip_pool_name"] = s.ip_pool_name
        if message.sandbox:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt:
        body = self.request_body(message, recipients)
        response = self._call(lambda: self.api.client.mail.send.post(request_body=body))
        return Receipt(message_id=response.headers.get("X-Message-Id"))

    def _call(self, request: Callable[[], Any]) -> Any:
        """Run one API request; classify what went wrong as temporary or permanent."""
        try:
            return request()
        except HTTPError as exc:
            status = exc.status_code
            if status == 429 or status >= 500:
                raise TemporaryFailure(
                    f"SendGrid answered {status} {_reason(status)}",
                    retry_after=self._retry_after(exc.headers),
                ) from None
            raise PermanentFailure(_refusal(status, exc.body)) from None
        except TimeoutError:
            raise TemporaryFailure(
                f"no answer from SendGrid within {self.settings.timeout:g}s"
            ) from None
        except urllib.error.URLError as exc:
            raise TemporaryFailure(
                f"cannot reach SendGrid at {self.settings.api_url}: {exc.reason}"
            ) from None
        except (HTTPException, ConnectionError, OSError) as exc:
            raise TemporaryFailure(f"connection to SendGrid failed: {exc!r}") from None

    def _retry_after(self, headers: Any) -> float | None:
        if headers is None:
            return None
        value = headers.get("Retry-After")
        if value:
            try:
                return max(0.0, float(value))
            except ValueError:
                parsed = email.utils.parsedate_to_datetime(value)
                if parsed is not None:
                    return max(0.0, parsed.timestamp() - self.clock())
        reset = headers.get("X-RateLimit-Reset")
        if reset:
            try:
                return max(0.0, float(reset) - self.clock())
            except ValueError:
                return None
        return None

    def fetch_suppressions(self, group_id: int | None) -> list[tuple[str, str]]:
        """Everyone SendGrid will not deliver to, as (address, reason), paging through."""
        found: list[tuple[str, str]] = []
        if group_id is not None:
            group = self._call(lambda: self.api.client.asm.groups._(group_id).suppressions.get())
            found += [(e, "unsubscribed") for e in _json(group) if isinstance(e, str)]
        for path, reason in (
            ("unsubscribes", "unsubscribed"),
            ("bounces", "bounced"),
            ("spam_reports", "spam"),
            ("invalid_emails", "invalid"),
        ):
            offset = 0
            while True:
                endpoint = getattr(self.api.client.suppression, path)
                params = {"limit": SUPPRESSION_PAGE, "offset": offset}
                page = _json(self._call(lambda e=endpoint, q=params: e.get(query_params=q)))
                found += [(item["email"], reason) for item in page if item.get("email")]
                if len(page) < SUPPRESSION_PAGE:
                    break
                offset += SUPPRESSION_PAGE
        return found

    def close(self) -> None:
        pass


def _json(response: Any) -> list[Any]:
    try:
        data = json.loads(response.body or b"[]")
    except ValueError:
        raise TemporaryFailure("SendGrid answered with something that is not JSON") from None
    return data if isinstance(data, list) else []


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _refusal(status: int, body: bytes | str | None) -> str:
    """SendGrid's own error list, field by field: the person needs exactly that."""
    details: list[str] = []
    try:
        data = json.loads(body or b"{}")
        for error in data.get("errors", []):
            field = error.get("field")
            details.append(
                f"{field}: {error.get('message')}" if field else str(error.get("message"))
            )
    except (ValueError, AttributeError):
        pass
    hint = {
        401: " (check the API key in the environment variable named by sendgrid.api_key_env)",
        403: " (the key lacks the Mail Send permission, or the sender is not verified)",
        413: " (the request is too large: lower delivery.batch_size)",
    }.get(status, "")
    listed = "; ".join(details) if details else "no details given"
    return f"SendGrid refused the request: {status} {_reason(status)}{hint}: {listed}"
