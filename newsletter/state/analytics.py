"""The counts the report reads (per issue, per link, per list and day), kept up to date
as events arrive so that a year of issues is a few hundred rows to read
(`analytics_store` reads them).

Every count is added in the transaction that records its events (`EventStore`), so
a redelivered batch adds nothing. "Readers" counts are unique per issue: the first
event of a kind for a reader adds one. A reader is a keyed 64-bit hash of the issue
and the address (`ReaderKeys`), so nobody can be followed from one issue to the
next, and the hashes are per-recipient data: `newsletter events prune` deletes them
with the raw events; the counts stay. Addresses are stored only when the newsletter
asks for per-recipient activity (`[analytics] per_recipient = true`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.links import (
    OTHER,
    STORY,
    IssueLink,
    LinkMatcher,
    issue_links,
    normalise,
    without_query,
)
from newsletter.state.database import UTCDateTime, metadata
from newsletter.state.issues import issues, lists_of

# metric -> (total events, unique readers) of one issue
issue_stats = sa.Table(
    "issue_stats",
    metadata,
    sa.Column("issue_id", sa.Integer, primary_key=True),
    sa.Column("metric", sa.String(24), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False),
    sa.Column("readers", sa.BigInteger, nullable=False),
)

# who has been counted for a metric of an issue (prunable; see the module docstring)
event_readers = sa.Table(
    "event_readers",
    metadata,
    sa.Column("issue_id", sa.Integer, primary_key=True),
    sa.Column("metric", sa.String(24), primary_key=True),
    sa.Column("reader", sa.BigInteger, primary_key=True),
)

# the links of an issue, found in its email at its first click, with their clicks
issue_links_table = sa.Table(
    "issue_links",
    metadata,
    sa.Column("issue_id", sa.Integer, primary_key=True),
    sa.Column("link_no", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("position", sa.Integer),
    sa.Column("title", sa.Text),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("clicks", sa.BigInteger, nullable=False),
    sa.Column("readers", sa.BigInteger, nullable=False),
)

# a list's day: sign-ups, unsubscribes (by link and by the mail service), bounces, complaints
list_days = sa.Table(
    "list_days",
    metadata,
    sa.Column("list_name", sa.String(64), primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("metric", sa.String(24), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

# issues whose reader hashes were pruned: later events add to totals, not to readers
pruned_issues = sa.Table(
    "pruned_issues",
    metadata,
    sa.Column("issue_id", sa.Integer, primary_key=True),
    sa.Column("pruned_at", UTCDateTime(), nullable=False),
)

# who did what, kept only with `[analytics] per_recipient = true`
reader_activity = sa.Table(
    "reader_activity",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("issue_id", sa.Integer, nullable=False),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("metric", sa.String(24), nullable=False),
    sa.Column("link_no", sa.Integer),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
)
sa.Index("ix_reader_activity_issue", reader_activity.c.issue_id, reader_activity.c.link_no)

ISSUE_METRICS = (
    "delivered",
    "deferred",
    "bounce_hard",
    "bounce_soft",
    "dropped",
    "spamreport",
    "unsubscribe",
    "open",
    "machine_open",
    "click",
)
# list_days metrics
SIGNUP, UNSUBSCRIBE_LINK, UNSUBSCRIBE_EVENT, BOUNCE, COMPLAINT = (
    "signup",
    "unsubscribe_link",
    "unsubscribe_event",
    "bounce",
    "complaint",
)
# a first reader of these issue metrics is also a loss for the list that day
LIST_LOSSES = {"bounce_hard": BOUNCE, "spamreport": COMPLAINT, "unsubscribe": UNSUBSCRIBE_EVENT}
SUBMITTED = "submitted"  # kept in issue_stats for sent issues (AnalyticsStore._submitted)
MAX_LINKS = 500  # links kept per issue; clicks on further unknown URLs count as one "other"


class ReaderKeys:
    """The keyed hash that makes a reader countable once per issue without naming them."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.blake2b(
            b"newsletter readers\0" + secret.encode(), digest_size=32
        ).digest()

    def __call__(self, issue_id: int, email: str) -> int:
        digest = hashlib.blake2b(
            f"{issue_id}\0{email.strip().lower()}".encode(), key=self._key, digest_size=8
        ).digest()
        return int.from_bytes(digest, "big", signed=True)


@dataclass(frozen=True)
class Counted:
    """One event as the counts see it (built from a MailEvent by the event store)."""

    issue_id: int
    metric: str
    reader: int
    email: str
    url: str | None
    day: dt.date
    occurred_at: dt.datetime


def metric_of(event: str, bounce_type: str | None, machine: bool) -> str | None:
    """The issue metric a SendGrid event adds to, or None (processed, resubscribes...)."""
    if event == "bounce":
        return "bounce_soft" if bounce_type == "blocked" else "bounce_hard"
    if event in ("unsubscribe", "group_unsubscribe"):
        return "unsubscribe"
    if event == "open":
        return "machine_open" if machine else "open"
    if event in ("delivered", "deferred", "dropped", "spamreport", "click"):
        return event
    return None


def add_counts(conn: sa.Connection, counted: Sequence[Counted], per_recipient: bool) -> None:
    """Add new events to the counts, in the caller's transaction."""
    if not counted:
        return
    ids = sorted({c.issue_id for c in counted})
    known = lists_of(conn, ids)
    counted = [c for c in counted if c.issue_id in known]  # a test send or a deleted issue
    if not counted:
        return
    pruned = set(
        conn.execute(
            sa.select(pruned_issues.c.issue_id).where(pruned_issues.c.issue_id.in_(ids))
        ).scalars()
    )
    link_of = _links_clicked(conn, [c for c in counted if c.metric == "click"])

    totals: Counter[tuple[int, str]] = Counter()
    link_totals: Counter[tuple[int, int]] = Counter()
    firsts: dict[tuple[int, str, int], Counted] = {}
    for c in counted:
        totals[c.issue_id, c.metric] += 1
        # a pruned issue keeps the hashes of the readers it lost: those count on, once each
        if c.issue_id not in pruned or c.metric in LIST_LOSSES:
            firsts.setdefault((c.issue_id, c.metric, c.reader), c)
        link = link_of.get((c.issue_id, c.url)) if c.metric == "click" else None
        if link is not None:
            link_totals[c.issue_id, link.number] += 1
            if c.issue_id not in pruned:
                firsts.setdefault((c.issue_id, f"link:{link.number}", c.reader), c)
            # a story read, or a share, once per reader whichever of its links they took
            if link.kind == STORY and link.position is not None:
                whole = f"story:{link.position}"
            else:
                whole = f"group:{link.kind}"
            totals[c.issue_id, whole] += 1
            if c.issue_id not in pruned:
                firsts.setdefault((c.issue_id, whole, c.reader), c)

    # every write below goes in key order: two deliveries at once on PostgreSQL then take
    # their row locks in the same order, and wait for each other instead of deadlocking
    new = _insert_firsts(conn, sorted(firsts))
    readers: Counter[tuple[int, str]] = Counter((i, m) for i, m, _ in new)
    stat_rows = [
        {"issue_id": i, "metric": m, "total": n, "readers": readers.get((i, m), 0)}
        for (i, m), n in sorted(totals.items())
    ]
    _add(conn, issue_stats, ("issue_id", "metric"), stat_rows, ("total", "readers"))
    link_rows = [
        {
            "issue_id": i,
            "link_no": link,
            "clicks": n,
            "readers": readers.get((i, f"link:{link}"), 0),
        }
        for (i, link), n in sorted(link_totals.items())
    ]
    for row in link_rows:
        conn.execute(
            sa.update(issue_links_table)
            .where(
                issue_links_table.c.issue_id == row["issue_id"],
                issue_links_table.c.link_no == row["link_no"],
            )
            .values(
                clicks=issue_links_table.c.clicks + row["clicks"],
                readers=issue_links_table.c.readers + row["readers"],
            )
        )
    losses: Counter[tuple[str, dt.date, str]] = Counter()
    for issue_id, metric, reader in new:
        if metric in LIST_LOSSES:
            losses[known[issue_id], firsts[issue_id, metric, reader].day, LIST_LOSSES[metric]] += 1
    add_list_days(conn, losses)
    if per_recipient:
        rows = [
            {
                "issue_id": c.issue_id,
                "email": c.email.strip().lower(),
                "metric": c.metric,
                "link_no": _number(link_of.get((c.issue_id, c.url)))
                if c.metric == "click"
                else None,
                "occurred_at": c.occurred_at,
            }
            for c in counted
        ]
        conn.execute(sa.insert(reader_activity), rows)


def _number(link: IssueLink | None) -> int | None:
    return None if link is None else link.number


def add_list_days(conn: sa.Connection, counts: Mapping[tuple[str, dt.date, str], int]) -> None:
    rows = [
        {"list_name": name, "day": day, "metric": metric, "count": n}
        for (name, day, metric), n in sorted(counts.items())
        if n
    ]
    _add(conn, list_days, ("list_name", "day", "metric"), rows, ("count",))


def _insert_firsts(
    conn: sa.Connection, keys: list[tuple[int, str, int]]
) -> list[tuple[int, str, int]]:
    """Record (issue, metric, reader) triples; returns those not there before."""
    if not keys:
        return []
    insert = dialect_insert(conn)(event_readers).on_conflict_do_nothing()
    statement = insert.returning(
        event_readers.c.issue_id, event_readers.c.metric, event_readers.c.reader
    )
    rows = [{"issue_id": i, "metric": m, "reader": r} for i, m, r in keys]
    new: list[tuple[int, str, int]] = []
    for start in range(0, len(rows), 1000):
        result = conn.execute(statement, rows[start : start + 1000])
        new.extend((int(i), m, int(r)) for i, m, r in result)
    return new


def _add(
    conn: sa.Connection,
    table: sa.Table,
    keys: tuple[str, ...],
    rows: list[dict[str, object]],
    columns: tuple[str, ...],
) -> None:
    """Insert each row, or add its `columns` to the row already there (one statement each
    batch; concurrent writers add, they never overwrite)."""
    if not rows:
        return
    insert = dialect_insert(conn)(table)
    statement = insert.on_conflict_do_update(
        index_elements=list(keys),
        set_={name: table.c[name] + insert.excluded[name] for name in columns},
    )
    for start in range(0, len(rows), 1000):
        conn.execute(statement, rows[start : start + 1000])


def dialect_insert(conn: sa.Connection):  # type: ignore[no-untyped-def]
    """The database's own INSERT, for ON CONFLICT (imported when first used: the
    PostgreSQL dialect's module is a twentieth of a second every command would pay)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


# -- links --------------------------------------------------------------------------


def _links_clicked(
    conn: sa.Connection, clicks: Sequence[Counted]
) -> dict[tuple[int, str | None], IssueLink]:
    """(issue, clicked URL) -> the issue's link number, finding an issue's links the first
    time one of its links is clicked and adding URLs it did not carry as "other"."""
    wanted: dict[int, set[str]] = {}
    for c in clicks:
        if c.url:
            wanted.setdefault(c.issue_id, set()).add(c.url)
    found: dict[tuple[int, str | None], IssueLink] = {}
    for issue_id, urls in wanted.items():
        matcher = LinkMatcher(_stored_links(conn, issue_id))
        extra: dict[str, IssueLink] = {}
        for url in sorted(urls):
            link = matcher.match(url)
            if link is None:
                key = without_query(normalise(url))
                if key not in extra:
                    extra[key] = IssueLink(_add_other_link(conn, issue_id, key), OTHER, key)
                link = extra[key]
            found[issue_id, url] = link
    return found


def _stored_links(conn: sa.Connection, issue_id: int) -> list[IssueLink]:
    rows = conn.execute(
        sa.select(issue_links_table)
        .where(issue_links_table.c.issue_id == issue_id)
        .order_by(issue_links_table.c.link_no)
    ).all()
    if rows:
        return [
            IssueLink(r.link_no, r.kind, r.url, r.position, r.title) for r in rows if r.link_no > 0
        ]
    html = conn.execute(sa.select(issues.c.html).where(issues.c.id == issue_id)).scalar_one()
    links = issue_links(html or "")
    rows_to_add = [
        {
            "issue_id": issue_id,
            "link_no": link.number,
            "kind": link.kind,
            "position": link.position,
            "title": link.title,
            "url": link.url,
            "clicks": 0,
            "readers": 0,
        }
        for link in links
    ]
    # link 0: clicks on URLs past MAX_LINKS; present from the start so that it is never raced
    rows_to_add.append(
        {**dict.fromkeys(("position", "title")), "issue_id": issue_id, "link_no": 0,
         "kind": OTHER, "url": "", "clicks": 0, "readers": 0}
    )  # fmt: skip
    conn.execute(dialect_insert(conn)(issue_links_table).on_conflict_do_nothing(), rows_to_add)
    return links


def _add_other_link(conn: sa.Connection, issue_id: int, url: str) -> int:
    """A clicked URL the email did not carry (a redirect, a link SendGrid rewrote): kept
    as an "other" link of the issue, up to MAX_LINKS of them (then link 0).

    Two deliveries adding a link at once on PostgreSQL may pick the same number: the
    loser's insert does nothing, and it looks again (seeing the winner's row) before
    taking the next number.
    """
    t = issue_links_table
    for _ in range(10):
        existing = conn.execute(
            sa.select(t.c.link_no).where(t.c.issue_id == issue_id, t.c.url == url)
        ).scalar()
        if existing is not None:
            return int(existing)
        last = conn.execute(
            sa.select(sa.func.max(t.c.link_no)).where(t.c.issue_id == issue_id)
        ).scalar_one()
        number = int(last or 0) + 1
        if number > MAX_LINKS:
            break
        inserted = conn.execute(
            dialect_insert(conn)(t).on_conflict_do_nothing().returning(t.c.link_no),
            [{"issue_id": issue_id, "link_no": number, "kind": OTHER, "position": None,
              "title": None, "url": url, "clicks": 0, "readers": 0}],
        ).first()  # fmt: skip
        if inserted is not None:
            return number
    return 0
