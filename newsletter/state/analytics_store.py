"""What the report reads: the counts `analytics` keeps as events arrive, each read one
indexed query over a few hundred rows for a year of issues; and the prune of the raw
events and per-reader rows, which keeps those counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from newsletter.state.analytics import (
    LIST_LOSSES,
    SUBMITTED,
    dialect_insert,
    event_readers,
    issue_links_table,
    issue_stats,
    list_days,
    pruned_issues,
    reader_activity,
)
from newsletter.state.database import Database, chunks, utcnow
from newsletter.state.issues import issues


@dataclass(frozen=True)
class IssueFacts:
    """An issue as the report needs it, without its stored email."""

    id: int
    list_name: str
    issue_date: dt.date
    status: str
    subject: str | None
    transport: str | None
    recipients: int
    submitted: int
    finished_at: dt.datetime | None


@dataclass(frozen=True)
class LinkCount:
    issue_id: int
    number: int
    kind: str
    position: int | None
    title: str | None
    url: str
    clicks: int
    readers: int


class AnalyticsStore(Database):
    """The counts behind `newsletter report`: each read is one indexed query."""

    def report_issues(self, list_name: str | None, since: dt.date | None) -> list[IssueFacts]:
        """The planned issues (oldest first per list), each with how many were submitted."""
        query = (
            sa.select(
                issues.c.id,
                issues.c.list_name,
                issues.c.issue_date,
                issues.c.status,
                issues.c.subject,
                issues.c.transport,
                issues.c.recipients,
                issues.c.finished_at,
            )
            .where(issues.c.subject.is_not(None))
            .order_by(issues.c.list_name, issues.c.issue_date)
        )
        if list_name is not None:
            query = query.where(issues.c.list_name == list_name)
        if since is not None:
            query = query.where(issues.c.issue_date >= since)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        submitted = self._submitted({r.id: r.status for r in rows})
        return [
            IssueFacts(
                id=r.id,
                list_name=r.list_name,
                issue_date=r.issue_date,
                status=r.status,
                subject=r.subject,
                transport=r.transport,
                recipients=int(r.recipients or 0),
                submitted=submitted.get(r.id, 0),
                finished_at=r.finished_at,
            )
            for r in rows
        ]

    def _submitted(self, statuses: Mapping[int, str]) -> dict[int, int]:
        """Recipients submitted per issue. A sent issue's count never changes: it is
        summed from its batches once and kept with its counts, so a year of issues is
        not a year of batch rows read again (from a cold disk, 15 s for 365,000)."""
        from newsletter.state.batches import batches

        found: dict[int, int] = {}
        t = issue_stats
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(statuses)):
                kept = sa.select(t.c.issue_id, t.c.total).where(
                    t.c.issue_id.in_(chunk), t.c.metric == SUBMITTED
                )
                found.update((i, int(n)) for i, n in conn.execute(kept))
        missing = sorted(set(statuses) - set(found))
        if not missing:
            return found
        with self.engine.begin() as conn:
            for chunk in chunks(missing):
                summed = dict.fromkeys(chunk, 0)
                query = (
                    sa.select(batches.c.issue_id, sa.func.sum(batches.c.size))
                    .where(batches.c.issue_id.in_(chunk), batches.c.status == "submitted")
                    .group_by(batches.c.issue_id)
                )
                summed.update((i, int(n or 0)) for i, n in conn.execute(query))
                found.update(summed)
                final = [
                    {"issue_id": i, "metric": SUBMITTED, "total": n, "readers": n}
                    for i, n in summed.items()
                    if statuses[i] == "sent"
                ]
                if final:
                    conn.execute(dialect_insert(conn)(t).on_conflict_do_nothing(), final)
        return found

    def issue_stats(self, issue_ids: Iterable[int]) -> dict[int, dict[str, tuple[int, int]]]:
        """issue -> metric -> (events, readers)."""
        found: dict[int, dict[str, tuple[int, int]]] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(issue_ids)):
                query = sa.select(issue_stats).where(issue_stats.c.issue_id.in_(chunk))
                for row in conn.execute(query):
                    found.setdefault(row.issue_id, {})[row.metric] = (
                        int(row.total),
                        int(row.readers),
                    )
        return found

    def link_counts(self, issue_ids: Iterable[int]) -> list[LinkCount]:
        """Every link of these issues that was clicked, and every story link (clicked or not)."""
        found: list[LinkCount] = []
        t = issue_links_table
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(issue_ids)):
                query = (
                    sa.select(t)
                    .where(t.c.issue_id.in_(chunk), sa.or_(t.c.clicks > 0, t.c.kind == "story"))
                    .order_by(t.c.issue_id, t.c.link_no)
                )
                found.extend(
                    LinkCount(r.issue_id, r.link_no, r.kind, r.position, r.title, r.url,
                              int(r.clicks), int(r.readers))
                    for r in conn.execute(query)
                )  # fmt: skip
        return found

    def list_days(
        self, list_name: str | None, since: dt.date | None
    ) -> dict[str, dict[dt.date, dict[str, int]]]:
        """list -> day -> metric -> count."""
        query = sa.select(list_days)
        if list_name is not None:
            query = query.where(list_days.c.list_name == list_name)
        if since is not None:
            query = query.where(list_days.c.day >= since)
        found: dict[str, dict[dt.date, dict[str, int]]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                found.setdefault(row.list_name, {}).setdefault(row.day, {})[row.metric] = int(
                    row.count
                )
        return found

    def readers_of_links(self, issue_ids: Iterable[int]) -> dict[tuple[int, int], list[str]]:
        """(issue, link) -> addresses that clicked it: only kept with per-recipient analytics."""
        found: dict[tuple[int, int], set[str]] = {}
        t = reader_activity
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(issue_ids)):
                query = sa.select(t.c.issue_id, t.c.link_no, t.c.email).where(
                    t.c.issue_id.in_(chunk), t.c.metric == "click", t.c.link_no.is_not(None)
                )
                for issue_id, link, email in conn.execute(query):
                    found.setdefault((issue_id, link), set()).add(email)
        return {key: sorted(emails) for key, emails in found.items()}

    def prune_events(self, before: dt.datetime) -> dict[str, int]:
        """Delete raw events and per-reader rows older than `before`; counts are kept.

        An issue from before the cut-off has its reader hashes deleted and is marked,
        so an event that still comes in for it adds to its totals only; the hashes of
        the readers it lost (unsubscribes, complaints, hard bounces: a few, and each
        once) are kept, so a late loss still counts once per reader.
        """
        from newsletter.state.events import mail_events

        now = utcnow()
        with self._atomic() as conn:
            old = [
                row[0]
                for row in conn.execute(
                    sa.select(issues.c.id).where(
                        issues.c.issue_date < before.date(),
                        issues.c.id.not_in(sa.select(pruned_issues.c.issue_id)),
                    )
                )
            ]
            readers = 0
            for chunk in chunks(old):
                readers += conn.execute(
                    sa.delete(event_readers).where(
                        event_readers.c.issue_id.in_(chunk),
                        event_readers.c.metric.not_in(sorted(LIST_LOSSES)),
                    )
                ).rowcount
                conn.execute(
                    sa.insert(pruned_issues), [{"issue_id": i, "pruned_at": now} for i in chunk]
                )
            events = conn.execute(
                sa.delete(mail_events).where(mail_events.c.received_at < before)
            ).rowcount
            activity = conn.execute(
                sa.delete(reader_activity).where(reader_activity.c.occurred_at < before)
            ).rowcount
        return {
            "events": events,
            "reader_hashes": readers,
            "activity": activity,
            "issues": len(old),
        }
