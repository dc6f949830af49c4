"""Signed per-subscriber links: genuine HMAC-SHA256, tamper-proof, bound to address and list."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from newsletter.errors import ConfigError
from newsletter.signing import Signer


@pytest.mark.parametrize(
    "secret", ["s" * 16, "a-longer-secret-" * 3, "k" * 64, "x" * 200, "ключ-секрет-2024!"]
)
def test_the_mac_is_standard_hmac_sha256(secret: str) -> None:
    token = Signer(secret).sign("unsubscribe", "main", "Ann@Example.com")
    payload, mac = token.split(".")
    expected = hmac.new(
        secret.encode(), f"unsubscribe\n{payload}".encode(), hashlib.sha256
    ).digest()[:18]
    assert mac == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
    assert Signer(secret).verify("unsubscribe", token) == ("main", "ann@example.com")


def test_tampering_and_other_purposes_are_refused() -> None:
    signer = Signer("a-secret-of-enough-length")
    token = signer.sign("unsubscribe", "main", "ann@example.com")
    forged = Signer("a-secret-of-enough-length").sign("unsubscribe", "main", "bob@example.com")
    payload, mac = token.split(".")
    assert signer.verify("unsubscribe", f"{forged.split('.')[0]}.{mac}") is None
    assert signer.verify("confirm", token) is None
    assert signer.verify("unsubscribe", token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert signer.verify("unsubscribe", payload) is None
    assert signer.verify("unsubscribe", "!!!.???") is None
    assert Signer("another-secret-entirely").verify("unsubscribe", token) is None


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Signer("short")
