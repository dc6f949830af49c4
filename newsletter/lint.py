"""A deliverability lint of the rendered issue: what makes mail clients clip it, spam
filters distrust it, or readers unable to leave, found before anyone gets it.

Errors stop a bulk send (and fail `newsletter check`); warnings are shown. Each
finding names where it comes from: a story (by its headline) or the template.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import lxml.html

from newsletter.models import RenderedEmail
from newsletter.tokens import html_token, text_token

GMAIL_CLIP_BYTES = 100 * 1024  # Gmail shows "[Message clipped]" past about 102 KB
STYLE_LIMIT_BYTES = 16 * 1024  # Gmail drops a <style> block larger than this
SUBJECT_LIMIT = 80  # characters a mail client shows at most
TEMPLATE = "the template"
Adder = Callable[[str, str, str, str], None]  # (level, rule, where, message)
_URL_TEXT = re.compile(r"^(?:https?://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)(?:[/:?#]\S*)?$")


@dataclass(frozen=True)
class Finding:
    level: str  # "error" stops a bulk send; "warning" is shown
    rule: str
    where: str  # "story 'Headline'" or "the template"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def lint(email: RenderedEmail, postal_address: str, unsubscribe_in_body: bool) -> list[Finding]:
    """Every finding about the issue as rendered (per-reader values still tokens).
    `unsubscribe_in_body`: the links are ours to check (False: SendGrid adds its own)."""
    found: list[Finding] = []

    def add(level: str, rule: str, where: str, message: str) -> None:
        found.append(Finding(level, rule, where, message))

    size = len(email.html.encode("utf-8"))
    if size > GMAIL_CLIP_BYTES:
        add(
            "error",
            "size",
            TEMPLATE,
            f"the HTML is {size / 1024:.0f} KB: Gmail clips messages over about 102 KB, "
            "hiding the footer and its unsubscribe link (show summaries or fewer stories)",
        )
    _subject(email.subject, add)
    if not email.preheader.strip():
        add(
            "warning",
            "preheader",
            TEMPLATE,
            "no preheader: inboxes show the first text of the email beside the subject "
            "instead (set [newsletter] preheader, or give the first story a summary)",
        )
    document = lxml.html.document_fromstring(email.html)
    for style in document.iter("style"):
        length = len((style.text or "").encode("utf-8"))
        if length > STYLE_LIMIT_BYTES:
            add(
                "warning",
                "style",
                TEMPLATE,
                f"a <style> block of {length / 1024:.0f} KB: Gmail drops one over 16 KB",
            )
    for image in document.iter("img"):
        _image(image, add)
    for link in document.iter("a"):
        _link(link, add)
    if unsubscribe_in_body:
        _leaving(email, document, postal_address, add)
    return list(dict.fromkeys(found))  # a story's link is in its headline and its button


def _subject(subject: str, add: Adder) -> None:
    text = subject.strip()
    if not text:
        add("error", "subject", "the subject", "the subject is empty")
        return
    if len(text) > SUBJECT_LIMIT:
        add(
            "warning",
            "subject",
            "the subject",
            f"{len(text)} characters: inboxes cut it after about {SUBJECT_LIMIT}",
        )
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 8 and sum(c.isupper() for c in letters) > 0.6 * len(letters):
        add("warning", "subject", "the subject", "mostly capitals: spam filters count them")


def _image(image: lxml.html.HtmlElement, add: Adder) -> None:
    where, src = _origin(image), image.get("src", "")
    missing = [name for name in ("alt", "width") if image.get(name) is None]
    if image.get("height") is None and "story-image" not in (image.get("class") or ""):
        missing.append("height")  # a story image's height is the picture's own
    if missing:
        add(
            "warning",
            "image",
            where,
            f"the image {src} has no {' or '.join(missing)} (Outlook and image-blocking "
            "clients need them)",
        )
    if src.startswith("http:"):
        add("warning", "http", where, f"the image {src} is not https: clients warn or block it")


def _link(link: lxml.html.HtmlElement, add: Adder) -> None:
    href = (link.get("href") or "").strip()
    where = _origin(link)
    if href.startswith("http:"):
        add("warning", "http", where, f"the link {href} is not https")
    shown = " ".join(link.text_content().split()).lower()
    named = _URL_TEXT.match(shown)
    target = (urlsplit(href).hostname or "").lower().removeprefix("www.")
    if named and target and href.startswith(("http:", "https:")):
        domain = named.group(1)
        if not (target == domain or target.endswith("." + domain) or domain.endswith("." + target)):
            add(
                "warning",
                "link-text",
                where,
                f"the link text {shown!r} names another domain than its target {target}: "
                "filters take that for phishing",
            )


def _leaving(
    email: RenderedEmail, document: lxml.html.HtmlElement, postal_address: str, add: Adder
) -> None:
    for part, body, token in (
        ("HTML", email.html, html_token("unsubscribe_url")),
        ("text", email.text, text_token("unsubscribe_url")),
    ):
        if token not in body:
            add("error", "unsubscribe", TEMPLATE, f"the {part} part has no unsubscribe link")
    first_line = postal_address.strip().splitlines()[0] if postal_address.strip() else ""
    if not first_line or first_line not in email.text:
        add("error", "address", TEMPLATE, "the postal address is missing (the law asks for it)")
    for link in document.iter("a"):  # the stories' own links (not the share row)
        href, where = link.get("href") or "", _origin(link)
        if where == TEMPLATE or _in_class(link, "share") or not href.startswith("http"):
            continue
        if href not in email.text:
            add("warning", "text-links", where, f"the text part lacks the link {href}")


def _in_class(element: lxml.html.HtmlElement, name: str) -> bool:
    return any(name in (a.get("class") or "").split() for a in element.iterancestors())


def _origin(element: lxml.html.HtmlElement) -> str:
    """The story an element belongs to (by its headline), or the template."""
    for ancestor in element.iterancestors():
        if "story" in (ancestor.get("class") or "").split():
            headline = ancestor.find_class("headline")
            if headline:
                return f"story {' '.join(headline[0].text_content().split())!r}"
    return TEMPLATE
