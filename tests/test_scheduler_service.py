"""The scheduler service: a controlled clock in-process, then the real `newsletter schedule`."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from newsletter.ledger import Ledger
from newsletter.scheduler import SchedulerService, next_run

from .conftest import Site
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .test_send_sendgrid import env, newsletter, setup_site

LONDON = ZoneInfo("Europe/London")


class StoreOnly(BackgroundScheduler):
    """Keeps jobs in its job stores like the real scheduler, but never runs them on its own
    (APScheduler reads the real clock): the tests decide what time it is."""

    def _process_jobs(self) -> None:
        return None


def london(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 3, day, hour, minute, tzinfo=LONDON)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def service(
    site: Site, clock: Clock, database_url: str | None = None, **environ: str
) -> SchedulerService:
    extra = {"NEWSLETTER_DATABASE_URL": database_url} if database_url else {}
    return SchedulerService(
        site.config_path, env(**extra, **environ), clock=clock, sleep=lambda _: None
    )


def daily_site(
    site: Site, emulator: SendGridEmulator, subscribers: int = 20, **kwargs: object
) -> list[str]:
    emails = setup_site(site, emulator, subscribers, **kwargs)  # type: ignore[arg-type]
    for day in (5, 6, 7):
        site.story(
            f"day-{day}", title=f"News of the {day}th", date=f"2024-03-0{day} 06:00:00+00:00"
        )
    return emails


def test_a_restart_knows_what_it_missed_from_the_job_store(
    site: Site, sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    emails = daily_site(site, sendgrid_emulator)
    clock = Clock(london(4, 12))
    first = service(site, clock, database_url)
    config = first.config()
    with Ledger(database_url) as ledger:
        scheduler = first.build_scheduler(config, ledger, StoreOnly)
        first.prepare(scheduler, config, next_run(ledger))
        scheduler.start(paused=True)  # the job reaches the job store
        scheduler.shutdown(wait=False)
        assert next_run(ledger) == london(5, 7)

    clock.now = london(7, 8, 15)  # down for two days; today's run is 75 minutes late
    second = service(site, clock, database_url)
    with Ledger(database_url) as ledger:
        stored = next_run(ledger)
        scheduler = second.build_scheduler(config, ledger, StoreOnly)
        owed = second.prepare(scheduler, config, stored)
        assert owed.skipped == (london(5, 7), london(6, 7))
        assert owed.due == london(7, 7)
        assert [job.id for job in scheduler.get_jobs()] == [
            "newsletter-daily-issue",
            "retry-2024-03-07",
        ]
        for day in (5, 6):
            skipped = ledger.issue("main", dt.date(2024, 3, day))
            assert skipped is not None and skipped.status == "skipped"
            assert "was missed (the scheduler was not running)" in (skipped.error or "")

    report = second.run_issue(owed.due)

    assert report is not None and report.outcome == "sent"
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)
    assert sendgrid_emulator.accepted()[0]["subject"] == "The Test Times: Thursday, 7 March 2024"
    status = newsletter(site, "status", environ=env(NEWSLETTER_DATABASE_URL=database_url))
    assert "Last issue: 2024-03-07 (main) sent" in status.stdout
    assert "2024-03-06  main       skipped" in status.stdout


def test_late_inside_the_grace_it_sends_past_it_it_skips(
    site: Site, sendgrid_emulator: SendGridEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    emails = daily_site(site, sendgrid_emulator)
    caplog.set_level(logging.INFO, logger="newsletter.schedule")
    clock = Clock(london(5, 8, 59))
    report = service(site, clock).run_issue(london(5, 7))
    assert report is not None and report.outcome == "sent"
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)
    [finished] = [r for r in caplog.records if getattr(r, "fields", {}).get("phase") == "finished"]
    assert finished.fields["outcome"] == "sent"  # type: ignore[attr-defined]
    assert finished.fields["recipients"] == 20 and finished.fields["stories"] == 3  # type: ignore[attr-defined]
    assert finished.fields["batches"] == 1 and finished.fields["duration"] >= 0  # type: ignore[attr-defined]

    clock.now = london(6, 9, 1)
    assert service(site, clock).run_issue(london(6, 7)) is None
    assert len(sendgrid_emulator.mail_requests()) == 1
    with Ledger(site.config().database_url) as ledger:
        skipped = ledger.issue("main", dt.date(2024, 3, 6))
    assert skipped is not None and skipped.status == "skipped"
    assert "it is now 2024-03-06 09:01, past misfire_grace (2:00:00)" in (skipped.error or "")


def test_a_passing_failure_is_retried_within_the_grace(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = daily_site(site, sendgrid_emulator, batch_size=10)
    site.config_path.write_text(
        site.config_path.read_text().replace(
            'retry_delay = "0s"', 'attempts = 1\nretry_delay = "0s"'
        )
    )
    sendgrid_emulator.script(Fault(), Fault(status=503))  # batch 1 goes, then SendGrid is down
    clock = Clock(london(5, 7, 1))
    runner = service(site, clock)
    with Ledger(site.config().database_url) as ledger:
        runner.scheduler = runner.build_scheduler(runner.config(), ledger, StoreOnly)
        report = runner.run_issue(london(5, 7))
        assert report is not None and report.outcome == "failed" and not report.permanent
        [retry] = runner.scheduler.get_jobs()
        assert retry.id == "retry-2024-03-05"
        assert retry.trigger.run_date == london(5, 7, 11)

        clock.now = london(5, 7, 11)
        again = runner.run_issue(london(5, 7))
    assert again is not None and again.outcome == "sent"
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)


def test_a_permanent_failure_is_not_retried_and_the_admin_is_told(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    daily_site(site, sendgrid_emulator)
    site.config_path.write_text(
        site.config_path.read_text().replace(
            'time = "07:00"', 'time = "07:00"\nadmin_email = "admin@example.com"'
        )
    )
    sendgrid_emulator.script(
        Fault(status=400, errors=[{"field": "from", "message": "unverified sender"}])
    )
    runner = service(site, Clock(london(5, 7, 1)))
    with Ledger(site.config().database_url) as ledger:
        runner.scheduler = runner.build_scheduler(runner.config(), ledger, StoreOnly)
        report = runner.run_issue(london(5, 7))
        assert report is not None and report.outcome == "failed" and report.permanent
        assert runner.scheduler.get_jobs() == []
    [admin] = [
        b
        for b in sendgrid_emulator.accepted()
        if b["personalizations"][0]["to"][0]["email"] == "admin@example.com"
    ]
    assert admin["subject"] == "[newsletter] scheduled issue 2024-03-05 for list main failed"
    assert "from: unverified sender" in admin["content"][0]["value"]


# -- the real process ----------------------------------------------------------------------


def soon(seconds: float) -> dt.datetime:
    return dt.datetime.now(LONDON) + dt.timedelta(seconds=seconds)


def real_site(
    site: Site, emulator: SendGridEmulator, fire: dt.datetime, subscribers: int, **kwargs: object
) -> list[str]:
    emails = setup_site(site, emulator, subscribers, **kwargs)  # type: ignore[arg-type]
    fresh = (fire - dt.timedelta(hours=1)).astimezone(dt.UTC)
    site.story("fresh", title="Fresh news", date=fresh.isoformat())
    text = site.config_path.read_text().replace('time = "07:00"', f'time = "{fire:%H:%M:%S}"')
    site.config_path.write_text(text)
    return emails


def start_scheduler(
    site: Site, *args: str, database_url: str | None = None
) -> subprocess.Popen[str]:
    extra = {"NEWSLETTER_DATABASE_URL": database_url} if database_url else {}
    return subprocess.Popen(
        [sys.executable, "-m", "newsletter", *args, "--config", str(site.config_path), "schedule"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(**extra),
    )  # fmt: skip


def stop(process: subprocess.Popen[str], timeout: float = 15) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def wait_until(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def sent_status(site: Site, database_url: str | None = None) -> str | None:
    url = database_url or site.config().database_url
    with Ledger(url) as ledger:
        issues = ledger.recent_issues("main")
    return issues[0].status if issues else None


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_scheduler_sends_on_time_once_and_stops_cleanly(
    site: Site, sendgrid_emulator: SendGridEmulator, processes: list[subprocess.Popen[str]]
) -> None:
    emails = real_site(site, sendgrid_emulator, soon(4), 30)
    first = start_scheduler(site)
    processes.append(first)
    assert wait_until(lambda: sent_status(site) == "sent", timeout=30)
    code, err = stop(first)
    assert code == 0, err
    assert "run finished for main" in err and ": sent (1 story, 30 of 30 recipients, 1 batch" in err
    assert "scheduler stopped" in err and "Traceback" not in err
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)
    status = newsletter(site, "status").stdout
    tomorrow = (dt.datetime.now(LONDON) + dt.timedelta(days=1)).date()
    assert f"Next scheduled run: {tomorrow}" in status
    assert "Last issue: " in status and "(main) sent" in status

    second = start_scheduler(site)  # the same database: the day's issue is done
    processes.append(second)
    time.sleep(3)
    code, err = stop(second)
    assert code == 0, err
    assert len(sendgrid_emulator.mail_requests()) == 1
    assert "scheduler started; next run" in err and "run started" not in err


def test_two_schedulers_on_one_database_send_once(
    site: Site,
    sendgrid_emulator: SendGridEmulator,
    database_url: str,
    processes: list[subprocess.Popen[str]],
) -> None:
    emails = real_site(site, sendgrid_emulator, soon(5), 300, batch_size=100)
    sendgrid_emulator.fail_all(Fault(delay=0.3))
    pair = [start_scheduler(site, database_url=database_url) for _ in range(2)]
    processes.extend(pair)
    assert wait_until(lambda: sent_status(site, database_url) == "sent", timeout=40)
    results = [stop(p) for p in pair]
    assert [code for code, _ in results] == [0, 0]
    logs = [err for _, err in results]
    assert sum(": sent (" in log for log in logs) == 1
    assert (
        sum(
            "busy (the issue is claimed by another sender)" in log or ": already_sent" in log
            for log in logs
        )
        == 1
    )
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)


def test_sigterm_mid_send_finishes_the_batch_and_the_next_start_resumes(
    site: Site, sendgrid_emulator: SendGridEmulator, processes: list[subprocess.Popen[str]]
) -> None:
    emails = real_site(site, sendgrid_emulator, soon(3), 1000, batch_size=100)
    sendgrid_emulator.fail_all(Fault(delay=0.4))
    first = start_scheduler(site)
    processes.append(first)
    assert sendgrid_emulator.wait_for_requests(2, timeout=30)
    code, err = stop(first)
    assert code == 0, err
    assert "SIGTERM received: finishing the current batch" in err
    assert ": stopped (" in err
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        counts = ledger.batch_counts(issue.id)
    assert issue.status == "stopped"
    assert "submitting" not in counts  # the batch in flight was recorded, not left ambiguous
    done = counts["submitted"][1]
    assert 0 < done < 1000 and len(sendgrid_emulator.recipients()) == done

    sendgrid_emulator.clear_faults()
    second = start_scheduler(site, "--log-format", "json")
    processes.append(second)
    assert wait_until(lambda: sent_status(site) == "sent", timeout=30)
    code, err = stop(second)
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [finished] = [e for e in events if e.get("phase") == "finished"]
    assert finished["outcome"] == "sent" and finished["list"] == "main"
    assert finished["recipients"] == 1000 and finished["submitted"] == 1000 - done
    assert {"time", "level", "message", "batches", "duration"} <= finished.keys()
    assert collections.Counter(sendgrid_emulator.recipients()) == collections.Counter(emails)


def test_dry_run_lists_the_next_runs_in_local_time_and_utc(site: Site) -> None:
    site.write_config(
        site.config_path.read_text().replace('time = "07:00"', 'time = "07:00"\ndays = "mon-fri"')
    )
    result = newsletter(site, "schedule", "--dry-run", "--count", "7")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert (
        lines[0]
        == "DailyIssueTrigger(07:00 Europe/London, days='mon-fri'), list 'main', misfire_grace 2:00:00"
    )
    runs = lines[1:]
    assert len(runs) == 7
    for line in runs:
        local, utc_part = line.split("  (")
        assert local[:3] in {"Mon", "Tue", "Wed", "Thu", "Fri"} and local.endswith(
            ("07:00 GMT", "07:00 BST")
        )
        assert utc_part.endswith(("07:00 UTC)", "06:00 UTC)"))
    status = newsletter(site, "status")
    assert (
        "Scheduler: not started yet" in status.stdout
        and "No issue has been sent yet." in status.stdout
    )
