"""Render an issue once: Jinja2 templates, then Premailer inlines the CSS.

Templates come from the newsletter's own folder first and the built-in theme
second (as in Pelican), so overriding one partial is copying one file.
"""

from __future__ import annotations

import datetime as dt
import logging
import traceback
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

import cssutils
import jinja2
from markupsafe import Markup, escape
from premailer import Premailer

from newsletter.config import Config
from newsletter.errors import RenderError
from newsletter.htmltext import html_to_text
from newsletter.i18n import load_language
from newsletter.lines import wrap_long_lines
from newsletter.models import Issue, RenderedEmail, Story
from newsletter.stories.sanitize import plain_text
from newsletter.tokens import Recipient, defang, defang_url, html_token, text_token
from newsletter.typography import typography_for

log = logging.getLogger(__name__)

THEME_DIR = Path(__file__).parent / "theme"
HTML_TEMPLATE = "email.html"
TEXT_TEMPLATE = "email.txt"
SENDGRID_UNSUBSCRIBE_TAG = "<%asm_group_unsubscribe_raw_url%>"


def lighten(colour: str, amount: float = 0.5) -> str:
    """A `#rrggbb` colour mixed with white, e.g. the accent made readable on a dark background."""
    channels = [int(colour[i : i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * amount):02x}" for c in channels)


def strong(value: str) -> Markup:
    return Markup("<strong>%s</strong>") % value


def nl2br(value: str) -> Markup:
    return Markup("<br>").join(escape(line.strip()) for line in str(value).splitlines())


@dataclass(frozen=True)
class StoryView:
    """A story as templates see it: every field defanged, links and text ready."""

    story: Story
    tz: dt.tzinfo
    full_text: bool
    position: int = 1  # in the issue, from 1: the anchor "In this issue" links to
    is_lead: bool = False

    @property
    def title(self) -> str:
        return defang(self.story.title)

    @property
    def url(self) -> str | None:
        return defang_url(self.story.url) if self.story.url else None

    @property
    def author(self) -> str | None:
        return defang(self.story.author) if self.story.author else None

    @property
    def published(self) -> dt.datetime:
        return self.story.published.astimezone(self.tz)

    @property
    def tags(self) -> list[str]:
        return [defang(t) for t in self.story.tags]

    @property
    def image(self) -> str | None:
        return defang_url(self.story.image) if self.story.image else None

    @property
    def image_alt(self) -> str:
        return defang(self.story.image_alt or self.story.title)

    @cached_property
    def body_html(self) -> Markup:
        """Sanitised HTML (sources clean it); the summary when the issue shows summaries."""
        if self.full_text and self.story.body_html:
            return Markup(defang(self.story.body_html))
        if self.story.summary:
            return Markup("<p>") + escape(defang(self.story.summary)) + Markup("</p>")
        return Markup(defang(self.story.body_html or ""))

    @cached_property
    def text(self) -> str:
        if self.full_text and self.story.body_html:
            return defang(html_to_text(self.story.body_html))
        if self.story.summary:
            return defang(html_to_text(f"<p>{escape(self.story.summary)}</p>"))
        return defang(html_to_text(self.story.body_html or ""))

    @property
    def share(self) -> dict[str, str]:
        return share_links(self.story.url, self.story.title) if self.story.url else {}


def share_links(url: str, title: str) -> dict[str, str]:
    """Where a reader can pass a page on: by email and on three networks."""
    url, title = quote(url, safe=""), quote(title, safe="")
    links = {
        "Email": f"mailto:?subject={title}&body={url}",
        "X": f"https://x.com/intent/tweet?text={title}&url={url}",
        "LinkedIn": f"https://www.linkedin.com/sharing/share-offsite/?url={url}",
        "Facebook": f"https://www.facebook.com/sharer/sharer.php?u={url}",
    }
    return {label: defang_url(link) for label, link in links.items()}


class Renderer:
    """Builds the Jinja environment once; `render` turns an Issue into a RenderedEmail."""

    def __init__(self, config: Config) -> None:
        self.config = config
        locale_root = config.templates.path / "locale" if config.templates.path else None
        self.language = load_language(
            config.newsletter.language, locale_root, key=f"{config.path}: newsletter.language"
        )
        self.typography = typography_for(
            self.language.script, config.theme.headline_font, config.theme.body_font
        )
        template_dirs = []
        user_dir = config.templates.path
        if user_dir is not None:
            template_dirs.append(str(user_dir))
        template_dirs.append(str(THEME_DIR))
        self.env = jinja2.Environment(
            # "theme/<name>" always reaches the built-in file, so a user's template
            # can extend or include the one it replaces.
            loader=jinja2.ChoiceLoader(
                [
                    jinja2.FileSystemLoader(template_dirs),
                    jinja2.PrefixLoader({"theme": jinja2.FileSystemLoader(str(THEME_DIR))}),
                ]
            ),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
            extensions=["jinja2.ext.i18n"],
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self.env.install_gettext_translations(self.language.translations, newstyle=True)
        self.env.filters.update(
            long_date=self.language.long_date,
            short_date=self.language.short_date,
            time=self.language.time,
            number=self.language.number,
            join=self.language.join,
            nl2br=nl2br,
            strong=strong,
            lighten=lighten,
        )
        self.env.globals.update(lang=self.language, fonts=self.typography)
        self.template_dirs = [Path(d) for d in template_dirs]
        _quiet_cssutils()

    def render(self, issue: Issue) -> RenderedEmail:
        used: set[str] = set()
        context = self._context(issue)
        subject = self._render_string("newsletter.subject", self.config.newsletter.subject, context)
        preheader = self._preheader(issue, context)
        html = self._render_template(
            HTML_TEMPLATE,
            {**context, "subject": subject, "preheader": preheader},
            Recipient(True, used),
        )
        text = self._render_template(
            TEXT_TEMPLATE,
            {**context, "subject": subject, "preheader": preheader},
            Recipient(False, used),
        )
        html = wrap_long_lines(inline_css(html))
        if self.config.unsubscribe.mode == "sendgrid":
            # SendGrid's own tag, filled from the ASM group; it is not ours to fill
            html = html.replace(html_token("unsubscribe_url"), SENDGRID_UNSUBSCRIBE_TAG)
            text = text.replace(text_token("unsubscribe_url"), SENDGRID_UNSUBSCRIBE_TAG)
            used.discard("unsubscribe_url")
        # what a mail client or a filter would hold against it: `lint.py`
        return RenderedEmail(
            subject=subject, html=html, text=text, preheader=preheader, tokens=frozenset(used)
        )

    def _context(self, issue: Issue) -> dict[str, object]:
        cfg = self.config
        tz = cfg.newsletter.tz
        full = cfg.issue.story_text == "full"
        # the story the subject names: the editor's pick (`lead: true`), else the newest
        picked = next((s for s in issue.stories if s.lead), None) or max(
            issue.stories, key=lambda s: s.published, default=None
        )
        stories = [
            StoryView(s, tz, full, n, is_lead=s is picked) for n, s in enumerate(issue.stories, 1)
        ]
        lead = next((v for v in stories if v.is_lead), None)
        issue_title = lead.title if lead else cfg.newsletter.name
        view_url = None
        if cfg.newsletter.archive_url:
            view_url = f"{cfg.newsletter.archive_url.rstrip('/')}/{issue.date.isoformat()}"
        return {
            "newsletter": cfg.newsletter,
            "sender": cfg.sender,
            "theme": cfg.theme,
            "issue": issue,
            "stories": stories,
            "lead": lead,
            "why": cfg.newsletter.reason
            or self.language.gettext(
                "You are receiving this email because you subscribed to %(name)s."
            )
            % {"name": cfg.newsletter.name},
            "view_url": view_url,
            # points the way a line reads: right in English, left in Arabic
            "arrow": Markup("&larr;" if self.language.direction == "rtl" else "&rarr;"),
            # between inline items; in Arabic, marks keep a Latin name (LinkedIn) from
            # pulling the separator to the wrong side
            "dot": Markup("\u200f · \u200f" if self.language.direction == "rtl" else " · "),
            "issue_share": share_links(view_url, issue_title) if view_url else {},
        }

    def _preheader(self, issue: Issue, context: dict[str, object]) -> str:
        if self.config.newsletter.preheader:
            return self._render_string(
                "newsletter.preheader", self.config.newsletter.preheader, context
            )
        titles = [defang(s.title) for s in issue.stories]
        line = " · ".join(titles)
        return line if len(line) <= 140 else line[:139].rsplit(" ", 1)[0] + "…"

    def _render_string(self, key: str, source: str, context: dict[str, object]) -> str:
        try:
            template = self.env.from_string(source)
            return plain_text(template.render(context)) if source else ""
        except jinja2.TemplateError as exc:
            raise RenderError(f"{self.config.path}: {key}: {exc}") from None

    def _render_template(self, name: str, context: dict[str, object], recipient: Recipient) -> str:
        try:
            template = self.env.get_template(name)
            return template.render({**context, "subscriber": recipient})
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or exc.name or name
            raise RenderError(f"{where}: line {exc.lineno}: {exc.message}") from None
        except jinja2.TemplateNotFound as exc:
            searched = ", ".join(str(d) for d in self.template_dirs)
            # an include or extends names the missing file: say where, so it can be fixed
            where = _template_frame(exc)
            found_in = f"{where}: " if where else ""
            raise RenderError(
                f"{found_in}template not found: {exc.name} (searched {searched})"
            ) from None
        except Exception as exc:
            where = _template_frame(exc) or name
            raise RenderError(f"{where}: {type(exc).__name__}: {exc}") from None


def _template_frame(exc: BaseException) -> str | None:
    """`file: line N` of the innermost template frame, where Jinja put the error."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.endswith((".html", ".txt", ".css")):
            found = f"{frame.filename}: line {frame.lineno}"
    return found


def inline_css(html: str) -> str:
    """Premailer with the settings that keep an email working in every client.

    No network, `!important` kept (dark mode and phone rules need it), classes
    kept (media queries select them), and `<style data-premailer="ignore">`
    blocks left untouched for rules that must stay in the head.
    """
    inliner = Premailer(
        html,
        allow_network=False,
        allow_loading_external_files=False,
        strip_important=False,
        remove_classes=False,
        disable_validation=True,
        disable_link_rewrites=True,
        cache_css_parsing=True,
        # an image's width and height attributes stay as written: Outlook on Windows
        # draws an image at the attribute's width, and `height="auto"` is no value
        disable_basic_attributes=["width", "height"],
    )
    out = inliner.transform(pretty_print=False)
    if not out.lstrip().upper().startswith("<!DOCTYPE"):
        out = "<!DOCTYPE html>\n" + out
    return out


class _DebugOnly:
    """cssutils reports every CSS property it does not know as a warning; in email
    CSS (mso-*, -webkit-*) that is noise, so all of it goes to our logger at debug."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def _debug(self, msg: object, *args: object, **kwargs: object) -> None:
        self.logger.debug("%s", msg)

    debug = info = warning = error = critical = fatal = _debug

    def setLevel(self, level: int) -> None:  # premailer may call it; the level is ours
        pass

    def getEffectiveLevel(self) -> int:
        return logging.DEBUG

    def addHandler(self, handler: logging.Handler) -> None:
        pass

    def removeHandler(self, handler: logging.Handler) -> None:
        pass


_CSS_LOG = _DebugOnly(logging.getLogger("newsletter.css"))


def _quiet_cssutils() -> None:
    cssutils.log.setLog(_CSS_LOG)
    cssutils.log.raiseExceptions = False
