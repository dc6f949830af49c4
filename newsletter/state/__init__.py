"""The SQL state of a newsletter (SQLAlchemy Core): one database, any SQLAlchemy URL.

One module per concern, each owning its tables and their queries:

    database       the engine, the schema (created under a lock), the one transaction
                   helper, database failures as one LedgerError line
    issues         issues: the per-(list, date) claim, the stored plan, finish, history
    helpers        senders that join an issue another process claimed (`send --join`)
    attempts       scheduled attempts: an issue submitted ahead under a SendGrid batch ID
    batches        batches and the send state machine, progress, who is in doubt
    suppressions   suppressions (every list or one) and sign-up consents
    events         mail events, applied once each, and their counts
    analytics      what the report reads: per-issue counts, clicks per link, a list's
                   days, kept up to date as events arrive; pruning the raw events
    archive        the sent issues, as the public archive shows them
    feeds          the feed cache
    admin          the editor's sessions for /admin/ and the sign-in forms already used

A caller names the store it uses (`BatchStore`, `SuppressionStore`, ...); the
composition root opens one `Ledger`, which is every store at once over one engine.
Importing this package imports every module, so any store creates the whole schema.
"""

from __future__ import annotations

from newsletter.state.admin import AdminSessionStore
from newsletter.state.analytics_store import AnalyticsStore
from newsletter.state.archive import ArchiveStore
from newsletter.state.attempts import AttemptStore
from newsletter.state.batches import BatchStore
from newsletter.state.database import Database
from newsletter.state.events import EventStore
from newsletter.state.feeds import FeedCacheStore
from newsletter.state.helpers import HelperStore
from newsletter.state.issues import IssueStore
from newsletter.state.suppressions import SuppressionStore


class Ledger(
    IssueStore,
    HelperStore,
    AttemptStore,
    BatchStore,
    SuppressionStore,
    EventStore,
    ArchiveStore,
    FeedCacheStore,
    AnalyticsStore,
    AdminSessionStore,
):
    """The whole state database in one handle, for the composition root (and tests).

    Every store shares `Database`'s engine, so one Ledger opens one engine;
    hand each caller the store it needs, typed as that store.
    """


__all__ = [
    "AdminSessionStore",
    "AnalyticsStore",
    "ArchiveStore",
    "AttemptStore",
    "BatchStore",
    "Database",
    "EventStore",
    "FeedCacheStore",
    "HelperStore",
    "IssueStore",
    "Ledger",
    "SuppressionStore",
]
