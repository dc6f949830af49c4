"""Taking an issue back before it goes out: `newsletter cancel`, `pause`, `resume`.

Only an issue submitted ahead (`send --at`, `[schedule] submit_ahead`) can be:
SendGrid holds it under its attempt's batch ID until the send time, and honours
a cancel or pause until ten minutes before (`scheduling.py`). A cancelled issue
leaves the story history and the archive; `send --replace` sends a corrected one.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from newsletter.app import App
from newsletter.errors import NewsletterError
from newsletter.joining import claimed_elsewhere
from newsletter.words import moment

ACTIONS = {"cancel": "cancel", "pause": "pause", "resume": None}  # -> SendGrid's status


def change_schedule(
    app: App,
    list_name: str,
    date: dt.date,
    action: str,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Cancel, pause or resume the date's scheduled issue; what was done, in a sentence."""
    ledger, zone = app.ledger, app.config.newsletter.timezone
    issue = ledger.issue(list_name, date)
    if issue is None:
        raise NewsletterError(f"no issue for list {list_name!r} on {date}")
    attempt = ledger.latest_attempt(issue.id)
    if attempt is None:
        raise NewsletterError(
            f"the {date} issue for list {list_name!r} was not submitted ahead of its time "
            "(send --at, or [schedule] submit_ahead), so it went out at once: nothing can "
            "take it back"
        )
    if issue.status == "cancelled":
        raise NewsletterError(
            f"the {date} issue for list {list_name!r} is cancelled already; "
            "send --replace sends a corrected one"
        )
    if claimed_elsewhere(issue, app.config.delivery.stale_claim) or issue.status == "sending":
        raise NewsletterError(
            f"the {date} issue for list {list_name!r} is being sent right now "
            f"({issue.claimed_by}): stop that send first, then {action} it"
        )
    wanted = {"cancel": "active paused", "pause": "active", "resume": "paused"}[action]
    if attempt.status not in wanted.split():
        raise NewsletterError(
            f"the {date} issue for list {list_name!r} is {attempt.status}: nothing to {action}"
        )
    app.parts.scheduling(ledger, sleep).set_status(attempt, ACTIONS[action])
    when = moment(attempt.send_at, zone)
    if action == "cancel":
        ledger.cancel_issue(attempt, f"cancelled before its send time ({when})")
        return (
            f"Cancelled the {date} issue for list {list_name!r} (it was due at {when}): "
            "SendGrid will not deliver it. `newsletter send --replace` sends a corrected one."
        )
    ledger.set_attempt_status(attempt, "paused" if action == "pause" else "active")
    if action == "pause":
        return (
            f"Paused the {date} issue for list {list_name!r}: SendGrid holds it past its "
            f"time ({when}) until `newsletter resume`, for at most 72 hours."
        )
    return f"Resumed the {date} issue for list {list_name!r}: it goes out at {when} (or now)."
