"""Mistakes and accidents a user meets, through the real `newsletter` command.

Each one is one clear line on stderr naming the file, setting or option and
what to do, a non-zero exit, no traceback, and nothing already done lost:
a damaged, read-only or full state database, an output file in a folder that
does not exist, a busy port, a rejected import, a missing include.
"""

from __future__ import annotations

import random
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import Site
from .support.cli import run

SECRET = "a-signing-secret-for-these-tests"
DATE = "2024-03-05"


def outbox_site(site: Site, people: int = 3) -> list[str]:
    """A newsletter sending one story through the outbox to `people` readers."""
    site.story("lead", title="Lead story", date="2024-03-05 06:00:00+00:00")
    site.write_config(
        extra="""
        [delivery]
        transport = "outbox"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        """
    )
    emails = [f"reader{n}@example.com" for n in range(people)]
    write_list(site, [(e, f"Reader {n}") for n, e in enumerate(emails)])
    return emails


def write_list(site: Site, rows: list[tuple[str, str]]) -> Path:
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    path = folder / "main.csv"
    path.write_text("email,name\n" + "".join(f"{e},{n}\n" for e, n in rows), encoding="utf-8")
    return path


def newsletter(site: Site, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run(site.config_path, *args, NEWSLETTER_SECRET=SECRET, **env)


def sent_files(site: Site) -> list[str]:
    """Every message the outbox holds, by recipient file name (a name twice: sent twice)."""
    return sorted(p.name for p in (site.root / "outbox").rglob("*.eml"))


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line a failed command printed, after checking there is no more."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """`chattr +i` stops even root (tests run as root); every flag is lifted afterwards."""
    flagged: list[Path] = []
    yield flagged
    for path in reversed(flagged):
        subprocess.run(["chattr", "-i", str(path)], check=True)


def make_immutable(flagged: list[Path], path: Path) -> None:
    subprocess.run(["chattr", "+i", str(path)], check=True)
    flagged.append(path)


# -- the state database --------------------------------------------------------------------


def settle(db: Path) -> None:
    """Fold the write-ahead log into the file, so the file alone is the database."""
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    assert not Path(f"{db}-wal").exists()


def test_a_damaged_state_database_is_one_line_in_every_command(site: Site) -> None:
    outbox_site(site)
    assert newsletter(site, "subscribers", "suppress", "gone@example.com").returncode == 0
    db = site.root / "newsletter.db"
    settle(db)
    # every page but the first (the schema) overwritten: each table is unreadable
    data = bytearray(db.read_bytes())
    data[4096:] = b"\xee" * (len(data) - 4096)
    db.write_bytes(bytes(data))

    for command in (
        ("status",),
        ("send", "--date", DATE, "--yes"),
        ("subscribers", "count"),
        ("subscribers", "suppress", "another@example.com"),
    ):
        result = newsletter(site, *command)
        assert result.returncode == 1, (command, result.stderr)
        assert one_error(result) == (
            f"error: the state database {db} is damaged (database disk image is malformed): "
            "restore it from a backup (sqlite3's .recover command may rescue what is left); "
            "do not delete it: it holds the send history and the suppressions"
        ), command
    assert sent_files(site) == []


def read_only_url(url: str) -> str:
    """The same PostgreSQL database, in sessions that may not write."""
    options = {"options": "-c default_transaction_read_only=on"}
    return sa.make_url(url).update_query_dict(options).render_as_string(hide_password=False)


def test_a_read_only_state_database_is_one_line_and_a_rerun_sends_everyone_once(
    site: Site, database_url: str, immutable: list[Path]
) -> None:
    emails = outbox_site(site)
    url = sa.make_url(database_url)
    first = newsletter(site, "subscribers", "count", NEWSLETTER_DATABASE_URL=database_url)
    assert first.returncode == 0, first.stderr  # the schema exists
    if url.get_backend_name() == "sqlite":
        db = Path(url.database or "")
        settle(db)
        make_immutable(immutable, db)
        locked = database_url
        named = str(db)
        detail = "attempt to write a readonly database"
    else:
        locked = read_only_url(database_url)
        named = sa.make_url(locked).render_as_string(hide_password=True)
        detail = "in a read-only transaction"

    for command in (
        ("subscribers", "suppress", "x@example.com"),
        ("send", "--date", DATE, "--yes"),
    ):
        result = newsletter(site, *command, NEWSLETTER_DATABASE_URL=locked)
        assert result.returncode == 1, result.stderr
        line = one_error(result)
        assert line.startswith(f"error: the state database {named} cannot be written ("), line
        assert detail in line
        assert line.endswith("): make the database writable for this user (for SQLite: the file, its folder, and its -wal and -shm files; `lsattr` shows an immutable flag)")  # fmt: skip
    assert sent_files(site) == []

    for path in immutable:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    again = newsletter(site, "send", "--date", DATE, "--yes", NEWSLETTER_DATABASE_URL=database_url)
    assert again.returncode == 0, again.stderr
    assert sent_files(site) == sorted(f"{e}.eml" for e in emails)


def test_a_state_database_in_a_folder_that_cannot_be_written_is_named(
    site: Site, immutable: list[Path]
) -> None:
    outbox_site(site)
    assert newsletter(site, "subscribers", "count").returncode == 0
    db = site.root / "newsletter.db"
    settle(db)
    make_immutable(immutable, site.root)  # SQLite cannot create newsletter.db-wal beside it

    result = newsletter(site, "status")

    assert result.returncode == 1
    assert one_error(result) == (
        f"error: the state database {db} cannot be opened (unable to open database file): "
        "check that its folder exists and that this user may read and write there"
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of our own (tests run as root), unmounted afterwards: room for the
    schema and one plan of 200 long rows with its WAL, once the filler is gone."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_under_the_state_database_stops_the_send_and_a_rerun_finishes(
    site: Site, small_disk: Path
) -> None:
    emails = outbox_site(site)
    # names that do not compress: the send's plan needs more room than is left
    letters = random.Random(7)
    write_list(
        site,
        [(f"reader{n}@example.com", "".join(letters.choices(string.ascii_letters, k=1000))) for n in range(200)],
    )  # fmt: skip
    emails = [f"reader{n}@example.com" for n in range(200)]
    db = small_disk / "state.db"
    env = {"NEWSLETTER_DATABASE_URL": f"sqlite:///{db}"}
    assert newsletter(site, "subscribers", "count", **env).returncode == 0
    filler = small_disk / "filler"
    filler.write_bytes(bytes(shutil.disk_usage(small_disk).free - 96 * 1024))

    full = newsletter(site, "send", "--date", DATE, "--yes", **env)

    assert full.returncode == 1
    line = one_error(full)
    assert line.startswith(
        f"error: the state database {db} cannot grow: the disk is full (database or disk is full; "
    ), line
    assert line.endswith("bytes free on its disk): free some space, then run the command again")
    assert sent_files(site) == []

    filler.unlink()
    again = newsletter(site, "send", "--date", DATE, "--yes", **env)

    assert again.returncode == 0, again.stderr
    assert sent_files(site) == sorted(f"{e}.eml" for e in emails)  # each reader exactly once


# -- files and ports named on the command line -----------------------------------------------


def test_output_files_in_a_missing_folder_are_named_before_anything_is_sent(
    site: Site, tmp_path: Path
) -> None:
    outbox_site(site)
    missing = tmp_path / "no" / "such"
    for option, command in (
        ("--output", ("preview", "--date", DATE, "--output", str(missing / "issue.html"))),
        ("--output", ("subscribers", "export", "--list", "main", "--output", str(missing / "main.csv"))),
        ("--timings", ("send", "--date", DATE, "--yes", "--timings", str(missing / "t.json"))),
    ):  # fmt: skip
        result = newsletter(site, *command)
        assert result.returncode == 1, result.stderr
        target = command[-1]
        assert result.stderr == (
            f"error: {option} {target}: the folder {missing} does not exist\n"
        ), result.stderr
    assert sent_files(site) == []
    status = newsletter(site, "status")
    assert "No issue has been sent yet." in status.stdout


def test_timings_that_cannot_be_written_after_a_send_do_not_fail_it(
    site: Site, tmp_path: Path, immutable: list[Path]
) -> None:
    emails = outbox_site(site)
    folder = tmp_path / "timings"
    folder.mkdir()
    make_immutable(immutable, folder)  # it exists, but no file can be made in it

    result = newsletter(site, "send", "--date", DATE, "--yes", "--timings", str(folder / "t.json"))

    assert result.returncode == 0, result.stderr
    assert f"warning: --timings {folder / 't.json'}: cannot write it (" in result.stderr
    assert "Sent 'Lead story' to 3 recipients" in result.stdout
    assert sent_files(site) == sorted(f"{e}.eml" for e in emails)


def test_a_busy_or_impossible_preview_port_is_named(site: Site) -> None:
    outbox_site(site)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = newsletter(site, "preview", "--date", DATE, "--no-browser", "--port", str(port))
    assert busy.returncode == 1
    assert one_error(busy) == (
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "choose another port, or --port 0 for any free one"
    )

    impossible = newsletter(site, "preview", "--no-browser", "--port", "99999")
    assert impossible.returncode == 2
    assert "Traceback" not in impossible.stderr
    assert "Invalid value for '--port': 99999 is not in the range 0<=x<=65535." in (
        impossible.stderr
    )


# -- settings, imports, templates ---------------------------------------------------------


def test_a_setting_of_the_wrong_type_is_refused_naming_key_file_and_type(site: Site) -> None:
    outbox_site(site)
    site.write_config(
        extra="""
        [delivery]
        workers = "4"

        [sendgrid]
        click_tracking = "yes"
        """
    )
    result = newsletter(site, "check", "--date", DATE)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'error: {site.config_path}: delivery.workers: Input should be a valid integer (a whole number, without quotes), got "4"',
        f'error: {site.config_path}: sendgrid.click_tracking: Input should be a valid boolean (true or false, without quotes), got "yes"',
    ]  # fmt: skip


def test_an_import_with_rejected_rows_adds_the_rest_and_exits_1(site: Site) -> None:
    outbox_site(site)
    main = site.root / "subscribers" / "main.csv"
    source = site.root / "new.csv"
    source.write_text("email,name\nnot-an-address,A\n,B\n", encoding="utf-8")

    nothing = newsletter(site, "subscribers", "import", str(source), "--list", "main")

    assert nothing.returncode == 1
    assert "Traceback" not in nothing.stderr
    assert nothing.stdout == f"{main}: 0 added, 0 already on the list, 2 rows rejected\n"
    assert "rejected: line 2: 'not-an-address': " in nothing.stderr
    assert "rejected: line 3: no email address" in nothing.stderr

    source.write_text("email,name\nnew@example.com,New\nbad,Bad\n", encoding="utf-8")
    some = newsletter(site, "subscribers", "import", str(source), "--list", "main")

    assert some.returncode == 1
    assert some.stdout == f"{main}: 1 added, 0 already on the list, 1 row rejected\n"
    assert "new@example.com" in main.read_text(encoding="utf-8")

    source.write_text("email,name\nnew@example.com,New\nlast@example.com,Last\n", encoding="utf-8")
    clean = newsletter(site, "subscribers", "import", str(source), "--list", "main")

    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == f"{main}: 1 added, 1 already on the list\n"


def test_a_missing_include_names_the_template_and_line_that_included_it(
    site: Site, tmp_path: Path
) -> None:
    outbox_site(site)
    header = site.template(
        "partials/header.html", '<tr><td>\n{% include "partials/masthead.html" %}\n</td></tr>\n'
    )
    result = newsletter(site, "preview", "--date", DATE, "--output", str(tmp_path / "x.html"))
    assert result.returncode == 1
    assert one_error(result).startswith(
        f"error: {header}: line 2: template not found: partials/masthead.html (searched "
    )


# -- what check, help and the output say -------------------------------------------------------


def test_check_reports_a_missing_scheduled_list_and_names_drafts(site: Site) -> None:
    site.story("lead", title="Lead story", date="2024-03-05 06:00:00+00:00")
    site.story("wip", title="Half-written story", date="2024-03-05 05:00:00+00:00", draft=True)
    site.story("old-draft", title="Last year's draft", date="2023-01-01 05:00:00+00:00", draft=True)

    result = newsletter(site, "check", "--date", DATE)

    assert result.returncode == 1
    main = site.root / "subscribers" / "main.csv"
    assert result.stderr == (
        f"problem: {main}: the list file of [schedule] list = 'main' is missing "
        "(add readers with `newsletter subscribers import FILE --list main`)\n"
    )
    assert "1 story:\n  • Lead story " in result.stdout
    assert "  left out, a draft: Half-written story (desk, 2024-03-05 05:00; draft: true)" in (
        result.stdout
    )
    assert "Last year's draft" not in result.stdout  # only drafts this issue would have had
    assert "\nok\n" not in result.stdout

    write_list(site, [("ann@example.com", "Ann")])
    fixed = newsletter(site, "check", "--date", DATE)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.endswith("ok\n")


def test_counts_are_said_in_the_singular_for_one(site: Site) -> None:
    outbox_site(site, people=1)
    check = newsletter(site, "check", "--date", DATE)
    assert "1 story:" in check.stdout

    sent = newsletter(site, "send", "--date", DATE, "--yes")
    assert sent.returncode == 0, sent.stderr
    assert "to 1 recipient of list 'main', 2024-03-05 in 1 batch via outbox." in sent.stdout, (
        sent.stdout
    )
    assert "1/1 recipient · 1 batch · " in sent.stderr  # the progress bar's last state

    status = newsletter(site, "status", "--date", DATE)
    assert "sent, 1 recipient, via outbox" in status.stdout
    assert "batches: 1 submitted (1 recipient)" in status.stdout

    assert "main: 1 subscriber, 1 not suppressed" in newsletter(site, "subscribers", "count").stdout
    suppressed = newsletter(site, "subscribers", "suppress", "one@example.com")
    assert suppressed.stdout == "suppressed 1 new address\n"


def test_config_is_taken_after_the_command_too(site: Site, tmp_path: Path) -> None:
    outbox_site(site)
    result = subprocess.run(
        [*run_prefix(), "check", "--date", DATE, "--config", str(site.config_path)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Lead story" in result.stdout
    assert result.stdout.endswith("ok\n")


def run_prefix() -> list[str]:
    return [sys.executable, "-m", "newsletter"]


def test_subscribers_add_explains_each_option() -> None:
    result = subprocess.run(
        [*run_prefix(), "subscribers", "add", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "--list TEXT The list to add to (subscribers/LIST.csv)." in help_text
    assert "--name TEXT The person's name, as emails greet them." in help_text
    assert "--resubscribe Add the address even if it unsubscribed, bounced or complained" in (
        help_text
    )
