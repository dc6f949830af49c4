"""Mail lines: at most 998 octets each (RFC 5322), and each one costs a server a read."""

from __future__ import annotations


def wrap_long_lines(html: str, limit: int = 500, *, join: bool = False) -> str:
    """Lines of at most `limit` octets, broken at a space where a newline means the same.

    Mail lines may be at most 998 octets; short lines let local transports send
    the HTML as it is (8bit) instead of quoted-printable. Spaces change only in
    text, between attributes and in CSS outside strings: never inside quoted
    values or <pre>. `join` first turns those same newlines into spaces, for the
    fewest lines on the wire (each costs the receiving server a read).
    """
    if not join and all(len(line.encode()) <= limit for line in html.split("\n")):
        return html
    out: list[str] = []
    mode = "text"  # text | tag | pre | style
    quote = ""
    column = 0
    last_space = -1  # index in `out` of the last space that may become a newline
    lowered = html.lower()
    for i, char in enumerate(html):
        if char == "\n" and join and mode != "pre" and not quote:
            char = " "
        if char == "\n":
            out.append(char)
            column, last_space = 0, -1
            continue
        if quote:
            if char == quote or (quote == "*/" and char == "/" and html[i - 1] == "*"):
                quote = ""
        elif mode == "pre":
            if char == "<" and lowered.startswith("</pre", i):
                mode = "tag"
        elif mode == "style":
            if char == "/" and html.startswith("/*", i):
                quote = "*/"  # a comment: its apostrophes open no string
            elif char in "\"'":
                quote = char
            elif char == "<" and lowered.startswith("</style", i):
                mode = "tag"
            elif char == " ":
                last_space = len(out)
        elif mode == "tag":
            if char in "\"'":
                quote = char
            elif char == ">":
                mode = _raw_mode(lowered, i)
            elif char == " ":
                last_space = len(out)
        elif char == "<":
            mode = "tag"
        elif char == " ":
            last_space = len(out)
        out.append(char)
        column += 1 if char < "\x80" else len(char.encode())  # the limit is in octets
        if column > limit and last_space >= 0:
            out[last_space] = "\n"
            column, last_space = len("".join(out[last_space + 1 :]).encode()), -1
    return "".join(out)


def _raw_mode(lowered: str, end: int) -> str:
    """After the tag that ends at `end`: inside <pre> or <style>, or back in text."""
    start = lowered.rfind("<", 0, end)
    name = lowered[start + 1 : end].split(None, 1)[0].rstrip("/") if start >= 0 else ""
    return name if name in ("pre", "style") else "text"
