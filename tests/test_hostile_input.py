"""Hostile input never becomes structure: a name, a title or a setting cannot forge a header
line, replace a body, or reach the terminal as an escape sequence.

Why: every transport writes headers from data (a subscriber's name in `To:`, a story's title
in the subject). `import` and `add` refuse control characters, but a list file edited by hand
skips them, so each transport is checked on what the receiving side got: the `.eml` file, the
message aiosmtpd accepted, the request the SendGrid emulator validated against the schema.
"""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import html
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

import pytest

from newsletter.config import SendGridSettings
from newsletter.transports.base import Message, PermanentFailure, Recipient
from newsletter.transports.headers import list_fields
from newsletter.transports.mime import MimeBuilder
from newsletter.transports.outbox import OutboxTransport
from newsletter.transports.sendgrid import SendGridTransport

from .conftest import BASE_CONFIG, SENDGRID_TEST_API_KEY, Site
from .support.cli import read
from .support.sendgrid_emulator import SendGridEmulator
from .support.smtp_server import SmtpServer
from .support.web import Web, confirm_link

DATE = "2024-03-05"
EVIL = "evil@attacker.example"
FORGED = f"Bob\r\nBcc: {EVIL}"
LONG_NAME = ("Zoë Çelik-Ødegård, Ünïcødé Ärchïvïst " * 12).strip()  # ~430 characters
# address -> (the name in a list file edited by hand, the one line the reader is shown)
NAMES = {
    "crlf@example.com": (FORGED, f"Bob Bcc: {EVIL}"),
    "lf@example.com": (f"Bob\nBcc: {EVIL}", f"Bob Bcc: {EVIL}"),
    "cr@example.com": (f"Bob\rBcc: {EVIL}", f"Bob Bcc: {EVIL}"),
    "nul@example.com": (f"Bob\x00Bcc: {EVIL}", f"Bob Bcc: {EVIL}"),
    "sep@example.com": (f"Bob\u2028Bcc: {EVIL}", f"Bob Bcc: {EVIL}"),
    "body@example.com": (
        "Eve\r\nContent-Type: text/plain\r\n\r\nFAKE BODY",
        "Eve Content-Type: text/plain FAKE BODY",
    ),
    "esc@example.com": ("\x1b]0;owned\x07Mallory\x1b[2J", "]0;owned Mallory [2J"),
    "long@example.com": (LONG_NAME, LONG_NAME),
    "plain@example.com": ("Plain Reader", "Plain Reader"),
}
TITLE = f"Lead\r\nBcc: {EVIL}\u2028\x00Ünïcødé " + "überlange Überschrift " * 8
SUBJECT = f"Lead Bcc: {EVIL} Ünïcødé" + " überlange Überschrift" * 8
STORY_TEXT = "A paragraph of news."
# the head of every message of the local transports, in this order, and nothing else
HEADERS = ["Subject", "From", "Reply-To", "List-Id", "Feedback-ID", "To", "Date", "Message-ID"]
HEADERS += ["List-Unsubscribe", "List-Unsubscribe-Post", "MIME-Version", "Content-Type"]


def hostile_site(site: Site, transport: str, settings: str) -> None:
    """A newsletter whose subject is a story's title, greeting each reader by name, with a
    list file edited by hand (so nothing was refused on the way in)."""
    site.story("lead", body=STORY_TEXT, title=TITLE)
    site.template("partials/intro.html", "<tr><td>Dear {{ subscriber.name }},</td></tr>\n")
    site.template("partials/intro.txt", "Dear {{ subscriber.name }},\n")
    config = BASE_CONFIG.replace(
        'archive_url = "https://news.example.com/archive"',
        'subject = "{{ stories[0].title }}"',
    )
    site.write_config(
        config,
        f"""
        [delivery]
        transport = "{transport}"
        workers = 1

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        {settings}
        """,
    )
    folder = site.root / "subscribers"
    folder.mkdir()
    with (folder / "main.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["email", "name"])
        writer.writerows((address, name) for address, (name, _) in NAMES.items())


def newsletter(site: Site, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), *args],
        capture_output=True, text=True, timeout=120, cwd=site.root,
        env={**clean, "NEWSLETTER_SECRET": "a-test-secret-0123456789", **env},
    )  # fmt: skip


def check_message(data: bytes, address: str) -> None:
    """One reader's message as sent: our fields only, one line each, the body whole."""
    assert b"\x00" not in data
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    head, blank, _ = data.partition(b"\r\n\r\n")
    assert blank and head.isascii()
    lines = head.decode("ascii").split("\r\n")
    assert max(map(len, lines)) <= 998
    # a line that is not a fold starts a field: nothing but ours started one
    assert list(fields(head.decode("ascii"))) == HEADERS

    mail = parse(data)
    assert all(part.defects == [] for part in mail.walk())
    assert mail["Subject"] == SUBJECT
    assert mail["From"].addresses[0].display_name == "The Test Times"
    (to,) = mail["To"].addresses
    shown = NAMES[address][1]
    assert to.addr_spec == address
    assert display_name(fields(head.decode("ascii"))["To"]) == shown

    assert [part.get_content_type() for part in mail.iter_parts()] == ["text/plain", "text/html"]
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f"Dear {shown},\n" in text.replace("\r\n", "\n")
    assert f"Dear {html.escape(shown)}," in page
    assert STORY_TEXT in text and STORY_TEXT in page
    assert f"This email was sent to {address}." in text
    assert f"This email was sent to {address}." in page


def parse(data: bytes) -> EmailMessage:
    if data.partition(b"\r\n\r\n")[0].isascii():
        mail = email.message_from_bytes(data, policy=email.policy.default)
    else:  # UTF-8 headers (RFC 6532, a non-ASCII address): the bytes parser mangles them
        mail = email.message_from_string(data.decode("utf-8"), policy=email.policy.default)
    assert isinstance(mail, EmailMessage)
    return mail


def fields(head: str) -> dict[str, str]:
    """The head's fields in order, each unfolded: name -> value."""
    out: dict[str, str] = {}
    name = ""
    for line in head.split("\r\n"):
        if line[0].isspace():
            out[name] += line  # a fold: the same field goes on
        else:
            name, _, value = line.partition(": ")
            assert name not in out, f"{name} twice"
            out[name] = value
    return out


def display_name(value: str) -> str:
    """The display name of `Name <address>` as an RFC 2047 reader shows it. (The email
    package's own address parser puts a space wherever encoded words were folded, so a
    long non-ASCII name is decoded here the way mail clients do.)"""
    phrase = value.rpartition(" <")[0]
    if "=?" in phrase:
        return str(make_header(decode_header(phrase)))
    return parseaddr(value)[0]


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with SmtpServer() as running:
        yield running


def test_hostile_names_and_titles_cannot_forge_a_header_in_the_outbox(site: Site) -> None:
    hostile_site(site, "outbox", "")

    result = newsletter(site, "send", "--date", DATE, "--yes")

    assert result.returncode == 0, result.stderr
    assert f"to {len(NAMES)} recipients" in result.stdout
    files = sorted((site.root / "outbox").rglob("*.eml"))
    assert sorted(p.name for p in files) == sorted(f"{address}.eml" for address in NAMES)
    for path in files:
        check_message(path.read_bytes(), path.name.removesuffix(".eml"))


def test_hostile_names_and_titles_cannot_forge_a_header_over_smtp(
    site: Site, smtp_server: SmtpServer
) -> None:
    hostile_site(
        site,
        "smtp",
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"',
    )

    result = newsletter(site, "send", "--date", DATE, "--yes")

    assert result.returncode == 0, result.stderr
    received = smtp_server.messages
    # each envelope is its reader's alone: a forged Bcc reached nobody
    assert sorted(m.rcpt_tos for m in received) == sorted((a,) for a in NAMES)
    for message in received:
        assert message.mail_from == "news@example.com"
        check_message(message.data, message.rcpt_tos[0])


def test_hostile_names_and_titles_reach_sendgrid_as_one_line_values(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    hostile_site(site, "sendgrid", f'[sendgrid]\napi_url = "{sendgrid_emulator.url}"')

    result = newsletter(
        site, "send", "--date", DATE, "--yes", SENDGRID_API_KEY=SENDGRID_TEST_API_KEY
    )

    assert result.returncode == 0, result.stderr
    assert sendgrid_emulator.stats().validation_failures == 0
    (body,) = sendgrid_emulator.accepted()
    assert body["subject"] == SUBJECT
    assert body["from"] == {"email": "news@example.com", "name": "The Test Times"}
    assert body["reply_to"] == {"email": "editor@example.com"}
    seen = set()
    for person in body["personalizations"]:
        (to,) = person["to"]
        shown = NAMES[to["email"]][1]
        assert to == {"email": to["email"], "name": shown}
        assert set(person) == {"to", "substitutions", "headers", "custom_args"}
        assert set(person["headers"]) == {"List-Unsubscribe", "List-Unsubscribe-Post"}
        assert person["substitutions"]["%%name%%"] == html.escape(shown)
        assert person["substitutions"]["%%name:text%%"] == shown
        seen.add(to["email"])
    assert seen == set(NAMES)
    # apart from the two parts of the body, no value in the request holds a control character
    outside = {key: value for key, value in body.items() if key != "content"}
    assert all(s.isprintable() for s in strings(outside)), [
        s for s in strings(outside) if not s.isprintable()
    ]


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


# -- the way in: import, add, the config, the sign-up form -----------------------------------


def test_import_and_add_refuse_control_characters_naming_the_line(site: Site) -> None:
    site.write_config()
    lines = [
        "email,name,first_name,company",  # 1
        "ann@example.com,Ann Lee,Ann,Acme",  # 2 added
        'bob@example.com,"Bob\r\nBcc: evil@attacker.example",Bob,x',  # 3-4 a name over two lines
        "eve@example.com,Eve\x1b]0;owned\x07,Eve,x",  # 5 an escape sequence
        "nul@example.com,Nul\x00,Nul,x",  # 6
        "tab@example.com,Tab,Ta\tb,x",  # 7 a tab in first_name
        "sep@example.com,Sep\u2028Sep,Sep,x",  # 8 a Unicode line separator
        'cee@example.com,Cee,Cee,"Cee & Co\nSecond floor"',  # 9-10 an address may span lines
        'dee@example.com,Dee,Dee,"Dee\x1b[2J Ltd"',  # 11 but not hold an escape
    ]
    source = site.root / "hostile.csv"
    source.write_bytes(("\n".join(lines) + "\n").encode("utf-8"))

    imported = newsletter(site, "subscribers", "import", str(source), "--list", "main")

    assert "Traceback" not in imported.stderr
    main = site.root / "subscribers" / "main.csv"
    assert imported.returncode == 1  # rows were rejected
    assert imported.stdout == f"{main}: 2 added, 0 already on the list, 6 rows rejected\n"
    assert imported.stderr.splitlines() == [
        "rejected: line 3: name contains a control character (U+000D); it must be one line of plain text",
        "rejected: line 5: name contains a control character (U+001B); it must be one line of plain text",
        "rejected: line 6: name contains a control character (U+0000); it must be one line of plain text",
        "rejected: line 7: first_name contains a control character (U+0009); it must be one line of plain text",
        "rejected: line 8: name contains a control character (U+2028); it must be one line of plain text",
        "rejected: line 11: company contains a control character (U+001B); it must be plain text",
    ]
    with main.open(encoding="utf-8", newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["email", "name", "first_name", "company"],
            ["ann@example.com", "Ann Lee", "Ann", "Acme"],
            ["cee@example.com", "Cee", "Cee", "Cee & Co\nSecond floor"],
        ]

    before = main.read_bytes()
    added = newsletter(site, "subscribers", "add", "bob@example.com", "--name", FORGED, "--list", "main")  # fmt: skip

    assert added.returncode == 1
    assert added.stderr == (
        "error: 'bob@example.com': name contains a control character (U+000D); "
        "it must be one line of plain text\n"
    )
    assert main.read_bytes() == before


def test_subscribers_list_shows_control_characters_escaped_not_raw(site: Site) -> None:
    site.write_config()
    folder = site.root / "subscribers"
    folder.mkdir()
    (folder / "main.csv").write_text(
        'email,name\nesc@example.com,"\x1b]0;owned\x07Mallory\x9b2J"\n'
        'lf@example.com,"Bob\nBcc:\u2028x"\nplain@example.com,Plain\n',
        encoding="utf-8",
    )

    result = newsletter(site, "subscribers", "list", "--list", "main")

    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "esc@example.com\t\\x1b]0;owned\\x07Mallory\\x9b2J\n"
        "lf@example.com\tBob\\nBcc:\\u2028x\n"
        "plain@example.com\tPlain\n"
    )


def test_a_story_title_with_an_escape_sequence_is_shown_by_check_as_text(site: Site) -> None:
    site.story("lead", title="Lead\x1b]0;owned\x07 \x1b[2Jstory", author="A\x9bB")
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text("email\n", encoding="utf-8")

    result = newsletter(site, "check", "--date", DATE)

    assert result.returncode == 0, result.stderr
    assert "  • Lead ]0;owned   [2Jstory (desk," in result.stdout  # each control a space
    assert not any(c in result.stdout + result.stderr for c in "\x1b\x07\x9b")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            'from_name = "The Times\\r\\nBcc: evil@attacker.example"',
            "sender.from_name: contains a control character (U+000D): it goes into mail "
            "headers, so it must be one line of plain text",
        ),
        (
            'from_name = "The Times\\u0000"',
            "sender.from_name: contains a control character (U+0000): it goes into mail "
            "headers, so it must be one line of plain text",
        ),
        (
            'reply_to = "editor@example.com\\u0000"',
            "sender.reply_to: not an email address: 'editor@example.com\\x00'",
        ),
        (
            'reply_to = "editor@example.com\\r\\nBcc: evil@attacker.example"',
            "sender.reply_to: not an email address: "
            "'editor@example.com\\r\\nBcc: evil@attacker.example'",
        ),
    ],
)
def test_a_sender_setting_that_would_forge_a_header_is_refused_naming_it(
    site: Site, setting: str, message: str
) -> None:
    key = setting.split(" =", 1)[0]
    config = "\n".join(
        setting if line.startswith(f"{key} =") else line for line in BASE_CONFIG.splitlines()
    )
    site.write_config(config + "\n")

    result = newsletter(site, "check")

    assert result.returncode != 0
    assert result.stderr == f"error: {site.config_path}: {message}\n"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            'mailto = "leave@example.com\\nBcc: evil@attacker.example"',
            "unsubscribe.mailto: contains a control character (U+000A): it goes into mail "
            "headers, so it must be one line of plain text",
        ),
        (
            'base_url = "https://news.example.com/n\\u001b]8;;"',
            "unsubscribe.base_url: String should match pattern",
        ),
    ],
)
def test_an_unsubscribe_setting_that_would_forge_a_header_is_refused(
    site: Site, setting: str, message: str
) -> None:
    site.write_config(extra=f'[unsubscribe]\nmode = "hosted"\n{setting}\n')

    result = newsletter(site, "check")

    assert result.returncode != 0
    assert result.stderr.startswith(f"error: {site.config_path}: {message}")
    assert len(result.stderr.splitlines()) == 1


def test_a_name_typed_into_the_sign_up_form_joins_the_list_as_one_line(web: Web) -> None:
    answer = web.sign_up("eve@example.com", f"Eve\x00\x1b[2J\r\nBcc: {EVIL}", list="weekly")
    assert answer.status_code == 200
    [sent] = web.confirmations()
    assert web.http.get(confirm_link(read(sent))).status_code == 200

    with web.list_file("weekly").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["email"], row["name"]) for row in rows] == [
        ("eve@example.com", f"Eve [2J Bcc: {EVIL}")
    ]


# -- the layers that write headers guard themselves, whatever reaches them -----------------

HOSTILE = [FORGED, f"Bob\n{EVIL}", "a\rb", "nul\x00", "sep\u2028arator", LONG_NAME, "Ø" * 2000]


def message(hostile: str) -> Message:
    """An issue whose subject and sender name are hostile: what a config check or a title's
    clean-up would have stopped, handed straight to the transport."""
    return Message(
        subject=hostile,
        html="<p>Dear %%name%%, %%company%%</p>",
        text="Dear %%name:text%%,\n%%company:text%%\n",
        from_email="news@example.com",
        from_name=hostile,
        reply_to="editor@example.com",
        tokens=frozenset({"name", "company"}),
        issue_id="1",
        list_name="main",
        headers=list_fields(hostile, "main", "example.com", dt.date(2024, 3, 5)),
    )


def recipient(address: str, hostile: str, header: str = "") -> Recipient:
    """A reader with a hostile name, a list column over two lines, and `header` (if any)
    after a List-Unsubscribe URL."""
    return Recipient(
        address,
        hostile,
        {"name": hostile, "company": "1 Lane\r\nTown\x00"},
        {"List-Unsubscribe": f"<https://news.example.com/n/u>{header}"},
    )


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("how", ["8bit", "quoted-printable", "outbox file", "SMTPUTF8"])
def test_the_mime_layer_writes_every_value_as_one_field(hostile: str, how: str) -> None:
    builder = MimeBuilder(message(hostile))
    # a non-ASCII address is written by the email package, as the outbox or smtplib does
    address = "reader@example.com" if how in ("8bit", "quoted-printable") else "zoë@example.com"
    person = recipient(address, hostile, f"\r\nBcc: {EVIL}")

    if how == "outbox file":
        data = builder.build(person).as_bytes()
    elif how == "SMTPUTF8":
        mail = builder.build(person)
        data = mail.as_bytes(policy=mail.policy.clone(utf8=True))
    else:
        built = builder.build_bytes(person, eight_bit=how == "8bit")
        assert built is not None
        data = built

    assert b"\x00" not in data and b"\r" not in data.replace(b"\r\n", b"")
    head = data.partition(b"\r\n\r\n")[0].decode("utf-8")
    assert max(len(line.encode()) for line in head.split("\r\n")) <= 998
    found = fields(head)
    assert set(found) == set(HEADERS) - {"List-Unsubscribe-Post"}
    mail = parse(data)
    one_line = " ".join(hostile.replace("\x00", " ").split())
    assert mail["Subject"] == one_line
    assert len(mail["To"].addresses) == 1 and len(mail["From"].addresses) == 1
    assert mail["To"].addresses[0].addr_spec == address
    shown = display_name(found["To"])
    assert display_name(found["From"]) == shown
    if how in ("8bit", "quoted-printable") or len(one_line.encode()) <= 400:
        assert shown == one_line
    else:  # the email package cannot fold a longer name: it is cut short, not split
        assert shown.endswith("…") and one_line.startswith(shown[:-1])
        assert 300 < len(shown.encode()) <= 403
    assert mail["List-Unsubscribe"] == f"<https://news.example.com/n/u> Bcc: {EVIL}"
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")  # type: ignore[union-attr]
    assert text == f"Dear {one_line},\n1 Lane\nTown \n"


def test_an_address_that_cannot_stand_in_a_header_stops_the_batch_where_it_is(
    tmp_path: Path,
) -> None:
    outbox = OutboxTransport(tmp_path)
    people = [
        recipient("first@example.com", "First"),
        recipient(f"second@example.com>\r\nBcc: {EVIL}", "Second"),
        recipient("third@example.com", "Third"),
    ]

    with pytest.raises(PermanentFailure) as failure:
        outbox.send_batch(message("Subject"), people)

    assert failure.value.done == 1  # the first went out and is never sent again
    assert str(failure.value) == (
        f"cannot write the address 'second@example.com>\\r\\nBcc: {EVIL}' into a mail header"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["first@example.com.eml"]


def test_a_reply_to_address_that_would_forge_a_header_sends_nothing(tmp_path: Path) -> None:
    hostile = replace(message("Subject"), reply_to=f"editor@example.com\r\nBcc: {EVIL}")

    with pytest.raises(PermanentFailure) as failure:
        OutboxTransport(tmp_path).send_batch(hostile, [recipient("first@example.com", "First")])

    assert failure.value.done == 0
    assert "cannot write the address 'editor@example.com\\r\\nBcc: " in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_the_sendgrid_request_holds_each_value_on_one_line() -> None:
    transport = SendGridTransport(SendGridSettings(), "SG.unused")
    people = [recipient("reader@example.com", FORGED), recipient("plain@example.com", "Plain")]

    body = json.loads(transport.request_json(message(FORGED), people))

    assert body["subject"] == f"Bob Bcc: {EVIL}"
    assert body["from"]["name"] == f"Bob Bcc: {EVIL}"
    first, second = body["personalizations"]
    assert first["to"] == [{"email": "reader@example.com", "name": f"Bob Bcc: {EVIL}"}]
    assert first["substitutions"]["%%name:text%%"] == f"Bob Bcc: {EVIL}"
    assert first["substitutions"]["%%company:text%%"] == "1 Lane\nTown "  # a body may span lines
    assert second["to"] == [{"email": "plain@example.com", "name": "Plain"}]
