from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from newsletter.errors import SourceError
from newsletter.stories.markdown import MarkdownFolderSource

from .conftest import Site

LONDON = ZoneInfo("Europe/London")


def source(site: Site) -> MarkdownFolderSource:
    return MarkdownFolderSource("desk", site.root / "stories", LONDON)


def test_front_matter_and_body_become_a_story(site: Site) -> None:
    site.story(
        "budget",
        body="The **budget** passed.\n\n- one\n- two\n\n[Details](https://example.com/d)\n",
        title="Budget passes",
        date="2024-03-05T06:30:00+01:00",
        url="https://example.com/budget",
        summary="It passed.",
        image="https://example.com/b.jpg",
        image_alt="The chamber",
        author="Ann Writer",
        tags=["Politics", "Money"],
    )
    [story] = source(site).fetch().stories
    assert story.title == "Budget passes"
    assert story.published == dt.datetime(2024, 3, 5, 5, 30, tzinfo=dt.UTC)
    assert story.url == "https://example.com/budget"
    assert story.id == "https://example.com/budget"
    assert story.summary == "It passed."
    assert story.image == "https://example.com/b.jpg"
    assert story.image_alt == "The chamber"
    assert story.author == "Ann Writer"
    assert story.tags == ("Politics", "Money")
    assert "<strong>budget</strong>" in story.body_html
    assert "<li>one</li>" in story.body_html
    assert (
        '<a href="https://example.com/d" rel="noopener noreferrer">Details</a>' in story.body_html
    )


def test_dates_without_zone_are_read_in_the_newsletters_zone(site: Site) -> None:
    site.story("naive", date="2024-07-01 08:00")
    site.story("dateonly", date=dt.date(2024, 7, 2))
    stories = {s.id: s for s in source(site).fetch().stories}
    assert stories["desk:naive.md"].published == dt.datetime(2024, 7, 1, 7, 0, tzinfo=dt.UTC)
    assert stories["desk:dateonly.md"].published == dt.datetime(2024, 7, 1, 23, 0, tzinfo=dt.UTC)


def test_drafts_and_underscore_files_are_left_out(site: Site) -> None:
    site.story("kept")
    site.story("wip", draft=True)
    site.story("_notes")
    (site.root / "stories" / "README.txt").write_text("not a story")
    assert [s.id for s in source(site).fetch().stories] == ["desk:kept.md"]


def test_raw_html_in_markdown_is_sanitised(site: Site) -> None:
    site.story(
        "xss",
        body='Hi <script>alert(1)</script><img src="https://x/i.png" onerror="steal()">'
        '<a href="javascript:alert(1)">x</a><iframe src="https://evil"></iframe>\n',
    )
    [story] = source(site).fetch().stories
    html = story.body_html or ""
    for bad in ("<script", "alert(1)", "onerror", "javascript:", "<iframe"):
        assert bad not in html
    assert '<img src="https://x/i.png">' in html


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("no front matter\n", "line 1: missing front matter"),
        ("---\ntitle: x\ndate: 2024-01-01\n", "line 1: front matter is not closed"),
        ("---\ntitle: x\ndate: [2024\n---\nbody\n", "line 3: invalid front matter: while parsing a flow sequence: expected ',' or ']'"),
        ("---\ntitle: a: b\ndate: 2024-01-01\n---\n", "line 2: invalid front matter: mapping values are not allowed here"),
        ("---\ntitle: ok\ndate: 2024-01-01\ntitel: typo\n---\n", "line 4: unknown key 'titel'"),
        ("---\ndate: 2024-01-01\n---\n", "line 1: title is required"),
        ("---\ntitle: x\nsummary: y\ndate: soon\n---\n", "line 4: date: Input should be a valid datetime"),
        ("---\ntitle: x\ndate: 2024-01-01\nurl: example.com/a\n---\n", "line 4: url: String should match pattern"),
        ("---\n- a list\n---\n", "line 2: front matter must be 'key: value' lines"),
    ],
)  # fmt: skip
def test_bad_story_files_name_the_file_and_the_line(
    site: Site, content: str, expected: str
) -> None:
    bad = site.root / "stories" / "bad.md"
    bad.write_text(content, encoding="utf-8")
    site.story("good")
    result = source(site).fetch()
    assert [s.id for s in result.stories] == ["desk:good.md"]  # the rest still count
    [problem] = result.problems
    assert problem.source == "desk"
    assert problem.reason.startswith(f"{bad}: ")
    assert expected in problem.reason


def test_a_file_that_is_not_utf8_is_reported(site: Site) -> None:
    (site.root / "stories" / "latin1.md").write_bytes(
        "---\ntitle: Caf\xe9\n---\n".encode("latin-1")
    )
    [problem] = source(site).fetch().problems
    assert "latin1.md: not UTF-8 text" in problem.reason


def test_a_missing_folder_fails_the_whole_source(site: Site) -> None:
    with pytest.raises(SourceError, match="story folder not found"):
        MarkdownFolderSource("desk", site.root / "nope", LONDON).fetch()
