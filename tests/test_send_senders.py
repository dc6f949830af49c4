"""Sender processes: the list planned in parts and the batches claimed from the state
database, each reader once, on SQLite and PostgreSQL (newsletter/senders.py)."""

from __future__ import annotations

import collections
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from newsletter.state import Ledger

from .conftest import Site
from .support.sendgrid_emulator import SendGridEmulator
from .test_send_sendgrid import delivered, env, newsletter, send, setup_site


def with_senders(site: Site, workers: int) -> None:
    text = site.config_path.read_text()
    site.config_path.write_text(text.replace("workers = 1", f"workers = {workers}"))


def test_senders_plan_the_list_in_parts_and_send_each_reader_once(
    site: Site, sendgrid_emulator: SendGridEmulator, database_url: str
) -> None:
    emails = setup_site(site, sendgrid_emulator, 2400, batch_size=100)
    with_senders(site, 3)
    main = site.root / "subscribers" / "main.csv"
    with main.open("a", encoding="utf-8") as handle:  # one person twice, parts apart
        handle.write(f"{emails[5].upper()},Same again,test\n")
    environ = env(NEWSLETTER_DATABASE_URL=database_url)
    gone = emails[1000:1003]
    assert newsletter(site, "subscribers", "suppress", *gone, environ=environ).returncode == 0

    result = send(site, environ=environ)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "to 2,397 recipients" in result.stdout and "1 duplicate row ignored" in result.stdout
    assert "3 suppressed addresses skipped" in result.stdout
    requests = sendgrid_emulator.mail_requests()
    assert all(r.accepted and r.validated for r in requests)
    assert delivered(sendgrid_emulator) == collections.Counter(set(emails) - set(gone))
    with Ledger(database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        rows = ledger.batches(issue.id)
    assert issue.status == "sent" and issue.recipients == 2397
    assert [b.seq for b in rows] == list(range(1, len(rows) + 1))  # one plan, numbered
    assert {b.status for b in rows} == {"submitted"} and len(rows) == len(requests)


def test_a_bad_row_in_the_last_part_stops_the_send_before_anything_goes_out(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    setup_site(site, sendgrid_emulator, 1500, batch_size=100)
    with_senders(site, 2)
    main = site.root / "subscribers" / "main.csv"
    with main.open("a", encoding="utf-8") as handle:
        handle.write('not-an-address,"A name\non two lines",test\n')
    line = 1 + 1500 + 1  # the header, the readers, then the bad row

    result = send(site)

    assert result.returncode == 1
    assert f"{main}: line {line}: not a valid email address: 'not-an-address'" in result.stderr
    assert "--skip-invalid" in result.stderr and "Traceback" not in result.stderr
    assert sendgrid_emulator.mail_requests() == []
    with Ledger(site.config().database_url) as ledger:
        [issue] = ledger.recent_issues("main")
        assert ledger.batch_counts(issue.id) == {}  # no draft left behind

    skipped = send(site, "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert len(sendgrid_emulator.recipients()) == 1500


def claim_and_count(url: str, issue_id: int) -> list[int]:
    """One sender's loop over the state database, as another machine runs it: take the
    next pending batch, record it sent, until none is left."""
    taken = []
    with Ledger(url) as ledger:
        while (next_batch := ledger.take_next_batch(issue_id)) is not None:
            batch, _ = next_batch
            ledger.mark_submitted(batch.id, f"from {Path.cwd().name}")
            taken.append(batch.seq)
    return taken


def test_two_processes_in_their_own_folders_share_one_issue_each_batch_once(
    database_url: str, tmp_path: Path
) -> None:
    with Ledger(database_url) as ledger:
        issue_id = ledger.claim("main", dt.date(2024, 3, 5), "me", dt.timedelta(hours=1)).issue.id
        rows = [[f"r{n}@example.com", f"R {n}"] for n in range(5)]
        ledger.save_plan(
            issue_id,
            subject="s",
            html="h",
            text="t",
            tokens=[],
            story_keys=[],
            window_start=None,
            window_end=dt.datetime(2024, 3, 5, tzinfo=dt.UTC),
            transport="sendgrid",
            batches_of_recipients=[(["email", "name"], rows)] * 400,
        )
    script = (
        "import sys; from tests.test_send_senders import claim_and_count; "
        "print(' '.join(map(str, claim_and_count(sys.argv[1], int(sys.argv[2])))))"
    )
    repo = Path(__file__).resolve().parents[1]
    folders = [tmp_path / "machine-a", tmp_path / "machine-b"]
    processes = []
    for folder in folders:
        folder.mkdir()
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", script, database_url, str(issue_id)],
                cwd=folder,
                env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"},
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    taken = [list(map(int, p.communicate(timeout=120)[0].split())) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sorted(taken[0] + taken[1]) == list(range(1, 401))  # every batch, once
    assert taken[0] and taken[1]  # both did some of the work
    with Ledger(database_url) as ledger:
        assert ledger.batch_counts(issue_id) == {"submitted": (400, 2000)}


def test_compressed_bodies_are_gzip_and_still_valid(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    emails = setup_site(site, sendgrid_emulator, 1200, batch_size=500, extra="compress = true\n")
    with_senders(site, 2)

    result = send(site)

    assert result.returncode == 0, result.stderr
    requests = sendgrid_emulator.mail_requests()
    assert requests and all(r.accepted and r.validated for r in requests)
    assert {r.headers.get("content-encoding") for r in requests} == {"gzip"}
    plain = sum(len(json.dumps(r.body, separators=(",", ":")).encode()) for r in requests)
    assert sum(r.size for r in requests) * 5 < plain  # sent at under a fifth of the bytes
    assert delivered(sendgrid_emulator) == collections.Counter(emails)
