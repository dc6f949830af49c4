"""`newsletter check`: the config, the issue, its deliverability lint and, with --dns, the
From domain's records."""

from __future__ import annotations

import datetime as dt
import sys

import click
from rich.text import Text

from newsletter.app import App, empty_issue_message, lint_issue, list_problems
from newsletter.cli.base import DATE, Command, Options, day_of, err, out
from newsletter.config import Config
from newsletter.errors import NewsletterError
from newsletter.words import plural


@click.command(cls=Command)
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.option(
    "--dns",
    is_flag=True,
    help="Also check the From domain's SPF, DKIM, DMARC and MX records, as receivers do.",
)
@click.option(
    "--dns-server", metavar="HOST[:PORT]", help="Ask this DNS server (default: the system's)."
)
@click.pass_obj
def check(opts: Options, date: dt.datetime | None, dns: bool, dns_server: str | None) -> None:
    """Validate the config, gather and render the issue, lint it for deliverability, and
    list any problems.

    Exits 1 when a story source failed, the lint found an error or a warning, or (with
    --dns) a record is missing or wrong.
    """
    config = opts.config()
    with App(config) as app:
        built = app.build_issue(day_of(date))
    issue, email = built.issue, built.email
    tz = config.newsletter.tz
    out.print(Text(email.subject, "bold"))
    start = f"{issue.window.start.astimezone(tz):%Y-%m-%d %H:%M}" if issue.window.start else "…"
    out.print(f"window: {start} → {issue.window.end:%Y-%m-%d %H:%M} ({config.newsletter.timezone})")
    if issue.is_empty:
        out.print(empty_issue_message(issue))
    else:
        out.print(f"{plural(len(issue.stories), 'story')}:")
        for story in issue.stories:
            out.print(
                Text.assemble(
                    f"  • {story.title} ",
                    (f"({story.source}, {story.published:%Y-%m-%d %H:%M})", "dim"),
                )
            )
    for draft in issue.drafts:
        out.print(
            Text.assemble(
                ("  left out, a draft: ", "yellow"),
                f"{draft.title} ",
                (f"({draft.source}, {draft.published:%Y-%m-%d %H:%M}; draft: true)", "dim"),
            )
        )
    out.print(
        f"HTML {email.html_bytes / 1024:.1f} KB, text {len(email.text.encode()) / 1024:.1f} KB"
    )
    problems = [str(p) for p in issue.problems] + list(email.warnings) + list_problems(config)
    from newsletter.catalogues import untranslated  # Babel's extraction: `check` only

    problems += untranslated(app.renderer.language, config.templates.path)
    for problem in problems:
        err.print(Text.assemble(("problem:", "yellow"), f" {problem}"))
    findings = [] if issue.is_empty else lint_issue(config, email)  # nothing would go out
    for finding in findings:
        style = "bold red" if finding.level == "error" else "yellow"
        err.print(Text.assemble((f"{finding.level}:", style), f" {finding}"))
    failed = bool(problems or findings)
    if dns:
        failed |= _check_dns(config, dns_server)
    if failed:
        sys.exit(1)
    out.print(Text("ok", "green"))


def _check_dns(config: Config, server: str | None) -> bool:
    """The From domain's records, a line each; True if one is missing or wrong."""
    from newsletter.dnscheck import DnsUnreachable, check_domain, resolver_for

    domain = config.sender.from_email.rpartition("@")[2]
    out.print(f"DNS of {domain}, for sending with {config.delivery.transport}:")
    try:
        found = check_domain(
            domain, config.delivery.transport, config.smtp.dkim_selector, resolver_for(server)
        )
    except DnsUnreachable as exc:
        raise NewsletterError(f"cannot check the DNS of {domain}: {exc}") from None
    marks = {
        "ok": ("ok:", "green"),
        "warning": ("warning:", "yellow"),
        "error": ("error:", "bold red"),
    }
    for finding in found:
        (out if finding.level == "ok" else err).print(
            Text.assemble(marks[finding.level], f" {finding.record}: {finding.message}")
        )
    return any(f.level == "error" for f in found)
