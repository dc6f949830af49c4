"""Feed and Markdown HTML is untrusted: reduce it to what an email may safely carry."""

from __future__ import annotations

import html

import nh3

from newsletter.controls import one_line

ALLOWED_TAGS = frozenset(
    {
        "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "del", "em",
        "figcaption", "figure", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
        "li", "mark", "ol", "p", "pre", "q", "s", "small", "strong", "sub", "sup",
        "table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "abbr": {"title"},
    "img": {"src", "alt", "width", "height", "title"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
    "q": {"cite"},
    "blockquote": {"cite"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto"})


def clean_html(fragment: str) -> str:
    """Keep text and harmless structure; drop scripts, styles, frames, forms, handlers, odd URLs."""
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(attrs) for tag, attrs in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(URL_SCHEMES),
        link_rel="noopener noreferrer",
        strip_comments=True,
    ).strip()


def plain_text(fragment: str) -> str:
    """Text with every tag removed and entities decoded, for titles and summaries: one
    line, without control characters (a title ends up in the subject header and on
    terminals)."""
    text = nh3.clean(fragment, tags=set(), strip_comments=True)
    return " ".join(one_line(html.unescape(text)).split())
