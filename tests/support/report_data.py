"""A newsletter's month in the state database, for looking at the report: issues stored as
a send stores them, and SendGrid events applied through the event store, so every count
the report reads was added the way the webhook adds it."""

from __future__ import annotations

import datetime as dt
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


def fill(
    ledger: Ledger, *, list_name: str = "main", days: int = 30, readers: int = 400, seed: int = 7
) -> None:
    """`days` daily issues up to 2024-03-05 with a plausible spread of events each."""
    rng = random.Random(seed)
    keys = ReaderKeys("a-test-secret-that-is-long-enough")
    now = dt.datetime(2024, 3, 5, 9, tzinfo=dt.UTC)
    sequence = 0
    for offset in range(days, 0, -1):
        date = (now - dt.timedelta(days=offset - 1)).date()
        size = readers + (days - offset) * 3  # the list grows
        stories = rng.randint(3, 6)
        with ledger.engine.begin() as conn:
            issue_id = conn.execute(
                sa.insert(issues).values(
                    list_name=list_name,
                    issue_date=date,
                    status="sent",
                    subject=HEADLINES[(1 + date.day) % len(HEADLINES)],
                    html=issue_html(date, stories),
                    text="",
                    tokens="[]",
                    story_keys="[]",
                    transport="sendgrid",
                    recipients=size,
                    created_at=now,
                    finished_at=now,
                )  # fmt: skip
            ).inserted_primary_key[0]
            conn.execute(
                sa.insert(batches),
                [{"issue_id": issue_id, "seq": 1, "status": "submitted", "size": size,
                  "recipients": b"", "attempts": 1, "updated_at": now}],
            )  # fmt: skip
        moment = dt.datetime.combine(date, dt.time(7, 30), dt.UTC)
        open_share = rng.uniform(0.32, 0.5)
        events = []
        for n in range(size):
            email = f"reader{n}@example.com"
            roll = rng.random()

            def add(kind: str, **extra: object) -> None:
                nonlocal sequence
                sequence += 1
                events.append(
                    MailEvent(
                        event_id=f"e{sequence}", event=kind, email=email, issue_id=issue_id,
                        occurred_at=moment, suppress=None,
                        metric=metric_of(kind, extra.get("type"), bool(extra.get("machine"))),  # type: ignore[arg-type]
                        reader=keys(issue_id, email), url=extra.get("url"),  # type: ignore[arg-type]
                    )
                )  # fmt: skip

            if roll < 0.004:
                add("bounce", type="bounce")
                continue
            if roll < 0.01:
                add("bounce", type="blocked")
                continue
            add("delivered")
            if rng.random() < 0.15:
                add("open", machine=True)
            if rng.random() < open_share:
                add("open")
                if rng.random() < 0.22:
                    story = min(int(rng.expovariate(0.9)) + 1, stories)
                    add("click", url=f"https://paper.example.com/{date}/s{story}?utm_medium=email")
                if rng.random() < 0.01:
                    add("click", url=f"https://x.com/intent/tweet?url=x&text={n}")
            if rng.random() < 0.003:
                add("unsubscribe")
            if rng.random() < 0.0015:
                add("spamreport")
        ledger.apply_mail_events(events)
        for _ in range(rng.randint(2, 12)):
            ledger.record_consent(
                list_name=list_name, email=f"new{rng.random()}@example.com", signed_up_at=moment,
                confirmed_at=moment, ip=None, user_agent=None, form_version="1", wording="",
            )  # fmt: skip
