"""Sealed per-subscriber links: AES-SIV (RFC 5297), the address unreadable in the link,
tamper-proof, bound to the purpose, the list and the secret; the earlier HMAC-SHA256
links still open."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from newsletter.errors import ConfigError
from newsletter.signing import Signer

SECRET = "a-secret-of-enough-length"


def unb64(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


@pytest.mark.parametrize(
    "secret", ["s" * 16, "a-longer-secret-" * 3, "k" * 64, "x" * 200, "ключ-секрет-2024!"]
)
def test_a_token_is_aes_siv_and_hides_the_address(secret: str) -> None:
    token = Signer(secret).sign("unsubscribe", "main", "Ann@Example.com")
    raw = unb64(token)
    assert b"ann" not in raw.lower() and b"example" not in raw.lower() and b"main" not in raw
    assert "." not in token and "ann" not in token.lower()
    key = hashlib.sha512(b"newsletter sealed links\0" + secret.encode()).digest()
    assert AESSIV(key).decrypt(raw, [b"unsubscribe"]) == b"main\nann@example.com"
    assert Signer(secret).verify("unsubscribe", token) == ("main", "ann@example.com")


def test_tokens_are_deterministic_and_a_batch_signs_as_one_by_one() -> None:
    signer = Signer(SECRET)
    emails = ["Ann@Example.com", "bob@example.org", "zoë@exämple.de"]
    assert signer.sign_many("unsubscribe", "main", emails) == [
        signer.sign("unsubscribe", "main", e) for e in emails
    ]
    assert signer.sign("unsubscribe", "main", "ann@example.com") == signer.sign(
        "unsubscribe", "main", "ANN@example.com"
    )


def test_tampering_and_other_purposes_lists_and_secrets_are_refused() -> None:
    signer = Signer(SECRET)
    token = signer.sign("unsubscribe", "main", "ann@example.com")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for index, char in enumerate(token):  # every character of it, changed
        other = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        assert signer.verify("unsubscribe", token[:index] + other + token[index + 1 :]) is None
    assert signer.verify("confirm", token) is None
    assert signer.verify("unsubscribe", token[:-4]) is None
    assert signer.verify("unsubscribe", "!!!???") is None
    assert signer.verify("unsubscribe", "") is None
    assert Signer("another-secret-entirely").verify("unsubscribe", token) is None
    other_list = signer.sign("unsubscribe", "weekly", "ann@example.com")
    assert signer.verify("unsubscribe", other_list) == ("weekly", "ann@example.com")


def old_token(secret: str, text: str, purpose: str = "unsubscribe") -> str:
    """A link as the earlier versions wrote it: the text in the clear, and an HMAC."""
    payload = base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()
    mac = hmac.new(secret.encode(), f"{purpose}\n{payload}".encode(), hashlib.sha256)
    return f"{payload}.{base64.urlsafe_b64encode(mac.digest()[:18]).rstrip(b'=').decode()}"


def test_links_in_emails_sent_before_still_open_and_are_still_checked() -> None:
    signer = Signer(SECRET)
    token = old_token(SECRET, "main\nann@example.com")
    assert signer.verify("unsubscribe", token) == ("main", "ann@example.com")
    payload, mac = token.split(".")
    forged = old_token(SECRET, "main\nbob@example.com").split(".")[0]
    assert signer.verify("unsubscribe", f"{forged}.{mac}") is None
    assert signer.verify("confirm", token) is None
    assert signer.verify("unsubscribe", payload) is None
    assert signer.verify("unsubscribe", old_token("another-secret-entirely", "main\na@b.c")) is None


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        Signer("short")
