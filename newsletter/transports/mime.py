"""One MIME message per recipient for the local transports (SMTP, outbox).

The message is written out directly as bytes: the parts are split on their
tokens once per issue, and each recipient costs a join and, where needed, a
quoted-printable pass in C. The `email` package would take a few milliseconds
per message (its encoders are pure Python); it is kept for the rare address it
must handle (non-ASCII, SMTPUTF8).
"""

from __future__ import annotations

import binascii
import secrets
from email import policy
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid

from newsletter.lines import wrap_long_lines
from newsletter.tokens import Personaliser
from newsletter.transports.base import Message, Recipient

# Long header lines are folded, not encoded: a List-Unsubscribe URL must stay
# readable as `<https://...>` (RFC 2047 encoded words would break it).
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)
MAX_LINE = 998  # octets, RFC 5322
WIRE_LINE = 800  # leaves room on a line for the values its tokens become


class MimeBuilder:
    """Splits the issue's HTML and text once; each recipient is a join, not a render."""

    def __init__(self, message: Message) -> None:
        self.message = message
        # newlines where a space means the same are joined: the fewest lines on the wire
        self.html = Personaliser(wrap_long_lines(message.html, WIRE_LINE, join=True))
        self.text = Personaliser(message.text)
        self.domain = message.from_email.rpartition("@")[2]
        # "=_" never occurs in quoted-printable text, and the random part never in 8bit text
        self.boundary = f"=_nl_{secrets.token_hex(12)}"
        self._longest = max(WIRE_LINE, _longest_line(message.html), _longest_line(message.text))
        self._head = "".join(
            [
                _header("Subject", message.subject),
                f"From: {formataddr((message.from_name or '', message.from_email), charset='utf-8')}\r\n",
                f"Reply-To: {message.reply_to}\r\n" if message.reply_to else "",
            ]
        )

    @property
    def sender(self) -> str:
        return self.message.from_email

    def build_bytes(self, recipient: Recipient, eight_bit: bool) -> bytes | None:
        """The whole message, CRLF line ends; None for an address only `build` can write."""
        if not recipient.email.isascii():
            return None
        values = recipient.values
        text = _crlf(self.text.fill(values).encode("utf-8"))
        html = _crlf(self.html.fill(values).encode("utf-8"))
        # 8bit keeps lines as they are: allowed while each stays within 998 octets
        fits = (
            self._longest + sum(map(len, values.values())) < MAX_LINE
            or max(_longest_line_bytes(text), _longest_line_bytes(html)) <= MAX_LINE
        )
        if eight_bit and fits:
            encoding = "8bit"
        else:
            encoding = "quoted-printable"
            text, html = _qp(text), _qp(html)
        extra = "".join(f"{name}: {value}\r\n" for name, value in recipient.headers.items())
        b = self.boundary
        head = (
            f"{self._head}To: {formataddr((recipient.name, recipient.email), charset='utf-8')}\r\n"
            f"Date: {formatdate(usegmt=True)}\r\nMessage-ID: {make_msgid(domain=self.domain)}\r\n"
            f"{extra}MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/alternative; boundary="{b}"\r\n\r\n'
            f'--{b}\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
        ).encode("ascii")
        middle = (
            f'\r\n--{b}\r\nContent-Type: text/html; charset="utf-8"\r\n'
            f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
        ).encode("ascii")
        return b"".join([head, text, middle, html, f"\r\n--{b}--\r\n".encode("ascii")])

    def build(self, recipient: Recipient) -> EmailMessage:
        """The same message through the `email` package, for non-ASCII addresses."""
        m = self.message
        mail = EmailMessage(policy=MAIL_POLICY)
        mail["Subject"] = m.subject
        mail["From"] = _address(m.from_email, m.from_name)
        mail["To"] = _address(recipient.email, recipient.name)
        if m.reply_to:
            mail["Reply-To"] = m.reply_to
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = make_msgid(domain=self.domain)
        for name, value in recipient.headers.items():
            mail[name] = value
        mail.set_content(self.text.fill(recipient.values), cte="quoted-printable")
        mail.add_alternative(
            self.html.fill(recipient.values), subtype="html", cte="quoted-printable"
        )
        return mail


def _header(name: str, value: str) -> str:
    if value.isascii() and len(value) + len(name) + 2 <= 78:
        return f"{name}: {value}\r\n"
    encoded = Header(value, "utf-8" if not value.isascii() else "us-ascii", header_name=name)
    return f"{name}: {encoded.encode(linesep=chr(13) + chr(10))}\r\n"


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _qp(data: bytes) -> bytes:
    """Quoted-printable in C (binascii), CRLF line ends, soft breaks before 76 columns."""
    return _crlf(binascii.b2a_qp(data.replace(b"\r\n", b"\n"), istext=True))


def _longest_line(text: str) -> int:
    return max((len(line.encode("utf-8")) for line in text.split("\n")), default=0)


def _longest_line_bytes(data: bytes) -> int:
    return max(map(len, data.split(b"\n")), default=0)


def _address(email: str, name: str | None) -> Address | str:
    local, _, domain = email.rpartition("@")
    try:
        return Address(display_name=name or "", username=local, domain=domain)
    except (ValueError, IndexError):
        return email
