"""`newsletter schedule`: APScheduler wiring around the same use case as `newsletter send`.

The daily job lives in the state database (APScheduler's SQLAlchemy job store),
so a restart knows where it left off: runs missed within `misfire_grace` go out
once, late; older ones are recorded as skipped, never silently dropped. The
ledger's per-date claim makes every run safe to repeat.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger

from newsletter.app import App, system_clock
from newsletter.config import Config, load_config, parse_days
from newsletter.errors import NewsletterError
from newsletter.models import SendReport, SendRequest, local_time_on
from newsletter.send import Sending
from newsletter.state import Ledger
from newsletter.state.database import Database
from newsletter.state.issues import IssueStore
from newsletter.transports.base import BatchFailure, Message, PermanentFailure, Recipient
from newsletter.words import plural

log = logging.getLogger("newsletter.schedule")

JOB_ID = "newsletter-daily-issue"
JOB_TABLE = "apscheduler_jobs"
LOOKAHEAD_DAYS = 14
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


class DailyIssueTrigger(BaseTrigger):
    """Fires once per local date, at the issue's send time, on the chosen weekdays.

    Unlike a cron trigger, a fall-back day (the time happens twice) fires once
    and a spring-forward day (the time never happens) still fires, an hour on.
    With `ahead` (`[schedule] submit_ahead` on SendGrid) it fires that long before
    the send time, which SendGrid then holds the issue until; the weekdays and the
    issue's date are the send time's.
    """

    def __init__(
        self, at: dt.time, timezone: str, days: str = "*", ahead: dt.timedelta = dt.timedelta()
    ) -> None:
        self.at = at
        self.timezone = timezone
        self.days = days
        self.ahead = ahead
        self._tz = ZoneInfo(timezone)
        self._weekdays = parse_days(days)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "version": 2,
            "at": self.at,
            "timezone": self.timezone,
            "days": self.days,
            "ahead": self.ahead,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        ahead = state.get("ahead", dt.timedelta())
        self.__init__(state["at"], state["timezone"], state["days"], ahead)  # type: ignore[misc]

    def __repr__(self) -> str:
        ahead = f", submitted {self.ahead} ahead" if self.ahead else ""
        return f"DailyIssueTrigger({self.at:%H:%M} {self.timezone}, days={self.days!r}{ahead})"

    def send_time(self, date: dt.date) -> dt.datetime:
        return local_time_on(date, self.at, self._tz)

    def fire_time(self, date: dt.date) -> dt.datetime:
        return self.send_time(date) - self.ahead

    def issue_date(self, fire: dt.datetime) -> dt.date:
        """The date of the issue a fire time is for: its send time's."""
        return self._date(fire)

    def _date(self, moment: dt.datetime) -> dt.date:
        return (moment + self.ahead).astimezone(self._tz).date()

    def _dates_from(self, date: dt.date) -> Iterator[dt.date]:
        for offset in range(LOOKAHEAD_DAYS):
            day = date + dt.timedelta(days=offset)
            if day.weekday() in self._weekdays:
                yield day

    def get_next_fire_time(
        self, previous_fire_time: dt.datetime | None, now: dt.datetime
    ) -> dt.datetime | None:
        if previous_fire_time is not None:
            start = self._date(previous_fire_time) + dt.timedelta(days=1)
            return next((self.fire_time(d) for d in self._dates_from(start)), None)
        for day in self._dates_from(self._date(now)):
            moment = self.fire_time(day)
            if moment >= now:
                return moment
        return None

    def fire_times(self, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
        """Every fire time in (after, until]."""
        times = []
        day = self._date(after)
        while day <= self._date(until):
            if day.weekday() in self._weekdays:
                moment = self.fire_time(day)
                if after < moment <= until:
                    times.append(moment)
            day += dt.timedelta(days=1)
        return times

    def latest(self, now: dt.datetime) -> dt.datetime | None:
        """The most recent fire time at or before `now`."""
        day = self._date(now)
        for _ in range(LOOKAHEAD_DAYS):
            if day.weekday() in self._weekdays and self.fire_time(day) <= now:
                return self.fire_time(day)
            day -= dt.timedelta(days=1)
        return None

    def upcoming(self, now: dt.datetime, count: int) -> list[dt.datetime]:
        times: list[dt.datetime] = []
        previous = None
        while len(times) < count:
            moment = self.get_next_fire_time(previous, now)
            if moment is None:
                break
            times.append(moment)
            previous = moment
        return times


def trigger_for(config: Config) -> DailyIssueTrigger:
    s = config.schedule
    ahead = s.submit_ahead if config.delivery.transport == "sendgrid" else dt.timedelta()
    return DailyIssueTrigger(s.time, config.newsletter.timezone, s.days, ahead)


@dataclass(frozen=True)
class CatchUp:
    """What a (re)starting scheduler owes: dates to report as skipped, and one to send now."""

    skipped: tuple[dt.datetime, ...] = ()
    due: dt.datetime | None = None


def catch_up(
    trigger: DailyIssueTrigger,
    stored_next: dt.datetime | None,
    now: dt.datetime,
    grace: dt.timedelta,
) -> CatchUp:
    """Coalesce the runs missed while the scheduler was down into at most one send.

    `stored_next` is the job's next run time as the job store remembered it.
    """
    if stored_next is None or stored_next > now:
        return CatchUp()
    missed = [stored_next, *trigger.fire_times(stored_next, now)]
    late = [t for t in missed if now - t <= grace]
    due = late[-1] if late else None
    skipped = tuple(t for t in missed if t is not due)
    return CatchUp(skipped, due)


# The running service, for the job function: a persistent job store keeps a
# reference to an importable function, not to an object.
_service: SchedulerService | None = None


def run_scheduled_issue() -> None:
    """The daily job, as stored in the job store."""
    if _service is not None:
        _service.run_latest()


def run_retry(scheduled_iso: str) -> None:
    if _service is not None:
        _service.run_issue(dt.datetime.fromisoformat(scheduled_iso))


@dataclass
class SchedulerService:
    """Runs the daily send on time, once, and says so when it cannot."""

    config_path: Path
    environ: Mapping[str, str]
    list_name: str | None = None
    transport: str | None = None
    clock: Callable[[], dt.datetime] = system_clock
    sleep: Callable[[float], None] = time.sleep
    stopping: threading.Event = field(default_factory=threading.Event)
    idle: threading.Event = field(default_factory=threading.Event)
    scheduler: BaseScheduler | None = None
    # stopping is set, and a run marks itself busy, under this lock: a stop sees every run
    _starting: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.idle.set()

    def config(self) -> Config:
        return load_config(self.config_path, self.environ)

    def list_for(self, config: Config) -> str:
        return self.list_name or config.schedule.list

    # -- one run -------------------------------------------------------------------

    def run_latest(self) -> None:
        config = self.config()
        latest = trigger_for(config).latest(self.clock())
        if latest is not None:
            self.run_issue(latest)

    def run_issue(self, scheduled: dt.datetime) -> SendReport | None:
        """Send the issue of `scheduled`'s date if it is still in time; report either way."""
        with self._starting:
            if self.stopping.is_set():
                return None
            self.idle.clear()
        try:
            return self._run(scheduled)
        finally:
            self.idle.set()

    def _run(self, scheduled: dt.datetime) -> SendReport | None:
        config = self.config()
        list_name = self.list_for(config)
        trigger = trigger_for(config)
        date = trigger.issue_date(scheduled)
        started = time.monotonic()
        now = self.clock()
        # submitted ahead: SendGrid holds it until the send time (`scheduling.py`)
        # SendGrid holds mail until a time: submitted ahead, it holds the issue until the
        # send time (`scheduling.py`). SMTP and the outbox cannot: readers with a zone of
        # their own are sent by later runs, each at its time (`zones.py`)
        holds = (self.transport or config.delivery.transport) == "sendgrid"
        send_at = scheduled + trigger.ahead
        if not holds or not trigger.ahead or send_at <= now:
            send_at = None
        mornings = None if holds else trigger.send_time(date)
        grace = config.schedule.misfire_grace
        if now - scheduled > grace and not self._partly_sent(config, list_name, date, now):
            self.record_skip(config, scheduled, now, "it could not start in time")
            return None
        event: dict[str, Any] = {"event": "run", "list": list_name, "date": date.isoformat()}
        log_event(
            logging.INFO, f"run started for {list_name} {date}", {**event, "phase": "started"}
        )
        request = SendRequest(
            list_name=list_name,
            date=date,
            transport=self.transport,
            join=config.schedule.join,
            send_at=send_at,
            reader_mornings=mornings,
        )
        retry = False
        report: SendReport | None = None
        try:
            with App(config, clock=self.clock) as app:
                sending = Sending(app, should_stop=self.stopping.is_set, sleep=self.sleep)
                report = sending.send(request)
            outcome = report.outcome
            retry = outcome == "busy" or (outcome == "failed" and not report.permanent)
            error = "; ".join(report.errors) or report.detail or None
        except BatchFailure as exc:  # before any batch: e.g. the suppression sync
            outcome, error = "failed", str(exc)
            retry = not isinstance(exc, PermanentFailure)
        except NewsletterError as exc:
            outcome, error = "failed", str(exc)
        fields = {
            **event,
            "phase": "finished",
            "outcome": outcome,
            "stories": report.stories if report else None,
            "recipients": report.recipients if report else 0,
            "submitted": report.submitted if report else 0,
            "batches": report.batches if report else 0,
            "duration": round(time.monotonic() - started, 3),
            "error": error,
        }
        level = logging.ERROR if outcome == "failed" else logging.INFO
        summary = f"run finished for {list_name} {date}: {outcome}"
        if report is not None and outcome in ("sent", "failed", "stopped", "helped", "partly_sent"):
            stories = f"{plural(report.stories, 'story')}, " if report.stories is not None else ""
            summary += (
                f" ({stories}{report.submitted:,} of {plural(report.recipients, 'recipient')}, "
                f"{plural(report.batches, 'batch')}, {fields['duration']:.1f}s)"
            )
        if outcome == "busy":
            summary += " (the issue is claimed by another sender)"
        if report is not None and report.next_due is not None and outcome == "partly_sent":
            # the readers of other zones: a run at the first one's morning, and so on
            fields["next_run"] = report.next_due.isoformat()
            summary += (
                f"; {report.waiting:,} readers get it at their own morning, the first at "
                f"{report.next_due.astimezone(config.newsletter.tz):%Y-%m-%d %H:%M}"
            )
            self._schedule_retry(scheduled, report.next_due)
        if error:
            summary += f": {error}"
        if retry:
            retry_at = self.clock() + config.schedule.retry_every
            if retry_at - scheduled <= grace or self._partly_sent(
                config, list_name, date, retry_at
            ):
                fields["retry_at"] = retry_at.isoformat()
                summary += f"; trying again at {retry_at.astimezone(config.newsletter.tz):%H:%M}"
                self._schedule_retry(scheduled, retry_at)
            else:
                summary += "; no time left to try again (misfire_grace)"
                retry = False
        log_event(level, summary, fields)
        if outcome == "failed" and not retry:
            self.tell_admin(config, "failed", date, list_name, summary)
        return report

    def _partly_sent(self, config: Config, list_name: str, date: dt.date, now: dt.datetime) -> bool:
        """A started issue is finished on its own date, grace or not: half a list is worse."""
        with Ledger(config.database_url) as ledger:
            issue = ledger.issue(list_name, date)
            if issue is not None and issue.status == "partial":
                return True  # readers wait for their own morning, whatever the date now
            if now.astimezone(config.newsletter.tz).date() != date:
                return False
            if issue is None or issue.status not in ("failed", "stopped", "sending"):
                return False
            return "submitted" in ledger.batch_counts(issue.id)

    def _schedule_retry(self, scheduled: dt.datetime, when: dt.datetime) -> None:
        if self.scheduler is not None:
            queue_run(self.scheduler, scheduled, when)

    def record_skip(
        self, config: Config, scheduled: dt.datetime, now: dt.datetime, why: str
    ) -> None:
        list_name = self.list_for(config)
        tz = config.newsletter.tz
        date = trigger_for(config).issue_date(scheduled)
        reason = (
            f"skipped: the {scheduled.astimezone(tz):%H:%M %Z} run was missed ({why}); "
            f"it is now {now.astimezone(tz):%Y-%m-%d %H:%M}, past misfire_grace "
            f"({config.schedule.misfire_grace})"
        )
        with IssueStore(config.database_url) as ledger:
            new = ledger.record_skipped(list_name, date, reason)
        if new:
            fields = {"event": "run", "phase": "skipped", "list": list_name, "date": date.isoformat(), "outcome": "skipped", "error": reason}  # fmt: skip
            log_event(logging.WARNING, f"issue {date} for {list_name} {reason}", fields)
            self.tell_admin(config, "skipped", date, list_name, reason)

    def tell_admin(
        self, config: Config, what: str, date: dt.date, list_name: str, details: str
    ) -> None:
        """Optional: a plain email to the admin through the same transport, in the
        newsletter's language (the details are the log's line, as `newsletter` logs it)."""
        address = config.schedule.admin_email
        if not address:
            return
        try:
            with App(config, clock=self.clock) as app:
                _ = app.renderer.language.gettext
                values = {"date": app.renderer.language.long_date(date), "list": list_name}
                if what == "failed":
                    line = _("The scheduled issue of %(date)s for the list %(list)s failed.")
                else:
                    line = _("The scheduled issue of %(date)s for the list %(list)s was skipped.")
                line %= values
                details_label = _("Details:")
                body = f"{line}\n\n{details_label} {details}"
                transport = app.parts.admin_transport(app.parts.transport_name(self.transport))
                message = Message(
                    subject=f"[newsletter] {line}",
                    html=f"<p>{_escape(line)}</p><p>{_escape(details_label)} {_escape(details)}</p>",
                    text=body,
                    from_email=config.sender.from_email,
                    from_name=config.sender.from_name,
                    reply_to=None,
                    tokens=frozenset(),
                    issue_id="admin",
                    list_name="admin",
                    bulk=False,
                )
                try:
                    transport.send_batch(message, [Recipient(address, "", {})])
                finally:
                    transport.close()
        except NewsletterError as exc:
            log.error("could not email the admin (%s): %s", address, exc)

    # -- the service ---------------------------------------------------------------

    def build_scheduler(
        self, config: Config, ledger: Database, kind: type[BaseScheduler] = BackgroundScheduler
    ) -> BaseScheduler:
        scheduler = kind(
            jobstores={
                "default": job_store(ledger),
                "retries": MemoryJobStore(),
            },
            executors={"default": {"type": "threadpool", "max_workers": 1}},
            job_defaults={"coalesce": True, "max_instances": 1},
            timezone=config.newsletter.tz,
        )
        scheduler.add_listener(self._missed, EVENT_JOB_MISSED)
        return scheduler

    def _missed(self, event: JobExecutionEvent) -> None:
        config = self.config()
        self.record_skip(
            config, event.scheduled_run_time, self.clock(), "the scheduler was busy or asleep"
        )

    def prepare(
        self, scheduler: BaseScheduler, config: Config, stored_next: dt.datetime | None
    ) -> CatchUp:
        """Report what was missed since the job store's last word, (re)install the job,
        and queue the one run still owed, if any."""
        trigger = trigger_for(config)
        now = self.clock()
        owed = catch_up(trigger, stored_next, now, config.schedule.misfire_grace)
        for moment in owed.skipped:
            self.record_skip(config, moment, now, "the scheduler was not running")
        scheduler.add_job(
            run_scheduled_issue,
            trigger,
            id=JOB_ID,
            name="daily issue",
            jobstore="default",
            replace_existing=True,
            misfire_grace_time=int(config.schedule.misfire_grace.total_seconds()),
            next_run_time=trigger.get_next_fire_time(None, now),
        )
        due = owed.due
        latest = trigger.latest(now)
        if due is None and latest is not None:
            # a run that failed or was stopped (SIGTERM) resumes on the next start
            list_name = self.list_for(config)
            date = trigger.issue_date(latest)
            with IssueStore(config.database_url) as ledger:
                issue = ledger.issue(list_name, date)
            if issue is not None and issue.status in ("failed", "stopped", "sending", "partial"):
                due = latest
        if due is not None:
            queue_run(scheduler, due, now)
        return CatchUp(owed.skipped, due)

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; a send in progress finishes its batch first. Exit 0.

        The stop signals are blocked from the first moment and taken with sigwait
        once the scheduler runs: one that arrives while starting is neither lost
        nor fatal, and no signal handler runs in the middle of a lock.
        """
        global _service
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            config = self.config()
            with Database(config.database_url) as ledger:
                stored_next = next_run(ledger)  # before the job is replaced
                scheduler = self.build_scheduler(config, ledger)
                self.scheduler = scheduler
                _service = self
                try:
                    owed = self.prepare(scheduler, config, stored_next)
                    scheduler.start()  # threads started from here on keep the signals blocked
                    self._log_started(scheduler, config, owed)
                    signum = signal.sigwait(STOP_SIGNALS)
                    log.info(
                        "%s received: finishing the current batch, then stopping",
                        signal.Signals(signum).name,
                    )
                finally:
                    self._stop(scheduler)
                    _service = None
            log_event(logging.INFO, "scheduler stopped", {"event": "scheduler", "phase": "stopped"})
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return 0

    def _stop(self, scheduler: BaseScheduler) -> None:
        """No new run starts; the one in flight finishes its batch, unless a second signal comes."""
        with self._starting:
            self.stopping.set()
        if scheduler.running:
            scheduler.shutdown(wait=False)
        with _interrupted_by(STOP_SIGNALS):
            self.idle.wait()  # the batch in flight is recorded before we leave

    def _log_started(self, scheduler: BaseScheduler, config: Config, owed: CatchUp) -> None:
        """Say when the daily job runs next, as the running scheduler has it, and what is owed."""
        tz = config.newsletter.tz
        job = scheduler.get_job(JOB_ID)
        first: dt.datetime | None = job.next_run_time if job is not None else None
        if first is None:
            message = f"scheduler started; no run in the next {LOOKAHEAD_DAYS} days"
        else:
            message = (
                f"scheduler started; next run {first.astimezone(tz):%Y-%m-%d %H:%M %Z} "
                f"({first.astimezone(dt.UTC):%H:%M} UTC)"
            )
        if owed.due is not None:
            message += f"; the {owed.due.astimezone(tz):%Y-%m-%d %H:%M} run is owed: running it now"
        fields = {
            "event": "scheduler",
            "phase": "started",
            "next_run": first.isoformat() if first else None,
            "owed": owed.due.isoformat() if owed.due else None,
        }
        log_event(logging.INFO, message, fields)


@contextlib.contextmanager
def _interrupted_by(signals: frozenset[signal.Signals]) -> Iterator[None]:
    """Within the block, any of `signals` raises KeyboardInterrupt in the main thread."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    handlers = {sig: signal.signal(sig, interrupt) for sig in signals}
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def queue_run(scheduler: BaseScheduler, scheduled: dt.datetime, when: dt.datetime) -> None:
    """One extra run of `scheduled`'s issue at `when` (a late start, a retry), in memory:
    after a restart the ledger, not the job store, says what is still owed."""
    scheduler.add_job(
        run_retry,
        DateTrigger(run_date=when),
        args=[scheduled.isoformat()],
        id=f"retry-{scheduled.date().isoformat()}",
        jobstore="retries",
        replace_existing=True,
        misfire_grace_time=None,
    )


def job_store(ledger: Database) -> SQLAlchemyJobStore:
    """APScheduler's job store in the state database, its table made under the schema lock.

    APScheduler's own check-then-create fails in one of two schedulers starting
    on a new database at once; once the table exists it creates nothing.
    """
    store = SQLAlchemyJobStore(engine=ledger.engine, tablename=JOB_TABLE)
    ledger.create_tables([store.jobs_t])
    return store


def next_run(ledger: Database) -> dt.datetime | None:
    """The daily job's next run as the job store has it (None: no scheduler ever ran)."""
    store = job_store(ledger)
    store.start(None, "default")  # type: ignore[arg-type]
    try:
        job = store.lookup_job(JOB_ID)
    except Exception as exc:  # a job stored by an incompatible version
        log.warning("cannot read the stored schedule (%s); starting afresh", exc)
        return None
    return job.next_run_time if job is not None else None


def _escape(text: str) -> str:
    return html.escape(text)


def log_event(level: int, message: str, fields: dict[str, Any]) -> None:
    """One line per event; the JSON formatter turns `fields` into keys."""
    log.log(level, message, extra={"fields": fields})
