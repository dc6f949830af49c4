"""A newsletter's month in the state database, for looking at the report: issues stored as
a send stores them, and SendGrid events applied through the event store, so every count
the report reads was added the way the webhook adds it."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import sqlalchemy as sa

from newsletter.state import Ledger
from newsletter.state.analytics import ReaderKeys, metric_of
from newsletter.state.batches import batches
from newsletter.state.events import MailEvent
from newsletter.state.issues import issues

HEADLINES = [
    "Harbour bridge reopens after two years of repairs",
    "Markets steady as rates hold & oil slips below $80",
    "City council approves the new cycle lanes",
    "School meals: what changes in September",
    "The long read: a year on the night buses",
    "Weather: a dry week, then storms",
]


def issue_html(date: dt.date, stories: int) -> str:
    cells = "".join(
        f'<tr><td id="story-{n}"><h2><a href="https://paper.example.com/{date}/s{n}?utm_source=rss">'
        f"{HEADLINES[(n + date.day) % len(HEADLINES)]}</a></h2><p>Text with "
        f'<a href="https://paper.example.com/{date}/s{n}/more">a link</a>.</p></td></tr>'
        for n in range(1, stories + 1)
    )
    return (
        f'<html><body><a href="https://paper.example.com/archive/{date}">View in browser</a>'
        f"<table>{cells}</table>"
        f'<a href="https://x.com/intent/tweet?url=https%3A%2F%2Fpaper.example.com%2Farchive%2F{date}">X</a>'
        '<a href="%%unsubscribe_url%%">Unsubscribe</a></body></html>'
    )


def add_issue(
    ledger: Ledger, list_name: str, date: dt.date, subject: str, html: str, size: int
) -> int:
    """A sent SendGrid issue as the ledger keeps one: its email, one submitted batch."""
    now = dt.datetime(2024, 3, 5, 9, tzinfo=dt.UTC)
    with ledger.engine.begin() as conn:
        issue_id = conn.execute(
            sa.insert(issues).values(
                list_name=list_name,
                issue_date=date,
                status="sent",
                subject=subject,
                html=html,
                text="",
                tokens="[]",
                story_keys="[]",
                transport="sendgrid",
                recipients=size,
                created_at=now,
                finished_at=now,
            )
        ).inserted_primary_key[0]
        conn.execute(
            sa.insert(batches),
            [{"issue_id": issue_id, "seq": 1, "status": "submitted", "size": size,
              "recipients": b"", "attempts": 1, "updated_at": now}],
        )  # fmt: skip
    return int(issue_id)


def fill(
    ledger: Ledger, *, list_name: str = "main", days: int = 30, readers: int = 400, seed: int = 7
) -> None:
    """`days` daily issues up to 2024-03-05 with a plausible spread of events each."""
    rng = random.Random(seed)
    keys = ReaderKeys("a-test-secret-that-is-long-enough")
    now = dt.datetime(2024, 3, 5, 9, tzinfo=dt.UTC)
    sequence = itertools.count(1)
    for offset in range(days, 0, -1):
        date = (now - dt.timedelta(days=offset - 1)).date()
        size = readers + (days - offset) * 3  # the list grows
        stories = rng.randint(3, 6)
        subject = HEADLINES[(1 + date.day) % len(HEADLINES)]
        issue_id = add_issue(ledger, list_name, date, subject, issue_html(date, stories), size)
        moment = dt.datetime.combine(date, dt.time(7, 30), dt.UTC)
        open_share = rng.uniform(0.32, 0.5)
        events = [
            MailEvent(f"e{next(sequence)}", kind, email, issue_id, moment, None,
                      metric_of(kind, bounce, machine), keys(issue_id, email), url)
            for n in range(size)
            for email in [f"reader{n}@example.com"]
            for kind, bounce, machine, url in _reader_events(rng, n, date, stories, open_share)
        ]  # fmt: skip
        ledger.apply_mail_events(events)
        for _ in range(rng.randint(2, 12)):
            ledger.record_consent(
                list_name=list_name, email=f"new{rng.random()}@example.com", signed_up_at=moment,
                confirmed_at=moment, ip=None, user_agent=None, form_version="1", wording="",
            )  # fmt: skip


Happening = tuple[str, "str | None", bool, "str | None"]  # event, bounce type, machine, url


def _reader_events(
    rng: random.Random, n: int, date: dt.date, stories: int, open_share: float
) -> list[Happening]:
    """What one reader's copy of an issue did, as SendGrid would report it."""
    roll = rng.random()
    if roll < 0.01:
        return [("bounce", "bounce" if roll < 0.004 else "blocked", False, None)]
    found: list[Happening] = [("delivered", None, False, None)]
    if rng.random() < 0.15:
        found.append(("open", None, True, None))
    if rng.random() < open_share:
        found.append(("open", None, False, None))
        if rng.random() < 0.22:
            story = min(int(rng.expovariate(0.9)) + 1, stories)
            url = f"https://paper.example.com/{date}/s{story}?utm_medium=email"
            found.append(("click", None, False, url))
        if rng.random() < 0.01:
            found.append(("click", None, False, f"https://x.com/intent/tweet?url=x&text={n}"))
    if rng.random() < 0.003:
        found.append(("unsubscribe", None, False, None))
    if rng.random() < 0.0015:
        found.append(("spamreport", None, False, None))
    return found
