"""Who may read /admin/: the editor's password (its hash) or a token, from the environment.

Plain objects with no web framework in them. Without either variable /admin/ does not
exist; a variable that is set but unusable stops `serve` with one line naming it (and
never showing its value).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field

from newsletter.config import Config
from newsletter.errors import ConfigError
from newsletter.passwords import MalformedHash, PasswordHash
from newsletter.signing import Signer
from newsletter.web.guards import RateLimiter

MIN_TOKEN_LENGTH = 32
NONCE = "admin-sign-in"  # the signer's purpose for sign-in nonces
NONCE_LIFETIME = dt.timedelta(hours=1)  # how long a sign-in form may stay open
HASHING_AT_ONCE = 2  # scrypt takes 32 MiB: a crowd of sign-ins must not take the memory


@dataclass
class AdminAccess:
    """The credentials, the sign-in limit and the session length of /admin/."""

    password: PasswordHash | None
    token_digest: bytes | None  # SHA-256 of the token: compared digest to digest
    session: dt.timedelta
    limiter: RateLimiter
    nonces: SignInNonces
    _hashing: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(HASHING_AT_ONCE), repr=False
    )

    @classmethod
    def from_config(cls, config: Config, signer: Signer) -> AdminAccess | None:
        """None when neither variable is set: then /admin/ is not served at all."""
        serve = config.serve
        hash_text = config.secret(serve.admin_password_hash_env)
        token = config.secret(serve.admin_token_env)
        if hash_text is None and token is None:
            return None
        for key in ("admin_session", "admin_attempt_period"):
            if getattr(serve, key) <= dt.timedelta():  # a zero period would limit nothing
                raise ConfigError(f"{config.path.name}: serve.{key} must be longer than 0")
        password = None
        if hash_text is not None:
            try:
                password = PasswordHash.parse(hash_text)
            except MalformedHash as exc:
                raise ConfigError(
                    f"{serve.admin_password_hash_env} is not a password hash from "
                    f"`newsletter admin hash-password` ({exc}); set it again"
                ) from None
        token_digest = None
        if token is not None:
            if len(token.strip()) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"{serve.admin_token_env} is too short: an admin token needs at least "
                    f"{MIN_TOKEN_LENGTH} characters (for example the output of "
                    "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            token_digest = _sha256(token.strip())
        limiter = RateLimiter(serve.admin_attempts, serve.admin_attempt_period.total_seconds())
        return cls(password, token_digest, serve.admin_session, limiter, SignInNonces(signer))

    @property
    def asks_for(self) -> str:
        """What the sign-in form asks for."""
        if self.password is not None and self.token_digest is not None:
            return "Password or access token"
        return "Password" if self.password is not None else "Access token"

    def check(self, secret: str) -> bool:
        """Whether `secret` is the password or the token, in constant time (blocking: scrypt)."""
        ok = False
        if self.token_digest is not None:
            ok |= hmac.compare_digest(_sha256(secret.strip()), self.token_digest)
        if self.password is not None:
            with self._hashing:
                ok |= self.password.matches(secret)
        return ok


class SignInNonces:
    """A random nonce per sign-in form, sealed with its expiry: a captured sign-in cannot be
    posted again. Making one stores nothing (anybody may load the form); posting it marks it
    used in the state database (`AdminSessionStore.use_admin_nonce`), for every worker."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer

    def new(self, now: dt.datetime) -> str:
        expires = int((now + NONCE_LIFETIME).timestamp())
        return self.signer.sign_text(NONCE, f"{secrets.token_urlsafe(18)} {expires}")

    def open(self, sealed: str | None, now: dt.datetime) -> tuple[str, dt.datetime] | None:
        """(nonce, expiry) of a genuine nonce still in time, else None."""
        text = self.signer.verify_text(NONCE, sealed) if sealed and len(sealed) < 200 else None
        if text is None:
            return None
        nonce, _, stamp = text.partition(" ")
        if not nonce or not stamp.isdigit() or len(stamp) > 12:
            return None
        expires = dt.datetime.fromtimestamp(int(stamp), dt.UTC)
        return (nonce, expires) if now < expires else None


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
