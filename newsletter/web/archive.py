"""The public archive: sent issues as they went out, with nobody's data in them.

The ledger keeps each issue's rendered email with its tokens unfilled, so the
archive shows exactly what was sent, filled with neutral stand-ins.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from newsletter.config import NewsletterSettings
from newsletter.state.issues import IssueRow
from newsletter.tokens import Personaliser

ATOM = "http://www.w3.org/2005/Atom"


def neutral_values(public_url: str) -> dict[str, str]:
    """Token values for a reader of the archive: nobody in particular."""
    return {
        "email": "a subscriber",
        "name": "Reader",
        "first_name": "Reader",
        # the page that explains where a reader's own unsubscribe link is
        "unsubscribe_url": f"{public_url.rstrip('/')}/unsubscribe",
    }


def archived_html(row: IssueRow, public_url: str) -> str:
    """The issue's email as sent; a column with no neutral value is left empty."""
    return Personaliser(row.html or "").fill(neutral_values(public_url))


def atom_feed(
    rows: list[IssueRow], newsletter: NewsletterSettings, archive_url: str, feed_url: str
) -> bytes:
    """An Atom feed of sent issues, newest first (RFC 4287)."""
    ET.register_namespace("", ATOM)

    def add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
        element.text = text
        return element

    feed = ET.Element(f"{{{ATOM}}}feed")
    add(feed, "title", newsletter.name)
    if newsletter.tagline:
        add(feed, "subtitle", newsletter.tagline)
    add(feed, "id", feed_url)
    add(feed, "link", href=feed_url, rel="self", type="application/atom+xml")
    add(feed, "link", href=archive_url, rel="alternate", type="text/html")
    add(feed, "updated", _stamp(rows[0]) if rows else _iso(dt.datetime(1970, 1, 1, tzinfo=dt.UTC)))
    author = add(feed, "author")
    add(author, "name", newsletter.name)
    for row in rows:
        url = f"{archive_url}/{row.issue_date.isoformat()}"
        entry = add(feed, "entry")
        add(entry, "title", row.subject or row.issue_date.isoformat())
        add(entry, "id", url)
        add(entry, "link", href=url, rel="alternate", type="text/html")
        add(entry, "updated", _stamp(row))
        add(entry, "summary", f"{newsletter.name}, the issue of {row.issue_date:%d %B %Y}.")
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)


def _stamp(row: IssueRow) -> str:
    return _iso(row.finished_at or row.created_at)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
