"""Stories written by hand: one Markdown file each, YAML front matter on top."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import yaml
from markdown_it import MarkdownIt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from newsletter.controls import one_line
from newsletter.errors import SourceError
from newsletter.models import SourceProblem, Story, normalise_url
from newsletter.stories.base import SourceResult
from newsletter.stories.sanitize import clean_html

log = logging.getLogger(__name__)
_FENCE = re.compile(r"^---[ \t]*$")
HttpUrl = Annotated[str, Field(pattern=r"^https?://\S+$")]
# a title reaches the subject header and the terminal (`check`): one line, no ESC
Line = Annotated[str, AfterValidator(one_line)]


def _tags(value: Any) -> Any:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return value


class FrontMatter(BaseModel):
    """The keys a story file may set; anything else is a typo worth reporting."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Annotated[Line, Field(min_length=1)]
    date: dt.datetime | dt.date
    url: HttpUrl | None = None
    id: str | None = None
    summary: str | None = None
    image: HttpUrl | None = None
    image_alt: Line = ""
    author: Line | None = None
    tags: Annotated[list[Line], BeforeValidator(_tags)] = []
    draft: bool = False
    lead: bool = False


class MarkdownFolderSource:
    """Every `*.md` file under a folder is a story; files starting with `_` are ignored."""

    def __init__(self, name: str, folder: Path, tz: ZoneInfo) -> None:
        self.name = name
        self.folder = folder
        self.tz = tz
        self._markdown = MarkdownIt("commonmark").enable(["table", "strikethrough"])

    def fetch(self) -> SourceResult:
        if not self.folder.is_dir():
            raise SourceError(f"story folder not found: {self.folder}")
        result = SourceResult()
        for path in sorted(self.folder.rglob("*.md")):
            if any(part.startswith(("_", ".")) for part in path.relative_to(self.folder).parts):
                continue
            try:
                story, draft = self.read(path)
            except SourceError as exc:
                result.problems.append(SourceProblem(self.name, str(exc)))
                continue
            if draft:  # kept aside, so `check` can say why a story is missing
                log.info("%s: left out, it is a draft (draft: true)", path)
                result.drafts.append(story)
            else:
                result.stories.append(story)
        return result

    def read(self, path: Path) -> tuple[Story, bool]:
        """One story file, and whether it is a draft. Errors name the file and the line."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise SourceError(f"{path}: not UTF-8 text") from None
        except OSError as exc:
            raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
        meta, body = split_front_matter(path, text)
        published = meta.date
        if not isinstance(published, dt.datetime):
            published = dt.datetime.combine(published, dt.time(0, 0))
        if published.tzinfo is None:
            published = published.replace(tzinfo=self.tz)
        rel = path.relative_to(self.folder).as_posix()
        story_id = meta.id or (normalise_url(meta.url) if meta.url else f"{self.name}:{rel}")
        body_html = clean_html(self._markdown.render(body)) if body.strip() else None
        story = Story(
            id=story_id,
            title=meta.title,
            published=published,
            source=self.name,
            url=meta.url,
            summary=meta.summary or None,
            body_html=body_html or None,
            image=meta.image,
            image_alt=meta.image_alt,
            author=meta.author or None,
            tags=tuple(meta.tags),
            lead=meta.lead,
        )
        return story, meta.draft


def split_front_matter(path: Path, text: str) -> tuple[FrontMatter, str]:
    lines = text.splitlines(keepends=True)
    if not lines or not _FENCE.match(lines[0].rstrip("\r\n")):
        raise SourceError(
            f"{path}: line 1: missing front matter (start the file with a '---' line)"
        )
    end = next((i for i, line in enumerate(lines[1:], 1) if _FENCE.match(line.rstrip("\r\n"))), 0)
    if not end:
        raise SourceError(f"{path}: line 1: front matter is not closed by a '---' line")
    header = "".join(lines[1:end])
    body = "".join(lines[end + 1 :])
    try:
        data = yaml.safe_load(header) or {}
    except yaml.YAMLError as exc:
        # an unclosed bracket is noticed at the end; where it was opened helps more
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = ": ".join(
            part for part in (getattr(exc, "context", None), getattr(exc, "problem", None)) if part
        ) or str(exc)
        raise SourceError(f"{path}: line {line}: invalid front matter: {problem}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: line 2: front matter must be 'key: value' lines")
    try:
        return FrontMatter.model_validate(data), body
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        line = _line_of_key(lines[1:end], key)
        if error["type"] == "missing":
            message = f"{key} is required"
        elif error["type"] == "extra_forbidden":
            allowed = ", ".join(FrontMatter.model_fields)
            message = f"unknown key {key!r} (allowed: {allowed})"
        else:
            message = f"{key}: {error['msg']}"
        raise SourceError(f"{path}: line {line}: {message}") from None


def _line_of_key(header_lines: list[str], key: str) -> int:
    for number, line in enumerate(header_lines, start=2):
        if key and re.match(rf"^{re.escape(key)}\s*:", line):
            return number
    return 1
