"""The MIME messages of the local transports, written out by hand: checked by the email parser."""

from __future__ import annotations

import email
import email.policy

import pytest

from newsletter.transports.base import Message, Recipient
from newsletter.transports.mime import MimeBuilder

HTML = (
    '<p>Hi %%name%%, <a href="%%unsubscribe_url%%">leave</a> · sent to %%email%%</p>\n'
    + "<p>x</p>\n" * 200
)
TEXT = "Hi %%name:text%% — sent to %%email:text%%\nUnsubscribe: %%unsubscribe_url%%\n.dot line\n"
MESSAGE = Message("Grüße from the Gazette", HTML, TEXT, "news@example.com", "The Gazette ☕", "editor@example.com", frozenset({"name", "email", "unsubscribe_url"}), "1", "main")  # fmt: skip
URL = "https://example.com/n/unsubscribe/abc.def"
ANN = Recipient("ann@example.com", 'Ann "A" & <Co> Zoë', {"name": 'Ann "A" & <Co> Zoë', "email": "ann@example.com", "unsubscribe_url": URL}, {"List-Unsubscribe": f"<{URL}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"})  # fmt: skip


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize("eight_bit", [True, False])
def test_a_well_formed_personalised_message(eight_bit: bool) -> None:
    data = MimeBuilder(MESSAGE).build_bytes(ANN, eight_bit)
    assert data is not None
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    head, _, body = data.partition(b"\r\n\r\n")
    assert max(len(line) for line in head.split(b"\r\n")) <= 78
    assert max(len(line) for line in body.split(b"\r\n")) <= (998 if eight_bit else 76)
    mail = parse(data)
    assert mail["Subject"] == "Grüße from the Gazette"
    assert mail["From"].addresses[0].display_name == "The Gazette ☕"
    assert mail["To"].addresses[0].display_name == 'Ann "A" & <Co> Zoë'
    assert mail["To"].addresses[0].addr_spec == "ann@example.com"
    assert mail["Reply-To"] == "editor@example.com"
    assert mail["List-Unsubscribe"] == f"<{URL}>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["Message-ID"].endswith("@example.com>") and mail["Date"]
    assert mail.get_content_type() == "multipart/alternative"
    assert mail.defects == []
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    assert "Hi Ann &quot;A&quot; &amp; &lt;Co&gt; Zoë," in html and f'href="{URL}"' in html
    assert 'Hi Ann "A" & <Co> Zoë — sent to ann@example.com' in text
    assert f"Unsubscribe: {URL}" in text and "\n.dot line" in text
    cte = "8bit" if eight_bit else "quoted-printable"
    assert all(part["Content-Transfer-Encoding"] == cte for part in mail.iter_parts())


def test_lines_too_long_for_8bit_fall_back_to_quoted_printable() -> None:
    unbreakable = "<p>" + "x" * 1200 + "</p>"  # no space to break at
    long_message = Message("s", unbreakable, "t", "news@example.com", None, None, frozenset(), "1", "main")  # fmt: skip
    data = MimeBuilder(long_message).build_bytes(Recipient("a@example.com", "", {}), eight_bit=True)
    assert data is not None
    mail = parse(data)
    assert [p["Content-Transfer-Encoding"] for p in mail.iter_parts()] == ["quoted-printable"] * 2
    assert mail.get_body(("html",)).get_content() == unbreakable


def test_the_html_travels_in_few_long_lines() -> None:
    data = MimeBuilder(MESSAGE).build_bytes(ANN, eight_bit=True)
    assert data is not None
    html_part = data.split(b"Content-Type: text/html")[1]
    assert len(html_part.split(b"\r\n")) < 20  # 200 source lines, joined
    html = parse(data).get_body(("html",)).get_content()
    assert " ".join(html.split()) == " ".join(
        HTML.replace("%%name%%", "Ann &quot;A&quot; &amp; &lt;Co&gt; Zoë")
        .replace("%%unsubscribe_url%%", URL)
        .replace("%%email%%", "ann@example.com")
        .split()
    )


def test_a_non_ascii_address_is_left_to_the_email_package() -> None:
    builder = MimeBuilder(MESSAGE)
    josé = Recipient("josé@example.com", "José", {"email": "josé@example.com"})
    assert builder.build_bytes(josé, eight_bit=True) is None
    assert builder.build(josé)["To"].addresses[0].addr_spec == "josé@example.com"
