"""The editor's password for /admin/, kept only as a scrypt hash (RFC 7914).

A hash names its own parameters, so they can be raised later without breaking the
hashes already made:

    scrypt$<N>$<r>$<p>$<salt, base64>$<hash, base64>

`newsletter admin hash-password` prints one; `newsletter serve` reads it from the
environment. The password is normalised (NFC) first, so the same characters typed on
another keyboard give the same hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from dataclasses import dataclass

SCHEME = "scrypt"
N, R, P = 2**15, 8, 1  # 32 MiB and about 0.1 s a try
SALT_BYTES, HASH_BYTES = 16, 32
MIN_LENGTH = 12
MAX_LENGTH = 1024  # a longer "password" is refused before any hashing
MAX_MEMORY = 256 * 1024 * 1024  # parameters asking for more are not a hash we made

_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class MalformedHash(ValueError):
    """Not a hash `newsletter admin hash-password` makes; says why, never the value."""


@dataclass(frozen=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        parts = text.strip().split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise MalformedHash("expected scrypt$N$r$p$salt$hash")
        numbers = parts[1:4]
        if not all(part.isascii() and part.isdigit() and len(part) <= 9 for part in numbers):
            raise MalformedHash("N, r and p must be whole numbers")
        n, r, p = map(int, numbers)
        if n < 2**10 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise MalformedHash("N must be a power of two of at least 1024, r 1 to 32, p 1 to 16")
        if _memory(n, r, p) > MAX_MEMORY:
            raise MalformedHash("N and r ask for more than 256 MiB of memory")
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
        if salt is None or digest is None or len(salt) < 8 or not 16 <= len(digest) <= 64:
            raise MalformedHash("the salt and the hash must be base64 (8+ and 16 to 64 bytes)")
        return cls(n, r, p, salt, digest)

    def matches(self, password: str) -> bool:
        """Whether `password` is the one hashed, compared in constant time."""
        if len(password) > MAX_LENGTH:
            return False
        tried = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(tried, self.digest)

    def __str__(self) -> str:
        return "$".join([SCHEME, str(self.n), str(self.r), str(self.p), _b64(self.salt), _b64(self.digest)])  # fmt: skip

    def __repr__(self) -> str:  # never the hash itself, in a log or a traceback
        return f"PasswordHash(scrypt, N={self.n}, r={self.r}, p={self.p})"


def hash_password(password: str) -> str:
    """A new hash line for `password`, with a fresh random salt."""
    salt = secrets.token_bytes(SALT_BYTES)
    return str(PasswordHash(N, R, P, salt, _scrypt(password, salt, N, R, P, HASH_BYTES)))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    secret = unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")
    return hashlib.scrypt(
        secret, salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_memory(n, r, p) + 2**20
    )


def _memory(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes | None:
    if not _B64.fullmatch(text):
        return None
    bare = text.rstrip("=")
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
