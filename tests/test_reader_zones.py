"""Each reader's own morning (newsletter/zones.py): a list's `timezone` column gives each
reader of a scheduled SendGrid issue the send time of day on their own clock, on an
ordinary day and on the days the clocks change, with their own values kept theirs."""

from __future__ import annotations

import collections
import datetime as dt
import zoneinfo

import pytest

from newsletter.scheduler import trigger_for
from newsletter.zones import known_zone, reader_send_at

from .conftest import Site
from .support.sendgrid_emulator import SendGridEmulator
from .test_scheduler_service import Clock, service
from .test_send_sendgrid import setup_site

LONDON = zoneinfo.ZoneInfo("Europe/London")
SEVEN = dt.time(7, 0)
READERS = {  # address -> the zone in the list ("" and a bogus one: the newsletter's)
    "shanghai@example.com": "Asia/Shanghai",
    "london@example.com": "Europe/London",
    "newyork@example.com": "America/New_York",
    "auckland@example.com": "Pacific/Auckland",
    "nozone@example.com": "",
    "nowhere@example.com": "Mars/Olympus_Mons",
}
DAYS = {
    "ordinary": dt.date(2027, 1, 12),
    "US clocks spring forward": dt.date(2027, 3, 14),
    "EU clocks spring forward": dt.date(2027, 3, 28),
    "NZ clocks fall back": dt.date(2027, 4, 4),
    "NZ clocks spring forward": dt.date(2027, 9, 26),
    "EU clocks fall back": dt.date(2027, 10, 31),
    "US clocks fall back": dt.date(2027, 11, 7),
}


def their_zone(address: str) -> zoneinfo.ZoneInfo:
    return known_zone(READERS[address]) or LONDON


@pytest.mark.parametrize("day", list(DAYS.values()), ids=list(DAYS))
def test_the_first_seven_oclock_on_each_readers_clock(day: dt.date) -> None:
    built = dt.datetime.combine(day, dt.time(6, 40), tzinfo=LONDON)
    for name in {z for z in READERS.values() if known_zone(z)}:
        zone = zoneinfo.ZoneInfo(name)
        moment = reader_send_at(zone, SEVEN, built)
        assert moment.astimezone(zone).time() == SEVEN
        assert built <= moment < built + dt.timedelta(hours=25)
        # and it is the first: a day earlier would be before the issue was built
        assert moment - dt.timedelta(days=1) < built + dt.timedelta(hours=1)


@pytest.mark.parametrize("day", list(DAYS.values()), ids=list(DAYS))
def test_each_reader_gets_the_scheduled_issue_at_seven_on_their_own_clock(
    site: Site, sendgrid_emulator: SendGridEmulator, day: dt.date
) -> None:
    setup_site(site, sendgrid_emulator, 1)
    text = site.config_path.read_text().replace(
        "[schedule]\n", '[schedule]\nsubmit_ahead = "20m"\n'
    )
    site.config_path.write_text(text)
    lines = ["email,name,timezone"] + [
        f"{a},{a.split('@')[0].title()},{z}" for a, z in READERS.items()
    ]
    (site.root / "subscribers" / "main.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    send_time = dt.datetime.combine(day, SEVEN, tzinfo=LONDON)
    site.story("today", title="Today's news", date=(send_time - dt.timedelta(hours=2)).isoformat())
    trigger = trigger_for(site.config())
    fire = trigger.fire_time(day)
    sendgrid_emulator.advance_to(fire.timestamp())  # SendGrid's clock: the morning it runs

    report = service(site, Clock(fire + dt.timedelta(seconds=1))).run_issue(fire)

    assert report is not None and report.outcome == "sent", report
    assert report.send_at == send_time
    [body] = sendgrid_emulator.accepted()
    for personalization in body["personalizations"]:  # each reader's values stay theirs
        address = personalization["to"][0]["email"]
        assert personalization["substitutions"]["%%email:text%%"] == address
        own = READERS[address] not in ("", "Europe/London", "Mars/Olympus_Mons")
        assert ("send_at" in personalization) == own
    # the first to be due sets the deadline to cancel: ten minutes before
    firsts = [reader_send_at(their_zone(a), SEVEN, fire) for a in READERS]
    assert report.cancel_deadline == min(firsts) - dt.timedelta(minutes=10)

    sendgrid_emulator.advance_to(fire.timestamp() + 26 * 3600)
    assert sendgrid_emulator.delivered() == collections.Counter(list(READERS))
    for delivery in sendgrid_emulator.deliveries():
        zone = their_zone(delivery.email)
        local = dt.datetime.fromtimestamp(delivery.at, zone)
        assert local.time() == SEVEN, (delivery.email, local)
        assert fire.timestamp() <= delivery.at < fire.timestamp() + 25 * 3600


def test_smtp_and_outbox_readers_get_it_at_their_own_morning_in_later_runs(site: Site) -> None:
    """No `send_at` on the outbox: the daily run sends the readers due now, and comes back
    at each other zone's morning (a run queued for it) until everyone has the issue."""
    from newsletter.state import Ledger

    from .support.faults import OutboxFolder, write_site
    from .test_scheduler_service import StoreOnly

    write_site(site, "outbox", "")
    lines = ["email,name,timezone"] + [
        f"{a},{a.split('@')[0].title()},{z}" for a, z in READERS.items()
    ]
    (site.root / "subscribers" / "main.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    day = DAYS["ordinary"]
    send_time = dt.datetime.combine(day, SEVEN, tzinfo=LONDON)
    site.story("today", title="Today's news", date=(send_time - dt.timedelta(hours=2)).isoformat())
    outbox = OutboxFolder(site.root / "outbox" / f"{day}-main")
    utc = dt.UTC
    mornings = {  # 07:00 on each clock, the first after 07:00 in London on a January day
        "America/New_York": dt.datetime(2027, 1, 12, 12, tzinfo=utc),
        "Pacific/Auckland": dt.datetime(2027, 1, 12, 18, tzinfo=utc),
        "Asia/Shanghai": dt.datetime(2027, 1, 12, 23, tzinfo=utc),
    }
    due_now = {a for a, z in READERS.items() if z not in mornings}

    clock = Clock(send_time)
    runner = service(site, clock)
    config = runner.config()
    with Ledger(config.database_url) as ledger:
        runner.scheduler = runner.build_scheduler(config, ledger, StoreOnly)
        runner.scheduler.start(paused=True)
        try:
            first = runner.run_issue(send_time)
            assert first is not None and first.outcome == "partly_sent", first
            assert set(outbox.count()) == due_now
            assert first.next_due == mornings["America/New_York"] and first.waiting == 3
            queued = [
                j.next_run_time for j in runner.scheduler.get_jobs() if j.id.startswith("retry")
            ]
            assert queued == [mornings["America/New_York"]]

            # the scheduler restarts before New York's morning run: it owes the partial issue
            runner.scheduler.shutdown(wait=False)
            clock.now = mornings["America/New_York"] + dt.timedelta(minutes=30)
            runner = service(site, clock)
            runner.scheduler = runner.build_scheduler(config, ledger, StoreOnly)
            runner.scheduler.start(paused=True)
            owed = runner.prepare(runner.scheduler, config, None)
            assert owed.due == send_time and owed.skipped == ()
            early = runner.run_issue(owed.due)  # before Auckland's morning: only New York
            assert early is not None and early.outcome == "partly_sent"
            assert set(outbox.count()) == due_now | {"newyork@example.com"}
            assert early.next_due == mornings["Pacific/Auckland"]

            for zone in ("Pacific/Auckland", "Asia/Shanghai"):
                clock.now = mornings[zone]
                report = runner.run_issue(send_time)
                assert report is not None
            assert report.outcome == "sent", report
        finally:
            runner.scheduler.shutdown(wait=False)
        [issue] = ledger.recent_issues("main")
        assert issue.status == "sent"
    assert outbox.count() == collections.Counter(list(READERS))  # each once
    assert not outbox.rewritten()
