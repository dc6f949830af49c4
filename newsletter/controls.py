"""Control characters in data: find them, fold them away, or show them escaped.

A line break in a subscriber's name is how a name becomes a `Bcc:` header; an
ESC in it is how a name becomes a terminal command. Input is refused where a
person can fix it (`find_control` at import and in the config); the layers
that write headers, bodies and terminal output still guard themselves
(`one_line`, `body_text`, `printable`), because a list file edited by hand
skips the import.

"Control" here means Unicode category Cc (C0, DEL, C1: tab, CR, LF, NUL, ESC,
NEL, CSI ...) and the two Unicode line and paragraph separators (U+2028,
U+2029), which some readers treat as line breaks.
"""

from __future__ import annotations

import re

CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"  # for a regex character class
_CONTROL = re.compile(f"[{CONTROL_CLASS}]")
_CONTROL_RUN = re.compile(f"[{CONTROL_CLASS}]+")
_BODY_UNSAFE_RUN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]+")  # not tab, LF


def find_control(value: str) -> str | None:
    """The first control character of `value` as `U+000D`, or None if there is none."""
    found = _CONTROL.search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def has_control(value: str) -> bool:
    return _CONTROL.search(value) is not None


def one_line(value: str) -> str:
    """The value with every run of control characters turned into one space.

    What a header value is once unfolded: a single line, so it can never end
    the field it is in and start another.
    """
    if _CONTROL.search(value) is None:  # nearly always: no copy
        return value
    return _CONTROL_RUN.sub(" ", value).strip()


def body_text(value: str) -> str:
    """Text for a message body: tabs and line breaks kept (CR and CRLF as LF), every other
    run of control characters one space. A postal address in a list column may span
    lines; a NUL or a lone CR must not reach an 8bit part."""
    if _CONTROL.search(value) is None:
        return value
    return _BODY_UNSAFE_RUN.sub(" ", value.replace("\r\n", "\n").replace("\r", "\n"))


def printable(value: str) -> str:
    """The value for a terminal: each control character shown as its escape (`\\x1b`)."""
    if _CONTROL.search(value) is None:
        return value
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], value)


def masked(value: str) -> str:
    """Each control character as U+FFFD: the same length, so styled spans stay in place."""
    if _CONTROL.search(value) is None:
        return value
    return _CONTROL.sub("\ufffd", value)
