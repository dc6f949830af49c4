"""The SendGrid transport: one v3 mail/send request per batch, with the official client.

One personalization per recipient (at most 1,000 per request), the tokens
filled by SendGrid's `substitutions`, per-recipient unsubscribe headers and
`custom_args` for matching webhook events to an issue.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import functools
import gzip
import html
import json
import logging
import re
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.client import HTTPException
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import TYPE_CHECKING, Any, ClassVar

from python_http_client.exceptions import HTTPError, NotFoundError

from newsletter.config import SendGridSettings
from newsletter.controls import body_text, has_control, one_line
from newsletter.redaction import redact
from newsletter.tokens import HTML_SAFE, ONE_LINE, html_token, text_token
from newsletter.transports.base import (
    Batch,
    BatchFailure,
    InDoubt,
    InDoubtFailure,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
)
from newsletter.zones import ZONE_COLUMN, ReaderTimes

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

MAX_PERSONALIZATIONS = 1000
GZIP = {"Content-Encoding": "gzip"}
SUPPRESSION_PAGE = 500
_HTML_SPECIAL = re.compile(r"[&<>\"']")
_q = encode_basestring  # a JSON string literal (C-accelerated), UTF-8 kept as is


def _literal(text: str) -> str:
    """Fixed text inside a %-template."""
    return text.replace("%", "%%")


class SendGridTransport:
    name = "sendgrid"
    in_doubt: ClassVar[InDoubt] = "batch"  # a request in flight at a crash: all of it

    def __init__(
        self,
        settings: SendGridSettings,
        api_key: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._key = api_key
        self._common: tuple[Message, str, str, list[str]] | None = None
        self._times: tuple[Message, ReaderTimes] | None = None

    @functools.cached_property
    def http(self) -> httpx.Client:
        """mail/send over one kept-alive connection (the official client, over urllib,
        opens a new one per request: a millisecond each, a thousand times per million
        readers). Made when first used: its TLS context takes a tenth of a second, which a
        transport made only to check the settings, or to fetch suppressions, does without.
        One client per transport, one transport per worker thread: the client shares
        mutable request headers between its sub-clients. httpx is imported here: a send's
        own process does without it where only its sender processes post."""
        import httpx

        return httpx.Client(
            base_url=self.settings.api_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {self._key}",
                "Content-Type": "application/json",
                "User-Agent": "newsletter",
            },
            timeout=self.settings.timeout,
        )

    @functools.cached_property
    def api(self) -> Any:
        """The official client, for everything but mail/send (suppressions, unsubscribes):
        made when first used, so a sender process does not import it."""
        from sendgrid import SendGridAPIClient

        api = SendGridAPIClient(api_key=self._key, host=self.settings.api_url.rstrip("/"))
        api.client.timeout = self.settings.timeout
        return api

    def common_fields(self, message: Message) -> dict[str, Any]:
        """Everything in the request but the personalizations: the same for every batch."""
        s = self.settings
        sender: dict[str, str] = {"email": message.from_email}
        if message.from_name:
            sender["name"] = one_line(message.from_name)
        body: dict[str, Any] = {
            "from": sender,
            # SendGrid writes these into headers: one line each, like the local transports
            "subject": one_line(message.subject),
            "content": [
                {"type": "text/plain", "value": body_text(message.text)},
                {"type": "text/html", "value": body_text(message.html)},
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
        if s.asm_group_id is not None and message.bulk:
            body["asm"] = {"group_id": s.asm_group_id}
        if s.ip_pool_name:
            body["ip_pool_name"] = s.ip_pool_name
        if message.headers:
            body["headers"] = {name: one_line(value) for name, value in message.headers}
        if message.send_at is not None:
            body["send_at"] = message.send_at
        if message.batch_id is not None:
            body["batch_id"] = message.batch_id
        settings: dict[str, Any] = {}
        if message.sandbox:
            settings["sandbox_mode"] = {"enable": True}
        if not message.bulk:
            # someone who unsubscribed and now signs up again must get the confirmation
            # (bounces and spam reports are still honoured by SendGrid)
            settings["bypass_unsubscribe_management"] = {"enable": True}
        if settings:
            body["mail_settings"] = settings
        return body

    def request_json(self, message: Message, recipients: Sequence[Recipient]) -> bytes:
        """The mail/send body, written directly from the batch's columns: a million
        recipients built as dicts only to be encoded again would double the work."""
        batch = Batch.of(recipients)
        count = len(batch)
        if count > MAX_PERSONALIZATIONS:
            raise PermanentFailure(f"a batch has {count} recipients; SendGrid takes 1000")
        if self._common is None or self._common[0] is not message:
            self._common = (message, *self._prepare(message))
        _, common, custom_args, tokens = self._common
        # one %-template per recipient, its fields filled column by column with C
        # functions mapped over each list
        quoted_emails = list(map(_q, batch.emails))
        columns: list[list[str]] = [quoted_emails]
        template = '{"to":[{"email":%s'
        names = batch.names
        if any(names):
            names = _clean_column(names, one_line)
            columns.append([',"name":' + _q(n) if n else "" for n in names])
            template += "%s"
        template += "}]"
        if tokens:
            pairs = []
            for token in tokens:
                raw = batch.values.get(token) or [""] * count
                quoted = quoted_emails if raw is batch.emails else list(map(_q, raw))
                if token in HTML_SAFE:  # one key serves both parts
                    columns.append(quoted)
                    pairs.append(_literal(_q(html_token(token))) + ":%s")
                    continue
                if raw is not batch.emails:  # from the list file: as the MIME parts get it
                    clean = (
                        names  # the same column as `to.name`, searched once
                        if raw is batch.names
                        else _clean_column(raw, one_line if token in ONE_LINE else body_text)
                    )
                    if clean is not raw:
                        raw, quoted = clean, list(map(_q, clean))
                if _HTML_SPECIAL.search("\n".join(raw)):  # one search, not one per recipient
                    escaped = [
                        _q(html.escape(v)) if _HTML_SPECIAL.search(v) else x
                        for v, x in zip(raw, quoted, strict=True)
                    ]
                else:
                    escaped = quoted
                columns += [escaped, quoted]
                pairs.append(
                    _literal(_q(html_token(token)))
                    + ":%s,"
                    + _literal(_q(text_token(token)))
                    + ":%s"
                )
            template += ',"substitutions":{' + ",".join(pairs) + "}"
        headers = batch.headers
        if headers and all(None not in column for column in headers.values()):
            fields = []
            for name, column in headers.items():
                if column.count(column[0]) == count:  # the same for everyone: written once
                    fields.append(_literal(_q(name) + ":" + _q(column[0])))
                else:
                    fields.append(_literal(_q(name)) + ":%s")
                    columns.append(list(map(_q, column)))
            template += ',"headers":{' + ",".join(fields) + "}"
        elif headers:  # some recipients lack some headers
            columns.append(
                [
                    ',"headers":{'
                    + ",".join(_q(k) + ":" + _q(v) for k, v in r.headers.items())
                    + "}"
                    if r.headers
                    else ""
                    for r in batch
                ]
            )
            template += "%s"
        zones = batch.values.get(ZONE_COLUMN)
        if zones is not None and message.send_at and message.zone and message.anchor:
            # each reader's own morning: their send_at where it is not the newsletter's
            times = self._reader_times(message)
            own = [times.of(zone) for zone in zones]
            if any(own):
                columns.append([f',"send_at":{t}' if t else "" for t in own])
                template += "%s"
        template += ',"custom_args":' + _literal(custom_args) + "}"
        personalizations = ",".join(map(template.__mod__, zip(*columns, strict=True)))
        return b"".join([b'{"personalizations":[', personalizations.encode(), b"],", common, b"}"])

    def _reader_times(self, message: Message) -> ReaderTimes:
        """Readers' own send times for this message, worked out once per zone."""
        assert message.send_at and message.zone and message.anchor
        if self._times is None or self._times[0] is not message:
            moment = functools.partial(dt.datetime.fromtimestamp, tz=dt.UTC)
            times = ReaderTimes(moment(message.send_at), message.zone, moment(message.anchor))
            self._times = (message, times)
        return self._times[1]

    def _prepare(self, message: Message) -> tuple[bytes, str, list[str]]:
        """Per message, once: the fields shared by every batch, as encoded JSON."""
        compact = {"ensure_ascii": False, "separators": (",", ":")}
        common = json.dumps(self.common_fields(message), **compact)[1:-1].encode()  # type: ignore[arg-type]
        custom_args = json.dumps(
            {"issue_id": message.issue_id, "list": message.list_name}, **compact
        )
        return common, custom_args, sorted(message.tokens)

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt:
        body = self.request_json(message, recipients)
        response = self._call(lambda: self._post_mail(body), sends_mail=True)
        return Receipt(message_id=response.headers.get("X-Message-Id"))

    def _post_mail(self, body: bytes) -> httpx.Response:
        """POST /v3/mail/send; an answer other than 2xx raised as the official client does,
        so both paths are classified by one function, and what went wrong on the way as
        the failure it is."""
        import httpx

        headers = None
        if self.settings.compress:
            body, headers = gzip.compress(body, compresslevel=1, mtime=0), GZIP
        try:
            response = self.http.post("/v3/mail/send", content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise TemporaryFailure(self._unreachable(exc)) from None
        except (httpx.WriteError, httpx.WriteTimeout) as exc:
            # the request was not all written: SendGrid cannot have acted on it
            raise TemporaryFailure(
                f"the connection to SendGrid failed while sending the request: {exc!r}"
            ) from None
        except httpx.TransportError as exc:
            raise self._no_answer(exc, isinstance(exc, httpx.TimeoutException), True) from None
        # httpx 0.28 leaves each response in a reference cycle with its stream, holding the
        # request's 600 KB body until a cyclic collection (encode/httpx#3733): the stream is
        # done with (read and closed), so the response lets go of it and the cycle is gone
        response.stream = httpx.ByteStream(b"")
        if response.status_code >= 300:
            raise HTTPError(
                response.status_code, response.reason_phrase, response.content, response.headers
            )
        return response

    def _call(self, request: Callable[[], Any], *, sends_mail: bool = False) -> Any:
        """Run one API request; what went wrong as a temporary or permanent failure, with
        the key masked: an error body may quote the request back, and it is shown and stored."""
        try:
            return self._classified(request, sends_mail)
        except BatchFailure as exc:
            exc.args = (redact(str(exc), [self._key]),)
            raise

    def _classified(self, request: Callable[[], Any], sends_mail: bool) -> Any:
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
        except urllib.error.URLError as exc:
            # urllib raises this while connecting or writing the request: SendGrid has not
            # got all of it, so asking again cannot send anything twice
            raise TemporaryFailure(self._unreachable(exc.reason)) from None
        except (TimeoutError, HTTPException, OSError) as exc:
            raise self._no_answer(exc, isinstance(exc, TimeoutError), sends_mail) from None

    def _unreachable(self, why: object) -> str:
        return f"cannot reach SendGrid at {self.settings.api_url}: {why}"

    def _no_answer(self, exc: Exception, timed_out: bool, sends_mail: bool) -> BatchFailure:
        """The whole request went out and no answer came back: SendGrid may have taken it,
        so a mail send is in doubt, never retried (a read is simply asked again)."""
        what = (
            f"no answer from SendGrid within {self.settings.timeout:g}s"
            if timed_out
            else f"the connection to SendGrid failed before its answer: {exc!r}"
        )
        if sends_mail:
            return InDoubtFailure(
                f"{what}; SendGrid had the whole request and may have accepted it"
            )
        return TemporaryFailure(what)

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

    def forget_unsubscribe(self, address: str, group_id: int | None) -> None:
        """Take a returning reader off SendGrid's global unsubscribes and the group's.

        Otherwise the next send's sync would suppress them again. Bounces and
        spam reports stay: SendGrid would not deliver to those anyway.
        """
        segment = urllib.parse.quote(address, safe="@")
        client = self.api.client.asm
        paths = [client.suppressions._("global")._(segment)]
        if group_id is not None:
            paths.append(client.groups._(group_id).suppressions._(segment))
        for path in paths:
            self._call(lambda p=path: _absent_is_fine(p.delete))

    # -- scheduled sends: a batch ID groups an issue's requests, so they can be cancelled

    def create_batch(self) -> str:
        """A new batch ID (POST /v3/mail/batch) for the requests of one attempt."""
        response = self._call(lambda: self.api.client.mail.batch.post())
        batch_id = _object(response).get("batch_id")
        if not isinstance(batch_id, str) or not batch_id:
            raise TemporaryFailure("SendGrid answered a new batch without its batch_id")
        return batch_id

    def batch_status(self, batch_id: str) -> str | None:
        """ "cancel" or "pause" if one is set on the batch, else None."""
        response = self._call(lambda: self.api.client.user.scheduled_sends._(batch_id).get())
        statuses = [
            entry.get("status")
            for entry in _json(response)
            if isinstance(entry, dict) and entry.get("batch_id") == batch_id
        ]
        return statuses[0] if statuses else None

    def set_batch_status(self, batch_id: str, status: str) -> None:
        """Cancel or pause the batch's scheduled requests; SendGrid keeps ten such at once.
        A status already set is changed (PATCH), as SendGrid refuses a second POST."""
        current = self.batch_status(batch_id)
        if current == status:
            return
        scheduled = self.api.client.user.scheduled_sends
        if current is None:
            body = {"batch_id": batch_id, "status": status}
            self._call(lambda: scheduled.post(request_body=body))
        else:
            self._call(lambda: scheduled._(batch_id).patch(request_body={"status": status}))
        if self.batch_status(batch_id) != status:
            raise TemporaryFailure(f"SendGrid did not confirm the {status} of batch {batch_id}")

    def clear_batch_status(self, batch_id: str) -> None:
        """Lift a pause (or cancel) so the batch goes out at its time."""
        scheduled = self.api.client.user.scheduled_sends
        self._call(lambda: _absent_is_fine(scheduled._(batch_id).delete))

    def close(self) -> None:
        if "http" in self.__dict__:  # made, so open
            self.http.close()


def _clean_column(column: list[str], clean: Callable[[str], str]) -> list[str]:
    """A column of values from a list file, each `clean`ed of control characters: one
    search per batch, and the column itself when there are none (nearly always)."""
    if not has_control("".join(column)):
        return column
    return [clean(value) for value in column]


def _absent_is_fine(delete: Callable[[], Any]) -> Any:
    """A DELETE of what is not there (404) has done its job."""
    try:
        return delete()
    except NotFoundError:
        return None


def _json(response: Any) -> list[Any]:
    try:
        data = json.loads(response.body or b"[]")
    except ValueError:
        raise TemporaryFailure("SendGrid answered with something that is not JSON") from None
    return data if isinstance(data, list) else []


def _object(response: Any) -> dict[str, Any]:
    try:
        data = json.loads(response.body or b"{}")
    except ValueError:
        raise TemporaryFailure("SendGrid answered with something that is not JSON") from None
    return data if isinstance(data, dict) else {}


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
