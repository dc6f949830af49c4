"""A real daily digest (three stories) rendered end to end through the CLI."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import lxml.html

from .conftest import FIXTURES, Site

SAMPLE = FIXTURES / "digest-2023-11-09.txt"


def parse_digest(text: str) -> list[tuple[str, list[str]]]:
    """Stories are separated by two blank lines; the first block repeats the title after the date."""
    blocks = [b.strip() for b in text.strip().split("\n\n\n") if b.strip()]
    stories = []
    for block in blocks:
        lines = [line.strip() for line in block.split("\n\n") if line.strip()]
        if lines[-1] == "Share This Post":
            lines.pop()
        title, rest = lines[0], lines[1:]
        if rest[:2] == ["November 9, 2023", title]:
            rest = rest[2:]
        stories.append((title, rest))
    return stories


def test_the_sample_digest_renders_every_headline_and_paragraph(site: Site, tmp_path: Path) -> None:
    stories = parse_digest(SAMPLE.read_text(encoding="utf-8"))
    assert len(stories) == 3
    for n, (title, paragraphs) in enumerate(stories):
        site.story(
            f"story-{n}",
            body="\n\n".join(paragraphs) + "\n",
            title=title,
            date=f"2023-11-09 0{5 + n}:00:00+00:00",
            url=f"https://example.com/{n}",
        )
    output = tmp_path / "issue.html"
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "preview", "--date", "2023-11-09", "--output", str(output)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    html = output.read_text(encoding="utf-8")
    visible = " ".join(lxml.html.fromstring(html).text_content().split())
    text_part = site.app().build_issue(dt.date(2023, 11, 9)).email.text
    flat_text = " ".join(text_part.split())
    for title, paragraphs in stories:
        assert title in visible
        assert title in text_part
        for paragraph in paragraphs:
            assert " ".join(paragraph.split()) in visible
            assert " ".join(paragraph.split()) in flat_text
    assert "3 stories" in result.stderr
