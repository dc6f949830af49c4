"""Secrets masked out of text the tool did not write itself.

A mail service's error body, an SMTP server's reply or a library's log line
may quote back what it was sent: the API key, the password, an Authorization
header. Such text is shown, logged and stored in the state database, so it
passes through here first: the secrets we know by value, and anything shaped
like one (a SendGrid key, a bearer token, a password in a URL).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

# SendGrid keys ("SG.<id>.<secret>"), bearer tokens, and passwords in URLs
_SHAPES = [
    (re.compile(r"SG\.[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]+)?"), "SG.***"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1***"),  # RFC 6750's token68
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
]
# shorter known secrets are not searched for: "abc" would mask ordinary words
MIN_SECRET = 6


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with each known secret, and anything shaped like one, replaced by ***."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET}, key=len, reverse=True):
        text = text.replace(secret, "***")
    for pattern, replacement in _SHAPES:
        text = pattern.sub(replacement, text)
    return text


def login_forms(username: str | None, password: str | None) -> list[str]:
    """A password as an SMTP server saw it: plain, and base64 as AUTH LOGIN and PLAIN send it."""
    if not password:
        return []
    encoded = [password.encode(), f"\0{username or ''}\0{password}".encode()]
    return [password, *(base64.b64encode(raw).decode() for raw in encoded)]
