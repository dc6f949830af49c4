from __future__ import annotations

import datetime as dt

import pytest

from newsletter.app import empty_issue_message
from newsletter.errors import SourceError
from newsletter.models import Story, Window
from newsletter.stories import SourceResult, gather

from .conftest import Site, utc


class ListSource:
    def __init__(self, name: str, stories: list[Story]) -> None:
        self.name = name
        self.stories = stories

    def fetch(self) -> SourceResult:
        return SourceResult(list(self.stories))


class BrokenSource:
    name = "broken"

    def fetch(self) -> SourceResult:
        raise SourceError("HTTP 500 Internal Server Error from https://feeds.example.com/x")


def story(n: int, published: dt.datetime, url: str | None = None) -> Story:
    return Story(id=f"s{n}", title=f"Story {n}", published=published, source="t", url=url)


WINDOW = Window(utc(2024, 3, 4, 7), utc(2024, 3, 5, 7))


def test_only_stories_inside_the_window_count() -> None:
    stories = [
        story(1, utc(2024, 3, 4, 7)),  # exactly at the start: belonged to the previous issue
        story(2, utc(2024, 3, 4, 7, 0, 1)),
        story(3, utc(2024, 3, 5, 7)),  # exactly at send time: in
        story(4, utc(2024, 3, 5, 7, 0, 1)),  # after send time: next issue
    ]
    result = gather([ListSource("a", stories)], WINDOW)
    assert [s.id for s in result.stories] == ["s3", "s2"]


def test_duplicates_by_url_and_already_sent_stories_are_dropped() -> None:
    a = [
        story(1, utc(2024, 3, 5, 6), "https://ex.com/a?utm_source=rss"),
        story(2, utc(2024, 3, 5, 5)),
    ]
    b = [story(9, utc(2024, 3, 5, 4), "https://EX.com/a/#top"), story(3, utc(2024, 3, 5, 3))]
    result = gather([ListSource("a", a), ListSource("b", b)], WINDOW, already_sent={"s2"})
    assert [s.id for s in result.stories] == ["s1", "s3"]


def test_ordered_and_capped_keeping_the_newest() -> None:
    stories = [story(n, utc(2024, 3, 5, n)) for n in range(1, 7)]
    newest = gather([ListSource("a", stories)], WINDOW, max_stories=3)
    assert [s.id for s in newest.stories] == ["s6", "s5", "s4"]
    oldest = gather([ListSource("a", stories)], WINDOW, max_stories=3, newest_first=False)
    assert [s.id for s in oldest.stories] == ["s4", "s5", "s6"]


def test_a_failing_source_is_reported_and_the_others_still_count() -> None:
    result = gather([BrokenSource(), ListSource("ok", [story(1, utc(2024, 3, 5, 1))])], WINDOW)
    assert [s.id for s in result.stories] == ["s1"]
    [problem] = result.problems
    assert str(problem) == "broken: HTTP 500 Internal Server Error from https://feeds.example.com/x"


def test_window_defaults_to_the_24_hours_before_send_time(site: Site) -> None:
    window = site.app().window(dt.date(2024, 3, 5))
    assert window == Window(utc(2024, 3, 4, 7), utc(2024, 3, 5, 7))


def test_window_starts_at_the_previous_issue_when_there_was_one(site: Site) -> None:
    window = site.app().window(dt.date(2024, 3, 5), previous_end=utc(2024, 3, 1, 7))
    assert window == Window(utc(2024, 3, 1, 7), utc(2024, 3, 5, 7))


@pytest.mark.parametrize(
    ("when", "hour_utc"),
    [
        (dt.date(2024, 3, 31), 6),  # BST began at 01:00 UTC that morning
        (dt.date(2024, 10, 27), 7),  # back to GMT
    ],
)
def test_send_time_is_local_across_daylight_saving(
    site: Site, when: dt.date, hour_utc: int
) -> None:
    assert site.app().issue_time(when).astimezone(dt.UTC).hour == hour_utc


def test_a_send_time_that_does_not_exist_moves_forward(site: Site) -> None:
    config_text = site.config_path.read_text().replace('time = "07:00"', 'time = "01:30"')
    site.config_path.write_text(config_text)
    moment = site.app().issue_time(dt.date(2024, 3, 31))  # 01:30 never happened in London
    assert moment.astimezone(dt.UTC) == utc(2024, 3, 31, 1, 30)
    assert moment.utcoffset() == dt.timedelta(hours=1)


def test_an_empty_window_is_said_plainly(site: Site) -> None:
    site.story("old", date="2020-01-01 06:00:00+00:00")
    issue = site.app().gather_issue(dt.date(2024, 3, 5))
    assert issue.is_empty and not issue.problems
    assert empty_issue_message(issue) == (
        "No stories for 2024-03-05: nothing was published since 2024-03-04 07:00 GMT "
        "up to 2024-03-05 07:00 GMT (a send skips an empty issue)."
    )


def test_the_story_marked_lead_opens_the_issue_and_survives_the_cap() -> None:
    stories = [story(n, utc(2024, 3, 5, n)) for n in range(1, 7)]
    stories[0] = stories[0].model_copy(update={"lead": True})  # the oldest
    for newest_first in (True, False):
        chosen = gather(
            [ListSource("a", stories)], WINDOW, max_stories=3, newest_first=newest_first
        )
        ids = [s.id for s in chosen.stories]
        assert ids == (["s1", "s6", "s5"] if newest_first else ["s1", "s5", "s6"])
