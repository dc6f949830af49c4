"""One MIME message per recipient for the local transports (SMTP, outbox)."""

from __future__ import annotations

from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from newsletter.tokens import Personaliser
from newsletter.transports.base import Message, Recipient

# Long header lines are folded, not encoded: a List-Unsubscribe URL must stay
# readable as `<https://...>` (RFC 2047 encoded words would break it).
MAIL_POLICY = policy.SMTP.clone(max_line_length=998)


class MimeBuilder:
    """Splits the issue's HTML and text once; each recipient is a join, not a render."""

    def __init__(self, message: Message) -> None:
        self.message = message
        self.html = Personaliser(message.html)
        self.text = Personaliser(message.text)
        self.domain = message.from_email.rpartition("@")[2]

    def build(self, recipient: Recipient) -> EmailMessage:
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


def _address(email: str, name: str | None) -> Address | str:
    local, _, domain = email.rpartition("@")
    try:
        return Address(display_name=name or "", username=local, domain=domain)
    except (ValueError, IndexError):
        return email
