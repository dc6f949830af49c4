"""One MIME message per recipient for the local transports (SMTP, outbox).

The message is written out directly as bytes: the parts are split on their
tokens once per issue, and each recipient costs a join and, where needed, a
quoted-printable pass in C. The `email` package would take a few milliseconds
per message (its encoders are pure Python); it is kept for the rare address it
must handle (non-ASCII, SMTPUTF8).
"""

from __future__ import annotations

import binascii
import datetime as dt
import secrets
from collections.abc import Mapping
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from newsletter.controls import body_text, has_control, one_line
from newsletter.lines import wrap_long_lines
from newsletter.tokens import ONE_LINE, Personaliser
from newsletter.transports.base import Message, Recipient
from newsletter.transports.headers import address_field, check_address, field, verbatim_field

# Long header lines are folded, not encoded: a List-Unsubscribe URL must stay
# readable as `<https://...>` (RFC 2047 encoded words would break it).
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)
MAX_LINE = 998  # octets, RFC 5322
WIRE_LINE = 800  # leaves room on a line for the values its tokens become
MAX_DISPLAY_NAME = 400  # octets of UTF-8, for the email package (see `_shortened`)


class MimeBuilder:
    """Splits the issue's HTML and text once; each recipient is a join, not a render."""

    def __init__(self, message: Message) -> None:
        self.message = message
        # newlines where a space means the same are joined: the fewest lines on the wire;
        # a NUL or a lone CR (a story's title) cannot go into an 8bit part
        html = wrap_long_lines(body_text(message.html), WIRE_LINE, join=True)
        text = body_text(message.text)
        self.html, self.text = Personaliser(html), Personaliser(text)
        # the same with CRLF line ends, as the wire wants them: body_text leaves no CR,
        # so a recipient's message needs no pass over its 50 KB to convert them
        self._html_crlf = Personaliser(html.replace("\n", "\r\n"))
        self._text_crlf = Personaliser(text.replace("\n", "\r\n"))
        self.domain = message.from_email.rpartition("@")[2]
        # "=_" never occurs in quoted-printable text, and the random part never in 8bit text
        self.boundary = f"=_nl_{secrets.token_hex(12)}"
        self._longest = max(WIRE_LINE, _longest_line(message.html), _longest_line(message.text))
        self._head = "".join(
            [
                field("Subject", message.subject),
                address_field("From", message.from_name, message.from_email),
                address_field("Reply-To", None, message.reply_to) if message.reply_to else "",
                *(verbatim_field(name, value) for name, value in message.headers),
            ]
        )

    @property
    def sender(self) -> str:
        return self.message.from_email

    def build_bytes(self, recipient: Recipient, eight_bit: bool) -> bytes | None:
        """The whole message, CRLF line ends; None for an address only `build` can write."""
        if not recipient.email.isascii():
            return None
        values = _crlf_values(_body_values(recipient.values))
        text = self._text_crlf.fill(values).encode("utf-8")
        html = self._html_crlf.fill(values).encode("utf-8")
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
        extra = "".join(verbatim_field(name, value) for name, value in recipient.headers.items())
        b = self.boundary
        head = (
            f"{self._head}{address_field('To', recipient.name, recipient.email)}"
            f"Date: {_now()}\r\nMessage-ID: {make_msgid(domain=self.domain)}\r\n"
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
        """The same message through the `email` package, for non-ASCII addresses.

        Such a message needs SMTPUTF8 (RFC 6531/6532): its headers are written as UTF-8,
        since an address cannot be an encoded word (`0@a.=?utf-8?b?...?=` is nobody)."""
        m = self.message
        values = _body_values(recipient.values)
        mail = EmailMessage(policy=MAIL_POLICY.clone(utf8=True))
        mail["Subject"] = one_line(m.subject)
        mail["From"] = _address(check_address(m.from_email), m.from_name)
        mail["To"] = _address(check_address(recipient.email), recipient.name)
        if m.reply_to:
            mail["Reply-To"] = check_address(m.reply_to)
        mail["Date"] = _now()
        mail["Message-ID"] = make_msgid(domain=self.domain)
        for name, value in m.headers:
            mail[name] = one_line(value)
        for name, value in recipient.headers.items():
            mail[name] = one_line(value)
        mail.set_content(self.text.fill(values), cte="quoted-printable")
        mail.add_alternative(self.html.fill(values), subtype="html", cte="quoted-printable")
        return mail


def _now() -> str:
    """The Date field: with a numeric zone (+0000), as RFC 5322 prefers to "GMT"."""
    return format_datetime(dt.datetime.now(dt.UTC))


def _body_values(values: Mapping[str, str]) -> Mapping[str, str]:
    """Per-recipient values fit for the body: a name one line, as in its header, and no
    NUL or lone CR from a hand-edited list in an 8bit part."""
    if any(map(has_control, values.values())):
        return {k: one_line(v) if k in ONE_LINE else body_text(v) for k, v in values.items()}
    return values


def _crlf_values(values: Mapping[str, str]) -> Mapping[str, str]:
    """Values with CRLF line ends, for parts that have them (`_body_values` left no CR)."""
    if any("\n" in value for value in values.values()):
        return {k: v.replace("\n", "\r\n") for k, v in values.items()}
    return values


def _shortened(name: str) -> str:
    """A display name the email package can fold: it splits a longer one into several
    addresses (CPython 3.11, SMTPUTF8) or past 998 octets. Names that long are noise."""
    data = name.encode("utf-8")
    if len(data) <= MAX_DISPLAY_NAME:
        return name
    return data[:MAX_DISPLAY_NAME].decode("utf-8", "ignore").rstrip() + "…"


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
        return Address(display_name=_shortened(one_line(name or "")), username=local, domain=domain)
    except (ValueError, IndexError):
        return email
