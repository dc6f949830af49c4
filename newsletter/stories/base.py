"""The StorySource seam and gather(): from many sources to one day's stories."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import Protocol

from newsletter.errors import SourceError
from newsletter.models import SourceProblem, Story, Window

log = logging.getLogger(__name__)


@dataclass
class SourceResult:
    """What one source yielded: its stories and the parts it could not read."""

    stories: list[Story] = field(default_factory=list)
    problems: list[SourceProblem] = field(default_factory=list)
    drafts: list[Story] = field(default_factory=list)  # marked as drafts: never in an issue


class StorySource(Protocol):
    """Anything that yields stories; a whole-source failure raises SourceError."""

    name: str

    def fetch(self) -> SourceResult: ...


@dataclass(frozen=True)
class Gathered:
    stories: tuple[Story, ...]
    problems: tuple[SourceProblem, ...]
    drafts: tuple[Story, ...] = ()  # drafts dated in the window: what a writer may miss


def gather(
    sources: Iterable[StorySource],
    window: Window,
    *,
    already_sent: Set[str] = frozenset(),
    max_stories: int = 10,
    newest_first: bool = True,
) -> Gathered:
    """The issue's stories: in the window, each once, not sent before, ordered and capped.

    A source that fails is recorded as a problem and the others still count.
    """
    problems: list[SourceProblem] = []
    candidates: list[Story] = []
    drafts: list[Story] = []
    for source in sources:
        try:
            result = source.fetch()
        except SourceError as exc:
            log.info("source %s failed: %s", source.name, exc)
            problems.append(SourceProblem(source.name, str(exc)))
            continue
        except Exception as exc:  # a bug in one source must not sink the issue
            log.warning("source %s crashed", source.name, exc_info=True)
            problems.append(SourceProblem(source.name, f"unexpected error: {exc!r}"))
            continue
        candidates.extend(result.stories)
        problems.extend(result.problems)
        drafts.extend(s for s in result.drafts if s.published in window)

    seen: set[str] = set()
    chosen: list[Story] = []
    for story in sorted(candidates, key=lambda s: s.published, reverse=True):
        if story.published not in window:
            continue
        keys = story.keys
        if keys & seen:
            continue
        seen |= keys
        if keys & already_sent:
            continue
        chosen.append(story)
    lead = next((s for s in chosen if s.lead), None)  # the editor's pick opens the issue
    chosen = [s for s in chosen if s is not lead][: max_stories - (lead is not None)]
    if not newest_first:
        chosen.reverse()
    if lead is not None:
        chosen.insert(0, lead)
    drafts.sort(key=lambda s: s.published, reverse=True)
    return Gathered(tuple(chosen), tuple(problems), tuple(drafts))
