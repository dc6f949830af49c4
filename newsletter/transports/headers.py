"""Header fields written from data (a name, a subject, a setting): always one field each.

Every value is made one line first (`one_line`), so nothing a list file, a
story or the config holds can end a field and start another (`Bcc:`), or end
the head and start the body. Then RFC 5322 and 2047: plain ASCII that folds at
its spaces within 78 columns is written as it is, anything else as encoded
words, which fold anywhere and never exceed a line. An address is never
rewritten: one that cannot be written safely stops the send, naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from email.header import Header
from email.utils import formataddr

from newsletter.controls import has_control, one_line
from newsletter.transports.base import PermanentFailure

CRLF = "\r\n"
FOLD_AT = 78  # columns, RFC 5322's "should"
# characters an address written bare or in <...> cannot hold: they would end it
_NOT_IN_ADDRESS = re.compile(r"[\s<>,;\"]")


def field(name: str, value: str) -> str:
    """`Name: value` and CRLF, for unstructured text such as the subject."""
    value = one_line(value)
    if value.isascii() and len(name) + 2 + len(value) <= FOLD_AT:
        return f"{name}: {value}{CRLF}"
    # ASCII folds at its spaces; a word too long for a line (or any non-ASCII) is encoded
    foldable = value.isascii() and all(len(word) < FOLD_AT - 10 for word in value.split(" "))
    encoded = Header(value, "us-ascii" if foldable else "utf-8", header_name=name)
    return f"{name}: {encoded.encode(linesep=CRLF)}{CRLF}"


def verbatim_field(name: str, value: str) -> str:
    """A field the tool makes and readers parse (`List-Unsubscribe: <url>`): not encoded
    or folded, so a URL stays a URL, but still one line; non-ASCII goes through `field`."""
    value = one_line(value)
    return f"{name}: {value}{CRLF}" if value.isascii() else field(name, value)


def address_field(name: str, display_name: str | None, address: str) -> str:
    """`Name: Display <address>` and CRLF; the display name quoted or encoded as needed."""
    check_address(address)
    display = one_line(display_name or "")
    if not display:
        return f"{name}: {address}{CRLF}"
    # formataddr quotes ASCII with specials and writes non-ASCII as one encoded word:
    # right whenever the result fits on a line, which is nearly always
    line = f"{name}: {formataddr((display, address), charset='utf-8')}"
    if len(line) <= FOLD_AT:
        return line + CRLF
    words = f"{name}: " + Header(display, "utf-8", header_name=name).encode(linesep=CRLF)
    last = len(words.rpartition(CRLF)[2])
    gap = " " if last + len(address) + 3 <= FOLD_AT else CRLF + " "
    return f"{words}{gap}<{address}>{CRLF}"


def check_address(address: str) -> str:
    """The address, if it can stand in a header and an SMTP command as it is."""
    if has_control(address) or _NOT_IN_ADDRESS.search(address) or "@" not in address:
        raise PermanentFailure(f"cannot write the address {address!r} into a mail header")
    return address


LIST_NAME_SHOWN = 60  # characters of the newsletter's name in List-Id: a label, not a title


def list_fields(
    newsletter: str, list_name: str, domain: str, date: dt.date
) -> tuple[tuple[str, str], ...]:
    """What marks every copy as one list's bulk mail: `List-Id` (RFC 2919: a label and
    an id under the newsletter's domain, which filters and unsubscribe buttons key on)
    and `Feedback-ID` (Gmail's feedback loop: issue, list, kind, sender). The label is
    cut short, so any name makes a field that fits on a line once its words are encoded."""
    label = one_line(newsletter)
    if len(label) > LIST_NAME_SHOWN:
        label = label[: LIST_NAME_SHOWN - 1].rstrip() + "\u2026"
    list_id = one_line(formataddr((label, f"{list_name}.{domain}"), charset="utf-8"))
    return (("List-Id", list_id), ("Feedback-ID", f"{date:%Y%m%d}:{list_name}:newsletter:{domain}"))
