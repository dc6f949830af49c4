"""`newsletter report` end to end: issues sent through the real sendgrid client to the
emulator, SendGrid's signed events posted through the real webhook of `newsletter serve`,
then the real CLI's HTML and CSV checked against what the events add up to."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from html import escape
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from newsletter.app import App
from newsletter.config import load_config
from newsletter.report import ReportQuery, build_report, csv_tables, render_html
from newsletter.signing import UNSUBSCRIBE, Signer
from newsletter.state import Ledger
from newsletter.state.analytics import ReaderKeys, event_readers, issue_links_table, reader_activity
from newsletter.state.events import MailEvent, mail_events

from .conftest import BASE_CONFIG, NOW, SENDGRID_TEST_API_KEY, Site
from .support.cli import run
from .support.race import race
from .support.report_data import add_issue
from .support.sendgrid_emulator import SendGridEmulator
from .support.web import SECRET, Clock, EventSigner, confirm_link_in, free_socket, serve

ENV = {"NEWSLETTER_SECRET": SECRET, "SENDGRID_API_KEY": SENDGRID_TEST_API_KEY}
MAIN = [f"r{n}@example.com" for n in range(6)]
WEEKLY = [f"w{n}@example.com" for n in range(3)]
DATES = ["2024-03-03", "2024-03-04", "2024-03-05"]
STAMP = int(NOW.timestamp())


@dataclass
class Newsroom:
    site: Site
    url: str
    app: App
    http: httpx.Client
    signer: EventSigner
    clock: Clock
    emulator: SendGridEmulator
    sequence: int = 0

    def cli(self, *args: str) -> str:
        done = run(self.site.config_path, *args, **ENV)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def issue_id(self, list_name: str, date: str) -> str:
        row = self.app.ledger.issue(list_name, dt.date.fromisoformat(date))
        assert row is not None
        return str(row.id)

    def event(self, kind: str, email: str, issue: str, **extra: object) -> dict[str, object]:
        self.sequence += 1
        return {"email": email, "event": kind, "sg_event_id": f"ev{self.sequence}",
                "timestamp": STAMP, "issue_id": issue, **extra}  # fmt: skip

    def post(self, events: list[dict[str, object]]) -> dict[str, int]:
        body = json.dumps(events).encode()
        answer = self.http.post(
            "/webhooks/sendgrid",
            content=body,
            headers=self.signer.headers(body, int(self.clock.now.timestamp())),
        )
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def _config(url: str, emulator: SendGridEmulator, public_key: str, per_recipient: bool) -> str:
    return (
        BASE_CONFIG
        + f"""
[delivery]
transport = "sendgrid"
workers = 1
retry_delay = "0s"

[unsubscribe]
mode = "hosted"
base_url = "{url}"

[serve]
lists = {{ main = "The Test Times (daily)", weekly = "The Test Times Weekly" }}

[sendgrid]
api_url = "{emulator.url}"
timeout = 5
click_tracking = true
open_tracking = true
webhook_public_key = "{public_key}"

[analytics]
per_recipient = {str(per_recipient).lower()}
"""
    )


@pytest.fixture(params=[False, True], ids=["counts-only", "per-recipient"])
def newsroom(
    request: pytest.FixtureRequest, site: Site, sendgrid_emulator: SendGridEmulator
) -> Iterator[Newsroom]:
    sock = free_socket()
    url = "http://{}:{}".format(*sock.getsockname())
    signer = EventSigner()
    site.write_config(_config(url, sendgrid_emulator, signer.public_key, request.param))
    for date in ["2024-03-02", *DATES]:
        site.story(f"lead-{date}", title=f"Lead of {date}: rates hold at $5", lead=True,
                   date=f"{date} 06:00:00+00:00",
                   url=f"https://paper.example.com/{date}/lead?utm_source=rss")  # fmt: skip
        site.story(f"second-{date}", title=f"Second of {date}", date=f"{date} 05:00:00+00:00",
                   url=f"https://paper.example.com/{date}/second",
                   body=f"See [the report](https://paper.example.com/{date}/report.pdf).")  # fmt: skip
        site.story(f"brief-{date}", title=f"Brief of {date}", date=f"{date} 04:00:00+00:00")
    folder = site.root / "subscribers"
    folder.mkdir()
    (folder / "main.csv").write_text("email,name\n" + "".join(f"{e},R\n" for e in MAIN))
    (folder / "weekly.csv").write_text("email,name\n" + "".join(f"{e},W\n" for e in WEEKLY))
    clock = Clock(NOW)
    with (
        App(load_config(site.config_path, ENV), clock=clock) as app,
        serve(app, sock) as base,
        httpx.Client(base_url=base, timeout=10, follow_redirects=False) as http,
    ):
        yield Newsroom(site, base, app, http, signer, clock, sendgrid_emulator)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_report_adds_up_the_events_sent_through_the_webhook(
    newsroom: Newsroom, tmp_path: Path
) -> None:
    n = newsroom
    n.cli("send", "--date", "2024-03-02", "--transport", "outbox", "--yes")
    for date in DATES:
        n.cli("send", "--date", date, "--yes")
    n.cli("send", "--date", "2024-03-05", "--list", "weekly", "--yes")
    d3, d4, d5 = (n.issue_id("main", date) for date in DATES)
    weekly = n.issue_id("weekly", "2024-03-05")
    r0, r1, r2, r3, r4, r5 = MAIN
    base = "https://paper.example.com/2024-03-05"

    # 3 March: everyone delivered, three readers open, one clicks
    n.post([n.event("delivered", r, d3) for r in MAIN]
           + [n.event("open", r, d3) for r in (r0, r1, r2)]
           + [n.event("click", r0, d3, url="https://paper.example.com/2024-03-03/lead?utm_source=rss")])  # fmt: skip
    # 4 March: a hard and a soft bounce; one open, one click
    n.post([n.event("delivered", r, d4) for r in (r0, r1, r2, r5)]
           + [n.event("bounce", r3, d4, type="bounce", reason="550 5.1.1 unknown"),
              n.event("bounce", r4, d4, type="blocked", reason="452 mailbox full"),
              n.event("open", r0, d4),
              n.event("click", r0, d4, url="https://paper.example.com/2024-03-04/lead?utm_source=rss")])  # fmt: skip
    # 5 March: the interesting day
    batch = [
        n.event("deferred", r4, d5, response="421 try later"),
        n.event("deferred", r4, d5, response="421 try later"),  # deferred twice: one reader
        *[n.event("delivered", r, d5) for r in (r0, r1, r2, r3, r4)],
        n.event("dropped", r5, d5, reason="Invalid"),
        n.event("open", r0, d5, sg_machine_open=False),
        n.event("open", r0, d5),  # the same reader again: one reader, two opens
        n.event("open", r1, d5),
        n.event("open", r2, d5, sg_machine_open=True),  # Apple Mail Privacy Protection
        n.event("open", r0, d5, sg_machine_open=True),
        # the lead's link as SendGrid reports it with its own tracking parameters added
        n.event("click", r0, d5, url=f"{base}/lead?utm_source=rss&utm_medium=email&utm_campaign=daily"),
        n.event("click", r0, d5, url=f"{base}/lead?utm_source=rss"),
        n.event("click", r1, d5, url=f"{base}/report.pdf"),  # a link in the second story's text
        n.event("click", r1, d5, url=f"{base}/second"),
        n.event("click", r2, d5, url="https://x.com/intent/tweet?text=Lead&url=https%3A%2F%2Fx"),
        n.event("click", r2, d5, url="https://www.facebook.com/sharer/sharer.php?u=https%3A%2F%2Fx"),
        n.event("click", r3, d5, url=f"{n.url}/unsubscribe/{Signer(SECRET).sign(UNSUBSCRIBE, 'main', r3)}"),
        n.event("click", r3, d5, url="https://elsewhere.example.org/somewhere"),
        n.event("spamreport", r1, d5, list="main"),  # custom_args as SendGrid passes them on
        n.event("unsubscribe", r2, d5),
        n.event("delivered", "editor@example.com", "test"),  # a test send: no issue of a list
    ]  # fmt: skip
    assert n.post(batch) == {"received": len(batch), "new": len(batch), "skipped": 0}
    assert n.post(batch[:8])["new"] == 0  # SendGrid redelivers part of it: nothing counts twice
    # the same issue number from another state database on this SendGrid account: not ours
    assert n.post([n.event("open", r5, d5, list="elsewhere")])["new"] == 1
    n.post([n.event("delivered", w, weekly) for w in WEEKLY]
           + [n.event("open", WEEKLY[0], weekly),
              n.event("click", WEEKLY[0], weekly, url=f"{base}/lead")])  # fmt: skip

    # a reader leaves by the link in the email, another joins the weekly list
    token = Signer(SECRET).sign(UNSUBSCRIBE, "main", r4)
    left = n.http.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert left.status_code == 200
    page = n.http.get("/subscribe")
    marker = 'name="csrf" value="'
    csrf = page.text.split(marker, 1)[1].split('"', 1)[0]
    asked = n.http.post("/subscribe", data={"csrf": csrf, "email": "new@example.com",
                                            "name": "New", "list": "weekly", "website": ""})  # fmt: skip
    assert asked.status_code in (200, 303), asked.text
    confirmation = n.emulator.requests[-1].body
    text = next(c["value"] for c in confirmation["content"] if c["type"] == "text/plain")
    assert n.http.get(confirm_link_in(text).removeprefix(n.url)).status_code == 200

    out = n.cli("report", "--output", str(tmp_path / "report.html"), "--csv", str(tmp_path / "csv"))
    assert "Report on 5 issues of main, weekly written to" in out

    issues = {(r["list"], r["date"]): r for r in _csv(tmp_path / "csv" / "issues.csv")}
    assert issues["main", "2024-03-05"] == {
        "list": "main", "date": "2024-03-05", "subject": "Lead of 2024-03-05: rates hold at $5",
        "transport": "sendgrid", "submitted": "6", "delivered": "5", "deferred": "1",
        "bounced_hard": "0", "bounced_soft": "0", "dropped": "1", "spam_reports": "1",
        "unsubscribes": "2",  # SendGrid's event for r2, and r4 by the link, after this issue
        "human_opens": "2", "open_rate": "0.400000", "open_rate_vs_median": "0.000000",
        "machine_opens": "2", "opens_total": "3", "readers_who_clicked": "4",
        "click_rate": "0.800000", "click_rate_vs_median": "0.550000", "clicks_total": "8",
    }  # fmt: skip
    d4_row = issues["main", "2024-03-04"]
    assert d4_row["open_rate_vs_median"] == "-0.150000"  # below the median: a number, not text
    assert (d4_row["delivered"], d4_row["bounced_hard"], d4_row["bounced_soft"]) == ("4", "1", "1")
    assert (d4_row["open_rate"], d4_row["click_rate"], d4_row["unsubscribes"]) == ("0.250000", "0.250000", "0")  # fmt: skip
    d3_row = issues["main", "2024-03-03"]
    assert (d3_row["human_opens"], d3_row["open_rate"], d3_row["click_rate"]) == ("3", "0.500000", "0.166667")  # fmt: skip
    outbox = issues["main", "2024-03-02"]
    assert (outbox["transport"], outbox["submitted"], outbox["delivered"], outbox["open_rate"]) == ("outbox", "6", "", "")  # fmt: skip
    week = issues["weekly", "2024-03-05"]
    assert (week["submitted"], week["human_opens"], week["open_rate"], week["readers_who_clicked"]) == ("3", "1", "0.333333", "1")  # fmt: skip

    stories = {
        (r["list"], r["date"], r["story"]): r for r in _csv(tmp_path / "csv" / "stories.csv")
    }
    lead = stories["main", "2024-03-05", "1"]
    assert (lead["headline"], lead["readers_who_clicked"], lead["clicks"]) == ("Lead of 2024-03-05: rates hold at $5", "1", "2")  # fmt: skip
    second = stories["main", "2024-03-05", "2"]
    assert (second["headline"], second["readers_who_clicked"], second["clicks"]) == ("Second of 2024-03-05", "1", "2")  # fmt: skip
    assert ("main", "2024-03-05", "3") not in stories  # a brief without a link: nothing to click
    assert stories["weekly", "2024-03-05", "1"]["readers_who_clicked"] == "1"

    links = [
        r
        for r in _csv(tmp_path / "csv" / "links.csv")
        if r["date"] == "2024-03-05" and r["list"] == "main"
    ]
    clicked_outside = {
        r["kind"]: (r["readers_who_clicked"], r["clicks"]) for r in links if r["kind"] != "story"
    }
    assert clicked_outside == {"share": ("1", "1"), "unsubscribe": ("1", "1"), "other": ("1", "1")}
    shared = sorted(
        r["url"].split("/")[2] for r in links if r["kind"] == "share" and r["clicks"] != "0"
    )
    assert shared == ["www.facebook.com", "x.com"]  # one reader, two networks
    detail = build_report(n.app.ledger, ReportQuery(list_name="main", today=NOW.date())).lists[0]
    [latest] = [line for line in detail.detail if line.facts.issue_date == dt.date(2024, 3, 5)]
    share = next(group for group in latest.groups if group.kind == "share")
    assert (share.readers, share.clicks) == (1, 2)  # the reader counted once
    assert {r["url"] for r in links if r["kind"] == "other"} == {
        "https://elsewhere.example.org/somewhere"
    }

    growth = {(r["list"], r["day"]): r for r in _csv(tmp_path / "csv" / "list_growth.csv")}
    assert growth["main", "2024-03-05"] == {"list": "main", "day": "2024-03-05", "signups": "0",
        "unsubscribes": "1", "bounces": "1", "complaints": "1", "net": "-3"}  # fmt: skip
    # the link's unsubscribe, as it happened, on the newsletter's day (Europe/London)
    today = dt.datetime.now(ZoneInfo("Europe/London")).date().isoformat()
    assert growth["main", today]["unsubscribes"] == "1"
    assert growth["weekly", "2024-03-05"]["signups"] == "1"

    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html
    assert not re.search(
        r"""(?:src|href)=["']?(?:https?:)?//|@import|url\((?!#)""", html
    )  # nothing fetched
    assert html.count("<svg") >= 4  # trend and growth for each list, clicks per story
    assert "40.0%" in html and "+55.0 pts" in html
    assert "Sent by outbox" in html
    assert "rates hold at \\$5" not in html  # the escaped dollar is matplotlib's, not shown

    # the trend over a list's last issues, and its growth since the first of them
    last = tmp_path / "last"
    n.cli("report", "--list", "main", "--issues", "2", "--output", str(tmp_path / "last.html"), "--csv", str(last))  # fmt: skip
    assert [r["date"] for r in _csv(last / "issues.csv")] == ["2024-03-04", "2024-03-05"]
    assert min(r["day"] for r in _csv(last / "list_growth.csv")) >= "2024-03-04"
    assert "list main, the last 2 issues" in (tmp_path / "last.html").read_text(encoding="utf-8")
    none = run(n.site.config_path, "report", "--issues", "0", **ENV)
    assert none.returncode == 2 and "'--issues'" in none.stderr and "Traceback" not in none.stderr

    with n.app.ledger.engine.connect() as conn:
        activity = conn.execute(sa.select(reader_activity.c.email)).scalars().all()
    per_recipient = n.app.config.analytics.per_recipient
    reader_csv = tmp_path / "csv" / "clicks_by_reader.csv"
    if per_recipient:
        clicked = {
            (r["date"], r["story"], r["email"]) for r in _csv(reader_csv) if r["list"] == "main"
        }
        assert ("2024-03-05", "1", r0) in clicked and ("2024-03-05", "2", r1) in clicked
        assert "Clicked by: r0@example.com" in html
    else:
        assert activity == [] and not reader_csv.exists()
        assert "r0@example.com" not in html


def test_pruning_keeps_the_counts_and_later_events_do_not_count_readers_twice(
    newsroom: Newsroom, tmp_path: Path
) -> None:
    n = newsroom
    n.cli("send", "--date", "2024-03-05", "--yes")
    issue = n.issue_id("main", "2024-03-05")
    n.post([n.event("delivered", r, issue) for r in MAIN] + [n.event("open", MAIN[0], issue)])
    # too soon: SendGrid may still redeliver them, and only the kept event says it is known
    soon = run(n.site.config_path, "events", "prune", "--older-than", "1d", **ENV)
    assert soon.returncode != 0 and "at least 3d" in soon.stderr and "Traceback" not in soon.stderr
    with n.app.ledger.engine.begin() as conn:  # four days on
        days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=4)
        conn.execute(sa.update(mail_events).values(received_at=days_ago))
    out = n.cli("events", "prune", "--older-than", "3d")
    assert "Pruned 7 events" in out and "the counts are kept" in out
    with n.app.ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(mail_events)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(event_readers)).scalar() == 0
    n.post([n.event("open", MAIN[0], issue)])  # the same reader opens again, after the prune
    # months on, two readers leave from the old email: still the list's losses, and the issue's
    n.post([n.event("unsubscribe", MAIN[1], issue), n.event("spamreport", MAIN[2], issue)])
    n.post([n.event("group_unsubscribe", MAIN[1], issue)])  # the same reader, again: once
    n.cli("report", "--output", str(tmp_path / "r.html"), "--csv", str(tmp_path / "csv"))
    [row] = _csv(tmp_path / "csv" / "issues.csv")
    assert (row["delivered"], row["human_opens"], row["opens_total"]) == ("6", "1", "2")
    assert (row["unsubscribes"], row["spam_reports"]) == ("1", "1")
    growth = _csv(tmp_path / "csv" / "list_growth.csv")
    assert [(r["unsubscribes"], r["complaints"]) for r in growth] == [("1", "1")]
    bad = run(n.site.config_path, "events", "prune", "--older-than", "soon", **ENV)
    assert bad.returncode != 0 and "--older-than" in bad.stderr and "Traceback" not in bad.stderr


HOSTILE = '=HYPERLINK("http://evil.example") <script>alert(1)</script> costs $5 & $6'


def test_a_headline_never_becomes_markup_a_formula_or_mathtext(tmp_path: Path) -> None:
    html = f'<table><tr><td id="story-1"><h2><a href="https://paper.example.com/a">{escape(HOSTILE)}</a></h2></td></tr></table>'
    with Ledger(f"sqlite:///{tmp_path / 'state.db'}") as ledger:
        issue = add_issue(ledger, "main", dt.date(2024, 3, 5), HOSTILE, html, 1)
        keys = ReaderKeys(SECRET)
        ledger.apply_mail_events(
            [MailEvent(f"e{n}", kind, "r@example.com", issue, NOW, None, kind, keys(issue, "r@example.com"),
                       "https://paper.example.com/a" if kind == "click" else None)
             for n, kind in enumerate(["delivered", "click"])]
        )  # fmt: skip
        report = build_report(ledger, ReportQuery(today=NOW.date()))
    [story] = report.lists[0].detail[0].stories
    assert (story.title, story.readers) == (HOSTILE, 1)
    page = render_html(report)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "\\$5" not in page and "costs $5 &amp; $6" in page  # drawn as typed, not as maths
    [row] = list(csv.DictReader(io.StringIO(csv_tables(report)["stories.csv"])))
    assert row["headline"] == "'" + HOSTILE  # a spreadsheet shows it, never runs it


def test_sendgrids_unsubscribe_tag_is_the_unsubscribe_link_and_no_reader_is_kept(
    tmp_path: Path,
) -> None:
    html = (
        '<td id="story-1"><h2><a href="https://paper.example.com/a?utm_source=rss">A</a></h2></td>'
        '<a href="<%asm_group_unsubscribe_raw_url%>">Unsubscribe</a>'
    )
    clicks = [
        "https://u1.ct.sendgrid.net/asm/unsubscribe/?user_id=1&data=reader-secret-1",
        "https://forwarded.example.org/confirm?token=reader-secret-2",
        "https://forwarded.example.org/confirm?token=reader-secret-3",
    ]
    with Ledger(f"sqlite:///{tmp_path / 'state.db'}") as ledger:
        issue = add_issue(ledger, "main", dt.date(2024, 3, 5), "A", html, 3)
        keys = ReaderKeys(SECRET)
        ledger.apply_mail_events(
            [MailEvent(f"e{n}", "click", f"r{n}@example.com", issue, NOW, None, "click",
                       keys(issue, f"r{n}@example.com"), url) for n, url in enumerate(clicks)]
        )  # fmt: skip
        links = {(link.kind, link.url): (link.readers, link.clicks)
                 for link in ledger.link_counts([issue]) if link.clicks}  # fmt: skip
        with ledger.engine.connect() as conn:
            kept = " ".join(map(str, conn.execute(sa.select(issue_links_table)).all()))
    assert links == {
        ("unsubscribe", "%%asm_group_unsubscribe_raw_url%%"): (1, 1),
        ("other", "https://forwarded.example.org/confirm"): (2, 2),
    }
    assert "reader-secret" not in kept  # a clicked URL's query is not kept


def test_a_lists_days_are_the_newsletters_days_not_utcs(tmp_path: Path) -> None:
    late = dt.datetime(2024, 3, 4, 23, 30, tzinfo=dt.UTC)  # 00:30 on 5 March in Berlin
    html = '<a href="https://paper.example.com/a">A</a>'
    with Ledger(f"sqlite:///{tmp_path / 'state.db'}", ZoneInfo("Europe/Berlin")) as ledger:
        issue = add_issue(ledger, "main", dt.date(2024, 3, 4), "Monday", html, 2)
        keys = ReaderKeys(SECRET)
        ledger.apply_mail_events(
            [MailEvent("e1", "bounce", "gone@example.com", issue, late, "bounced", "bounce_hard",
                       keys(issue, "gone@example.com"))]
        )  # fmt: skip
        ledger.record_consent(list_name="main", email="new@example.com", signed_up_at=late,
                              confirmed_at=late, ip=None, user_agent=None, form_version="1",
                              wording="Yes")  # fmt: skip
        report = build_report(ledger, ReportQuery(today=dt.date(2024, 3, 5)))
    days = {day.day: day for day in report.lists[0].days}
    assert (days[dt.date(2024, 3, 5)].signups, days[dt.date(2024, 3, 5)].bounces) == (1, 1)
    assert dt.date(2024, 3, 4) not in days or days[dt.date(2024, 3, 4)].net == 0


def test_counts_stay_exact_when_event_batches_race(database_url: str) -> None:
    """Four deliveries at once, on SQLite and PostgreSQL: each reader opens and clicks in
    every one, and one batch is delivered twice; unique readers stay unique."""
    readers = [f"r{n}@example.com" for n in range(150)]
    html = "".join(
        f'<div id="story-{n}"><h2><a href="https://paper.example.com/{n}">Story {n}</a></h2></div>'
        for n in (1, 2)
    )
    with Ledger(database_url) as ledger:
        issue = add_issue(ledger, "main", dt.date(2024, 3, 5), "Subject", html, len(readers))
    keys = ReaderKeys(SECRET)

    def batch(part: int) -> list[MailEvent]:
        def event(n: int, kind: str, email: str, url: str | None = None) -> MailEvent:
            key = keys(issue, email)
            return MailEvent(f"p{part}-{n}-{kind}", kind, email, issue, NOW, None, kind, key, url)

        mine = readers[part * 50 : part * 50 + 50] if part < 3 else []
        events = (
            [event(n, "delivered", e) for n, e in enumerate(mine)]
            + [event(n, "open", e) for n, e in enumerate(readers)]
            + [event(n, "click", e, f"https://paper.example.com/1?utm_source=x{part}") for n, e in enumerate(readers)]
            # links the email did not carry, each delivery adding its own and a common one
            + [event(1000, "click", readers[part], f"https://elsewhere.example/{part}"),
               event(1001, "click", readers[part], "https://elsewhere.example/common")]
        )  # fmt: skip
        return events[::-1] if part % 2 else events  # rows met in another order: no deadlock

    parts = [batch(0), batch(1), batch(2), batch(1)]  # the last: part 1 redelivered
    new = race(database_url, 4, lambda ledger, i: ledger.apply_mail_events(parts[i]))
    assert sum(new) == 150 + 3 * 302  # part 1's second delivery added nothing
    with Ledger(database_url) as ledger:
        report = build_report(ledger, ReportQuery(today=NOW.date()))
        again = build_report(ledger, ReportQuery(today=NOW.date()))  # submitted: kept, read
    [line] = report.lists[0].issues
    assert line.facts.submitted == again.lists[0].issues[0].facts.submitted == 150
    assert (line.delivered, line.opens, line.opens_total) == (150, 150, 450)
    assert (line.clickers, line.clicks_total, line.open_rate) == (150, 456, 1.0)
    first, second = report.lists[0].detail[0].stories  # every story is listed, clicked or not
    assert (first.position, first.readers, first.clicks) == (1, 150, 450)
    assert (second.position, second.readers, second.clicks) == (2, 0, 0)
    [other] = report.lists[0].detail[0].groups
    assert sorted((link.url, link.clicks) for link in other.links) == [
        ("https://elsewhere.example/0", 1), ("https://elsewhere.example/1", 1),
        ("https://elsewhere.example/2", 1), ("https://elsewhere.example/common", 3),
    ]  # fmt: skip


def test_a_sign_up_confirmed_twice_at_once_is_one_sign_up(database_url: str) -> None:
    """A mail scanner and the reader follow the confirmation link at the same moment."""
    asked = NOW - dt.timedelta(minutes=10)

    def confirm(ledger: Ledger, _: int) -> bool:
        return ledger.record_consent(
            list_name="main", email="New@example.com", signed_up_at=asked, confirmed_at=NOW,
            ip=None, user_agent=None, form_version="1", wording="Yes, send it",
        )  # fmt: skip

    assert sorted(race(database_url, 4, confirm)) == [False, False, False, True]
    with Ledger(database_url) as ledger:
        assert len(ledger.consents("new@example.com")) == 1
        assert ledger.list_days("main", None) == {"main": {NOW.date(): {"signup": 1}}}
