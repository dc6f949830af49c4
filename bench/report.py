"""Benchmark of `newsletter report` on a year of issues with 30,000,000 events.

365 daily issues to a million readers, thirty million raw events in the state database,
on SQLite and on PostgreSQL.

    python bench/report.py                    # SQLite; PostgreSQL too with --postgres URL
    python bench/report.py --postgres postgresql+psycopg://newsletter:newsletter@127.0.0.1:5432/newsletter_bench_report
    python bench/report.py --rebuild          # generate the data again
    python bench/report.py --issues 30 --events 300000 --workdir /tmp/bench-report-small

The data is generated once and kept: a SQLite file in --workdir, and the PostgreSQL
database of --postgres (created if it does not exist; default: the environment's
NEWSLETTER_BENCH_POSTGRES_URL, else PostgreSQL is skipped). One list, "main": an issue a
day ending yesterday, each sent by SendGrid to a million readers in 1,000 submitted
batches of 1,000, and the events SendGrid reported spread over them (delivered, deferred,
bounces, dropped, spam reports, unsubscribes, human and machine opens, clicks on twelve
links: eight story links over five stories, share, archive, unsubscribe and "other").
Every event has its row in `mail_events`, and the first event of each kind per reader
its row in `event_readers`, as the webhook writes them. The counts the report reads
(`issue_stats`, `issue_links`, `list_days`) are what those rows add up to: the readers
and clicks are counted by SQL over the generated rows, and the load checks every count
against the raw rows before the data is used.

Timed side by side after a warm-up round (its figures are printed apart: the first
report may read the database from disk and keep what it summed), alternating the order,
medians of --runs:
  - the whole `newsletter report --output FILE` process (start-up and imports count);
  - the same steps in a fresh process, each timed (imports, ledger, queries, each chart,
    the page): where the CLI's time goes;
  - in this process: `build_report` (the queries), `render_html` (charts and page),
    `csv_tables`;
  - the floor: the same aggregate SELECTs the report needs (`issues`, `issue_stats`, the
    recent issues' `issue_links`, `list_days`, and the submitted batches summed for
    issues whose count is not kept) sent raw to sqlite3 / psycopg, in a process of its
    own and in this one;
  - then twice, the naive way: counting the raw events (`GROUP BY issue_id, event` over
    `mail_events`), which is why the counts are kept.
Every run of the package's code uses one byte-compiled copy of it (it is edited
meanwhile), named by its hash in the output.
Prints one JSON line per database, then the figures as a Markdown table. Not a test:
figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECRET = "bench-signing-secret-0123456789"
LIST = "main"
STORIES = 5
# (kind, story position, weight of its clicks, path); link 0, "other", is added apart
LINKS = (
    ("story", 1, 22, "story-1"),
    ("story", 1, 6, "story-1/photos"),
    ("story", 2, 14, "story-2"),
    ("story", 2, 4, "story-2/data"),
    ("story", 3, 10, "story-3"),
    ("story", 3, 3, "story-3/interview"),
    ("story", 4, 8, "story-4"),
    ("story", 5, 6, "story-5"),
    ("share", None, 3, "share"),
    ("archive", None, 4, "archive"),
    ("unsubscribe", None, 2, "unsubscribe"),
)
# mail_events.event of each issue metric (a bounce's type and a machine open are not kept
# in the raw row: the webhook works them out from the event's fields)
EVENT_OF = {
    "delivered": "delivered",
    "deferred": "deferred",
    "bounce_hard": "bounce",
    "bounce_soft": "bounce",
    "dropped": "dropped",
    "spamreport": "spamreport",
    "unsubscribe": "unsubscribe",
    "open": "open",
    "machine_open": "open",
    "click": "click",
}
# list_days metric of the first reader of these issue metrics (analytics.LIST_LOSSES)
LOSSES = {"bounce_hard": "bounce", "spamreport": "complaint", "unsubscribe": "unsubscribe_event"}
TABLES = (
    "issues",
    "batches",
    "mail_events",
    "event_readers",
    "issue_stats",
    "issue_links",
    "list_days",
)
META = "bench_report_meta"  # the parameters of the data, written last: the data is whole
NUMBERS = "bench_numbers"  # 0..N-1, to generate rows with INSERT ... SELECT (dropped after)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Events of one metric of one issue: event n (0..events-1) is reader base + n % readers,
    so the first event of each reader is one of the first `readers`."""

    metric: str
    events: int
    readers: int
    base: int


@dataclass(frozen=True)
class IssuePlan:
    index: int
    date: dt.date
    blocks: tuple[Block, ...]
    weights: tuple[int, ...]  # clicks of each link in LINKS (its share of the click events)
    signups: int
    unsubscribe_links: int

    @property
    def events(self) -> int:
        return sum(b.events for b in self.blocks)

    def block(self, metric: str) -> Block:
        return next(b for b in self.blocks if b.metric == metric)


def plans(issues: int, events: int, yesterday: dt.date) -> list[IssuePlan]:
    """Each issue's events: `events` in all, an even share each, in a plausible mix that
    varies from day to day (weekends are read less); what is left of an issue's share after
    the rest is its delivered messages (~40,000: the events are those of a list a twelfth of
    the size, as a million delivered a day would be 365 million rows on its own)."""
    found = []
    scale = events / issues / 82_192
    for k in range(issues):
        rng = random.Random(k)
        day = yesterday - dt.timedelta(days=issues - 1 - k)
        weekend = 0.8 if day.weekday() >= 5 else 1.0
        share = events // issues + (1 if k < events % issues else 0)

        def n(low: float, high: float, rng: random.Random = rng) -> int:
            return max(1, round(rng.uniform(low, high) * scale))

        hard, soft, dropped = n(250, 450), n(100, 250), n(40, 120)
        deferred, spam, unsub = n(1500, 2500), n(8, 30), n(30, 90)
        opens = round(n(10_000, 15_000) * weekend)
        machine = n(6000, 8000)
        clickers = round(n(2500, 4500) * weekend)
        rest = [
            ("deferred", round(deferred * 1.5), deferred),
            ("bounce_hard", hard, hard),
            ("bounce_soft", soft, soft),
            ("dropped", dropped, dropped),
            ("spamreport", spam, spam),
            ("unsubscribe", unsub, unsub),
            ("open", round(opens * rng.uniform(1.5, 1.9)), opens),
            ("machine_open", round(machine * 1.25), machine),
            ("click", round(clickers * rng.uniform(1.8, 2.5)), clickers),
        ]
        delivered = share - sum(e for _, e, _ in rest)
        if delivered < opens + machine + spam + unsub:
            raise SystemExit(f"--events {events:,} is too few for {issues} issues")
        # readers: the delivered are 0..delivered-1 (openers first, then machine openers,
        # complainers and unsubscribers last); bounced and dropped come after them
        base = {
            "deferred": 0,
            "open": 0,
            "click": 0,
            "machine_open": opens,
            "spamreport": delivered - spam,
            "unsubscribe": delivered - spam - unsub,
            "bounce_hard": delivered,
            "bounce_soft": delivered + hard,
            "dropped": delivered + hard + soft,
        }
        blocks = [Block("delivered", delivered, delivered, 0)]
        blocks += [Block(m, e, r, base[m]) for m, e, r in rest]
        weights = tuple(max(1, round(w * rng.uniform(0.6, 1.4))) for *_, w, _ in LINKS)
        found.append(
            IssuePlan(
                index=k,
                date=day,
                blocks=tuple(blocks),
                weights=weights,
                signups=rng.randint(250, 700),
                unsubscribe_links=rng.randint(40, 130),
            )
        )
    return found


def link_rows(plan: IssuePlan) -> list[dict[str, Any]]:
    """The issue's links as the webhook stores them at the first click (clicks added later)."""
    rows = []
    for number, (kind, position, _, path) in enumerate(LINKS, start=1):
        url = {
            "share": f"https://x.com/intent/post?url=https%3A%2F%2Fexample.com%2F{plan.date}",
            "archive": f"https://example.com/archive/{plan.date}",
            "unsubscribe": "%%unsubscribe_url%%",
        }.get(kind, f"https://example.com/{plan.date:%Y/%m/%d}/{path}")
        title = f"Story {position} of {plan.date:%d %B %Y}: a headline" if position else None
        rows.append(
            {"link_no": number, "kind": kind, "position": position, "title": title, "url": url}
        )
    rows.append({"link_no": 0, "kind": "other", "position": None, "title": None, "url": ""})
    return rows


class Sql:
    """The few expressions that differ between SQLite and PostgreSQL."""

    def __init__(self, dialect: str) -> None:
        self.pg = dialect == "postgresql"

    def event_id(self, number: str) -> str:
        if self.pg:
            return f"'e' || lpad(CAST({number} AS TEXT), 10, '0')"
        return f"printf('e%010d', {number})"

    def moment(self, start: str, seconds: str) -> str:
        if self.pg:
            return f"({start} + ({seconds}) * interval '1 second')"
        return f"(datetime({start}, '+' || ({seconds}) || ' seconds') || '.000000')"

    def stamp(self, moment: dt.datetime) -> object:
        """A moment as a bound parameter, in the form the project stores it."""
        if self.pg:
            return moment
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# a reader's stand-in for the keyed hash (analytics.ReaderKeys): 64 bits, per issue
READER = (
    "((CAST(:issue AS BIGINT) * 2097152 + :base + n % :readers) * 2654435761 - 4611686018427387904)"
)
# which link a click event went to: its bucket among the issue's weights
BUCKET = "((n * 7919 + :salt) % :weight)"
NUMBERS_UPTO = f"(SELECT CAST(n AS BIGINT) AS n FROM {NUMBERS} WHERE n < :events) AS s"


def load(url: str, issues: int, events: int, recipients: int, batch: int) -> dict[str, Any]:
    """Generate the whole state database at `url` (empty or not: its tables are replaced)."""
    import sqlalchemy as sa

    from newsletter.state import Ledger
    from newsletter.state.database import metadata
    from newsletter.state.issues import issues as issues_table

    if issues > 1000 or recipients // batch > 2_000_000:
        raise SystemExit("at most 1,000 issues (the reader numbers must fit 64 bits)")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {META}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {NUMBERS}")
    metadata.drop_all(engine)
    engine.dispose()
    Ledger(url).close()  # the project creates its schema, indexes and all

    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    planned = plans(issues, events, yesterday)
    engine = sa.create_engine(url)
    sql = Sql(engine.dialect.name)
    started = time.perf_counter()
    with engine.connect() as conn:
        if sql.pg:
            conn.exec_driver_sql("SET synchronous_commit = off")
        else:
            conn.exec_driver_sql("PRAGMA journal_mode = OFF")  # for the load only
            conn.exec_driver_sql("PRAGMA synchronous = OFF")
            conn.exec_driver_sql("PRAGMA cache_size = -2000000")
        most = max(max(b.events for p in planned for b in p.blocks), recipients // batch)
        conn.exec_driver_sql(f"CREATE TABLE {NUMBERS} (n INTEGER PRIMARY KEY)")
        conn.execute(
            sa.text(f"INSERT INTO {NUMBERS} (n) VALUES (:n)"), [{"n": n} for n in range(most)]
        )
        conn.execute(
            sa.insert(issues_table),
            [
                {
                    "list_name": LIST,
                    "issue_date": p.date,
                    "status": "sent",
                    "subject": f"The Bench Times, {p.date:%d %B %Y}: Story 1 of the day",
                    "html": f"<p>The issue of {p.date}: stored email left out of the bench</p>",
                    "text": f"The issue of {p.date}",
                    "tokens": "email,unsubscribe_url",
                    "story_keys": json.dumps([f"{p.date}/story-{s}" for s in range(1, 6)]),
                    "transport": "sendgrid",
                    "recipients": recipients,
                    "window_start": _at(p.date, -17),
                    "window_end": _at(p.date, 7),
                    "created_at": _at(p.date, 6.9),
                    "finished_at": _at(p.date, 7.3),
                }
                for p in planned
            ],
        )
        ids = dict(conn.execute(sa.select(issues_table.c.issue_date, issues_table.c.id)).all())
        conn.commit()
        number = 0
        for p in planned:
            number = _load_issue(conn, sql, p, ids[p.date], number, recipients, batch)
            conn.commit()
            if (p.index + 1) % max(1, issues // 20) == 0 or p.index + 1 == issues:
                spent = time.perf_counter() - started
                left = spent / (p.index + 1) * (issues - p.index - 1)
                log(
                    f"  {p.index + 1} of {issues} issues, {number:,} events, "
                    f"{spent:.0f} s, about {left:.0f} s to go"
                )
        _load_days(conn, planned, ids)
        conn.exec_driver_sql(f"DROP TABLE {NUMBERS}")
        conn.commit()
        if not sql.pg:
            conn.exec_driver_sql("PRAGMA journal_mode = WAL")  # as the project keeps it
    loaded = time.perf_counter() - started
    log(f"  loaded in {loaded:.0f} s; checking every count against the raw rows ...")
    check = verify(engine, sql)
    if sql.pg:
        log("  VACUUM ANALYZE (what autovacuum would have done over the year) ...")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    params = _params(issues, events, recipients, batch)
    meta = {**params, "built": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    meta |= {"load_s": round(loaded), "checked": check}
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {META} (value TEXT NOT NULL)")
        conn.execute(sa.text(f"INSERT INTO {META} (value) VALUES (:v)"), {"v": json.dumps(meta)})
    engine.dispose()
    return meta


def _at(day: dt.date, hours: float) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(hours=hours)


def _params(issues: int, events: int, recipients: int, batch: int) -> dict[str, int]:
    return {"issues": issues, "events": events, "recipients": recipients, "batch": batch}


def _load_issue(
    conn: Any, sql: Sql, p: IssuePlan, issue: int, first: int, recipients: int, batch: int
) -> int:
    """One issue's batches, raw events and first readers; then its counts, from them."""
    import sqlalchemy as sa

    def run(statement: str, **params: object) -> Any:
        return conn.execute(sa.text(statement), {"issue": issue, **params})

    sent = _at(p.date, 7)
    run(
        "INSERT INTO batches (issue_id, seq, status, size, recipients, attempts, updated_at) "
        f"SELECT :issue, n, 'submitted', :size, :blob, 1, :at FROM {NUMBERS_UPTO}",
        events=recipients // batch,
        size=batch,
        blob=b"",
        at=sql.stamp(sent),
    )
    start = sql.stamp(sent)
    moment = sql.moment(":start", "(n * 7919 + :salt) % 43200")  # within twelve hours
    number = first
    for salt, b in enumerate(p.blocks):
        run(
            "INSERT INTO mail_events (event_id, issue_id, event, occurred_at, received_at) "
            f"SELECT {sql.event_id(':first + n')}, :issue, :event, {moment}, {moment} "
            f"FROM {NUMBERS_UPTO}",
            first=number,
            event=EVENT_OF[b.metric],
            start=start,
            salt=salt,
            events=b.events,
        )
        number += b.events
        run(
            "INSERT INTO event_readers (issue_id, metric, reader) "
            f"SELECT :issue, :metric, {READER} FROM {NUMBERS_UPTO}",
            metric=b.metric,
            base=b.base,
            readers=b.readers,
            events=b.readers,  # event n < readers is its reader's first
        )
    # clicks: each click event goes to a link by its bucket; a reader counts once a link,
    # and once a story whichever of its links they took
    clicks = p.block("click")
    weight = sum(p.weights)
    edges = [0]
    for w in p.weights:
        edges.append(edges[-1] + w)
    keys = {"base": clicks.base, "readers": clicks.readers, "events": clicks.events}
    keys |= {"salt": p.index, "weight": weight}
    spans: list[tuple[str, int, int]] = [
        (f"link:{k}", edges[k - 1], edges[k]) for k in range(1, len(LINKS) + 1)
    ]
    for position in range(1, STORIES + 1):
        mine = [k for k, link in enumerate(LINKS, start=1) if link[1] == position]
        spans.append((f"story:{position}", edges[mine[0] - 1], edges[mine[-1]]))
    for metric, low, high in spans:
        run(
            "INSERT INTO event_readers (issue_id, metric, reader) "
            f"SELECT DISTINCT :issue, :metric, {READER} FROM {NUMBERS_UPTO} "
            f"WHERE {BUCKET} >= :low AND {BUCKET} < :high",
            metric=metric,
            low=low,
            high=high,
            **keys,
        )
    by_bucket = dict(
        run(f"SELECT {BUCKET} AS b, count(*) FROM {NUMBERS_UPTO} GROUP BY {BUCKET}", **keys).all()
    )
    link_clicks = {
        f"link:{k}": sum(by_bucket.get(b, 0) for b in range(edges[k - 1], edges[k]))
        for k in range(1, len(LINKS) + 1)
    }
    readers = dict(
        run(
            "SELECT metric, count(*) FROM event_readers WHERE issue_id = :issue GROUP BY metric"
        ).all()
    )
    totals = Counter({b.metric: b.events for b in p.blocks})
    for k, (_, position, _, _) in enumerate(LINKS, start=1):
        if position is not None:
            totals[f"story:{position}"] += link_clicks[f"link:{k}"]
    conn.execute(
        sa.text(
            "INSERT INTO issue_stats (issue_id, metric, total, readers) "
            "VALUES (:issue, :metric, :total, :readers)"
        ),
        [
            {"issue": issue, "metric": m, "total": n, "readers": readers[m]}
            for m, n in totals.items()
        ],
    )
    conn.execute(
        sa.text(
            "INSERT INTO issue_links "
            "(issue_id, link_no, kind, position, title, url, clicks, readers) "
            "VALUES (:issue, :link_no, :kind, :position, :title, :url, :clicks, :readers)"
        ),
        [
            {
                **row,
                "issue": issue,
                "clicks": link_clicks.get(f"link:{row['link_no']}", 0),
                "readers": readers.get(f"link:{row['link_no']}", 0),
            }
            for row in link_rows(p)
        ],
    )
    return number


def _load_days(conn: Any, planned: list[IssuePlan], ids: dict[dt.date, int]) -> None:
    """A day of the list: its sign-ups and unsubscribes by link (the web pages' counts), and
    the first readers of the day's bounces, complaints and unsubscribe events (each issue's
    events fall on its day), counted from event_readers."""
    import sqlalchemy as sa

    losses = conn.execute(
        sa.text(
            "SELECT issue_id, metric, count(*) FROM event_readers "
            "WHERE metric IN ('bounce_hard', 'spamreport', 'unsubscribe') "
            "GROUP BY issue_id, metric"
        )
    ).all()
    of_issue = {(i, m): n for i, m, n in losses}
    rows = []
    for p in planned:
        counts = {"signup": p.signups, "unsubscribe_link": p.unsubscribe_links}
        counts |= {LOSSES[m]: of_issue[ids[p.date], m] for m in LOSSES}
        rows += [{"day": p.date, "metric": m, "count": n} for m, n in counts.items()]
    conn.execute(
        sa.text(
            "INSERT INTO list_days (list_name, day, metric, count) "
            f"VALUES ('{LIST}', :day, :metric, :count)"
        ),
        rows,
    )


def verify(engine: Any, sql: Sql) -> dict[str, Any]:
    """Every kept count against the raw rows it stands for; raises if one differs."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        stats = {
            (i, m): (t, r)
            for i, m, t, r in conn.execute(
                sa.text("SELECT issue_id, metric, total, readers FROM issue_stats")
            )
        }
        start = time.perf_counter()
        raw = conn.execute(
            sa.text("SELECT issue_id, event, count(*) FROM mail_events GROUP BY issue_id, event")
        ).all()
        naive_s = time.perf_counter() - start
        start = time.perf_counter()
        firsts = conn.execute(
            sa.text(
                "SELECT issue_id, metric, count(*) FROM event_readers GROUP BY issue_id, metric"
            )
        ).all()
        firsts_s = time.perf_counter() - start
        links = conn.execute(
            sa.text("SELECT issue_id, link_no, kind, position, clicks, readers FROM issue_links")
        ).all()
        days = {
            (d if isinstance(d, dt.date) else dt.date.fromisoformat(d), m): n
            for d, m, n in conn.execute(sa.text("SELECT day, metric, count FROM list_days"))
        }
        dates = {
            i: (d if isinstance(d, dt.date) else dt.date.fromisoformat(d))
            for i, d in conn.execute(sa.text("SELECT id, issue_date FROM issues"))
        }
        submitted = dict(
            conn.execute(
                sa.text(
                    "SELECT i.id, i.recipients - coalesce(sum(b.size), 0) FROM issues i "
                    "LEFT JOIN batches b ON b.issue_id = i.id AND b.status = 'submitted' "
                    "GROUP BY i.id, i.recipients"
                )
            ).all()
        )
    problems = _compare_events(stats, raw)
    for i, m, n in firsts:
        if m.startswith("link:"):
            continue
        if stats.get((i, m), (0, -1))[1] != n:
            problems.append(f"issue {i} {m}: {n} first readers, issue_stats says {stats.get((i, m))}")  # fmt: skip
    first = {(i, m): n for i, m, n in firsts}
    clicks: Counter[int] = Counter()
    story: Counter[tuple[int, str]] = Counter()
    for i, number, kind, position, n, readers in links:
        clicks[i] += n
        if kind == "story":
            story[i, f"story:{position}"] += n
        if number and first.get((i, f"link:{number}"), 0) != readers:
            problems.append(f"issue {i} link {number}: readers {readers}, event_readers {first.get((i, f'link:{number}'))}")  # fmt: skip
    for (i, m), (total, _) in stats.items():
        if m == "click" and clicks[i] != total:
            problems.append(f"issue {i}: {clicks[i]} clicks on its links, {total} click events")
        if m.startswith("story:") and story[i, m] != total:
            problems.append(f"issue {i} {m}: total {total}, its links' clicks {story[i, m]}")
    for i, day in dates.items():
        for metric, loss in LOSSES.items():
            if days.get((day, loss), 0) != first.get((i, metric), 0):
                problems.append(f"{day} {loss}: {days.get((day, loss))} in list_days, {first.get((i, metric))} first readers")  # fmt: skip
        if submitted[i]:
            problems.append(f"issue {i}: submitted batches differ from recipients by {submitted[i]}")  # fmt: skip
    if problems:
        raise SystemExit("the counts do not match the raw rows:\n  " + "\n  ".join(problems[:20]))
    return {
        "issues": len(dates),
        "raw_events_grouped_s": round(naive_s, 1),
        "event_readers_grouped_s": round(firsts_s, 1),
    }


def _compare_events(stats: dict[tuple[int, str], tuple[int, int]], raw: list[Any]) -> list[str]:
    """The raw events per issue and event against the kept totals."""
    expected: Counter[tuple[int, str]] = Counter()
    for (i, m), (total, _) in stats.items():
        if m in EVENT_OF:
            expected[i, EVENT_OF[m]] += total
    found = Counter({(i, e): n for i, e, n in raw})
    return [
        f"issue {i} {e}: {found[i, e]} raw events, the counts say {expected[i, e]}"
        for i, e in sorted(set(found) | set(expected))
        if found[i, e] != expected[i, e]
    ]


def stored_meta(url: str) -> dict[str, Any] | None:
    """The parameters of the data already at `url`, or None (none, or an unfinished load)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if META not in sa.inspect(conn).get_table_names():
                return None
            value = conn.execute(sa.text(f"SELECT value FROM {META}")).scalar()
            return json.loads(value) if value else None
    finally:
        engine.dispose()


def ensure_postgres_database(url: str) -> None:
    """Create the database of `url` if it does not exist (connected to `postgres`)."""
    import sqlalchemy as sa

    target = sa.engine.make_url(url)
    engine = sa.create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": target.database}
            ).scalar()
            if not exists:
                log(f"creating the database {target.database}")
                conn.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    finally:
        engine.dispose()


# -- the floor: the report's SELECTs, raw -----------------------------------------------------

FLOOR_QUERIES = (
    "SELECT id, list_name, issue_date, status, subject, transport, recipients, finished_at "
    "FROM issues WHERE subject IS NOT NULL ORDER BY list_name, issue_date",
    # every count of every issue (the recipients submitted among them, once kept)
    "SELECT issue_id, metric, total, readers FROM issue_stats",
    "SELECT list_name, day, metric, count FROM list_days",
    # the most recent issues' links, for the detail
    "SELECT issue_id, link_no, kind, position, title, url, clicks, readers FROM issue_links "
    "WHERE issue_id IN (SELECT id FROM issues ORDER BY issue_date DESC LIMIT {detail}) "
    "AND (clicks > 0 OR kind = 'story') ORDER BY issue_id, link_no",
)
# the recipients submitted, for the issues whose count is not kept in issue_stats
FLOOR_SUBMITTED = (
    "SELECT issue_id, sum(size) FROM batches WHERE status = 'submitted' "
    "AND issue_id IN ({ids}) GROUP BY issue_id"
)


def floor(url: str, detail: int = 10) -> int:
    """The least work the report's numbers need: its SELECTs through the bare driver, every
    row fetched (the batches summed only for issues whose submitted count is not kept with
    their counts, as the report does). Returns the rows read."""
    if url.startswith("sqlite"):
        import sqlite3

        db: Any = sqlite3.connect(url.split(":///", 1)[1])
    else:
        import psycopg

        db = psycopg.connect(libpq_url(url))
    try:
        found = [db.execute(query.format(detail=detail)).fetchall() for query in FLOOR_QUERIES]
        kept = {row[0] for row in found[1] if row[1] == "submitted"}
        missing = [str(row[0]) for row in found[0] if row[0] not in kept]
        if missing:
            found.append(db.execute(FLOOR_SUBMITTED.format(ids=",".join(missing))).fetchall())
    finally:
        db.close()
    return sum(len(rows) for rows in found)


def libpq_url(url: str) -> str:
    """postgresql+psycopg://... as libpq takes it."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgresql") else url


# -- timing -----------------------------------------------------------------------------------


def in_process(url: str) -> dict[str, float]:
    """One report in this process: open the ledger, the queries, the page, the CSV."""
    from newsletter.report import ReportQuery, build_report, csv_tables, render_html
    from newsletter.state import Ledger

    times = {}
    start = time.perf_counter()
    ledger = Ledger(url)
    times["open_s"] = time.perf_counter() - start
    try:
        start = time.perf_counter()
        report = build_report(ledger, ReportQuery(list_name=None, since=None, detail_issues=10))
        times["build_report_s"] = time.perf_counter() - start
        start = time.perf_counter()
        html = render_html(report)
        times["render_html_s"] = time.perf_counter() - start
        start = time.perf_counter()
        csv = csv_tables(report)
        times["csv_tables_s"] = time.perf_counter() - start
    finally:
        ledger.close()
    issues = sum(len(lst.issues) for lst in report.lists)
    times["issues"] = issues
    times["html_kb"] = round(len(html.encode()) / 1024)
    times["csv_kb"] = round(sum(len(v.encode()) for v in csv.values()) / 1024)
    return times


def floor_in_process(url: str) -> dict[str, float]:
    start = time.perf_counter()
    rows = floor(url)
    return {"floor_queries_s": time.perf_counter() - start, "floor_rows": rows}


def cli_run(folder: Path, url: str, code: Path) -> dict[str, float]:
    """`newsletter report --output FILE` as a user runs it: its own process, wall time."""
    from harness import child_env, newsletter_command, run_timed

    output = folder / "report.html"
    output.unlink(missing_ok=True)
    env = child_env(SECRET, code=code, NEWSLETTER_DATABASE_URL=url)
    command = newsletter_command(folder / "config.toml", "report", "--output", str(output))
    with (folder / "report.out").open("wb") as out, (folder / "report.err").open("wb") as err:
        timed = run_timed(command, env=env, stdout=out, stderr=err, cwd=folder)
    if timed.exit_code != 0 or not output.exists():
        printed = (folder / "report.out").read_text() + (folder / "report.err").read_text()
        raise SystemExit(f"newsletter report failed (exit {timed.exit_code}):\n{printed}")
    return {"cli_wall_s": timed.wall_s, "cli_cpu_s": timed.cpu_s, "cli_rss_mb": timed.peak_rss_mb}


def floor_process(url: str) -> dict[str, float]:
    """The floor in a process of its own (Python's start-up, the driver's import)."""
    from harness import run_timed

    command = [sys.executable, __file__, "--floor", url]
    timed = run_timed(command, env=dict(os.environ), stdout=-3, stderr=None)
    if timed.exit_code != 0:
        raise SystemExit("the floor failed")
    return {"floor_wall_s": timed.wall_s}


def phases(url: str, output: str) -> dict[str, float]:
    """What `newsletter report` does, in its order, each step timed, in a fresh process:
    where the CLI's wall time goes (the charts timed one by one)."""
    times: dict[str, float] = {}
    start = time.perf_counter()
    import newsletter.cli.commands  # noqa: F401  (the CLI's start-up)

    times["import_cli_s"] = time.perf_counter() - start
    start = time.perf_counter()
    from newsletter.report import ReportQuery, build_report, charts, render_html
    from newsletter.state import Ledger

    times["import_report_s"] = time.perf_counter() - start
    start = time.perf_counter()
    ledger = Ledger(url)
    times["open_s"] = time.perf_counter() - start
    start = time.perf_counter()
    report = build_report(ledger, ReportQuery(list_name=None, since=None, detail_issues=10))
    times["build_report_s"] = time.perf_counter() - start
    ledger.close()
    start = time.perf_counter()
    import matplotlib.backends.backend_svg
    import matplotlib.figure  # noqa: F401

    times["import_matplotlib_s"] = time.perf_counter() - start
    for name in ("rate_trend", "list_growth", "story_clicks"):
        if callable(getattr(charts, name, None)):
            setattr(charts, name, _timed(getattr(charts, name), f"chart_{name}_s", times))
    start = time.perf_counter()
    html = render_html(report)
    times["render_html_s"] = time.perf_counter() - start
    charted = sum(v for k, v in times.items() if k.startswith("chart_"))
    times["page_without_charts_s"] = times["render_html_s"] - charted
    start = time.perf_counter()
    Path(output).write_text(html, encoding="utf-8")
    times["write_s"] = time.perf_counter() - start
    return times


def _timed(function: Callable[..., Any], key: str, times: dict[str, float]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - start

    return timed


def phases_process(url: str, folder: Path, code: Path) -> dict[str, float]:
    import subprocess

    from harness import child_env

    env = child_env(SECRET, code=code, NEWSLETTER_DATABASE_URL=url)
    command = [sys.executable, __file__, "--phases", url, str(folder / "phases.html")]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"the phases run failed:\n{done.stderr}")
    times = json.loads(done.stdout.strip().splitlines()[-1])
    times["phases_wall_s"] = wall
    return {f"phase_{k}": v for k, v in times.items()}


def write_config(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stories").mkdir(exist_ok=True)
    (folder / "config.toml").write_text(
        """
[newsletter]
name = "The Bench Times"
timezone = "UTC"
postal_address = "1 Benchmark Road\\nTestville"
archive_url = "https://example.com/archive"

[sender]
from_email = "news@example.com"
from_name = "The Bench Times"

[schedule]
time = "07:00"

[[sources]]
kind = "markdown"
path = "stories"

[delivery]
transport = "sendgrid"
""",
        encoding="utf-8",
    )


def sizes(url: str) -> dict[str, Any]:
    """Rows per table and bytes on disk: the thirty million events are really there."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    found: dict[str, Any] = {"rows": {}, "mb": {}}
    with engine.connect() as conn:
        for table in TABLES:
            found["rows"][table] = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()
        if engine.dialect.name == "postgresql":
            for table in TABLES:
                size = conn.execute(
                    sa.text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table}
                ).scalar()
                found["mb"][table] = round(size / 1e6, 1)
            found["database_mb"] = round(
                conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar() / 1e6
            )
        else:
            for name, size in conn.execute(
                sa.text(
                    "SELECT tbl_name, sum(pgsize) FROM dbstat JOIN sqlite_schema USING (name) GROUP BY tbl_name"
                )
            ):
                if name in TABLES:
                    found["mb"][name] = round(size / 1e6, 1)
            path = Path(url.split(":///", 1)[1])
            found["database_mb"] = round(
                sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6
            )
    engine.dispose()
    return found


def naive(url: str) -> dict[str, float]:
    """Counting the raw events at report time instead: one GROUP BY over all of them, twice
    (the first may read them from disk, the second finds them in memory if they fit)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    times = []
    with engine.connect() as conn:
        for _ in range(2):
            start = time.perf_counter()
            rows = conn.execute(
                sa.text(
                    "SELECT issue_id, event, count(*) FROM mail_events GROUP BY issue_id, event"
                )
            ).all()
            times.append(time.perf_counter() - start)
    engine.dispose()
    return {"naive_group_by_s": times[0], "naive_again_s": times[1], "naive_rows": len(rows)}


def measure(name: str, url: str, folder: Path, runs: int, code: Path) -> dict[str, Any]:
    """One database: a warm-up round (not counted), then `runs` rounds, each running the
    five in a different order."""
    kinds: dict[str, Callable[[], dict[str, float]]] = {
        "cli": lambda: cli_run(folder, url, code),
        "phases": lambda: phases_process(url, folder, code),
        "in_process": lambda: in_process(url),
        "floor_process": lambda: floor_process(url),
        "floor_in_process": lambda: floor_in_process(url),
    }
    order = list(kinds)
    log(f"{name}: warm-up round (the first in-process report imports matplotlib) ...")
    start = time.perf_counter()
    first = {k: v for kind in order for k, v in kinds[kind]().items()}
    first["warm_up_round_s"] = time.perf_counter() - start
    results: list[dict[str, float]] = []
    for run in range(runs):
        turn = order[run % len(order) :] + order[: run % len(order)]
        log(f"{name}: run {run + 1} of {runs} ({', '.join(turn)})")
        results.append({k: v for kind in turn for k, v in kinds[kind]().items()})
    medians = {k: statistics.median(r[k] for r in results) for k in results[0]}
    each = {f"{k}_each": [round(r[k], 3) for r in results] for k in ("cli_wall_s", "floor_wall_s", "build_report_s", "render_html_s")}  # fmt: skip
    ratios = {
        "cli_over_floor": statistics.median(r["cli_wall_s"] / r["floor_wall_s"] for r in results),
        "build_over_floor": statistics.median(
            r["build_report_s"] / r["floor_queries_s"] for r in results
        ),
    }
    return {
        "database": name,
        "runs": runs,
        **{k: _round(v) for k, v in medians.items()},
        **{k: _round(v) for k, v in ratios.items()},
        **each,
        "warm_up": {k: _round(v) for k, v in first.items()},
    }


def _round(value: float) -> float:
    return round(value, 3) if isinstance(value, float) else value


# -- the report of the benchmark ----------------------------------------------------------


def markdown(results: list[dict[str, Any]]) -> Iterator[str]:
    names = [r["database"] for r in results]
    yield "| | " + " | ".join(names) + " |"
    yield "| --- |" + " ---: |" * len(names)

    def row(label: str, cell: Callable[[dict[str, Any]], str]) -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in results) + " |"

    def s(key: str) -> Callable[[dict[str, Any]], str]:
        def cell(r: dict[str, Any]) -> str:
            if key not in r:
                return "–"
            return f"{r[key]:.3f} s" if r[key] < 10 else f"{r[key]:.1f} s"

        return cell

    yield row(
        "**`newsletter report --output FILE`, wall**", lambda r: f"**{r['cli_wall_s']:.2f} s**"
    )
    yield row("the runs", lambda r: ", ".join(f"{x:.2f}" for x in r["cli_wall_s_each"]))
    yield row("its CPU / peak RSS", lambda r: f"{r['cli_cpu_s']:.2f} s / {r['cli_rss_mb']:.0f} MB")
    yield row("the floor process, wall", s("floor_wall_s"))
    yield row("**CLI ÷ floor process**", lambda r: f"**{r['cli_over_floor']:.1f}×**")
    yield row("*its steps, timed in a fresh process:*", lambda r: "")
    steps = (
        ("import newsletter.cli (start-up)", "phase_import_cli_s"),
        ("import newsletter.report", "phase_import_report_s"),
        ("open the ledger", "phase_open_s"),
        ("`build_report` (the queries)", "phase_build_report_s"),
        ("import matplotlib", "phase_import_matplotlib_s"),
        ("chart: open and click rates per issue", "phase_chart_rate_trend_s"),
        ("chart: list growth per day", "phase_chart_list_growth_s"),
        ("chart: clicks per story", "phase_chart_story_clicks_s"),
        ("the page without its charts (Jinja)", "phase_page_without_charts_s"),
        ("that process, wall", "phase_phases_wall_s"),
    )
    for label, key in steps:
        yield row(label, s(key))
    yield row("*in this process, warm:*", lambda r: "")
    yield row("`build_report`", s("build_report_s"))
    yield row("`render_html`", s("render_html_s"))
    yield row("`csv_tables`", s("csv_tables_s"))
    yield row("the floor's SELECTs", s("floor_queries_s"))
    yield row(
        "**`build_report` ÷ the floor's SELECTs**", lambda r: f"**{r['build_over_floor']:.1f}×**"
    )
    yield row("naive: `GROUP BY` over the raw events", s("naive_group_by_s"))
    yield row("the same, again", s("naive_again_s"))
    yield row(
        "first report of the run (warm-up), CLI wall",
        lambda r: f"{r['warm_up']['cli_wall_s']:.2f} s",
    )
    yield row("page / CSV", lambda r: f"{r['html_kb']} KB / {r['csv_kb']} KB")
    for table in TABLES:
        yield row(
            f"`{table}` rows (MB)",
            lambda r, t=table: f"{r['rows'][t]:,} ({r['mb'].get(t, 0):,.0f})",
        )
    yield row("database on disk", lambda r: f"{r['database_mb'] / 1000:.1f} GB")


# -- main -------------------------------------------------------------------------------------


def prepare(name: str, url: str, args: argparse.Namespace) -> None:
    wanted = _params(args.issues, args.events, args.recipients, args.batch)
    meta = None if args.rebuild else stored_meta(url)
    if meta is not None and all(meta.get(k) == v for k, v in wanted.items()):
        log(f"{name}: reusing the data built {meta['built']} (--rebuild to generate it again)")
        return
    log(f"{name}: generating {args.issues} issues, {args.events:,} events (minutes) ...")
    meta = load(url, args.issues, args.events, args.recipients, args.batch)
    log(f"{name}: done, {meta}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-report"))
    parser.add_argument(
        "--postgres",
        default=os.environ.get("NEWSLETTER_BENCH_POSTGRES_URL"),
        help="a PostgreSQL URL (postgresql+psycopg://...); its database is created if missing",
    )
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true", help="generate the data again")
    parser.add_argument("--issues", type=int, default=365)
    parser.add_argument("--events", type=int, default=30_000_000)
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--load-only", action="store_true", help="generate and check, no timing")
    parser.add_argument("--floor", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--phases", nargs=2, metavar=("URL", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        print(floor(args.floor))
        return
    if args.phases:
        print(json.dumps(phases(*args.phases)))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import compileall
    import shutil

    from harness import (
        REPO,
        check_snapshot,
        child_env,
        environment,
        git_commit,
        report,
        snapshot_package,
        source_fingerprint,
    )

    args.workdir.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    # the package is edited and committed meanwhile: every run, in this process and in the
    # children, uses one copy of it, byte-compiled as an install would be
    code = args.workdir / "code"
    shutil.rmtree(code, ignore_errors=True)
    snapshot_package(code)
    measured = source_fingerprint(code / "newsletter")
    compileall.compile_dir(str(code / "newsletter"), quiet=1)
    check_snapshot(code, measured, child_env(SECRET, code=code), args.workdir)
    sys.path.insert(0, str(code))
    for module in [m for m in sys.modules if m.split(".")[0] == "newsletter"]:
        del sys.modules[module]  # the live package, imported to copy it
    databases = []
    if not args.no_sqlite:
        databases.append(("SQLite", f"sqlite:///{args.workdir.resolve() / 'state.db'}"))
    if args.postgres:
        ensure_postgres_database(args.postgres)
        databases.append(("PostgreSQL", args.postgres))
    else:
        log("no --postgres URL (nor NEWSLETTER_BENCH_POSTGRES_URL): PostgreSQL is skipped")
    for name, url in databases:
        prepare(name, url, args)
    if args.load_only:
        return
    import newsletter

    if not Path(newsletter.__file__).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"this process imports {newsletter.__file__}, not the copy in {code}")
    folder = args.workdir / "paper"
    write_config(folder)
    results = []
    for name, url in databases:
        result = measure(name, url, folder, args.runs, code)
        result |= naive(url)
        result |= sizes(url)
        changed = source_fingerprint(REPO / "newsletter") != measured
        result["code"] = {"commit": commit, "package_hash": measured, "live_changed_since": changed}  # fmt: skip
        result["environment"] = environment("sqlalchemy", "psycopg", "matplotlib")
        results.append(result)
        report(result)
    print()
    for line in markdown(results):
        print(line)


if __name__ == "__main__":
    main()
