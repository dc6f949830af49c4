"""A local emulator of the parts of the SendGrid v3 API that the newsletter uses.

Why: tests and benchmarks of `newsletter send` must exercise the real HTTP path (the official
client, retries, timeouts, suppression paging) without the network or a real account. Requests
are checked against the official OpenAPI spec in `tests/fixtures/sendgrid/` plus the cross-field
rules the spec does not encode (see SOURCE.md there), and failures can be scripted. Scheduled
sends (`send_at`, `batch_id`, cancel/pause) run on a clock the test moves (`advance`), with the
rules kept in `scheduled_sends.py`.

Use it in-process (`with SendGridEmulator(api_key="SG.test") as emu: ... emu.url`) or as a
process: `python tests/support/sendgrid_emulator.py --port 0 --api-key SG.x` prints the base URL
as its first stdout line and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import secrets
import signal
import socket
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from functools import cache, lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

if __package__:
    from .scheduled_sends import (
        UNKNOWN_BATCH,
        Delivery,
        ScheduledSends,
        ScheduleError,
        StatusNotFound,
    )
else:  # run as a script: python tests/support/sendgrid_emulator.py
    from scheduled_sends import (  # type: ignore[import-not-found, no-redef]
        UNKNOWN_BATCH,
        Delivery,
        ScheduledSends,
        ScheduleError,
        StatusNotFound,
    )

__all__ = [
    "MAIL_SEND_PATH",
    "SUPPRESSION_LISTS",
    "Delivery",
    "EmulatorStats",
    "Fault",
    "RecordedRequest",
    "SendGridEmulator",
    "cross_field_errors",
    "group_key",
    "mail_send_validator",
    "new_message_id",
    "scheduled_send_request_validator",
    "spec_response_validator",
    "suppression_response_validator",
]

SPEC_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sendgrid"
MAIL_SPEC = "tsg_mail_v3.json"
SUPPRESSIONS_SPEC = "tsg_suppressions_v3.json"
SCHEDULED_SENDS_SPEC = "tsg_scheduled_sends_v3.json"
MAIL_SEND_PATH = "/v3/mail/send"
MAIL_BATCH_PATH = "/v3/mail/batch"
SCHEDULED_SENDS_PATH = "/v3/user/scheduled_sends"
SUPPRESSION_LISTS = ("unsubscribes", "bounces", "spam_reports", "invalid_emails", "blocks")
"""The `/v3/suppression/<name>` lists; each pages with `limit`/`offset` (max 500) in the spec."""

MAX_PAGE_SIZE = 500  # PaginationCommonLimit.maximum in tsg_suppressions_v3.json
DEFAULT_MAX_BODY = 20 * 1024 * 1024
MAX_RECIPIENTS = 1000
_DRAIN_CAP = 256 * 1024 * 1024  # read and discard an oversized body up to this, so the 413 arrives
_GROUP_PATH = re.compile(r"^/v3/asm/groups/([^/]+)/suppressions$")
_GLOBAL_MEMBER = re.compile(r"^/v3/asm/suppressions/global/([^/]+)$")
_GROUP_MEMBER = re.compile(r"^/v3/asm/groups/([^/]+)/suppressions/([^/]+)$")
_AUTH_MESSAGE = "The provided authorization grant is invalid, expired, or revoked"
_STATUS_MESSAGES = {
    400: "Bad Request",
    401: _AUTH_MESSAGE,
    403: "access forbidden",
    404: "not found",
    405: "method not allowed",
    413: "content too large",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


# --------------------------------------------------------------------------- spec and validators


@cache
def _load_spec(name: str) -> dict[str, Any]:
    return json.loads((SPEC_DIR / name).read_text(encoding="utf-8"))


def _validator(spec: dict[str, Any], name: str, pointer: str) -> Draft202012Validator:
    """Validate against the schema at `pointer`, resolving its `$ref`s inside the same document."""
    uri = f"urn:sendgrid-oai:{name}"
    registry = Registry().with_resource(uri, DRAFT202012.create_resource(spec))
    return Draft202012Validator(
        {"$ref": f"{uri}#{pointer}"},
        registry=registry,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


@lru_cache(maxsize=2)
def mail_send_validator(lenient_custom_args: bool = False) -> Draft202012Validator:
    """The request-body validator for POST /v3/mail/send, built once per process.

    The spec types top-level `custom_args` as a string although the live API and the `sendgrid`
    helper use an object (SOURCE.md); `lenient_custom_args=True` accepts the object as live does.
    """
    spec = _load_spec(MAIL_SPEC)
    pointer = "/components/requestBodies/PostMailSend/content/application~1json/schema"
    if lenient_custom_args:
        spec = copy.deepcopy(spec)
        body = spec["components"]["requestBodies"]["PostMailSend"]["content"]["application/json"]
        body["schema"]["properties"]["custom_args"]["type"] = ["string", "object"]
    return _validator(spec, MAIL_SPEC, pointer)


@cache
def suppression_response_validator(path_template: str) -> Draft202012Validator:
    """The 200-response validator of a GET suppression endpoint, e.g. `/v3/suppression/bounces`."""
    spec = _load_spec(SUPPRESSIONS_SPEC)
    escaped = path_template.replace("~", "~0").replace("/", "~1")
    pointer = f"/paths/{escaped}/get/responses/200/content/application~1json/schema"
    return _validator(spec, SUPPRESSIONS_SPEC, pointer)


def _pointer(*parts: str) -> str:
    """A JSON pointer to `parts`, e.g. a path template with its slashes escaped."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


@cache
def spec_response_validator(
    spec_name: str, path_template: str, method: str, status: int
) -> Draft202012Validator | None:
    """The JSON-body validator of one documented answer, e.g. (SCHEDULED_SENDS_SPEC,
    "/v3/user/scheduled_sends", "post", 201); None when the spec gives that answer no body."""
    spec = _load_spec(spec_name)
    response = spec["paths"][path_template][method]["responses"][str(status)]
    pointer = _pointer("paths", path_template, method, "responses", str(status))
    if "$ref" in response:
        pointer = response["$ref"].removeprefix("#")
        response = spec["components"]["responses"][pointer.rsplit("/", 1)[1]]
    if "application/json" not in response.get("content", {}):
        return None
    return _validator(spec, spec_name, pointer + _pointer("content", "application/json", "schema"))


@cache
def scheduled_send_request_validator(method: str) -> Draft202012Validator:
    """The request-body validator of POST /v3/user/scheduled_sends or PATCH .../{batch_id}."""
    path = SCHEDULED_SENDS_PATH + ("/{batch_id}" if method == "patch" else "")
    pointer = _pointer("paths", path, method, "requestBody", "content", "application/json")
    return _validator(_load_spec(SCHEDULED_SENDS_SPEC), SCHEDULED_SENDS_SPEC, pointer + "/schema")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: ValidationError) -> str:
    """A short message; jsonschema's own repeats the whole (possibly 300 KB) instance."""
    v, expected = err.validator, err.validator_value
    if v == "type":
        return (
            f"must be of type {' or '.join(expected) if isinstance(expected, list) else expected}"
        )
    if v == "format" and expected == "email":
        return "Does not contain a valid address."
    messages = {
        "maxItems": f"must have at most {expected} items",
        "minItems": f"must have at least {expected} items",
        "maxLength": f"must be at most {expected} characters long",
        "minLength": f"must be at least {expected} characters long",
        "maxProperties": f"must have at most {expected} properties",
        "uniqueItems": "must not contain duplicate items",
        "enum": f"must be one of {_short(expected)}",
        "format": f"must be a valid {expected}",
    }
    return messages.get(str(v), f"failed the {v!r} rule ({_short(expected)})")


_REQUIRED_MESSAGES = {
    "from": "The from object must be provided for every email send. It is an object that "
    "requires the email parameter, but may also contain a name parameter.",
    "personalizations": "The personalizations field is required and must have at least one "
    "personalization.",
    "to": "The to array is required for all personalization objects, and must have at least "
    "one email object with a valid email address.",
    "email": "The email parameter is required.",
}


def _schema_error(err: ValidationError) -> dict[str, Any]:
    path = [str(p) for p in err.absolute_path]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next((p for p in err.validator_value if p not in err.instance), "")
        path.append(missing)
        message = _REQUIRED_MESSAGES.get(missing, f"The {missing} parameter is required.")
    else:
        message = _describe(err)
    return {"field": ".".join(path) or None, "message": message, "help": None}


_CONTENT_RANK = {"text/plain": 0, "text/x-amp-html": 1, "text/html": 2}


def cross_field_errors(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The live API's rules that the spec does not encode; `body` must already match the schema."""
    errors: list[dict[str, Any]] = []

    def fail(field_: str | None, message: str) -> None:
        errors.append({"field": field_, "message": message, "help": None})

    personalizations = body.get("personalizations", [])
    if not personalizations:
        fail("personalizations", _REQUIRED_MESSAGES["personalizations"])
    total = 0
    for i, p in enumerate(personalizations):
        if not p.get("to"):
            fail(f"personalizations.{i}.to", _REQUIRED_MESSAGES["to"])
        seen: set[str] = set()
        duplicate_reported = False
        for kind in ("to", "cc", "bcc"):
            for address in p.get(kind, []):
                total += 1
                email = address["email"].strip().lower()
                if email in seen and not duplicate_reported:
                    duplicate_reported = True
                    fail(
                        f"personalizations.{i}.{kind}",
                        "Each email address in the personalization block should be unique "
                        "between to, cc, and bcc. We found the first duplicate instance of "
                        f"[{address['email']}] in the personalizations.{i}.{kind} field.",
                    )
                seen.add(email)
    if total > MAX_RECIPIENTS:
        fail(
            "personalizations",
            f"The total number of recipients must be no more than {MAX_RECIPIENTS}. This "
            "includes all recipients defined within the to, cc, and bcc parameters, across "
            f"each object that you include in the personalizations array (found {total}).",
        )
    if "reply_to" in body and "reply_to_list" in body:
        fail("reply_to_list", "You can use either the reply_to or reply_to_list field, not both.")
    template_id = body.get("template_id")
    content = body.get("content") or []
    if not template_id and not content:
        fail(
            "content",
            "Unless a valid template_id is provided, the content parameter is required. There "
            "must be at least one defined content block.",
        )
    ranks = [_CONTENT_RANK.get(c["type"].lower(), 3) for c in content]
    if any(ranks.count(r) > 1 for r in range(3)):
        fail("content", "If present, text/plain and text/html may only be provided once.")
    elif ranks != sorted(ranks):
        fail(
            "content",
            "If present, text/plain content must be first, followed by text/html, followed by "
            "any other content.",
        )
    subjects = [p.get("subject") for p in personalizations]
    if not template_id and not body.get("subject") and personalizations and not all(subjects):
        fail(
            "subject",
            "The subject is required. You can get around this requirement if you use a "
            "template with a subject defined or if every personalization has a subject defined.",
        )
    return errors


def _count(body: Any) -> tuple[int, int]:
    """(personalizations, recipients across to/cc/bcc), tolerant of malformed bodies."""
    ps = body.get("personalizations") if isinstance(body, dict) else None
    if not isinstance(ps, list):
        return 0, 0
    recipients = 0
    for p in ps:
        if isinstance(p, dict):
            for kind in ("to", "cc", "bcc"):
                value = p.get(kind)
                if isinstance(value, list):
                    recipients += len(value)
    return len(ps), recipients


def _is_sandbox(body: Mapping[str, Any]) -> bool:
    settings = body.get("mail_settings")
    sandbox = settings.get("sandbox_mode") if isinstance(settings, dict) else None
    return isinstance(sandbox, dict) and sandbox.get("enable") is True


def _loads(raw: bytes) -> Any:
    """A request body parsed as `json.loads` would, a few times faster: orjson first (the
    emulator parses every mail/send body, 600 KB each, beside the sender it checks), and
    the standard parser for what orjson refuses (it is stricter), which then decides."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _error_body(status: int, errors: list[dict[str, Any]] | None = None) -> bytes:
    if errors is None:
        message = _STATUS_MESSAGES.get(status, "error")
        errors = [{"field": None, "message": message, "help": None}]
    return json.dumps({"errors": errors}).encode()


def _spec_error_body(status: int, errors: list[dict[str, Any]] | None = None) -> bytes:
    """`_error_body` without null `field`/`help`, for the batch and scheduled-sends endpoints:
    their specs' ErrorResponse types `field` as a string and `help` as an object."""
    items = json.loads(_error_body(status, errors))["errors"]
    clean = [{k: v for k, v in e.items() if v is not None} for e in items]
    return json.dumps({"errors": clean}).encode()


def new_message_id() -> str:
    """22 URL-safe characters, the shape of SendGrid's X-Message-Id."""
    return secrets.token_urlsafe(16)


# --------------------------------------------------------------------------- public data types


@dataclass(frozen=True)
class Fault:
    """One scripted answer instead of the normal one.

    `status` answers with that code (body: `errors` as SendGrid-style JSON, else raw `body`, else a
    generic SendGrid error); `delay` waits first (alone: then answers normally); `hold` waits until
    the test calls `release()` (alone: then answers normally), so a test can act while a request
    is known to be in flight; `hang` reads the request and never answers until the emulator
    stops; `drop` closes the connection unanswered.
    `path` is the request path (prefix) the fault applies to; by default mail/send only.
    `echo_authorization` adds the request's own Authorization header (the API key) to each error
    message, as a careless server or proxy might.
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None
    body: bytes | None = None
    delay: float = 0.0
    hold: bool = False
    hang: bool = False
    drop: bool = False
    path: str = MAIL_SEND_PATH
    echo_authorization: bool = False

    def __post_init__(self) -> None:
        if sum([self.status is not None, self.hang, self.drop]) > 1:
            raise ValueError("a Fault is one of: status, hang or drop")
        if self.delay < 0:
            raise ValueError("delay must be >= 0")
        if self.hold and (self.hang or self.delay):
            raise ValueError("hold is its own wait: not with hang or delay")

    @property
    def kind(self) -> str:
        if self.hold and self.status is None and not self.drop:
            return "hold"
        if self.hang:
            return "hang"
        if self.drop:
            return "drop"
        if self.status is not None:
            return f"status:{self.status}"
        return f"delay:{self.delay:g}"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the emulator saw and answered it.

    `status` is None when the connection was dropped or left hanging; `accepted` is True only for
    a 2xx mail/send answer (i.e. SendGrid took the mail); `body` is the parsed JSON (None when
    `record_bodies=False`, not JSON, or empty); header names are lower-case.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int | None
    accepted: bool
    message_id: str | None
    fault: str | None
    errors: list[dict[str, Any]] | None
    size: int
    personalizations: int
    recipients: int
    validated: bool
    received_at: float
    client: tuple[str, int]  # the address and port the request came from: its connection


@dataclass
class EmulatorStats:
    """Counters kept in every mode; the standalone process writes them as JSON on exit."""

    requests: int = 0  # mail/send requests, any outcome
    accepted: int = 0
    rejected: int = 0  # answered 4xx/5xx (faulted ones included)
    faulted: int = 0
    personalizations: int = 0  # in accepted requests
    recipients: int = 0  # in accepted requests
    bytes_received: int = 0  # mail/send bodies as sent (before gzip decoding)
    validated: int = 0
    validation_failures: int = 0
    suppression_requests: int = 0


def group_key(group_id: int | str) -> str:
    """The `suppressions` key of an unsubscribe group's list, e.g. `asm_group:42`."""
    return f"asm_group:{group_id}"


# --------------------------------------------------------------------------- HTTP plumbing


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Body:
    raw: bytes | None  # None when too large
    size: int  # bytes on the wire
    too_large: bool = False


class _BadFraming(Exception):
    """The request body cannot be read as HTTP/1.1 framing says."""


def _read_chunked(rfile: BinaryIO, limit: int) -> _Body:
    parts: list[bytes] = []
    size = 0
    while True:
        line = rfile.readline(65537)
        if not line:
            raise _BadFraming("truncated chunked body")
        n = int(line.split(b";", 1)[0].strip(), 16)
        if n == 0:
            break
        chunk = rfile.read(n)
        if len(chunk) < n:
            raise _BadFraming("truncated chunk")
        rfile.readline()
        size += n
        if size <= limit:
            parts.append(chunk)
    while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
        pass  # trailers
    if size > limit:
        return _Body(None, size, too_large=True)
    return _Body(b"".join(parts), size)


def _read_body(handler: BaseHTTPRequestHandler, limit: int) -> _Body:
    headers = handler.headers
    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        body = _read_chunked(handler.rfile, limit)
    else:
        try:
            length = int(headers.get("Content-Length", "0"))
        except ValueError as exc:
            raise _BadFraming("bad Content-Length") from exc
        if length < 0:
            raise _BadFraming("bad Content-Length")
        if length > limit:
            if length > _DRAIN_CAP:
                handler.close_connection = True
                return _Body(None, length, too_large=True)
            remaining = length
            while remaining > 0:
                got = handler.rfile.read(min(remaining, 1 << 20))
                if not got:
                    raise _BadFraming("truncated body")
                remaining -= len(got)
            return _Body(None, length, too_large=True)
        raw = handler.rfile.read(length) if length else b""
        if len(raw) < length:
            raise _BadFraming("truncated body")
        body = _Body(raw, length)
    if body.raw and headers.get("Content-Encoding", "").lower() == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            plain = inflater.decompress(body.raw, limit + 1)
        except zlib.error:
            return _Body(b"\x00not gzip", body.size)  # answered as non-JSON -> 400
        if len(plain) > limit:
            return _Body(None, body.size, too_large=True)
        body = _Body(plain, body.size)
    return body


class _Handler(BaseHTTPRequestHandler):
    """Thin: every request goes to `SendGridEmulator._serve`."""

    protocol_version = "HTTP/1.1"  # keep-alive, so a pooling client (httpx) is fast
    server_version = "sendgrid-emulator"
    sys_version = ""
    timeout = 60  # idle keep-alive connections give up eventually
    server: _Server

    def do_GET(self) -> None:
        self.server.emulator._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.emulator._serve(self, "POST")

    def do_PUT(self) -> None:
        self.server.emulator._serve(self, "PUT")

    def do_PATCH(self) -> None:
        self.server.emulator._serve(self, "PATCH")

    def do_DELETE(self) -> None:
        self.server.emulator._serve(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """Tracks live connections so `stop()` can cut them instead of waiting on them."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], emulator: SendGridEmulator) -> None:
        super().__init__(address, _Handler)
        self.emulator = emulator
        self._live_lock = threading.Lock()
        self._live: dict[socket.socket, threading.Thread] = {}

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._live_lock:
            self._live[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError) or self.emulator._stopping.is_set():
            return  # the client went away, or we are shutting down
        super().handle_error(request, client_address)

    def cut_connections(self, join_timeout: float) -> None:
        with self._live_lock:
            live = list(self._live.items())
        for sock, _ in live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + join_timeout
        for _, thread in live:
            thread.join(max(0.0, deadline - time.monotonic()))


# --------------------------------------------------------------------------- the emulator


class SendGridEmulator:
    """A threaded HTTP server on 127.0.0.1 that answers like SendGrid's v3 API.

    Endpoints: POST /v3/mail/send; GET /v3/suppression/{unsubscribes,bounces,spam_reports,
    invalid_emails,blocks} (paged by `limit`/`offset`); GET /v3/asm/groups/{id}/suppressions;
    DELETE /v3/asm/suppressions/global/{email} and /v3/asm/groups/{id}/suppressions/{email};
    POST /v3/mail/batch, GET /v3/mail/batch/{id}; /v3/user/scheduled_sends (POST, GET) and
    /v3/user/scheduled_sends/{id} (GET, PATCH, DELETE). Scheduled mail waits for `advance()`.
    Seed suppressions with `emu.suppressions["bounces"] = ["a@x.org", {...}]` or
    `emu.suppressions[group_key(42)] = [...]` (plain strings get spec-shaped default fields).
    """

    def __init__(
        self,
        api_key: str = "SG.test",
        *,
        validate: str = "all",
        record_bodies: bool = True,
        port: int = 0,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        default_page_size: int = MAX_PAGE_SIZE,
        lenient_custom_args: bool = False,
    ) -> None:
        self.api_key = api_key
        self._every = self._parse_validate(validate)
        self.validate = validate
        self.record_bodies = record_bodies
        self.max_body_bytes = max_body_bytes
        if not 1 <= default_page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"default_page_size must be within 1..{MAX_PAGE_SIZE}")
        self.default_page_size = default_page_size
        self._validator = mail_send_validator(lenient_custom_args)
        self._port = port
        self.suppressions: dict[str, list[Any]] = {name: [] for name in SUPPRESSION_LISTS}
        self.seeded_at = int(time.time())
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: list[RecordedRequest] = []
        self._stats = EmulatorStats()
        self._normal_seq = 0
        self._script: deque[Fault] = deque()
        self._persistent: Fault | None = None
        self._holding = 0  # requests waiting for release()
        self._released = False
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._schedule = ScheduledSends(keep_log=record_bodies)

    @staticmethod
    def _parse_validate(mode: str) -> int | None:
        """Validate request n when n % every == 0 (None: never); "first" validates only n == 0."""
        if mode == "all":
            return 1
        if mode == "none":
            return None
        if mode == "first":
            return 0
        if mode.startswith("sample:") and mode[7:].isdigit() and int(mode[7:]) >= 1:
            return int(mode[7:])
        raise ValueError(f'validate must be "all", "first", "none" or "sample:N", not {mode!r}')

    # ---- lifecycle

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SendGridEmulator:
        if self._server is not None:
            raise RuntimeError("already running")
        self._stopping = threading.Event()
        self._server = _Server(("127.0.0.1", self._port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sendgrid-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Return promptly: hanging and delayed answers are released, open connections cut."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._changed:
            self._stopping.set()
            self._changed.notify_all()  # held requests give up
        server.shutdown()
        server.cut_connections(join_timeout=2.0)
        server.server_close()
        thread.join(2.0)
        self._server = self._thread = None

    def __enter__(self) -> SendGridEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- faults

    def script(self, *faults: Fault) -> None:
        """Queue faults; each answers the next request matching its `path`, in order."""
        with self._lock:
            self._script.extend(faults)

    def fail_all(self, fault: Fault) -> None:
        """Answer every matching request with `fault` (after any scripted ones) until cleared."""
        with self._lock:
            self._persistent = fault

    def clear_faults(self) -> None:
        with self._lock:
            self._script.clear()
            self._persistent = None

    def release(self) -> None:
        """Let every held request (and any later `hold` fault) go on, until `reset()`."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def wait_for_held(self, count: int, timeout: float = 5.0) -> bool:
        """Block until `count` requests are waiting for `release()`; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._holding >= count, timeout)

    def _hold(self) -> bool:
        """Wait for `release()`; False if the emulator stops first."""
        with self._changed:
            self._holding += 1
            self._changed.notify_all()
            try:
                self._changed.wait_for(lambda: self._released or self._stopping.is_set())
            finally:
                self._holding -= 1
            return not self._stopping.is_set()

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._script)

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._script):
                if path.startswith(fault.path):
                    del self._script[i]
                    return fault
            persistent = self._persistent
            if persistent is not None and path.startswith(persistent.path):
                return persistent
            return None

    # ---- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request recorded so far (mail/send and suppression GETs)."""
        with self._lock:
            return list(self._records)

    def mail_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == MAIL_SEND_PATH]

    def accepted(self) -> list[dict[str, Any]]:
        """Bodies of the mail/send requests answered 2xx, in arrival order."""
        self._need_bodies()
        return [r.body for r in self.mail_requests() if r.accepted]

    def recipients(self) -> list[str]:
        """Every `to` address of the accepted requests, in order."""
        return [
            to["email"]
            for body in self.accepted()
            for p in body["personalizations"]
            for to in p["to"]
        ]

    def deliveries(self) -> list[Delivery]:
        """Every `to` address that went out, immediate or scheduled, in order (not sandbox)."""
        self._need_bodies()
        return self._schedule.deliveries()

    def delivered(self) -> Counter[str]:
        """How often each address went out; unlike `recipients()`, scheduled mail counts only
        once the clock reaches its send_at, and cancelled mail never."""
        return Counter(d.email for d in self.deliveries())

    def scheduled(self) -> int:
        """How many addresses still wait for their send_at (or for a pause to be lifted)."""
        return self._schedule.scheduled()

    def statuses(self) -> dict[str, str]:
        """The cancel/pause statuses in force, by batch_id."""
        return self._schedule.statuses()

    def stats(self) -> EmulatorStats:
        with self._lock:
            return EmulatorStats(**asdict(self._stats))

    # ---- the clock (scheduled sends)

    def now(self) -> float:
        """The emulator's clock: `time.time()` plus however far the test advanced it."""
        return self._schedule.now()

    def advance(self, seconds: float) -> None:
        """Move the clock forward, then deliver (or discard) the scheduled mail now due."""
        self._schedule.advance(seconds)

    def advance_to(self, epoch: float) -> None:
        """Move the clock to `epoch` (not back), then deliver as `advance` does."""
        self._schedule.advance_to(epoch)

    def wait_for_requests(
        self, count: int, timeout: float = 5.0, path: str = MAIL_SEND_PATH
    ) -> bool:
        """Block until `count` requests to `path` were recorded; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(r.path == path for r in self._records) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True

    def reset(self) -> None:
        """Forget recorded requests, counters, faults, batches, statuses and deliveries; keeps
        suppressions and the clock."""
        with self._lock:
            self._records.clear()
            self._stats = EmulatorStats()
            self._normal_seq = 0
            self._script.clear()
            self._persistent = None
            self._released = False
        self._schedule.reset()

    def _need_bodies(self) -> None:
        if not self.record_bodies:
            raise RuntimeError("bodies are not kept with record_bodies=False; use stats()")

    # ---- request handling

    def _serve(self, handler: _Handler, method: str) -> None:
        url = urlsplit(handler.path)
        path = url.path.rstrip("/") or "/"
        query = parse_qs(url.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body = _read_body(handler, self.max_body_bytes)
        except (_BadFraming, ValueError):
            handler.close_connection = True
            self._send(handler, _Reply(400, _error_body(400)))
            return
        record = _Pending(method, path, query, headers, body, client=handler.client_address)

        fault = self._take_fault(path)
        if fault is not None and fault.hold and not self._hold():
            handler.close_connection = True
            self._record(record, None, fault=fault)
            return
        if fault is not None and fault.delay and self._stopping.wait(fault.delay):
            handler.close_connection = True
            self._record(record, None, fault=fault)
            return
        if fault is not None and (fault.hang or fault.drop):
            self._record(record, None, fault=fault)
            if fault.hang:
                self._stopping.wait()
            handler.close_connection = True
            return
        if fault is not None and fault.status is not None:
            reply = self._fault_reply(fault, headers.get("authorization", ""))
            self._record(record, reply, fault=fault)
        else:
            reply = self._route(record)
            self._record(record, reply, fault=fault)
        self._send(handler, reply)

    @staticmethod
    def _fault_reply(fault: Fault, authorization: str = "") -> _Reply:
        status = fault.status or 500
        errors = fault.errors
        if fault.echo_authorization:
            errors = [
                {**e, "message": f"{e.get('message')} (Authorization: {authorization})"}
                for e in (errors or json.loads(_error_body(status))["errors"])
            ]
        if errors is not None:
            payload = json.dumps({"errors": errors}).encode()
        elif fault.body is not None:
            payload = fault.body
        else:
            payload = b"" if status < 400 else _error_body(status)
        headers = dict(fault.headers)
        if 200 <= status < 300 and not any(k.lower() == "x-message-id" for k in headers):
            headers["X-Message-Id"] = new_message_id()
        return _Reply(status, payload, headers)

    def _route(self, req: _Pending) -> _Reply:
        if req.path == MAIL_SEND_PATH:
            return self._mail_send(req)
        if req.path.startswith("/v3/suppression/") or _GROUP_PATH.match(req.path):
            return self._suppressions(req)
        if _GLOBAL_MEMBER.match(req.path) or _GROUP_MEMBER.match(req.path):
            return self._forget(req)
        if req.path == MAIL_BATCH_PATH or req.path.startswith(MAIL_BATCH_PATH + "/"):
            return self._mail_batch(req)
        if req.path == SCHEDULED_SENDS_PATH or req.path.startswith(SCHEDULED_SENDS_PATH + "/"):
            return self._scheduled_sends(req)
        return _Reply(404, _error_body(404))

    def _forget(self, req: _Pending) -> _Reply:
        """DELETE one address from the global unsubscribes or a group's (204, as the spec says)."""
        if req.method != "DELETE":
            return _Reply(405, _error_body(405))
        if not self._authorized(req):
            return _Reply(401, _error_body(401))
        member = _GROUP_MEMBER.match(req.path)
        if member:
            key, address = group_key(unquote(member.group(1))), unquote(member.group(2))
        else:
            key, address = "unsubscribes", unquote(_GLOBAL_MEMBER.match(req.path).group(1))  # type: ignore[union-attr]
        with self._lock:
            entries = self.suppressions.get(key, [])
            self.suppressions[key] = [
                e for e in entries if (e if isinstance(e, str) else e["email"]) != address
            ]
        return _Reply(204, b"")

    def _authorized(self, req: _Pending) -> bool:
        scheme, _, key = req.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and key.strip() == self.api_key

    def _should_validate(self) -> bool:
        with self._lock:
            n = self._normal_seq
            self._normal_seq += 1
        every = self._every
        if every is None:
            return False
        return n == 0 if every == 0 else n % every == 0

    def _mail_send(self, req: _Pending) -> _Reply:
        if req.method != "POST":
            return _Reply(405, _error_body(405))
        if not self._authorized(req):
            return _Reply(401, _error_body(401))
        if req.body.too_large:
            return _Reply(413, _error_body(413))
        try:
            parsed = _loads(req.body.raw or b"")
        except ValueError:
            return _Reply(400, _error_body(400))
        req.parsed = parsed
        req.validated = self._should_validate()
        if req.validated:
            errors = [_schema_error(e) for e in self._validator.iter_errors(parsed)]
            errors.sort(key=lambda e: e["field"] or "")
            if not errors:
                errors = cross_field_errors(parsed)
            if errors:
                req.errors = errors
                return _Reply(400, json.dumps({"errors": errors}).encode())
        elif not isinstance(parsed, dict):
            return _Reply(400, _error_body(400))
        message_id = new_message_id()
        sandbox = _is_sandbox(parsed)
        refused = self._schedule.submit(parsed, message_id, deliver=not sandbox)
        if refused:
            req.errors = [{"field": e.field, "message": e.message, "help": None} for e in refused]
            return _Reply(400, json.dumps({"errors": req.errors}).encode())
        return _Reply(200 if sandbox else 202, b"", {"X-Message-Id": message_id})

    def _mail_batch(self, req: _Pending) -> _Reply:
        """POST /v3/mail/batch creates a batch ID; GET /v3/mail/batch/{id} validates one."""
        batch_id = unquote(req.path.removeprefix(MAIL_BATCH_PATH).lstrip("/"))
        if "/" in batch_id:
            return _Reply(404, _spec_error_body(404))
        if req.method != ("GET" if batch_id else "POST"):
            return _Reply(405, _spec_error_body(405))
        if not self._authorized(req):
            return _Reply(401, _spec_error_body(401))
        if not batch_id:
            return _json_reply({"batch_id": self._schedule.create_batch()}, 201)
        if not self._schedule.has_batch(batch_id):
            error = {"field": "batch_id", "message": UNKNOWN_BATCH}
            return _Reply(400, _spec_error_body(400, [error]))
        return _json_reply({"batch_id": batch_id})

    def _scheduled_sends(self, req: _Pending) -> _Reply:
        """Cancel or pause a batch (POST), list (GET), and per batch GET/PATCH/DELETE."""
        batch_id = unquote(req.path.removeprefix(SCHEDULED_SENDS_PATH).lstrip("/"))
        allowed = ("GET", "PATCH", "DELETE") if batch_id else ("GET", "POST")
        if "/" in batch_id:
            return _Reply(404, _spec_error_body(404))
        if req.method not in allowed:
            return _Reply(405, _spec_error_body(405))
        if not self._authorized(req):
            return _Reply(401, _spec_error_body(401))
        if req.method == "GET":
            statuses = self._schedule.statuses()
            if batch_id:
                statuses = {batch_id: statuses[batch_id]} if batch_id in statuses else {}
            return _json_reply([{"batch_id": b, "status": s} for b, s in statuses.items()])
        if req.method == "DELETE":
            return self._schedule_reply(req, lambda s: s.delete_status(batch_id))
        if req.body.too_large:
            return _Reply(413, _spec_error_body(413))
        try:
            req.parsed = _loads(req.body.raw or b"")
        except ValueError:
            return _Reply(400, _spec_error_body(400))
        validator = scheduled_send_request_validator(req.method.lower())
        errors = sorted(
            (_schema_error(e) for e in validator.iter_errors(req.parsed)),
            key=lambda e: e["field"] or "",
        )
        if errors:
            req.errors = errors
            return _Reply(400, _spec_error_body(400, errors))
        body = req.parsed
        if req.method == "PATCH":
            return self._schedule_reply(req, lambda s: s.change_status(batch_id, body["status"]))
        reply = self._schedule_reply(req, lambda s: s.set_status(body["batch_id"], body["status"]))
        if reply.status != 204:
            return reply
        return _json_reply({"batch_id": body["batch_id"], "status": body["status"]}, 201)

    def _schedule_reply(self, req: _Pending, change: Callable[[ScheduledSends], None]) -> _Reply:
        """204 once `change` applied; its ScheduleError as a 400 (404 for StatusNotFound)."""
        try:
            change(self._schedule)
        except ScheduleError as exc:
            req.errors = [{"field": exc.field, "message": exc.message, "help": None}]
            status = 404 if isinstance(exc, StatusNotFound) else 400
            return _Reply(status, _spec_error_body(status, req.errors))
        return _Reply(204, b"")

    def _suppressions(self, req: _Pending) -> _Reply:
        if req.method != "GET":
            return _Reply(405, _error_body(405))
        if not self._authorized(req):
            return _Reply(401, _error_body(401))
        group = _GROUP_PATH.match(req.path)
        if group:  # not paged in the spec: the whole list of addresses
            entries = list(self.suppressions.get(group_key(unquote(group.group(1))), []))
            emails = [e if isinstance(e, str) else e["email"] for e in entries]
            return _json_reply(emails)
        name = req.path.removeprefix("/v3/suppression/")
        if name not in SUPPRESSION_LISTS:
            return _Reply(404, _error_body(404))
        try:
            limit = _int_param(req.query, "limit", self.default_page_size, 1, MAX_PAGE_SIZE)
            offset = _int_param(req.query, "offset", 0, 0, None)
            start = _int_param(req.query, "start_time", None, 0, None)
            end = _int_param(req.query, "end_time", None, 0, None)
        except _ParamError as exc:
            return _Reply(400, _error_body(400, [exc.error]))
        items = [self._entry(name, e) for e in list(self.suppressions.get(name, []))]
        items = [
            i
            for i in items
            if (start is None or i["created"] >= start) and (end is None or i["created"] <= end)
        ]
        assert limit is not None and offset is not None
        return _json_reply(items[offset : offset + limit])

    def _entry(self, name: str, entry: str | Mapping[str, Any]) -> dict[str, Any]:
        """A spec-shaped list item; plain strings get the fields each response schema requires."""
        base: dict[str, Any] = {"created": self.seeded_at}
        if name == "bounces":
            base |= {"reason": "550 5.1.1 The email account does not exist.", "status": "5.1.1"}
        elif name == "blocks":
            base |= {"reason": "blocked by the receiving server (emulated)", "status": "4.0.0"}
        elif name == "spam_reports":
            base |= {"ip": "127.0.0.1"}
        elif name == "invalid_emails":
            base |= {"reason": "Mail domain mentioned in email address is unknown"}
        if isinstance(entry, str):
            return base | {"email": entry}
        return base | dict(entry)

    # ---- recording

    def _record(self, req: _Pending, reply: _Reply | None, fault: Fault | None) -> None:
        is_mail = req.path == MAIL_SEND_PATH
        if is_mail and req.parsed is _UNPARSED and req.body.raw:
            try:
                req.parsed = _loads(req.body.raw)
            except ValueError:
                req.parsed = None
        parsed = None if req.parsed is _UNPARSED else req.parsed
        n_pers, n_rcpt = _count(parsed) if is_mail else (0, 0)
        status = reply.status if reply is not None else None
        accepted = is_mail and status is not None and 200 <= status < 300
        entry = RecordedRequest(
            method=req.method,
            path=req.path,
            query=req.query,
            headers=req.headers,
            body=parsed if self.record_bodies else None,
            status=status,
            accepted=accepted,
            message_id=reply.headers.get("X-Message-Id") if reply is not None else None,
            fault=fault.kind if fault is not None else None,
            errors=req.errors,
            size=req.body.size,
            personalizations=n_pers,
            recipients=n_rcpt,
            validated=req.validated,
            received_at=req.received_at,
            client=(str(req.client[0]), int(req.client[1])),
        )
        with self._changed:
            self._records.append(entry)
            s = self._stats
            if is_mail:
                s.requests += 1
                s.bytes_received += req.body.size
                s.validated += req.validated
                s.validation_failures += req.validated and req.errors is not None
                s.faulted += fault is not None
                if accepted:
                    s.accepted += 1
                    s.personalizations += n_pers
                    s.recipients += n_rcpt
                elif status is None or status >= 400:
                    s.rejected += 1
            else:
                s.suppression_requests += 1
            self._changed.notify_all()

    @staticmethod
    def _send(handler: _Handler, reply: _Reply) -> None:
        handler.send_response(reply.status)
        names = {k.lower() for k in reply.headers}
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        if reply.body and "content-type" not in names:
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(reply.body)))
        if handler.close_connection:
            handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(reply.body)


_UNPARSED: Any = object()


@dataclass(slots=True)
class _Pending:
    """What `_route` learns about a request, for `_record`."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: _Body
    parsed: Any = _UNPARSED
    validated: bool = False
    errors: list[dict[str, Any]] | None = None
    received_at: float = field(default_factory=time.time)
    client: tuple[str, int] = ("", 0)


class _ParamError(Exception):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.error = {"field": name, "message": message, "help": None}


def _int_param(
    query: Mapping[str, list[str]], name: str, default: int | None, low: int, high: int | None
) -> int | None:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise _ParamError(name, f"{name} must be an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _ParamError(name, f"{name} must be {bound}")
    return value


def _json_reply(payload: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(payload).encode())


# --------------------------------------------------------------------------- standalone process


def _load_suppressions(path: str) -> dict[str, list[Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise SystemExit(f"{path}: expected a JSON object of lists")
    return data


def main(argv: Iterable[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then write stats; the first stdout line is the base URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default="SG.test")
    parser.add_argument("--validate", default="all", help='"all", "first", "none" or "sample:N"')
    parser.add_argument("--no-bodies", action="store_true", help="count only; keep no bodies")
    parser.add_argument("--stats-file", help="write JSON stats here on exit")
    parser.add_argument("--suppressions", help="JSON object of lists to seed `suppressions`")
    parser.add_argument("--lenient-custom-args", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        emulator = SendGridEmulator(
            api_key=args.api_key,
            validate=args.validate,
            record_bodies=not args.no_bodies,
            port=args.port,
            lenient_custom_args=args.lenient_custom_args,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.suppressions:
        emulator.suppressions.update(_load_suppressions(args.suppressions))
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with emulator:
        print(emulator.url, flush=True)
        while not done.wait(0.5):
            pass
    stats = asdict(emulator.stats())
    if args.stats_file:
        Path(args.stats_file).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(stats), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
