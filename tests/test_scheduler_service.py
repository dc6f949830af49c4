"""The scheduler service: a controlled clock in-process, then the real `newsletter schedule`."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler

from newsletter.scheduler import SchedulerService, next_run, trigger_for
from newsletter.state import Ledger
from newsletter.state.database import SCHEMA_LOCK_KEY

from .conftest import Site
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .test_send_sendgrid import HELD, env, newsletter, setup_site

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
    assert sendgrid_emulator.accepted()[0]["subject"] == "News of the 7th"
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
    assert admin["subject"] == (
        "[newsletter] The scheduled issue of Tuesday, March 5, 2024 for the list main failed."
    )
    assert "from: unverified sender" in admin["content"][0]["value"]


# -- the real process ----------------------------------------------------------------------
#
# APScheduler in a child process reads the real clock, so these tests never wait for a run
# time to come: the run is already owed when the process starts (a scheduler that went down
# just before it, or a run that failed), and each step waits for what the process says it
# did, or for a request the SendGrid emulator holds until the test lets it go.

BUSY = "busy (the issue is claimed by another sender)"


def just_missed() -> dt.datetime:
    """A run time a minute ago, to the second: well inside misfire_grace (2 h)."""
    return (dt.datetime.now(LONDON) - dt.timedelta(minutes=1)).replace(microsecond=0)


def real_site(
    site: Site, emulator: SendGridEmulator, fire: dt.datetime, subscribers: int, **kwargs: object
) -> list[str]:
    emails = setup_site(site, emulator, subscribers, **kwargs)  # type: ignore[arg-type]
    fresh = (fire - dt.timedelta(hours=1)).astimezone(dt.UTC)
    site.story("fresh", title="Fresh news", date=fresh.isoformat())
    text = site.config_path.read_text().replace('time = "07:00"', f'time = "{fire:%H:%M:%S}"')
    site.config_path.write_text(text)
    return emails


def went_down_before(site: Site, fire: dt.datetime, database_url: str | None = None) -> None:
    """Leave the job store as a scheduler that stopped a minute before `fire` left it."""
    runner = service(site, Clock(fire - dt.timedelta(minutes=1)), database_url)
    config = runner.config()
    with Ledger(config.database_url) as ledger:
        scheduler = runner.build_scheduler(config, ledger, StoreOnly)
        runner.prepare(scheduler, config, next_run(ledger))
        scheduler.start(paused=True)  # the job reaches the job store
        scheduler.shutdown(wait=False)
        assert next_run(ledger) == fire


class SchedulerProcess:
    """`newsletter schedule` in a child process, its log read as it comes."""

    def __init__(self, site: Site, *args: str, database_url: str | None = None) -> None:
        extra = {"NEWSLETTER_DATABASE_URL": database_url} if database_url else {}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "newsletter", *args, "--config", str(site.config_path), "schedule"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env(**extra),
        )  # fmt: skip
        self._lines: list[str] = []
        self._ended = False
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def said(self, fragment: str) -> bool:
        with self._changed:
            return any(fragment in line for line in self._lines)

    def wait_for(self, fragment: str, timeout: float = 90) -> bool:
        """True once a log line has `fragment`; False if the process ends first (or hangs)."""
        with self._changed:
            self._changed.wait_for(lambda: self._ended or self.said(fragment), timeout)
        return self.said(fragment)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 60) -> tuple[int | None, str]:
        """Its exit code (None: still running) and its whole log."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None, self.log
        with self._changed:
            self._changed.wait_for(lambda: self._ended, timeout)
        return self.process.returncode, self.log

    def stop(self) -> tuple[int | None, str]:
        self.signal(signal.SIGTERM)
        return self.finish()


def logs(*processes: SchedulerProcess) -> str:
    """Every process's log, for an assertion's message."""
    return "\n".join(f"--- scheduler {n}:\n{p.log}" for n, p in enumerate(processes, 1))


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition`; the timeout only bounds a failure, it is no margin a pass relies on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def sent_to(emulator: SendGridEmulator) -> collections.Counter[str]:
    return collections.Counter(emulator.recipients())


@pytest.fixture
def schedulers() -> Iterator[Callable[..., SchedulerProcess]]:
    started: list[SchedulerProcess] = []

    def start(site: Site, *args: str, database_url: str | None = None) -> SchedulerProcess:
        started.append(SchedulerProcess(site, *args, database_url=database_url))
        return started[-1]

    yield start
    for each in started:
        if each.process.poll() is None:
            each.process.kill()
            each.process.wait()


def test_a_missed_run_goes_out_once_late_and_a_restart_sends_nothing(
    site: Site, sendgrid_emulator: SendGridEmulator, schedulers: Callable[..., SchedulerProcess]
) -> None:
    fire = just_missed()
    emails = real_site(site, sendgrid_emulator, fire, 30)
    went_down_before(site, fire)

    first = schedulers(site)
    assert first.wait_for("run finished for main"), first.log
    code, err = first.stop()
    assert code == 0, err
    assert f"the {fire:%Y-%m-%d %H:%M} run is owed: running it now" in err
    assert ": sent (1 story, 30 of 30 recipients, 1 batch" in err
    assert "scheduler stopped" in err and "Traceback" not in err
    assert sent_to(sendgrid_emulator) == collections.Counter(emails)
    tomorrow = trigger_for(site.config()).fire_time(fire.date() + dt.timedelta(days=1))
    status = newsletter(site, "status").stdout
    assert f"Next scheduled run: {tomorrow:%Y-%m-%d %H:%M}" in status
    assert f"Last issue: {fire.date()} (main) sent" in status

    # the same database: the day's issue is done. The start line is logged once the scheduler
    # runs with what it decided it owes, so waiting for it cannot be too early.
    second = schedulers(site)
    assert second.wait_for("scheduler started"), second.log
    code, err = second.stop()
    assert code == 0, err
    assert f"scheduler started; next run {tomorrow:%Y-%m-%d %H:%M}" in err
    assert "is owed" not in err and "run started" not in err
    assert len(sendgrid_emulator.mail_requests()) == 1


def owed_after_sendgrid_was_down(
    site: Site, emulator: SendGridEmulator, fire: dt.datetime, database_url: str
) -> None:
    """The run of `fire` failed (SendGrid down), so the issue is owed; from now on each
    request SendGrid gets waits for the test's word."""
    emulator.fail_all(Fault(status=503))
    failed = service(site, Clock(fire), database_url).run_issue(fire)
    assert failed is not None and failed.outcome == "failed" and not failed.permanent
    emulator.reset()
    emulator.fail_all(Fault(hold=True))


def test_two_schedulers_on_one_database_send_once(
    site: Site,
    sendgrid_emulator: SendGridEmulator,
    database_url: str,
    schedulers: Callable[..., SchedulerProcess],
) -> None:
    fire = just_missed()
    emails = real_site(site, sendgrid_emulator, fire, 300, batch_size=100, timeout=HELD)
    owed_after_sendgrid_was_down(site, sendgrid_emulator, fire, database_url)

    # both start at once on a job store nobody created yet; both owe the failed issue
    pair = [schedulers(site, database_url=database_url) for _ in range(2)]
    assert sendgrid_emulator.wait_for_held(1, timeout=90), logs(*pair)
    # one holds the claim, its first batch in flight: the other must find it claimed
    assert wait_until(lambda: any(p.said(BUSY) for p in pair), timeout=90), logs(*pair)
    sendgrid_emulator.release()
    [sender] = [p for p in pair if not p.said(BUSY)]
    assert sender.wait_for("run finished for main"), logs(*pair)

    results = [p.stop() for p in pair]
    assert [code for code, _ in results] == [0, 0], logs(*pair)
    assert ": sent (300 of 300 recipients, 3 batches" in sender.log, logs(*pair)
    assert sum(": sent (" in p.log for p in pair) == 1, logs(*pair)
    assert not any("Traceback" in p.log for p in pair), logs(*pair)
    assert sent_to(sendgrid_emulator) == collections.Counter(emails)


def test_schedulers_that_join_share_the_issue_each_reader_once(
    site: Site,
    sendgrid_emulator: SendGridEmulator,
    database_url: str,
    schedulers: Callable[..., SchedulerProcess],
) -> None:
    fire = just_missed()
    emails = real_site(site, sendgrid_emulator, fire, 300, batch_size=10, timeout=HELD)
    text = site.config_path.read_text()
    site.config_path.write_text(text.replace("[schedule]\n", "[schedule]\njoin = true\n"))
    owed_after_sendgrid_was_down(site, sendgrid_emulator, fire, database_url)

    pair = [schedulers(site, database_url=database_url) for _ in range(2)]
    # one claimed the issue and the other joined it: a request of each is in flight
    assert sendgrid_emulator.wait_for_held(2, timeout=90), logs(*pair)
    sendgrid_emulator.release()
    for each in pair:
        assert each.wait_for("run finished for main"), logs(*pair)

    results = [p.stop() for p in pair]
    assert [code for code, _ in results] == [0, 0], logs(*pair)
    assert sum(": sent (" in p.log for p in pair) == 1, logs(*pair)
    assert sum(": helped (" in p.log for p in pair) == 1, logs(*pair)
    assert not any(p.said(BUSY) or "Traceback" in p.log for p in pair), logs(*pair)
    assert sent_to(sendgrid_emulator) == collections.Counter(emails)


def test_schedulers_starting_together_on_a_new_database_all_start_and_stop(
    site: Site, database_url: str, schedulers: Callable[..., SchedulerProcess]
) -> None:
    setup_site(site, None, 3)  # nothing is owed: they only create the schema and wait
    group = [schedulers(site, database_url=database_url) for _ in range(4)]
    for each in group:
        assert each.wait_for("scheduler started"), logs(*group)
    results = [each.stop() for each in group]  # SIGTERM at once after starting is no problem
    assert [code for code, _ in results] == [0] * 4, logs(*group)
    assert not any("Traceback" in err for _, err in results), logs(*group)
    assert all("scheduler stopped" in err for _, err in results), logs(*group)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_sigterm_while_starting_is_neither_lost_nor_fatal(
    site: Site, database_url: str, schedulers: Callable[..., SchedulerProcess]
) -> None:
    """SIGTERM while the scheduler waits to create the schema (the test holds the lock):
    it starts, stops at once, and exits 0."""
    setup_site(site, None, 3)
    engine = sa.create_engine(database_url)
    waiting = sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    )
    try:
        with engine.connect() as holder:
            holder.execute(sa.select(sa.func.pg_advisory_lock(SCHEMA_LOCK_KEY)))
            starting = schedulers(site, database_url=database_url)
            with engine.connect() as conn:
                blocked = wait_until(lambda: conn.execute(waiting).scalar() == 1, timeout=90)
            assert blocked, starting.log
            starting.signal(signal.SIGTERM)
            holder.execute(sa.select(sa.func.pg_advisory_unlock(SCHEMA_LOCK_KEY)))
        code, err = starting.finish()
    finally:
        engine.dispose()
    assert code == 0, err
    assert "scheduler started" in err and "SIGTERM received" in err, err
    assert "scheduler stopped" in err and "Traceback" not in err, err


def test_sigterm_mid_send_finishes_the_batch_and_the_next_start_resumes(
    site: Site, sendgrid_emulator: SendGridEmulator, schedulers: Callable[..., SchedulerProcess]
) -> None:
    fire = just_missed()
    emails = real_site(site, sendgrid_emulator, fire, 1000, batch_size=100, timeout=HELD)
    went_down_before(site, fire)
    sendgrid_emulator.script(Fault(), Fault(), Fault(hold=True))  # batch 3 is in flight...
    first = schedulers(site)
    assert sendgrid_emulator.wait_for_held(1, timeout=90), first.log
    first.signal(signal.SIGTERM)  # ...when SIGTERM comes
    assert first.wait_for("SIGTERM received: finishing the current batch"), first.log
    sendgrid_emulator.release()
    code, err = first.finish()
    assert code == 0, err
    assert ": stopped (" in err
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        counts = ledger.batch_counts(issue.id)
    assert issue.status == "stopped"
    assert "submitting" not in counts  # the batch in flight was recorded, not left ambiguous
    assert counts["submitted"] == (3, 300) and len(sendgrid_emulator.recipients()) == 300

    second = schedulers(site, "--log-format", "json")
    assert second.wait_for("run finished for main"), second.log
    code, err = second.stop()
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [finished] = [e for e in events if e.get("phase") == "finished"]
    assert finished["outcome"] == "sent" and finished["list"] == "main"
    assert finished["recipients"] == 1000 and finished["submitted"] == 700
    assert {"time", "level", "message", "batches", "duration"} <= finished.keys()
    [started] = [e for e in events if e.get("phase") == "started" and e.get("event") == "scheduler"]
    assert started["owed"] == fire.isoformat()
    assert sent_to(sendgrid_emulator) == collections.Counter(emails)


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
