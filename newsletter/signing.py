"""Signed, tamper-proof links for one subscriber on one list (unsubscribe, confirm).

HMAC-SHA256 over the purpose, the list and the address, with a secret from an
environment variable; compared in constant time. Unsubscribe links never expire
(an old email must still let its reader leave).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from newsletter.errors import ConfigError

UNSUBSCRIBE = "unsubscribe"
# Used only when an outbox send has no secret: its links are never delivered.
DEVELOPMENT_SECRET = "development-only-secret-not-for-delivery"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, secret: str) -> None:
        if len(secret) < 16:
            raise ConfigError("the signing secret must be at least 16 characters long")
        self._key = secret.encode("utf-8")

    def _mac(self, purpose: str, payload: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{payload}".encode(), hashlib.sha256).digest()
        return _b64(digest[:18])

    def sign(self, purpose: str, list_name: str, email: str) -> str:
        payload = _b64(f"{list_name}\n{email.lower()}".encode())
        return f"{payload}.{self._mac(purpose, payload)}"

    def verify(self, purpose: str, token: str) -> tuple[str, str] | None:
        """(list, address) if the token is genuine, else None."""
        payload, _, mac = token.partition(".")
        if not payload or not mac or not hmac.compare_digest(mac, self._mac(purpose, payload)):
            return None
        try:
            list_name, _, email = _unb64(payload).decode("utf-8").partition("\n")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        return (list_name, email) if email else None


def unsubscribe_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/unsubscribe/{token}"
