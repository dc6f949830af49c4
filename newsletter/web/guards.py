"""What stands between the public internet and the sign-up form: size, rate and CSRF checks.

Plain objects with no web framework in them, so the rules are easy to read and test.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from urllib.parse import parse_qs

from newsletter.signing import CSRF, Signer


class TooLarge(Exception):
    """The request body is over its limit."""


class BadForm(Exception):
    """The body is not a URL-encoded form."""


class RateLimiter:
    """At most `limit` hits per key in any `period` seconds (a sliding window, in memory).

    One process's memory: behind several workers each counts alone, which still
    stops a script hammering the form. At most `max_keys` keys are remembered;
    the least recently seen go first.
    """

    def __init__(
        self,
        limit: int,
        period: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit, self.period, self.clock, self.max_keys = limit, period, clock, max_keys
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str) -> float | None:
        """Count one hit; None if allowed, else the seconds until the next is."""
        now = self.clock()
        hits = self._hits.pop(key, None) or deque()
        while hits and hits[0] <= now - self.period:
            hits.popleft()
        self._hits[key] = hits
        while len(self._hits) > self.max_keys:
            self._hits.popitem(last=False)
        if len(hits) >= self.limit:
            return max(hits[0] + self.period - now, 1.0)
        hits.append(now)
        return None


class Csrf:
    """Double-submit token: a random cookie, and the form field carrying its signature.

    Another site can make a browser post the form, but cannot read the cookie
    to sign it, nor plant a signed one.
    """

    cookie = "newsletter_csrf"
    field = "csrf"

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def new_cookie(self) -> str:
        return secrets.token_urlsafe(18)

    def field_value(self, cookie: str) -> str:
        return self.signer.sign_text(CSRF, cookie)

    def check(self, cookie: str | None, field_value: str | None) -> bool:
        if not cookie or not field_value:
            return False
        signed = self.signer.verify_text(CSRF, field_value)
        return signed is not None and hmac.compare_digest(signed.encode(), cookie.encode())


def parse_form(body: bytes, max_fields: int = 20) -> dict[str, str]:
    """A URL-encoded body as field -> first value; BadForm if it is not one."""
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=max_fields)
    except (UnicodeDecodeError, ValueError):
        raise BadForm("not a URL-encoded form") from None
    return {name: values[0] for name, values in fields.items()}
