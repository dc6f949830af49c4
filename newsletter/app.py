"""The composition root and the use cases: build an issue, preview it, send it.

Everything outside (the clock, the HTTP client, the state database) is passed
in here and nowhere else, so tests swap parts without patching. `App` builds
the parts once per run: the state database, the renderer, the story sources,
and (through `App.parts`, see `parts.py`) what sending is made of: transports,
signers, unsubscribe links, retries, outbox folders. The send use case itself
is `send.py`; it asks the app for these rather than building them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.config import Config, FeedSourceSettings, MarkdownSourceSettings, load_config
from newsletter.models import Issue, RenderedEmail, Window, local_time_on
from newsletter.state import Ledger
from newsletter.stories import StorySource, gather
from newsletter.stories.cache import FeedCache
from newsletter.subscribers import list_path
from newsletter.tokens import Personaliser

if TYPE_CHECKING:
    import httpx

    from newsletter.lint import Finding
    from newsletter.parts import Parts
    from newsletter.preview import PreviewPage
    from newsletter.render import Renderer

Clock = Callable[[], dt.datetime]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


SAMPLE_SUBSCRIBER = {
    "email": "reader@example.com",
    "name": "Alex Reader",
    "first_name": "Alex",
    "unsubscribe_url": "https://example.com/unsubscribe?preview",
}


@dataclass(frozen=True)
class BuiltIssue:
    """An issue and its email, rendered once."""

    issue: Issue
    email: RenderedEmail

    def personalised(self, values: Mapping[str, str]) -> tuple[str, str]:
        """(html, text) for one recipient, as a local transport would send them."""
        return Personaliser(self.email.html).fill(values), Personaliser(self.email.text).fill(
            values
        )


@dataclass
class App:
    config: Config
    clock: Clock = system_clock
    http: httpx.Client | None = None
    feed_cache: FeedCache | None = None
    _owned: list[object] = field(default_factory=list)

    @cached_property
    def ledger(self) -> Ledger:
        ledger = Ledger(self.config.database_url, self.config.newsletter.tz)
        self._owned.append(ledger)
        return ledger

    @cached_property
    def renderer(self) -> Renderer:
        # imported here: Jinja2, Premailer and cssutils are a fifth of a second that only
        # the commands that render pay (not `status`, `subscribers`, a resumed send)
        from newsletter.render import Renderer

        return Renderer(self.config)

    @cached_property
    def parts(self) -> Parts:
        """Transports, signers, links and retries, built from the config (`parts.py`);
        imported here: `status` and `report` need none of it."""
        from newsletter.parts import Parts

        return Parts(self.config, self.clock)

    def _http(self) -> httpx.Client:
        import httpx  # only newsletters with feeds pay for it

        if self.http is None:
            self.http = httpx.Client()
            self._owned.append(self.http)
        return self.http

    def close(self) -> None:
        for thing in self._owned:
            thing.close()  # type: ignore[attr-defined]
        self._owned.clear()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building an issue ---------------------------------------------------------

    def today(self) -> dt.date:
        return self.clock().astimezone(self.config.newsletter.tz).date()

    def issue_time(self, date: dt.date) -> dt.datetime:
        """The issue's nominal send time: the end of its window."""
        return local_time_on(date, self.config.schedule.time, self.config.newsletter.tz)

    def window(self, date: dt.date, previous_end: dt.datetime | None = None) -> Window:
        end = self.issue_time(date)
        if previous_end is not None and previous_end < end:
            return Window(previous_end, end)
        span = self.config.issue.window
        return Window(end - span if span is not None else None, end)

    def sources(self) -> list[StorySource]:
        """The configured story sources; each kind's parser is imported only if used
        (feedparser alone takes 20-35 ms to import)."""
        sources: list[StorySource] = []
        for settings in self.config.sources:
            if isinstance(settings, MarkdownSourceSettings):
                from newsletter.stories.markdown import MarkdownFolderSource

                sources.append(
                    MarkdownFolderSource(settings.label, settings.path, self.config.newsletter.tz)
                )
            elif isinstance(settings, FeedSourceSettings):
                from newsletter.stories.feed import FeedSource

                sources.append(
                    FeedSource(
                        settings.label,
                        settings.url,
                        self._http(),
                        self.feed_cache or self.ledger,
                        timeout=settings.timeout,
                        max_bytes=settings.max_bytes,
                    )
                )
        return sources

    def gather_issue(
        self,
        date: dt.date | None = None,
        *,
        previous_end: dt.datetime | None = None,
        already_sent: frozenset[str] = frozenset(),
    ) -> Issue:
        date = date or self.today()
        window = self.window(date, previous_end)
        gathered = gather(
            self.sources(),
            window,
            already_sent=already_sent,
            max_stories=self.config.issue.max_stories,
            newest_first=self.config.issue.order == "newest_first",
        )
        return Issue(
            date=date,
            window=window,
            stories=gathered.stories,
            problems=gathered.problems,
            drafts=gathered.drafts,
        )

    def build_issue(self, date: dt.date | None = None, list_name: str | None = None) -> BuiltIssue:
        """The issue as a list will get it: since its previous issue, minus stories it had."""
        list_name = list_name or self.config.schedule.list
        date = date or self.today()
        issue = self.gather_issue(
            date,
            previous_end=self.ledger.previous_issue_end(list_name, date),
            already_sent=self.ledger.sent_story_keys(list_name, before=date),
        )
        return BuiltIssue(issue, self.renderer.render(issue))

    def sample_values(self) -> dict[str, str]:
        """A stand-in subscriber for previews: never a real reader's data."""
        return dict(SAMPLE_SUBSCRIBER)


def watched_paths(config: Config) -> tuple[Path, ...]:
    """What the preview watches: the config, the templates and every story folder."""
    paths = [config.path]
    if config.templates.path is not None:
        paths.append(config.templates.path)
    paths += [s.path for s in config.sources if isinstance(s, MarkdownSourceSettings)]
    return tuple(paths)


def preview_page(
    config_path: Path,
    environ: Mapping[str, str],
    date: dt.date | None,
    clock: Clock = system_clock,
) -> PreviewPage:
    """Build the preview from scratch: the config itself may have changed since last time."""
    from newsletter.preview import PreviewPage  # its HTTP server only for `preview`

    config = load_config(config_path, environ)
    with App(config, clock=clock) as app:
        built = app.build_issue(date)
        html, text = built.personalised(app.sample_values())
    notes = [str(p) for p in built.issue.problems] + list(built.email.warnings)
    if not built.issue.is_empty:
        notes += [f"{f.level}: {f}" for f in lint_issue(config, built.email)]
    if built.issue.is_empty:
        notes.insert(0, empty_issue_message(built.issue))
    return PreviewPage(
        subject=built.email.subject,
        preheader=built.email.preheader,
        html=html,
        text=text,
        stories=len(built.issue.stories),
        notes=tuple(notes),
        watch=watched_paths(config),
        language=app.renderer.language,
    )


def lint_issue(config: Config, email: RenderedEmail) -> list[Finding]:
    """The deliverability lint of a rendered issue (`lint.py`), with this newsletter's
    address and unsubscribe mode (SendGrid's own links are not ours to find)."""
    from newsletter.lint import lint

    return lint(email, config.newsletter.postal_address, config.unsubscribe.mode != "sendgrid")


def list_problems(config: Config) -> list[str]:
    """What would stop the scheduled send before it starts, for `check` to say today."""
    path = list_path(config.subscribers.path, config.schedule.list)
    if path.is_file():
        return []
    return [
        f"{path}: the list file of [schedule] list = {config.schedule.list!r} is missing "
        f"(add readers with `newsletter subscribers import FILE --list {config.schedule.list}`)"
    ]


def empty_issue_message(issue: Issue) -> str:
    window = issue.window
    since = f"since {window.start:%Y-%m-%d %H:%M %Z}" if window.start else "ever"
    return (
        f"No stories for {issue.date.isoformat()}: nothing was published {since} "
        f"up to {window.end:%Y-%m-%d %H:%M %Z} (a send skips an empty issue)."
    )
