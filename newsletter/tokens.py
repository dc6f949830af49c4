"""Per-recipient values in a once-rendered email: fixed tokens, filled late.

The HTML part carries ``%%name%%`` and the text part ``%%name:text%%``, so the
HTML value can be escaped while the text value stays as typed. Values the tool
makes itself and that never need escaping (the unsubscribe URL) use one token
in both parts: a million recipients send it once, not twice. Tokens have no
spaces: Premailer (lxml >= 5) mangles ``{{ x }}`` inside ``href``. Story text
cannot forge a token: ``defang`` breaks every ``%%`` that did not come from
a template.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping

from markupsafe import Markup

TOKEN_RE = re.compile(r"%%([a-z][a-z0-9_]*)(:text)?%%")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")
WORD_JOINER = "\u2060"  # invisible, and not a line-break opportunity
HTML_SAFE = frozenset({"unsubscribe_url"})  # made by the tool from URL-safe characters only
# one line wherever they appear: the name is also the display name in `To:`
ONE_LINE = frozenset({"email", "name", "first_name"})


def html_token(name: str) -> str:
    return f"%%{name}%%"


def text_token(name: str) -> str:
    return html_token(name) if name in HTML_SAFE else f"%%{name}:text%%"


def defang(text: str) -> str:
    """Break every ``%%`` in untrusted text so it can never be read as a token."""
    return text.replace("%%", f"%{WORD_JOINER}%")


def defang_url(url: str) -> str:
    """The same for URLs, where ``%25`` is the honest spelling of a percent sign."""
    return url.replace("%%", "%25%25")


class Recipient:
    """What templates see as ``subscriber``: every attribute becomes a token.

    Records which names were used, so a send can check that the list has them.
    """

    def __init__(self, for_html: bool, used: set[str]) -> None:
        self._for_html = for_html
        self._used = used

    def __getattr__(self, name: str) -> str:
        if name.startswith("_") or not _NAME_RE.fullmatch(name):
            raise AttributeError(name)
        self._used.add(name)
        return Markup(html_token(name)) if self._for_html else text_token(name)

    __getitem__ = __getattr__


class Personaliser:
    """Fill the tokens of one document for many recipients: split once, join per recipient."""

    def __init__(self, document: str) -> None:
        pieces = TOKEN_RE.split(document)
        # split() yields: text, name, ":text"|None, text, name, ...
        self._texts = pieces[0::3]
        self._slots = [(pieces[i], pieces[i + 1] is not None) for i in range(1, len(pieces), 3)]

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self._slots)

    def fill(self, values: Mapping[str, str]) -> str:
        texts = self._texts
        out = [texts[0]]
        for index, (name, is_text) in enumerate(self._slots, start=1):
            value = values.get(name, "")
            out.append(value if is_text or name in HTML_SAFE else html.escape(value, quote=True))
            out.append(texts[index])
        return "".join(out)
