"""Driving the real `newsletter send` through faults, and reading what it said.

Shared by the crash matrix (SIGKILL at every point) and the disk-full tests: a
newsletter of PEOPLE readers in batches of BATCH, sent by WORKERS connections,
started as a real process, and the ledger's and the report's account of it.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from newsletter.state import Ledger
from newsletter.words import plural

from ..conftest import SENDGRID_TEST_API_KEY, Site

SECRET = "a-test-signing-secret-of-some-length"
DATE = "2024-03-05"
PEOPLE = 300
BATCH = 100
WORKERS = 2


@dataclass
class Run:
    """One `newsletter send` process and what it said."""

    code: int
    stdout: str
    stderr: str


def write_site(
    site: Site, transport: str, receiver_config: str, batch_size: int = BATCH
) -> list[str]:
    site.story("lead", title="Lead story", url="https://example.com/lead")
    site.story("second", title="Second story", date="2024-03-05 05:00:00+00:00")
    site.write_config(
        extra=f"""
        [delivery]
        transport = "{transport}"
        batch_size = {batch_size}
        workers = {WORKERS}
        retry_delay = "0s"
        max_retry_delay = "1s"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        """
        + receiver_config
    )
    emails = [f"reader{n:04d}@example.com" for n in range(PEOPLE)]
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    with (folder / "main.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        writer.writerows([e, f"Reader {n}"] for n, e in enumerate(emails))
    return emails


def environment(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return {**base, "SENDGRID_API_KEY": SENDGRID_TEST_API_KEY, "NEWSLETTER_SECRET": SECRET, **extra}


def command(site: Site, *flags: str) -> list[str]:
    return [
        sys.executable, "-m", "newsletter", "--config", str(site.config_path),
        "send", "--date", DATE, "--yes", *flags,
    ]  # fmt: skip


def newsletter(site: Site, *args: str) -> Run:
    """Any other `newsletter` command on the same newsletter."""
    done = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), *args],
        capture_output=True, text=True, timeout=120, env=environment(),
    )  # fmt: skip
    return Run(done.returncode, done.stdout, done.stderr)


def send(site: Site, *flags: str, failpoints: str = "") -> Run:
    extra = {"NEWSLETTER_FAILPOINTS": failpoints} if failpoints else {}
    done = subprocess.run(
        command(site, *flags), capture_output=True, text=True, timeout=120, env=environment(**extra)
    )
    return Run(done.returncode, done.stdout, done.stderr)


def send_killed_when(site: Site, reached: Callable[[], bool], *flags: str) -> Run:
    """Start a send and SIGKILL it once `reached()` (what the far side has seen) holds."""
    process = subprocess.Popen(
        command(site, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(),
    )
    deadline = time.monotonic() + 60
    while not reached() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=30)
    return Run(process.returncode, stdout, stderr)


def submitted_addresses(site: Site) -> list[str]:
    """Everyone the ledger counts as sent: the recipients of its submitted batches."""
    with Ledger(site.config().database_url) as ledger:
        issue = ledger.issue("main", dt.date(2024, 3, 5))
        return [] if issue is None else ledger.batch_addresses(issue.id, ["submitted"])


def named_in_doubt(site: Site, run: Run) -> set[str]:
    """Who the run's report names as in doubt: the first few in the report itself, all of
    them from `newsletter status --in-doubt` (where the report sends the editor)."""
    listed = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path),
         "status", "--in-doubt", "--date", DATE],
        capture_output=True, text=True, timeout=60, env=environment(),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    everyone = set(listed.stdout.split())
    if "in doubt:" not in run.stderr:
        return set()
    section = run.stderr.split("in doubt:", 1)[1].split("Then run the same command", 1)[0]
    assert f"{plural(len(everyone), 'recipient')} may or may not have the issue" in section
    shown = {line.strip() for line in section.splitlines()[1:] if "@" in line}
    assert shown and shown <= everyone
    return everyone


@dataclass
class OutboxFolder:
    """The outbox's far side: a file per address, and any file written twice.

    A second copy of the issue for someone would overwrite their file, so each file's
    inode is noted when first seen: a new inode under the same name is a second send.
    """

    path: Path
    seen: dict[str, int] = field(default_factory=dict)

    def count(self) -> Counter[str]:
        found: Counter[str] = Counter()
        for file in self.path.glob("*.eml") if self.path.is_dir() else []:
            to = file.read_bytes().split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0].decode()
            found[to.rsplit("<", 1)[-1].rstrip(">")] += 1
            self.seen.setdefault(file.name, file.stat().st_ino)
        return found

    def rewritten(self) -> list[str]:
        return [n for n, inode in self.seen.items() if (self.path / n).stat().st_ino != inode]

    def partial(self) -> list[str]:
        """Files left half-written: none may ever be visible as a message."""
        return sorted(p.name for p in self.path.glob(".*")) if self.path.is_dir() else []


ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def record(
    transport: str, fault: str, emails: list[str], got: Counter[str], doubt: set[str]
) -> None:
    """One row of what a fault test measured, for RELIABILITY.md's table."""
    ARTIFACTS.mkdir(exist_ok=True)
    table = ARTIFACTS / "reliability.tsv"
    if not table.exists():
        names = ["transport", "fault", "readers", "received", "twice", "in doubt", "lost"]
        table.write_text("\t".join(names) + "\n", encoding="utf-8")
    row = [
        transport,
        fault,
        len(emails),
        sum(1 for a in emails if got[a]),
        sum(n - 1 for n in got.values() if n > 1),
        len(doubt),
        sum(1 for a in emails if not got[a] and a not in doubt),
    ]
    with table.open("a", encoding="utf-8") as handle:
        handle.write("\t".join(map(str, row)) + "\n")
