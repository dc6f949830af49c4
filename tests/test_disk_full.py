"""A disk that fills up in the middle of a send: a clear error, then a rerun that finishes.

The outbox folder, then the state database, each on a small tmpfs of its own
(tests/support/tmpfs.py). After space is freed, the same command finishes the
issue with each recipient once (or, for the database, the messages in flight
when its writes failed named as in doubt) and never a half-written message.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Site
from .support.faults import (
    DATE,
    PEOPLE,
    WORKERS,
    OutboxFolder,
    named_in_doubt,
    record,
    send,
    submitted_addresses,
    write_site,
)
from .support.smtp_server import SmtpServer
from .support.tmpfs import KB, MB, Tmpfs


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Tmpfs]:
    with Tmpfs(tmp_path / "disk", size=8 * MB) as mounted:
        yield mounted


def test_outbox_folder_fills_up_then_the_rerun_finishes_with_everyone_once(
    site: Site, disk: Tmpfs
) -> None:
    emails = write_site(site, "outbox", f'[outbox]\npath = "{disk.path}"\n')
    disk.fill(leave=600 * KB)  # room for a part of the files
    outbox = OutboxFolder(disk.path / f"{DATE}-main")

    full = send(site)

    assert full.code == 1
    assert "No space left on device" in full.stderr
    assert "run the same command again to resume" in full.stderr
    assert "Traceback" not in full.stderr
    written = outbox.count()
    assert 0 < len(written) < PEOPLE
    assert outbox.partial() == []  # nothing half-written is left, let alone counted
    assert set(submitted_addresses(site)) <= set(written)

    disk.free()
    rerun = send(site)

    assert rerun.code == 0, rerun.stderr
    assert f"to {PEOPLE:,} recipients" in rerun.stdout
    assert outbox.count() == collections.Counter(emails)
    record("outbox", "outbox folder full", emails, outbox.count(), set())
    assert outbox.rewritten() == []
    assert outbox.partial() == []


def test_state_database_fills_up_mid_send_then_the_rerun_sends_nobody_twice(
    site: Site, disk: Tmpfs
) -> None:
    with SmtpServer() as server:
        emails = write_site(
            site,
            "smtp",
            f"""
            [smtp]
            host = "127.0.0.1"
            port = {server.port}
            security = "none"

            [state]
            database_url = "sqlite:///{disk.path / "state.db"}"
            """,
        )
        # room for the plan, and for a few dozen progress records in the write-ahead log
        disk.fill(leave=400 * KB)

        full = send(site)

        assert full.code != 0
        assert "state database" in full.stderr and "full" in full.stderr
        assert str(disk.path / "state.db") in full.stderr
        assert "Traceback" not in full.stderr
        got = collections.Counter(m.rcpt_tos[0] for m in server.messages)
        assert 0 < sum(got.values()) < PEOPLE

        disk.free()
        rerun = send(site)

        got = collections.Counter(m.rcpt_tos[0] for m in server.messages)
        assert [a for a, n in got.items() if n > 1] == []
        doubt = named_in_doubt(site, rerun)
        record("smtp", "state database full", emails, got, doubt)
        assert len(doubt) <= WORKERS  # the messages in flight when the writes failed
        assert set(emails) - set(got) <= doubt
        assert set(submitted_addresses(site)) <= set(got)
        if not doubt:
            assert rerun.code == 0, rerun.stderr
