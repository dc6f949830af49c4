"""What `newsletter send` says when it is done: sent, resumed, stopped or failed, and
who, by address, is in doubt or was skipped."""

from __future__ import annotations

from rich.text import Text

from newsletter.cli.base import err, out
from newsletter.models import SendReport
from newsletter.words import moment, noun, plural


def _print_report(r: SendReport) -> None:
    where = f"list {r.list_name!r}, {r.date}"
    extras = []
    if r.suppressed:
        extras.append(f"{plural(r.suppressed, 'suppressed address')} skipped")
    if r.duplicates:
        extras.append(f"{plural(r.duplicates, 'duplicate row')} ignored")
    tail = f" ({'; '.join(extras)})" if extras else ""
    if r.outcome == "sent" and r.send_at is not None:
        _print_scheduled(r, where, tail)
    elif r.outcome == "sent":
        of = f" of {r.recipients:,}" if r.skipped else ""
        out.print(
            Text.assemble(("Sent", "green")),
            f"{r.subject!r} to {r.delivered:,}{of} {noun(r.recipients if of else r.delivered, 'recipient')} "
            f"of {where} in {plural(r.batches, 'batch')} via {r.transport}{tail}.",
        )
        if r.transport == "sendgrid":
            out.print("Submitted to SendGrid; delivery is reported by SendGrid's events.")
    elif r.outcome == "test_sent":
        out.print(
            Text.assemble(("Test send", "green")),
            f"{r.subject!r} to {plural(r.recipients, 'recipient')} via {r.transport}{tail}.",
        )
    elif r.outcome == "already_sent":
        out.print(
            f"The issue for {where} was already sent ({plural(r.recipients, 'recipient')}): "
            "nothing to do."
        )
    elif r.outcome == "empty":
        out.print(f"{r.detail} Nothing sent (pass --allow-empty to send anyway).")
    elif r.outcome == "dry_run":
        out.print(
            f"Dry run: would send {r.subject!r} to {plural(r.recipients, 'recipient')} of "
            f"{where} in {plural(r.batches, 'batch')} via {r.transport}{tail}. Nothing was sent."
        )
        if r.detail:
            out.print(r.detail)
    elif r.outcome == "cancelled":
        out.print("Not sent.")
    elif r.outcome == "was_cancelled":
        err.print(
            Text.assemble(("error:", "bold red"), f" the issue for {where} was cancelled;"),
            "send a corrected one with --replace",
        )
    elif r.outcome == "partly_sent":
        assert r.next_due is not None
        out.print(
            Text.assemble(("Sent", "green")),
            f"{r.subject!r} to {r.delivered:,} of {plural(r.recipients, 'recipient')} of "
            f"{where} via {r.transport}{tail}; {r.waiting:,} get it at the send time on their "
            f"own clock, the first at {moment(r.next_due, r.timezone)}: `newsletter schedule` "
            "sends them then (or run the same command again then).",
        )
    elif r.outcome == "helped":
        out.print(
            Text.assemble(("Helped", "green")),
            f"send {r.subject!r} to {where} ({r.detail}): this process submitted "
            f"{plural(r.submitted, 'recipient')} in {plural(r.batches, 'batch')} via "
            f"{r.transport}{tail}. The claimant reports the whole issue.",
        )
    elif r.outcome == "busy":
        err.print(
            Text.assemble(("error:", "bold red"), f" {r.detail}; not sending it twice"),
            "(--join helps it instead, with a shared database)",
        )
    elif r.outcome == "stopped":
        out.print(
            f"Stopped after {plural(r.submitted, 'recipient')}; "
            "run the same command again to resume."
        )
    if r.schedule_note:
        err.print(Text.assemble(("note:", "yellow"), f" {r.schedule_note}"))
    if r.outbox is not None and r.outcome in (
        "sent",
        "test_sent",
        "failed",
        "stopped",
        "partly_sent",
    ):
        out.print(f"Messages written to {r.outbox}/")
    for address, reason in r.rejected[:20]:
        err.print(Text.assemble(("refused:", "yellow"), f" {address}: {reason}"))
    if r.outcome == "failed":
        for error in r.errors:
            err.print(Text.assemble(("error:", "bold red"), f" {error}"))
        if r.detail.startswith("claimed by"):  # a helper: its batch in flight, if any
            err.print(
                f"The issue is {r.detail}: its run reports who is in doubt "
                "(newsletter status --in-doubt)."
            )
        elif r.submitted:
            err.print(
                f"{r.submitted:,} of {plural(r.recipients, 'recipient')} "
                f"{'was' if r.submitted == 1 else 'were'} submitted before it stopped."
            )
    if r.skipped:
        _print_addresses(
            "skipped:",
            f"{plural(len(r.skipped), 'recipient')} in doubt "
            f"{'was' if len(r.skipped) == 1 else 'were'} not sent again (--skip-ambiguous); "
            "they may not have the issue:",
            r.skipped,
        )
    if r.in_doubt:
        _print_in_doubt(r)
    if r.outcome == "failed" and not r.ambiguous:
        err.print("Run the same command again to resume: submitted batches are not sent twice.")


SHOWN_ADDRESSES = 20


def _print_scheduled(r: SendReport, where: str, tail: str) -> None:
    """A scheduled send: SendGrid holds it, and until when it can be taken back."""
    assert r.send_at is not None and r.cancel_deadline is not None
    out.print(
        Text.assemble(("Scheduled", "green")),
        f"{r.subject!r} for {moment(r.send_at, r.timezone)}: {plural(r.delivered, 'recipient')} "
        f"of {where} in {plural(r.batches, 'batch')} via {r.transport}{tail}.",
    )
    out.print(
        f"SendGrid holds it until then. Until {moment(r.cancel_deadline, r.timezone)} it can "
        f"be taken back: newsletter cancel --list {r.list_name} --date {r.date} "
        "(or pause / resume)."
    )


def _print_addresses(label: str, what: str, addresses: list[str]) -> None:
    err.print(Text.assemble((label, "yellow")), what)
    for address in addresses[:SHOWN_ADDRESSES]:
        err.print(f"  {address}")
    if len(addresses) > SHOWN_ADDRESSES:
        err.print(
            f"  ... and {len(addresses) - SHOWN_ADDRESSES:,} more (newsletter status --in-doubt)"
        )


def _print_in_doubt(r: SendReport) -> None:
    """Who may or may not have the issue, and how to find out: it depends on the service."""
    batches = ", ".join(str(s) for s in r.ambiguous)
    if r.transport == "sendgrid":
        where = (
            f"batch {batches} was being submitted to SendGrid when an earlier run stopped; "
            "look its recipients up in SendGrid's Email Activity"
        )
    else:
        where = (
            "a message was being handed to the mail server when an earlier run stopped; "
            "look these addresses up in the mail server's log"
        )
    _print_addresses(
        "in doubt:",
        f"{plural(len(r.in_doubt), 'recipient')} may or may not have the issue ({where}):",
        r.in_doubt,
    )
    err.print(
        "Then run the same command with --resend-ambiguous (send to them again) or "
        "--skip-ambiguous (do not; they are recorded as skipped). Nobody else is affected: "
        "a rerun never sends anyone twice."
    )
