"""The scheduling logic under a controlled clock: no sleeping for real hours."""

from __future__ import annotations

import datetime as dt
import pickle
from zoneinfo import ZoneInfo

import pytest

from newsletter.scheduler import CatchUp, DailyIssueTrigger, catch_up

UTC = dt.UTC
NY = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def fire_times(trigger: DailyIssueTrigger, start: dt.datetime, days: int) -> list[dt.datetime]:
    """What APScheduler would ask for: the first time from `start`, then each one after the last."""
    times = [trigger.get_next_fire_time(None, start)]
    while len(times) < days:
        times.append(trigger.get_next_fire_time(times[-1], times[-1]))
    return [t for t in times if t is not None]


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("zone", "at", "start", "expected_utc"),
    [
        # New York, spring forward on Sun 10 March 2024: 02:30 never happens, it fires at 03:30 EDT
        ("America/New_York", dt.time(2, 30), dt.datetime(2024, 3, 8, tzinfo=NY),
         [utc(2024, 3, 8, 7, 30), utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7, 30), utc(2024, 3, 11, 6, 30), utc(2024, 3, 12, 6, 30)]),
        # New York, fall back on Sun 3 November 2024: 01:30 happens twice, it fires once (the first)
        ("America/New_York", dt.time(1, 30), dt.datetime(2024, 11, 1, tzinfo=NY),
         [utc(2024, 11, 1, 5, 30), utc(2024, 11, 2, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30), utc(2024, 11, 5, 6, 30)]),
        # London, spring forward on Sun 31 March 2024 (01:00 -> 02:00)
        ("Europe/London", dt.time(1, 30), dt.datetime(2024, 3, 29, tzinfo=LONDON),
         [utc(2024, 3, 29, 1, 30), utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1, 30), utc(2024, 4, 1, 0, 30), utc(2024, 4, 2, 0, 30)]),
        # London, fall back on Sun 27 October 2024 (02:00 -> 01:00)
        ("Europe/London", dt.time(1, 30), dt.datetime(2024, 10, 25, tzinfo=LONDON),
         [utc(2024, 10, 25, 0, 30), utc(2024, 10, 26, 0, 30), utc(2024, 10, 27, 0, 30), utc(2024, 10, 28, 1, 30), utc(2024, 10, 29, 1, 30)]),
        # an ordinary 07:00 across the London change: the UTC hour moves, the local one does not
        ("Europe/London", dt.time(7, 0), dt.datetime(2024, 3, 29, 12, tzinfo=LONDON),
         [utc(2024, 3, 30, 7), utc(2024, 3, 31, 6), utc(2024, 4, 1, 6), utc(2024, 4, 2, 6), utc(2024, 4, 3, 6)]),
    ],
)  # fmt: skip
def test_exactly_one_fire_time_per_local_date_across_dst(
    zone: str, at: dt.time, start: dt.datetime, expected_utc: list[dt.datetime]
) -> None:
    trigger = DailyIssueTrigger(at, zone)
    times = fire_times(trigger, start, 5)
    assert [t.astimezone(UTC) for t in times] == expected_utc
    local_dates = [t.astimezone(ZoneInfo(zone)).date() for t in times]
    assert len(set(local_dates)) == 5
    assert local_dates == sorted(local_dates)


def test_a_whole_dst_week_in_new_york_at_the_usual_hour() -> None:
    trigger = DailyIssueTrigger(dt.time(7, 0), "America/New_York")
    times = fire_times(trigger, dt.datetime(2024, 11, 1, tzinfo=NY), 7)
    assert [t.astimezone(NY).strftime("%a %H:%M %Z") for t in times] == [
        "Fri 07:00 EDT", "Sat 07:00 EDT", "Sun 07:00 EST", "Mon 07:00 EST",
        "Tue 07:00 EST", "Wed 07:00 EST", "Thu 07:00 EST",
    ]  # fmt: skip


def test_weekdays_only() -> None:
    trigger = DailyIssueTrigger(dt.time(7, 0), "Europe/London", "mon-fri")
    times = fire_times(
        trigger, dt.datetime(2024, 3, 1, 8, tzinfo=LONDON), 5
    )  # a Friday, after 07:00
    assert [t.strftime("%a %d") for t in times] == [
        "Mon 04",
        "Tue 05",
        "Wed 06",
        "Thu 07",
        "Fri 08",
    ]
    assert trigger.latest(dt.datetime(2024, 3, 3, 12, tzinfo=LONDON)) == dt.datetime(
        2024, 3, 1, 7, tzinfo=LONDON
    )


def test_the_trigger_survives_the_job_store() -> None:
    trigger = DailyIssueTrigger(dt.time(6, 45), "America/New_York", "mon,wed,fri")
    copy = pickle.loads(pickle.dumps(trigger))
    now = dt.datetime(2024, 5, 1, tzinfo=UTC)
    assert copy.upcoming(now, 4) == trigger.upcoming(now, 4)
    assert repr(copy) == "DailyIssueTrigger(06:45 America/New_York, days='mon,wed,fri')"


DAILY = DailyIssueTrigger(dt.time(7, 0), "Europe/London")
GRACE = dt.timedelta(hours=2)


def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 6, day, hour, minute, tzinfo=LONDON)


def test_a_missed_run_inside_the_grace_goes_out_late() -> None:
    assert catch_up(DAILY, at(3, 7), at(3, 8, 30), GRACE) == CatchUp((), at(3, 7))


def test_a_missed_run_past_the_grace_is_skipped() -> None:
    assert catch_up(DAILY, at(3, 7), at(3, 9, 30), GRACE) == CatchUp((at(3, 7),), None)


def test_several_days_down_coalesce_into_one_send() -> None:
    owed = catch_up(DAILY, at(3, 7), at(6, 7, 20), GRACE)
    assert owed.due == at(6, 7)
    assert owed.skipped == (at(3, 7), at(4, 7), at(5, 7))


def test_several_days_down_before_todays_time_sends_nothing_yet() -> None:
    owed = catch_up(DAILY, at(3, 7), at(6, 6), GRACE)
    assert owed == CatchUp((at(3, 7), at(4, 7), at(5, 7)), None)


def test_nothing_is_owed_when_the_next_run_is_still_ahead() -> None:
    assert catch_up(DAILY, at(4, 7), at(3, 20), GRACE) == CatchUp()
    assert catch_up(DAILY, None, at(3, 20), GRACE) == CatchUp()
