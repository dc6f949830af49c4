"""List files: import, add, remove, list, count, export and suppressions, as a user meets them.

A handful of cases run the real `newsletter subscribers ...` command in a separate
process; the finer points call the functions of `newsletter.subscribers` (reading)
and `newsletter.list_editing` (changing and exporting) directly.
"""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest

from newsletter.errors import SubscriberError
from newsletter.list_editing import (
    add_subscriber,
    export_csv,
    import_subscribers,
    locked,
    merge_rows,
    write_table,
)
from newsletter.state import Ledger
from newsletter.subscribers import ListReport, on_list, read_list, read_table

from .conftest import Site

# -- helpers ---------------------------------------------------------------------------


def run(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    """`newsletter --config ... subscribers ARGS` in its own process, as a user types it."""
    return run_together(site, args)[0]


def run_together(site: Site, *commands: Sequence[str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands started at once, each its own process: saves start-up time."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    base = [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "subscribers"]
    argvs = [[*base, *args] for args in commands]
    processes = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=site.root
        )
        for argv in argvs
    ]
    results: list[subprocess.CompletedProcess[str]] = []
    for argv, process in zip(argvs, processes, strict=True):
        stdout, stderr = process.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(argv, process.returncode, stdout, stderr))
    return results


def lists(site: Site) -> Path:
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    return folder


def write_list(site: Site, name: str, text: str) -> Path:
    path = lists(site) / f"{name}.csv"
    path.write_text(text, encoding="utf-8", newline="")
    return path


def table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A list file parsed with nothing but the csv module: header and rows."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def emails(path: Path) -> list[str]:
    return [row["email"] for row in table(path)[1]]


def leftovers(folder: Path, name: str = "main") -> list[str]:
    """Files in the list folder other than the list and its lock file (temp files, say)."""
    return sorted(
        p.name for p in folder.iterdir() if p.name not in {f"{name}.csv", f"{name}.csv.lock"}
    )


def rejected(stderr: str) -> list[tuple[int, str]]:
    return [
        (int(n), reason) for n, reason in re.findall(r"^rejected: line (\d+): (.*)$", stderr, re.M)
    ]


class Suppressions:
    """An in-memory suppression store (the two ledger methods an import uses)."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = {a.lower() for a in addresses}
        self.lifted: list[str] = []

    def suppressed(self, list_name: str | None = None) -> frozenset[str]:
        return frozenset(self.addresses)

    def resubscribe(self, email: str, list_name: str = "", other_lists: object = ()) -> bool:
        self.lifted.append(email)
        found = email.lower() in self.addresses
        self.addresses.discard(email.lower())
        return found


@pytest.fixture
def ledger(site: Site) -> Iterator[Ledger]:
    """The site's own state database, the one the command opens."""
    with Ledger(site.config().database_url) as led:
        yield led


# -- import, end to end ----------------------------------------------------------------


def test_import_validates_normalises_dedupes_and_reports_every_rejected_row(
    site: Site, ledger: Ledger
) -> None:
    main = write_list(site, "main", "email,name\nOLD@example.com,Old Timer\n")
    ledger.suppress(
        [
            ("gone@example.com", "unsubscribed"),
            ("bounce@example.com", "bounced"),
            ("spam@example.com", "spam"),
        ],
        source="test",
    )
    lines = [
        "email,Name,Company",  # 1 (after Excel's BOM)
        "Ann@Example.COM,Ann Lee,Acme",  # 2 added, domain lower-cased
        "bad-address,Bob,Bobco",  # 3 no @
        ",Nobody,Nowhere",  # 4 no address at all
        'cee@example.com,Cee,"Cee & Co\nSecond floor"',  # 5-6 one row over two lines
        "dee@example.com,Dee",  # 7 a field short
        "ANN@example.com,Ann again,Acme",  # 8 the same person again, in this file
        "old@EXAMPLE.com,Old,Oldco",  # 9 already on the list
        "gone@example.com,Gone,x",  # 10 unsubscribed
        "bounce@example.com,Bounce,x",  # 11 bounced
        "Spam@Example.com,Spam,x",  # 12 complained
        'not-an-address,"Two\nlines",x',  # 13-14 bad, reported on the line it starts
        "eve@example.com,Eve,Evil,extra",  # 15 a field too many
        "[/]@example.com,Brackets,x",  # 16 printed as typed, not as terminal markup
        "[email protected],Scraped,x",  # 17 (a scraped web page's placeholder)
    ]
    source = site.root / "excel.csv"
    source.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))

    result = run(site, "import", str(source), "--list", "main")

    assert result.returncode == 1, result.stderr  # rows were rejected: a script must notice
    assert "Traceback" not in result.stderr
    assert result.stdout == f"{main}: 2 added, 2 already on the list, 7 rows rejected\n"
    problems = rejected(result.stderr)
    assert [line for line, _ in problems] == [3, 4, 7, 13, 15, 16, 17]
    assert problems[0][1].startswith("'bad-address': ")
    assert problems[1][1] == "no email address"
    assert problems[2][1] == "expected 3 fields like the header, found 2"
    assert problems[3][1].startswith("'not-an-address': ")
    assert problems[4][1] == "expected 3 fields like the header, found 4"
    assert problems[5][1].startswith("'[/]@example.com': ")
    assert problems[6][1].startswith("'[email protected]': ")
    for address in ("gone@example.com", "bounce@example.com", "Spam@example.com"):
        assert f"not re-subscribed: {address} " in result.stderr

    header, rows = table(main)
    assert header == ["email", "name", "company"]  # the extra column joined the list
    assert rows == [
        {"email": "OLD@example.com", "name": "Old Timer", "company": ""},
        {"email": "Ann@example.com", "name": "Ann Lee", "company": "Acme"},
        {"email": "cee@example.com", "name": "Cee", "company": "Cee & Co\nSecond floor"},
    ]
    assert main.read_bytes().startswith(b"email,")  # no BOM carried into the list
    assert ledger.suppressed() == {"gone@example.com", "bounce@example.com", "spam@example.com"}
    assert leftovers(main.parent) == []


def test_import_keeps_readers_time_zones_and_names_the_line_of_a_bad_one(site: Site) -> None:
    main = write_list(site, "main", "email,name\n")
    source = site.root / "zones.csv"
    source.write_text(
        "email,name,timezone\n"
        "ny@example.com,Ny,America/New_York\n"
        "none@example.com,None,\n"
        "mars@example.com,Mars,Mars/Olympus_Mons\n"  # line 4
        "up@example.com,Up,../../etc/passwd\n",  # line 5: a path is no zone either
        encoding="utf-8",
    )

    result = run(site, "import", str(source), "--list", "main")

    assert result.returncode == 1 and "Traceback" not in result.stderr
    problems = rejected(result.stderr)
    assert [line for line, _ in problems] == [4, 5]
    assert problems[0][1].startswith("timezone 'Mars/Olympus_Mons' is not a time zone name")
    header, rows = table(main)
    assert header == ["email", "name", "timezone"]
    assert [row["timezone"] for row in rows] == ["America/New_York", ""]


def test_import_with_resubscribe_lifts_the_suppression_and_adds(site: Site, ledger: Ledger) -> None:
    ledger.suppress([("gone@example.com", "unsubscribed")], source="test")
    source = site.root / "back.csv"
    source.write_text("email,name\nGone@Example.com,Gone\nnew@example.com,New\n", encoding="utf-8")

    result = run(site, "import", str(source), "--list", "main", "--resubscribe")

    assert result.returncode == 0, result.stderr
    main = lists(site) / "main.csv"
    assert f"{main}: 2 added, 0 already on the list" in result.stdout
    assert "re-subscribed: Gone@example.com" in result.stdout
    assert "not re-subscribed" not in result.stderr
    assert ledger.suppressed() == frozenset()
    assert emails(main) == ["Gone@example.com", "new@example.com"]


def test_import_of_a_file_that_is_not_utf8_is_one_clear_error(site: Site) -> None:
    source = site.root / "latin1.csv"
    source.write_bytes("email,name\r\njörg@example.com,Jörg Müller\r\n".encode("latin-1"))

    result = run(site, "import", str(source), "--list", "main")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr == f"error: {source}: not UTF-8 text (save it as 'CSV UTF-8')\n"
    assert not (lists(site) / "main.csv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", "{path}: the file is empty", id="empty"),
        pytest.param(
            b"e-mail,name\nann@example.com,Ann\n",
            "{path}: line 1: no 'email' column (the header has: e-mail, name)",
            id="no-email-column",
        ),
        pytest.param(
            "email,name\njörg@example.com,Jörg\n".encode("latin-1"),
            "{path}: not UTF-8 text",
            id="latin-1",
        ),
        pytest.param(
            # far past the first block the reader decodes, so it fails mid-file
            (
                "email,name\n"
                + "".join(f"p{i}@example.com,Person {i}\n" for i in range(2, 1000))
                + "jörg@example.com,Jörg\n"
            ).encode("latin-1"),
            "{path}: not UTF-8 text near line",
            id="latin-1-deep-in-the-file",
        ),
    ],
)
def test_an_unreadable_import_file_is_named_and_nothing_is_imported(
    site: Site, content: bytes, message: str
) -> None:
    main = write_list(site, "main", "email,name\nann@example.com,Ann\n")
    before = main.read_bytes()
    source = site.root / "people.csv"
    source.write_bytes(content)

    with pytest.raises(SubscriberError) as caught:
        import_subscribers(source, main, Suppressions())

    assert str(caught.value).startswith(message.format(path=source))
    assert main.read_bytes() == before


def test_a_row_over_several_lines_keeps_every_line_number(site: Site) -> None:
    source = site.root / "notes.csv"
    source.write_text(
        "email,note\n"  # 1
        'a@example.com,"one\ntwo"\n'  # 2-3
        'bad@,"three\nfour\nfive"\n'  # 4-6
        "\n"  # 7 blank, skipped
        ",x\n"  # 8
        'b@example.com,"six\nseven",extra\n'  # 9-10
        "c@example.com,eight\n",  # 11
        encoding="utf-8",
    )
    main = lists(site) / "main.csv"

    report = import_subscribers(source, main, Suppressions())

    assert [p.line for p in report.rejected] == [4, 8, 9]
    assert report.rejected[0].reason.startswith("'bad@': ")
    assert report.rejected[1].reason == "no email address"
    assert report.rejected[2].reason == "expected 2 fields like the header, found 3"
    assert report.added == 2
    assert table(main)[1] == [
        {"email": "a@example.com", "name": "", "note": "one\ntwo"},
        {"email": "c@example.com", "name": "", "note": "eight"},
    ]
    # the same file read as a list at send time numbers its rows the same way
    list_report = ListReport(source)
    assert [s.email for s in read_list(source, list_report)] == ["a@example.com", "c@example.com"]
    assert [p.line for p in list_report.problems] == [4, 8, 9]


def test_add_subscriber_never_resubscribes_a_suppressed_address_unless_asked(
    site: Site, ledger: Ledger
) -> None:
    main = write_list(site, "main", "email,name\nann@example.com,Ann\n")
    ledger.suppress(
        [("left@example.com", "unsubscribed"), ("bounce@example.com", "bounced")], source="test"
    )
    for typed, normalised in [
        ("Left@Example.com", "Left@example.com"),
        ("BOUNCE@example.com", "BOUNCE@example.com"),
    ]:
        report = add_subscriber(main, typed, ledger)
        assert (report.added, report.suppressed) == (0, [normalised])
    assert emails(main) == ["ann@example.com"]

    report = add_subscriber(main, "Left@Example.com", ledger, name="Back", resubscribe=True)

    assert (report.added, report.resubscribed) == (1, ["Left@example.com"])
    assert ledger.suppressed() == {"bounce@example.com"}
    assert emails(main) == ["ann@example.com", "Left@example.com"]


def test_add_subscriber_adds_each_person_once_whatever_the_case(site: Site) -> None:
    main = lists(site) / "main.csv"

    first = add_subscriber(main, "  Ann@Example.COM ", Suppressions(), name="Ann")
    again = add_subscriber(main, "ann@example.com", Suppressions(), name="Ann Again")

    assert (first.added, first.already) == (1, 0)
    assert (again.added, again.already) == (0, 1)
    header, rows = table(main)
    assert header == ["email", "name", "subscribed_at", "source"]
    assert rows == [
        {"email": "Ann@example.com", "name": "Ann", "subscribed_at": "", "source": "cli"}
    ]


def test_merge_rows_adds_new_columns_and_lifts_suppressions_only_when_asked(site: Site) -> None:
    main = write_list(site, "main", "email,name,City\nann@example.com,Ann,Oslo\n")
    store = Suppressions("gone@example.com")
    incoming = [
        (2, {"email": "bob@example.com", "name": "Bob", "city": "Rome", "plan": "gold"}),
        (3, {"email": "Gone@Example.com", "name": "Gone", "city": "", "plan": ""}),
    ]

    kept_out = merge_rows(
        main, incoming, store.suppressed(), resubscribe=False, on_resubscribe=store.resubscribe
    )
    back = merge_rows(
        main, incoming, store.suppressed(), resubscribe=True, on_resubscribe=store.resubscribe
    )

    assert (kept_out.added, kept_out.suppressed) == (1, ["Gone@example.com"])
    assert (back.added, back.already, back.resubscribed) == (1, 1, ["Gone@example.com"])
    assert store.lifted == ["gone@example.com"]  # the ledger's key: lower-cased
    assert table(main) == (
        ["email", "name", "City", "plan"],  # the list's own column keeps its spelling
        [
            {"email": "ann@example.com", "name": "Ann", "City": "Oslo", "plan": ""},
            {"email": "bob@example.com", "name": "Bob", "City": "Rome", "plan": "gold"},
            {"email": "Gone@example.com", "name": "Gone", "City": "", "plan": ""},
        ],
    )


# -- add, remove, list, export, end to end ---------------------------------------------

PEOPLE = (
    "email,name,company\n"
    "ann@example.com,Ann,Acme\n"
    "Bob@Example.com,Bob,Bobco\n"
    "cee@example.com,Cee,Ceeco\n"
)


def test_add_and_remove_on_the_command_line(site: Site) -> None:
    main = write_list(site, "main", PEOPLE)

    added = run(site, "add", "Dee@Example.COM", "--list", "main", "--name", "Dee Dee")
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"{main}: 1 added, 0 already on the list\n"
    header, rows = table(main)
    assert header == ["email", "name", "company", "subscribed_at", "source"]
    assert rows[3]["email"] == "Dee@example.com"
    assert (rows[3]["name"], rows[3]["source"]) == ("Dee Dee", "cli")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", rows[3]["subscribed_at"])

    before = main.read_bytes()
    invalid = run(site, "add", "dee.example.com", "--list", "main")
    assert invalid.returncode == 1
    assert "Traceback" not in invalid.stderr
    assert invalid.stderr.startswith("error: 'dee.example.com': ")
    assert invalid.stdout == ""
    assert main.read_bytes() == before

    removed = run(site, "remove", "BOB@example.COM", "nobody@example.com", "--list", "main")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == f"{main}: removed 1 of 2\n"
    assert table(main) == (header, [row for row in rows if row["email"] != "Bob@Example.com"])
    assert leftovers(main.parent) == []


def test_list_and_export_on_the_command_line_defuse_spreadsheet_formulas(site: Site) -> None:
    main = write_list(
        site,
        "main",
        "email,name,note\n"
        'ann@example.com,"=HYPERLINK(""http://evil"",""x"")",+1 555 0100\n'
        "bob@example.com,Bob [admin],-2\n"
        "cee@example.com,@SUM(A1:A9),well-known\n",
    )

    output = site.root / "export.csv"
    listed, exported, to_file, missing = run_together(
        site,
        ["list", "--list", "main"],
        ["export", "--list", "main"],
        ["export", "--list", "main", "--output", str(output)],
        ["export", "--list", "mian"],
    )

    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        'ann@example.com\t=HYPERLINK("http://evil","x")',
        "bob@example.com\tBob [admin]",
        "cee@example.com\t@SUM(A1:A9)",
    ]

    assert exported.returncode == 0, exported.stderr
    assert list(csv.reader(io.StringIO(exported.stdout))) == [
        ["email", "name", "note"],
        ["ann@example.com", '\'=HYPERLINK("http://evil","x")', "'+1 555 0100"],
        ["bob@example.com", "Bob [admin]", "'-2"],
        ["cee@example.com", "'@SUM(A1:A9)", "well-known"],
    ]

    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == ""
    assert to_file.stderr == f"wrote 3 rows to {output}\n"
    assert output.read_text(encoding="utf-8") == exported.stdout
    assert main.read_text(encoding="utf-8").count("'") == 0  # the list itself is untouched

    assert missing.returncode == 1
    assert missing.stderr == f"error: {lists(site) / 'mian.csv'}: list file not found\n"
    assert missing.stdout == ""


@pytest.mark.parametrize(
    ("cell", "exported"),
    [
        ("=1+1", "'=1+1"),
        ("+44 20 7946 0000", "'+44 20 7946 0000"),
        ("-10", "'-10"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("\t=1+1", "'\t=1+1"),
        ("Ann = Bob", "Ann = Bob"),
        ("a-b@example.com", "a-b@example.com"),
        ("", ""),
    ],
)
def test_export_csv_prefixes_formula_cells_with_a_quote(
    site: Site, cell: str, exported: str
) -> None:
    main = lists(site) / "main.csv"
    write_table(main, ["email", "name"], [["ann@example.com", cell]])
    out = io.StringIO()

    assert export_csv(main, out) == 1

    assert list(csv.reader(io.StringIO(out.getvalue()))) == [
        ["email", "name"],
        ["ann@example.com", exported],
    ]


# -- count and suppressions, end to end ------------------------------------------------


def test_suppress_and_unsuppress_change_what_count_reports(site: Site) -> None:
    write_list(site, "main", PEOPLE)
    write_list(site, "test", "email,name\nANN@example.com,Ann\n")

    suppressed = run(site, "suppress", "Ann@Example.com", "--reason", "unsubscribed")
    assert suppressed.returncode == 0, suppressed.stderr
    assert suppressed.stdout == "suppressed 1 new address\n"

    every_list = run(site, "count")
    assert every_list.returncode == 0, every_list.stderr
    assert every_list.stdout.splitlines() == [
        "main: 3 subscribers, 2 not suppressed",
        "test: 1 subscriber, 0 not suppressed",
    ]

    lifted = run(site, "unsuppress", "ann@example.com")
    assert lifted.returncode == 0, lifted.stderr
    assert lifted.stdout == "ann@example.com: no longer suppressed\n"

    one_list = run(site, "count", "--list", "main")
    assert one_list.returncode == 0, one_list.stderr
    assert one_list.stdout.splitlines() == ["main: 3 subscribers, 3 not suppressed"]


def test_resubscribe_brings_back_a_reader_still_in_the_file_to_that_list_only(site: Site) -> None:
    """Unsubscribing by link leaves the row in the file; --resubscribe must still lift it."""
    write_list(site, "main", PEOPLE)
    write_list(site, "weekly", "email\nann@example.com\n")
    with Ledger(f"sqlite:///{site.root / 'newsletter.db'}") as ledger:
        ledger.suppress([("ann@example.com", "unsubscribed")], "link", list_name="main")
        ledger.suppress([("ann@example.com", "unsubscribed")], "link", list_name="weekly")
    refused = run(site, "add", "ann@example.com", "--list", "main")
    assert (
        "ann@example.com" in run(site, "count", "--list", "main").stdout or refused.returncode == 0
    )
    assert run(site, "count", "--list", "main").stdout == "main: 3 subscribers, 2 not suppressed\n"

    back = run(site, "add", "ann@example.com", "--list", "main", "--resubscribe")
    assert back.returncode == 0, back.stderr
    counts = run(site, "count").stdout.splitlines()
    assert counts == [
        "main: 3 subscribers, 3 not suppressed",
        "weekly: 1 subscriber, 0 not suppressed",
    ]


# -- read_list at send time --------------------------------------------------------------


def test_read_list_reports_bad_rows_by_line_and_yields_each_address_once(site: Site) -> None:
    main = write_list(
        site,
        "main",
        "email,name,City\n"  # 1
        "ann@example.com,Ann,Oslo\n"  # 2
        "not-an-address,Bob,Rome\n"  # 3
        "ANN@Example.com,Ann Again,Oslo\n"  # 4 duplicate
        "cee@example.com,Cee\n"  # 5 a field short
        'dee@example.com,"Dee\nDee",Paris\n'  # 6-7
        "dee@example.com,Dee,Paris\n"  # 8 duplicate
        "eve@localhost,Eve,Nice\n"  # 9 no dot in the domain
        "\n"  # 10 blank
        "fay@example.com,Fay,Lima\n",  # 11
    )
    report = ListReport(main)

    people = list(read_list(main, report))

    assert [(s.email, s.name, dict(s.fields)) for s in people] == [
        ("ann@example.com", "Ann", {"city": "Oslo"}),
        ("dee@example.com", "Dee\nDee", {"city": "Paris"}),
        ("fay@example.com", "Fay", {"city": "Lima"}),
    ]
    assert report.duplicates == 2
    assert [(p.line, p.reason) for p in report.problems] == [
        (3, "not a valid email address: 'not-an-address'"),
        (5, "expected 3 fields like the header, found 2"),
        (9, "not a valid email address: 'eve@localhost'"),
    ]
    with pytest.raises(SubscriberError) as caught:
        report.raise_if_problems()
    assert str(caught.value).splitlines()[0] == (
        f"{main}: line 3: not a valid email address: 'not-an-address'"
    )


# -- atomic writes -----------------------------------------------------------------------


def test_an_import_leaves_a_complete_list_and_no_temp_files(site: Site) -> None:
    source = site.root / "many.csv"
    source.write_text(
        "email,name\n" + "".join(f"p{i}@example.com,Person {i}\n" for i in range(500)),
        encoding="utf-8",
    )
    main = lists(site) / "main.csv"

    report = import_subscribers(source, main, Suppressions())

    assert report.added == 500
    list_report = ListReport(main)
    assert len(list(read_list(main, list_report))) == 500
    assert (list_report.problems, list_report.duplicates) == ([], 0)
    assert main.read_text(encoding="utf-8").endswith("p499@example.com,Person 499\n")
    assert leftovers(main.parent) == []


class Exploding:
    """A cell that fails as the writer formats it: a crash halfway through the file."""

    def __str__(self) -> str:
        raise RuntimeError("disk on fire")


def test_a_crash_while_writing_keeps_the_old_list_and_no_temp_file(site: Site) -> None:
    main = write_list(site, "main", PEOPLE)
    before = main.read_bytes()
    rows = [["a@example.com", "A", ""]] * 2000 + [["b@example.com", Exploding(), ""]]

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_table(main, ["email", "name", "company"], cast(Sequence[Sequence[str]], rows))

    assert main.read_bytes() == before
    assert leftovers(main.parent) == []


def test_a_failed_rename_keeps_the_old_list_and_no_temp_file(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    main = write_list(site, "main", PEOPLE)
    before = main.read_bytes()
    written: list[str] = []

    def failing_replace(src: str, dst: object) -> None:
        written.append(Path(src).read_text(encoding="utf-8"))  # the new list was complete
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        add_subscriber(main, "dee@example.com", Suppressions())

    assert written and written[0].endswith("dee@example.com,,,,cli\n")
    assert main.read_bytes() == before
    assert leftovers(main.parent) == []


# -- concurrency -------------------------------------------------------------------------

ADDER = """
import sys, time
from pathlib import Path
from newsletter.list_editing import add_subscriber

class NoSuppressions:
    def suppressed(self, list_name=None): return frozenset()
    def resubscribe(self, email, list_name, other_lists): return False

target, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
(go.parent / f"ready-{prefix}").touch()
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
for i in range(10):
    report = add_subscriber(target, f"{prefix}{i}@example.com", NoSuppressions())
    assert report.added == 1, report
"""


def test_two_processes_adding_to_one_list_at_once_lose_no_row(site: Site) -> None:
    main = write_list(site, "main", "email,name\nfirst@example.com,First\n")
    go = site.root / "go"
    adders = [
        subprocess.Popen(
            [sys.executable, "-c", ADDER, str(main), prefix, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in ("left", "right")
    ]
    ready = [site.root / f"ready-{prefix}" for prefix in ("left", "right")]
    deadline = time.monotonic() + 30
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.005)
    go.touch()  # both started and waiting: now they add at the same time
    for adder in adders:
        _, stderr = adder.communicate(timeout=60)
        assert adder.returncode == 0, stderr

    found = emails(main)
    assert len(found) == 21
    assert set(found) == {"first@example.com"} | {
        f"{side}{i}@example.com" for side in ("left", "right") for i in range(10)
    }
    assert leftovers(main.parent) == []


def test_locked_makes_read_modify_write_exclusive_between_threads(site: Site) -> None:
    main = lists(site) / "main.csv"
    write_table(main, ["email", "name"], [])
    inside: list[int] = []
    overlaps: list[int] = []

    def append(prefix: str) -> None:
        for i in range(10):
            with locked(main):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                header, rows = read_table(main)
                time.sleep(0.002)  # widen the window a lost update needs
                write_table(main, header, [*rows, [f"{prefix}{i}@example.com", ""]])
                inside.pop()

    threads = [threading.Thread(target=append, args=(p,)) for p in ("left", "right")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert overlaps == []
    assert sorted(emails(main)) == sorted(
        f"{side}{i}@example.com" for side in ("left", "right") for i in range(10)
    )


@pytest.mark.parametrize(
    ("text", "email", "expected"),
    [
        ("email,name\r\nA@B.COM,A\r\n", "a@b.com", True),
        ("\ufeffemail\na@b.com", "A@b.com", True),  # a BOM, no last line break
        ("email,name\nxa@b.com,A\na@b.com.au,B\n", "a@b.com", False),
        ("name,email,referrer\nZ,z@z.com,a@b.com\n", "a@b.com", False),  # not its email
        ('name,email\n"Smith, J"," a@b.com "\n', "a@b.com", True),
        ("email\nélodie@b.com\n", "ÉLODIE@B.com", True),  # beyond ASCII: the rows are read
        ("name\na@b.com\n", "a@b.com", False),  # no email column
    ],
)
def test_on_list_finds_a_reader_by_the_email_column_only(
    tmp_path: Path, text: str, email: str, expected: bool
) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(text.encode("utf-8"))
    assert on_list(path, email) is expected
