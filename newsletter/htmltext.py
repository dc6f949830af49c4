"""Sanitised story HTML as readable plain text, for the text part of the email."""

from __future__ import annotations

import re
import textwrap
import unicodedata

import lxml.html

_BLOCKS = {
    "p", "div", "blockquote", "pre", "ul", "ol", "li", "table", "tr", "figure",
    "figcaption", "h1", "h2", "h3", "h4", "h5", "h6", "hr",
}  # fmt: skip


def html_to_text(fragment: str, width: int = 72) -> str:
    """Paragraphs separated by blank lines, links written out as "text (url)", lists as "- "."""
    if not fragment.strip():
        return ""
    root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    blocks: list[str] = []
    _walk(root, blocks, [])
    paragraphs: list[tuple[bool, str]] = []
    for block in blocks:
        block = block.strip()
        if not block:
            continue
        if block.startswith("\x00pre"):
            paragraphs.append((False, block.removeprefix("\x00pre").strip("\n")))
            continue
        prefix = ""
        match = re.match(r"^(- |\d+\. |> )", block)
        if match:
            prefix = match.group(1)
            block = block[len(prefix) :]
        indent = "> " if prefix == "> " else " " * len(prefix)
        is_item = prefix not in ("", "> ")
        paragraphs.append(
            (
                is_item,
                fill(" ".join(block.split()), width, prefix, indent),
            )
        )
    out = ""
    previous_item = False
    for is_item, paragraph in paragraphs:
        if out:
            out += "\n" if is_item and previous_item else "\n\n"
        out += paragraph
        previous_item = is_item
    return out


def _walk(element, blocks: list[str], current: list[str]) -> None:
    """Collect inline text into `current`; a block element flushes it into `blocks`."""
    tag = element.tag if isinstance(element.tag, str) else ""
    if tag == "pre":
        _flush(blocks, current)
        blocks.append("\x00pre" + element.text_content())
        if element.tail:
            current.append(element.tail)
        return
    if tag in _BLOCKS:
        _flush(blocks, current)
    if tag == "blockquote":
        quoted: list[str] = []
        inner: list[str] = [element.text or ""]
        for child in element:
            _walk(child, quoted, inner)
        _flush(quoted, inner)
        blocks.extend("> " + block.strip() for block in quoted if block.strip())
        if element.tail:
            current.append(element.tail)
        return
    if tag == "li":
        parent = element.getparent()
        if parent is not None and parent.tag == "ol":
            current.append(f"{list(parent).index(element) + 1}. ")
        else:
            current.append("- ")
    elif tag == "br":
        current.append(" ")
    elif tag == "img" and element.get("alt"):
        current.append(f"[{element.get('alt')}]")
    if element.text:
        current.append(element.text)
    for child in element:
        _walk(child, blocks, current)
    if tag == "a":
        href = element.get("href") or ""
        label = element.text_content().strip()
        if href.startswith(("http://", "https://")) and href != label:
            current.append(f" ({href})")
        elif href.startswith("mailto:") and href[7:] != label:
            current.append(f" ({href[7:]})")
    if tag in _BLOCKS:
        _flush(blocks, current)
    if element.tail:
        current.append(element.tail)


def _flush(blocks: list[str], current: list[str]) -> None:
    if current:
        blocks.append("".join(current))
        current.clear()


# a line may not begin with these (closing punctuation, in Chinese and Japanese typesetting)
_NO_LINE_START = set("，。、；：？！）」』”’》〉】〕…—,.;:?!)]}%")
_WIDE = (
    "\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6"
)
# a run of spaces, one wide (CJK) character, or a run of anything else (a Latin word)
_TOKENS = re.compile(rf"\s+|[{_WIDE}]|[^\s{_WIDE}]+")


def _columns(text: str) -> int:
    """How wide `text` is on a terminal: CJK characters take two columns."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fill(text: str, width: int, initial: str = "", subsequent: str = "") -> str:
    """Wrap at `width` columns. Latin text wraps at spaces, as textwrap does; Chinese,
    Japanese and Korean have no spaces, so they wrap between any two characters, each
    two columns wide, never putting closing punctuation at the start of a line."""
    if _columns(text) == len(text):
        return textwrap.fill(
            text,
            width=width,
            initial_indent=initial,
            subsequent_indent=subsequent,
            break_long_words=False,
            break_on_hyphens=False,
        )
    lines: list[str] = []
    line, used = initial, len(initial)
    for token in _TOKENS.findall(text):
        size = _columns(token)
        fits = used + size <= width or line.strip() == "" or token[0] in _NO_LINE_START
        if token.isspace():
            if used + 1 <= width:
                line, used = line + " ", used + 1
            continue
        if not fits:
            lines.append(line.rstrip())
            line, used = subsequent, len(subsequent)
        line, used = line + token, used + size
    lines.append(line.rstrip())
    return "\n".join(lines)
