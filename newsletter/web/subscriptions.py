"""The ways in and out, as plain use cases: sign up, confirm, unsubscribe.

The web layer only parses requests and renders pages; everything that
changes a list or the ledger happens here, with the clock and the mailer
passed in.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2

from newsletter.config import Config
from newsletter.errors import SubscriberError, TransportError
from newsletter.list_editing import add_subscriber
from newsletter.signing import CONFIRM, UNSUBSCRIBE, Signer
from newsletter.state.suppressions import SuppressionStore
from newsletter.subscribers import list_names, list_path, on_list
from newsletter.transports.base import Message, PermanentFailure, Recipient, Transport

log = logging.getLogger(__name__)

Mailer = Callable[[Message, Recipient], None]


class LinkInvalid(Exception):
    """The token was not made by this server (tampered, truncated, another secret)."""


class LinkExpired(Exception):
    """A genuine confirmation link, older than serve.confirm_within."""


@dataclass(frozen=True)
class Pending:
    """A sign-up waiting for its confirmation click; carried inside the signed link."""

    list_name: str
    email: str
    name: str
    signed_up_at: dt.datetime
    form_version: str

    def encode(self) -> str:
        fields = {
            "l": self.list_name,
            "e": self.email,
            "n": self.name,
            "t": int(self.signed_up_at.timestamp()),
            "v": self.form_version,
        }
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def decode(cls, text: str) -> Pending:
        try:
            data = json.loads(text)
            return cls(
                list_name=_text(data["l"]),
                email=_text(data["e"]),
                name=_text(data["n"]),
                signed_up_at=dt.datetime.fromtimestamp(int(data["t"]), dt.UTC),
                form_version=_text(data["v"]),
            )
        except (ValueError, KeyError, TypeError, OverflowError, OSError):
            raise LinkInvalid("malformed confirmation token") from None


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("expected text")
    return value


def transport_mailer(make_transport: Callable[[], Transport]) -> Mailer:
    """One message through a fresh transport (sign-ups are rare; no connection is kept)."""

    def send(message: Message, recipient: Recipient) -> None:
        transport = make_transport()
        try:
            receipt = transport.send_batch(message, [recipient])
        finally:
            transport.close()
        if receipt.rejected:  # an SMTP server refused the address; its reply may quote it
            raise TransportError("the mail server refused the confirmation email's recipient")

    return send


class Subscriptions:
    def __init__(
        self,
        config: Config,
        ledger: SuppressionStore,
        signer: Signer,
        mailer: Mailer,
        templates: jinja2.Environment,
        public_url: str,
        forget_at_service: Callable[[str], None] | None = None,
    ) -> None:
        self.config, self.ledger, self.signer = config, ledger, signer
        self.mailer, self.templates = mailer, templates
        # the mail service's own unsubscribe lists, which each send copies into the ledger
        self.forget_at_service = forget_at_service
        self.public_url = public_url.rstrip("/")
        # the renderer's environment carries the newsletter's language (`render.py`)
        self._ = templates.globals["lang"].gettext

    @property
    def lists(self) -> dict[str, str]:
        return self.config.signup_lists

    @property
    def form_version(self) -> str:
        """Changes whenever the consent wording does, so each record names what was agreed."""
        return hashlib.sha256(self.config.consent_wording(self._).encode()).hexdigest()[:12]

    def confirm_url(self, pending: Pending) -> str:
        return f"{self.public_url}/confirm?token={self.signer.sign_text(CONFIRM, pending.encode())}"

    # -- sign up ---------------------------------------------------------------------

    def request(self, email: str, name: str, list_name: str, now: dt.datetime) -> None:
        """Email a confirmation link; nothing is added until it is followed."""
        pending = Pending(list_name, email, name, now, self.form_version)
        label = self.lists[list_name]
        context = {
            "newsletter": self.config.newsletter,
            "accent": self.config.theme.accent_color,
            "list_label": label,
            "confirm_url": self.confirm_url(pending),
            "valid_hours": int(self.config.serve.confirm_within.total_seconds() // 3600),
            "email": email,
        }
        message = Message(
            subject=self._("Confirm your subscription to %(list)s") % {"list": label},
            html=self.templates.get_template("web/confirm_email.html").render(context),
            text=self.templates.get_template("web/confirm_email.txt").render(context),
            from_email=self.config.sender.from_email,
            from_name=self.config.sender.from_name,
            reply_to=self.config.sender.reply_to,
            tokens=frozenset(),
            issue_id="confirm",
            list_name=list_name,
            bulk=False,
        )
        # the bare address: a name typed into a public form is not put in anyone's inbox
        self.mailer(message, Recipient(email, "", {}))
        log.info("confirmation email sent for list %s", list_name)

    def confirm(
        self, token: str, now: dt.datetime, ip: str | None, user_agent: str | None
    ) -> Pending:
        """Add the confirmed address to its list, lift its suppressions, record the consent."""
        text = self.signer.verify_text(CONFIRM, token)
        if text is None:
            raise LinkInvalid("confirmation token does not verify")
        pending = Pending.decode(text)
        if pending.list_name not in self.lists:
            raise LinkInvalid("the list is no longer open to sign-up")
        age = now - pending.signed_up_at
        if age > self.config.serve.confirm_within or age < -dt.timedelta(minutes=5):
            raise LinkExpired(pending.email)
        # (the link keeps whole seconds: a suppression in the sign-up's own second came first)
        after = pending.signed_up_at + dt.timedelta(seconds=1)
        if self.ledger.suppressed_since(pending.email, pending.list_name, after):
            # they left after asking: an old link (or a scanner re-opening it) must not undo that
            raise LinkExpired(pending.email)
        if self.ledger.has_consent(pending.email, pending.list_name, pending.signed_up_at):
            return pending  # followed twice: done the first time
        if self.forget_at_service is not None and pending.email.lower() in self.ledger.suppressed(
            pending.list_name
        ):
            self._forget_at_service(pending.email)
        report = add_subscriber(
            self.list_file(pending.list_name),
            pending.email,
            self.ledger,
            name=pending.name,
            resubscribe=True,  # this click is the consent to come back to this list
            source="signup",
            subscribed_at=now.isoformat(timespec="seconds"),
            also_lists=self.lists,
        )
        if report.rejected:
            raise SubscriberError(f"the address was not added: {report.rejected[0].reason}")
        self.ledger.record_consent(
            list_name=pending.list_name,
            email=pending.email,
            signed_up_at=pending.signed_up_at,
            confirmed_at=now,
            ip=ip,
            user_agent=user_agent,
            form_version=pending.form_version,
            wording=self.config.consent_wording(self._)
            if pending.form_version == self.form_version
            else f"(wording version {pending.form_version})",
        )
        log.info("subscription confirmed for list %s", pending.list_name)
        return pending

    def _forget_at_service(self, address: str) -> None:
        """First: if the service is down, nothing here has changed and the link still works."""
        assert self.forget_at_service is not None
        try:
            self.forget_at_service(address)
        except PermanentFailure as exc:  # a key without "Suppressions: full access"
            log.warning(
                "SendGrid refused to take a returning reader off its unsubscribe lists (%s); "
                "give the API key Suppressions full access, or the next send suppresses "
                "them again",
                exc,
            )

    # -- unsubscribe -----------------------------------------------------------------

    def reader_of(self, token: str) -> tuple[str, str]:
        """(list, address) of a genuine unsubscribe link, else LinkInvalid."""
        found = self.signer.verify(UNSUBSCRIBE, token)
        if found is None:
            raise LinkInvalid("unsubscribe token does not verify")
        return found

    def unsubscribe(self, token: str, every_list: bool = False) -> tuple[str, list[str]]:
        """Suppress the link's address for its list (or every list); recorded before returning."""
        list_name, email = self.reader_of(token)
        lists = self.all_lists() if every_list else [list_name]
        for name in lists:
            # every list is closed to the address; a loss only where it was a reader
            reader = name == list_name or on_list(self.list_file(name), email)
            self.ledger.suppress(
                [(email, "unsubscribed")], source="link", list_name=name, loss=reader
            )
        log.info("unsubscribed from %s", ", ".join(lists))
        return email, lists

    def all_lists(self) -> list[str]:
        return sorted({*list_names(self.config.subscribers.path), *self.lists})

    def label(self, list_name: str) -> str:
        return self.lists.get(list_name, list_name)

    def list_file(self, list_name: str) -> Path:
        return list_path(self.config.subscribers.path, list_name)
