"""The SMTP transport: one persistent connection, one MIME message per recipient."""

from __future__ import annotations

import contextlib
import logging
import smtplib
import ssl
from collections.abc import Sequence
from typing import ClassVar

from newsletter.config import SmtpSettings
from newsletter.redaction import login_forms, redact
from newsletter.transports.base import (
    BatchFailure,
    InDoubt,
    InDoubtFailure,
    Message,
    PermanentFailure,
    Receipt,
    Recipient,
    TemporaryFailure,
)
from newsletter.transports.mime import MimeBuilder

log = logging.getLogger(__name__)


class SmtpTransport:
    name = "smtp"
    in_doubt: ClassVar[InDoubt] = "message"  # the server accepts each message on its own

    def __init__(
        self,
        settings: SmtpSettings,
        password: str | None,
        *,
        ssl_context: ssl.SSLContext | None = None,  # default: the system's trusted CAs
    ) -> None:
        self.settings = settings
        self._password = password
        self._secrets = login_forms(settings.username, password)  # masked in server replies
        self._ssl_context = ssl_context
        self._connection: smtplib.SMTP | None = None
        self._eight_bit = False
        self._builder: MimeBuilder | None = None

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        conn: smtplib.SMTP | None = None
        try:
            context = self._ssl_context or ssl.create_default_context()
            if s.security == "ssl":
                conn = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
            else:
                conn = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
                if s.security == "starttls":
                    conn.starttls(context=context)
            conn.ehlo_or_helo_if_needed()  # the server's extensions (8BITMIME) are known now
            if s.username:
                conn.login(s.username, self._password or "")
            return conn
        except (smtplib.SMTPException, OSError) as exc:
            if conn is not None:
                conn.close()  # a failed STARTTLS or login must not leave the socket open
            if isinstance(exc, smtplib.SMTPAuthenticationError):
                raise PermanentFailure(f"SMTP login refused by {s.host}: {exc.smtp_code}") from None
            raise TemporaryFailure(
                f"cannot connect to SMTP server {s.host}:{s.port}: {self._said(exc)}"
            ) from None

    def send_batch(self, message: Message, recipients: Sequence[Recipient]) -> Receipt:
        if self._builder is None or self._builder.message is not message:
            self._builder = MimeBuilder(message)
        rejected: list[tuple[str, str]] = []
        for index, recipient in enumerate(recipients):
            try:
                refused = self._send_one(recipient)
            except BatchFailure as exc:
                exc.done = index  # the ones before went out: never send them again
                exc.rejected = rejected
                raise
            if refused:
                rejected.append((recipient.email, refused))
        return Receipt(message_id=None, rejected=rejected)

    def _send_one(self, recipient: Recipient) -> str | None:
        """Send one message; the server's reason if it refused the recipient."""
        builder = self._builder
        assert builder is not None
        for attempt in (1, 2):  # a dropped connection gets one reconnect
            if self._connection is None:
                self._connection = self._connect()
                # 8bit bodies, where the server takes them: fewer, longer lines than
                # quoted-printable, less work at both ends
                self._eight_bit = self._connection.has_extn("8bitmime")
            try:
                data = builder.build_bytes(recipient, self._eight_bit)
                options = ["BODY=8BITMIME"] if self._eight_bit else []
                if data is None:  # an address only the email package can write: SMTPUTF8
                    data = builder.build(recipient).as_bytes()
                    options = ["SMTPUTF8", "BODY=8BITMIME"]
                _transfer(self._connection, builder.sender, recipient.email, data, options)
                return None
            except _HandedOver as exc:
                self._drop()
                raise InDoubtFailure(
                    f"the message to {recipient.email} was sent but the SMTP server did not "
                    f"answer ({self._said(exc.reason)}): it may or may not have been accepted"
                ) from None
            except smtplib.SMTPRecipientsRefused as exc:
                code, reason = next(iter(exc.recipients.values()))
                refusal = self._said(f"{code} {reason.decode(errors='replace')}")
                if 400 <= code < 500:  # greylisting, a busy mailbox, 421: "later", not "never"
                    if code == 421:  # the server is closing the connection
                        self._drop()
                    raise TemporaryFailure(f"SMTP server deferred a recipient: {refusal}") from None
                return refusal
            except smtplib.SMTPNotSupportedError:
                # a non-ASCII address and a server without SMTPUTF8: nothing was sent to
                # this one, the others can still go (raised as is, it hid `done`)
                return "not sent: the server does not support SMTPUTF8 (non-ASCII address)"
            except (smtplib.SMTPServerDisconnected, ConnectionError, TimeoutError) as exc:
                # before the message was whole: the server keeps nothing of it, so resending
                # it over a new connection cannot make two
                self._drop()
                if attempt == 2:
                    raise TemporaryFailure(f"SMTP connection lost: {self._said(exc)}") from None
                log.info("SMTP connection lost, reconnecting")
            except smtplib.SMTPResponseException as exc:
                if exc.smtp_code == 421:
                    self._drop()
                if 400 <= exc.smtp_code < 500:
                    raise TemporaryFailure(f"SMTP server said {exc.smtp_code}") from None
                raise PermanentFailure(
                    f"SMTP server refused the message: {exc.smtp_code} {self._said(exc.smtp_error)}"
                ) from None
        return None

    def _said(self, reply: object) -> str:
        """What the server said, as we may show and store it: a reply may quote the login."""
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        return redact(text, self._secrets)

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                self._connection.quit()
            self._drop()


class _HandedOver(Exception):
    """The whole message went out, and the connection failed before the server answered."""

    def __init__(self, reason: BaseException) -> None:
        super().__init__(str(reason))
        self.reason = reason


def _transfer(conn: smtplib.SMTP, sender: str, to: str, data: bytes, options: list[str]) -> None:
    """MAIL, RCPT and DATA for one message, as `sendmail` does, but knowing the moment the
    message is whole on the wire: a failure before it leaves the server with nothing (safe
    to send again), a failure after it (`_HandedOver`) may hide an accepted message."""
    if "SMTPUTF8" in options:  # smtplib checks the server takes it, and switches to UTF-8
        code, reply = conn.mail(sender, options)
    else:  # plain addresses (checked when read): not parsed again by smtplib per message
        extra = "".join(f" {option}" for option in options) if conn.does_esmtp else ""
        code, reply = conn.docmd("mail", f"FROM:<{sender}>{extra}")
    if code != 250:
        _abandon(conn, code)
        raise smtplib.SMTPSenderRefused(code, reply, sender)
    code, reply = conn.rcpt(to) if "SMTPUTF8" in options else conn.docmd("rcpt", f"TO:<{to}>")
    if code not in (250, 251):
        _abandon(conn, code)
        raise smtplib.SMTPRecipientsRefused({to: (code, reply)})
    code, reply = conn.docmd("data")
    if code != 354:
        _abandon(conn, code)
        raise smtplib.SMTPDataError(code, reply)
    # dot-stuffing (RFC 5321 4.5.2): the lines are CRLF-ended, so a line start is the
    # data's start or follows a LF; bytes.replace is many times faster than a regex
    body = (b"." if data[:1] == b"." else b"") + data.replace(b"\n.", b"\n..")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    conn.send(body + b".\r\n")
    try:
        code, reply = conn.getreply()
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise _HandedOver(exc) from None
    if code != 250:
        if code == 421:
            conn.close()
        raise smtplib.SMTPDataError(code, reply)


def _abandon(conn: smtplib.SMTP, code: int) -> None:
    """End a refused transaction: a 421 closes the connection, anything else resets it."""
    if code == 421:
        conn.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        conn.rset()
