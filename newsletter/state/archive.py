"""The archive's queries: the issues that went out, as the public archive shows them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa

from newsletter.state.database import Database
from newsletter.state.issues import IssueRow, _issue_row, issues


class ArchiveStore(Database):
    """Sent issues only, read-only: what `/archive` needs."""

    def sent_issues(self, list_names: Sequence[str], limit: int = 100) -> list[IssueRow]:
        """Issues that went out to these lists, newest first (the public archive)."""
        query = (
            sa.select(issues)
            .where(issues.c.status == "sent", issues.c.list_name.in_(list(list_names)))
            .order_by(issues.c.issue_date.desc(), issues.c.id.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_issue_row(r) for r in conn.execute(query)]

    def sent_issue(self, list_names: Sequence[str], date: dt.date) -> IssueRow | None:
        """The issue of `date` as the first of these lists got it, if one was sent."""
        query = sa.select(issues).where(
            issues.c.status == "sent",
            issues.c.issue_date == date,
            issues.c.list_name.in_(list(list_names)),
        )
        with self.engine.connect() as conn:
            rows = {row.list_name: _issue_row(row) for row in conn.execute(query)}
        return next((rows[name] for name in list_names if name in rows), None)
