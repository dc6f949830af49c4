"""Benchmark: `newsletter send` over SMTP against `mailmerge`, same issue, same sink.

The project's target: the SMTP transport sends one issue to 10,000 recipients
through a local aiosmtpd server at least 10 times faster than `mailmerge` (the
PyPI command-line mail merge tool, which opens one SMTP connection per
message). Both contenders run as separate processes, send the same rendered
issue personalised per recipient (address, name, signed unsubscribe link) to
the same counting sink, and are timed in the same run, alternating their order
each round. One JSON line with the figures goes to stdout; progress to stderr.

    /work/venv/bin/python bench/smtp_vs_mailmerge.py [--recipients 10000] [--runs 3]

`--mailmerge-recipients M` sends mailmerge's runs to the first M recipients only
and scales its times by N/M (mailmerge is slow: see the report's `scaled` flag).

Read top to bottom: the contenders and one measured run (`Bench`), the checks every
run must pass (`verify`), the report (`summarise`, `main`). The newsletter and
mailmerge's copy of its issue are built by smtp_inputs.py; timing a process, the
sink and the record of what was measured are in harness.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import email
import email.policy
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    Sink,
    check_snapshot,
    child_env,
    environment,
    git_commit,
    live_package,
    log,
    newsletter_command,
    reader,
    report,
    reset_state,
    run_timed,
    snapshot_package,
    source_fingerprint,
)
from smtp_inputs import (
    ISSUE_DATE,
    SECRET,
    MailmergeInputs,
    build_mailmerge_inputs,
    build_newsletter,
    signed_unsubscribe_url,
)

TARGET_RATIO = 10.0

# -- the contenders and one measured run ----------------------------------------------------


@dataclass
class Run:
    """One contender's run: the child's wall and CPU time, and what the sink got."""

    contender: str
    round: int
    recipients: int
    wall_seconds: float
    cpu_seconds: float
    sink: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """Everything a round needs: the newsletter, mailmerge's files, the sink, the logs."""

    root: Path
    newsletter_config: Path
    mailmerge: MailmergeInputs
    sink: Sink
    recipients: int
    mailmerge_recipients: int
    date: dt.date
    logs: Path
    code: Path
    runs: list[Run] = field(default_factory=list)
    html: str | None = None

    def progress(self, expected: int) -> Callable[[], str]:
        """A progress line from the sink's counts: neither contender reports its own."""

        def line() -> str:
            done = self.sink.peek()["messages"]
            return f"{done}/{expected} messages"

        return line

    def run_newsletter(self, round_: int) -> Run:
        """Contender A: the real CLI, `newsletter send --yes`, with a fresh ledger."""
        reset_state(self.root)
        command = newsletter_command(
            self.newsletter_config, "send", "--yes", "--date", self.date.isoformat()
        )
        with (
            (self.logs / f"newsletter-{round_}.out").open("wb") as out,
            (self.logs / f"newsletter-{round_}.err").open("wb") as err,
        ):
            timed = run_timed(
                command,
                env=child_env(SECRET, code=self.code),
                cwd=self.root,
                stdout=out,
                stderr=err,
                progress=self.progress(self.recipients),
            )
        if timed.exit_code != 0:
            raise SystemExit(f"newsletter send exited {timed.exit_code}; see {self.logs}")
        return Run("newsletter", round_, self.recipients, timed.wall_s, timed.cpu_s)

    def run_mailmerge(self, round_: int) -> Run:
        """Contender B: mailmerge, printing each message to /dev/null (it has no quiet mode)."""
        m = self.mailmerge
        command = [
            str(Path(sys.executable).parent / "mailmerge"), "--no-dry-run", "--no-limit",
            "--output-format", "text", "--template", str(m.template),
            "--database", str(m.database), "--config", str(m.config),
        ]  # fmt: skip
        with (self.logs / f"mailmerge-{round_}.err").open("wb") as err:
            timed = run_timed(
                command,
                env=child_env(SECRET, code=self.code),
                cwd=m.template.parent,
                stdout=subprocess.DEVNULL,
                stderr=err,
                progress=self.progress(self.mailmerge_recipients),
            )
        if timed.exit_code != 0:
            raise SystemExit(f"mailmerge exited {timed.exit_code}; see {self.logs}")
        return Run("mailmerge", round_, self.mailmerge_recipients, timed.wall_s, timed.cpu_s)

    def measure(self, contender: str, round_: int) -> Run:
        """One run, checked against the sink's counts."""
        self.sink.stats()  # start a fresh epoch: nothing from before counts
        log(f"round {round_ + 1}: {contender} starts")
        run = (
            self.run_newsletter(round_) if contender == "newsletter" else self.run_mailmerge(round_)
        )
        run.sink = self.sink.stats()
        self.html = verify(run, self.html)
        log(
            f"round {round_ + 1}: {contender} sent {run.recipients} in {run.wall_seconds:.2f} s "
            f"wall, {run.cpu_seconds:.2f} s CPU ({run.recipients / run.wall_seconds:.0f} msg/s; "
            f"sink CPU {run.sink['sink_cpu_seconds']:.2f} s, "
            f"{run.sink['connections']} connections)"
        )
        self.runs.append(run)
        return run


# -- the checks -----------------------------------------------------------------------------


def verify(run: Run, expected_html: str | None) -> str:
    """Fail loudly unless the sink got exactly one personalised message per recipient.

    Returns the first message's decoded HTML, so the two contenders' messages to the
    same recipient can be compared.
    """
    sink = run.sink
    problems = [
        f"{key} = {sink[key]}, expected {run.recipients}"
        for key in ("messages", "recipients", "unique_recipients")
        if sink[key] != run.recipients
    ]
    if problems:
        raise SystemExit(f"{run.contender} round {run.round}: " + "; ".join(problems))
    if not sink["sample"]:
        raise SystemExit(f"{run.contender} round {run.round}: no sample message")
    message = email.message_from_bytes(
        Path(sink["sample"]).read_bytes(), policy=email.policy.default
    )
    # with several connections the first message to arrive may be anyone's: check it
    # against the subscriber it is addressed to
    address = message["To"].addresses[0].addr_spec
    index = int(address.removeprefix("reader").split("@")[0])
    name = reader(index)[1]
    html_part = message.get_body(preferencelist=("html",))
    if html_part is None:
        raise SystemExit(f"{run.contender}: the first message has no HTML part")
    html = html_part.get_content().replace("\r\n", "\n").rstrip("\n")
    expected_url = signed_unsubscribe_url(address)
    checks = {
        "To has the address": address in str(message["To"]),
        "To has the name": name in str(message["To"]),
        "List-Unsubscribe is the recipient's": expected_url in str(message["List-Unsubscribe"]),
        "the HTML has the unsubscribe link": expected_url in html,
        "no token left": "%%" not in html,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"{run.contender}: the first message fails: {', '.join(failed)}")
    # the same document for the same reader; line breaks may differ (a local transport
    # joins lines where a newline and a space mean the same)
    html = " ".join(
        html.replace(address, "<reader>").replace(expected_url, "<unsubscribe>").split()
    )
    if expected_html is not None and html != expected_html:
        raise SystemExit(f"{run.contender}: its HTML differs from the other contender's")
    return html


# -- the report -----------------------------------------------------------------------------


def summarise(bench: Bench, contender: str) -> dict[str, Any]:
    """Medians and per-run figures of one contender, scaled to the full list if needed."""
    runs = [r for r in bench.runs if r.contender == contender]
    walls = [round(r.wall_seconds, 3) for r in runs]
    cpus = [round(r.cpu_seconds, 3) for r in runs]
    sent = runs[0].recipients
    scale = bench.recipients / sent
    median_wall = statistics.median(walls)
    median_cpu = statistics.median(cpus)
    return {
        "recipients_sent": sent,
        "scaled": scale != 1,
        "wall_seconds": walls,
        "cpu_seconds": cpus,
        "median_wall_seconds": round(median_wall, 3),
        "median_cpu_seconds": round(median_cpu, 3),
        "median_wall_seconds_for_full_list": round(median_wall * scale, 3),
        "median_cpu_seconds_for_full_list": round(median_cpu * scale, 3),
        "messages_per_second": round(sent / median_wall, 1),
        "sink_cpu_seconds": [r.sink["sink_cpu_seconds"] for r in runs],
        "smtp_connections": runs[0].sink["connections"],
        "average_message_bytes": round(runs[0].sink["bytes"] / sent),
        "rounds": [r.round + 1 for r in runs],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000, help="list size (10000)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of both contenders (3)")
    parser.add_argument(
        "--mailmerge-recipients",
        type=int,
        default=None,
        help="send mailmerge's runs to only this many and scale linearly (default: all)",
    )
    parser.add_argument(
        "--mailmerge-format",
        choices=["multipart", "html"],
        default="multipart",
        help="multipart: text + HTML, like ours (default); html: the HTML part only",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="newsletter's delivery.workers (1: one connection)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.mailmerge_recipients is None:
        args.mailmerge_recipients = args.recipients
    if not 1 <= args.mailmerge_recipients <= args.recipients or args.runs < 1 or args.workers < 1:
        parser.error(
            "need 1 <= --mailmerge-recipients <= --recipients, --runs >= 1, --workers >= 1"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("mailmerge", path=str(Path(sys.executable).parent)) is None:
        raise SystemExit(f"mailmerge is not installed next to {sys.executable}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    log(f"working in {workdir}")
    commit = git_commit()
    code = snapshot_package(workdir / "code")
    measured = source_fingerprint(code / "newsletter")
    check_snapshot(code, measured, child_env(SECRET, code=code), workdir)
    sink = Sink(workdir / "samples")
    try:
        root = workdir / "paper"
        config = build_newsletter(root, sink.port, args.recipients, ISSUE_DATE, args.workers)
        inputs = build_mailmerge_inputs(
            workdir / "mailmerge",
            config,
            sink.port,
            args.mailmerge_recipients,
            ISSUE_DATE,
            multipart=args.mailmerge_format == "multipart",
        )
        logs = workdir / "logs"
        logs.mkdir()
        bench = Bench(
            root,
            config,
            inputs,
            sink,
            args.recipients,
            args.mailmerge_recipients,
            ISSUE_DATE,
            logs,
            code,
        )
        log(
            f"sink on 127.0.0.1:{sink.port}; {args.recipients} recipients "
            f"(mailmerge: {args.mailmerge_recipients}), {args.runs} rounds"
        )
        for round_ in range(args.runs):
            order = ("newsletter", "mailmerge") if round_ % 2 == 0 else ("mailmerge", "newsletter")
            for contender in order:
                bench.measure(contender, round_)
        ours = summarise(bench, "newsletter")
        theirs = summarise(bench, "mailmerge")
        wall_ratio = theirs["median_wall_seconds_for_full_list"] / ours["median_wall_seconds"]
        cpu_ratio = theirs["median_cpu_seconds_for_full_list"] / ours["median_cpu_seconds"]
        live_changed = source_fingerprint(live_package()) != measured
        if live_changed:
            log("note: the live newsletter package changed meanwhile; the runs used the copy")
        result = {
            "benchmark": "smtp_vs_mailmerge",
            "recipients": args.recipients,
            "mailmerge_recipients": args.mailmerge_recipients,
            "mailmerge_format": args.mailmerge_format,
            "newsletter_workers": args.workers,
            "runs": args.runs,
            "issue_date": ISSUE_DATE.isoformat(),
            "subject": inputs.subject,
            "tokens": inputs.tokens,
            "newsletter": ours,
            "mailmerge": theirs,
            "ratio_wall": round(wall_ratio, 2),
            "ratio_cpu": round(cpu_ratio, 2),
            "target_ratio": TARGET_RATIO,
            "target_met": wall_ratio >= TARGET_RATIO,
            "same_html_for_first_recipient": True,  # verify() fails otherwise
            "code": {"git_commit": commit, "package_sha256": measured},
            "live_package_changed_during_run": live_changed,
            "environment": environment("newsletter", "mailmerge", "aiosmtpd"),
        }
        log(
            f"median wall: newsletter {ours['median_wall_seconds']:.2f} s, mailmerge "
            f"{theirs['median_wall_seconds_for_full_list']:.2f} s"
            f"{' (scaled)' if theirs['scaled'] else ''}; ratio {wall_ratio:.1f}x "
            f"(CPU {cpu_ratio:.1f}x)"
        )
        report(result)
    finally:
        sink.close()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
