"""Sending through the outbox transport: the no-credentials path a newcomer takes first."""

from __future__ import annotations

from pathlib import Path

from .conftest import Site, example_copy
from .support.cli import read, run


def test_the_readme_main_job_on_a_copy_of_the_example(tmp_path: Path) -> None:
    config = example_copy(tmp_path / "example")
    example = config.parent

    first = run(config, "send", "--yes")

    assert first.returncode == 0, first.stderr
    assert (
        "Sent 'Putin Meets Top Chinese General, Enhancing the Constructive Ties Between…'"
        in first.stdout
    )
    folder = next((example / "outbox").iterdir())
    assert f"Messages written to {folder}/" in first.stdout
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["alex@example.com.eml", "kim@example.net.eml", "sam@example.org.eml"]
    mail = read(folder / "alex@example.com.eml")
    assert mail["To"] == "Alex Reader <alex@example.com>"
    assert mail["List-Unsubscribe"].startswith("<https://example.com/newsletter/unsubscribe/")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # lines are wrapped for the wire where a space means the same: read as a browser does
    html = " ".join(mail.get_body(("html",)).get_content().split())
    text = mail.get_body(("plain",)).get_content()
    assert "Putin Meets Top Chinese General" in html and "Putin Meets Top Chinese General" in text
    assert "This email was sent to alex@example.com." in html
    assert mail["List-Unsubscribe"][1:-1] in text
    assert "%%" not in html and "%%" not in text

    again = run(config, "send", "--yes")
    assert again.returncode == 0
    assert "was already sent (3 recipients): nothing to do" in again.stdout
    assert len(list(folder.iterdir())) == 3


def outbox_site(site: Site) -> None:
    site.story("lead", title="Lead", date="2024-03-05 06:00:00+00:00")
    site.write_config(
        extra="""
        [delivery]
        transport = "outbox"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        """
    )
    (site.root / "subscribers").mkdir(exist_ok=True)


def test_invalid_rows_stop_a_send_before_anything_goes_out(site: Site) -> None:
    outbox_site(site)
    (site.root / "subscribers" / "main.csv").write_text(
        "email,name\nok@example.com,Ok\nnot-an-address,Bad\nsecond@example.com,Two,extra\nOK@example.com,Dup\n"
    )
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    main = site.root / "subscribers" / "main.csv"
    assert f"{main}: line 3: not a valid email address: 'not-an-address'" in result.stderr
    assert f"{main}: line 4: expected 2 fields like the header, found 3" in result.stderr
    assert "--skip-invalid" in result.stderr
    assert not (site.root / "outbox").exists() or not any((site.root / "outbox").rglob("*.eml"))

    skipped = run(site.config_path, "send", "--date", "2024-03-05", "--yes", "--skip-invalid")
    assert skipped.returncode == 0, skipped.stderr
    assert "1 duplicate row ignored" in skipped.stdout
    sent = [p.name for p in (site.root / "outbox").rglob("*.eml")]
    assert sent == ["ok@example.com.eml"]


def test_list_problems_name_the_file(site: Site) -> None:
    outbox_site(site)
    main = site.root / "subscribers" / "main.csv"
    main.write_text("address,name\na@example.com,A\n")
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 1
    assert f"{main}: line 1: no 'email' column (the header has: address, name)" in result.stderr
    main.write_bytes("email,name\nb@example.com,Bj\xf6rn\n".encode("latin-1"))
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 1
    assert f"{main}: not UTF-8 text" in result.stderr
    assert "Traceback" not in result.stderr
    main.unlink()
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 1
    assert f"{main}: list file not found" in result.stderr


def test_every_column_token_is_filled_per_recipient(site: Site) -> None:
    outbox_site(site)
    site.template(
        "partials/intro.html",
        '<tr><td class="intro"><p>Hi {{ subscriber.first_name }} of {{ subscriber.company }} ({{ subscriber.name }})</p></td></tr>\n',
    )
    site.template(
        "partials/intro.txt", "Hi {{ subscriber.first_name }} of {{ subscriber.company }}\n"
    )
    (site.root / "subscribers" / "main.csv").write_text(
        "email,name,Company\nann@example.com,Ann Lee,Acme & Sons\nbob@example.com,,<Bob Co>\n"
    )
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 0, result.stderr
    folder = site.root / "outbox" / "2024-03-05-main"
    ann = read(folder / "ann@example.com.eml")
    assert "Hi Ann of Acme &amp; Sons (Ann Lee)" in ann.get_body(("html",)).get_content()
    assert "Hi Ann of Acme & Sons" in ann.get_body(("plain",)).get_content()
    bob = read(folder / "bob@example.com.eml")
    assert "Hi  of &lt;Bob Co&gt; ()" in bob.get_body(("html",)).get_content()


def test_non_ascii_addresses_are_written_as_smtputf8_not_as_encoded_words(site: Site) -> None:
    """An address cannot be an encoded word (`0@a.=?utf-8?b?...?=` reaches nobody): a message
    to a non-ASCII address is an SMTPUTF8 one, its headers UTF-8 (RFC 6532)."""
    outbox_site(site)
    people = ["reader@bücher.example", "ünï@example.com", "0@a.慈善"]
    (site.root / "subscribers" / "main.csv").write_text(
        "email,name\n" + "".join(f"{a},Zoë\n" for a in people), encoding="utf-8"
    )

    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")

    assert result.returncode == 0, result.stderr
    files = sorted((site.root / "outbox" / "2024-03-05-main").glob("*.eml"))
    assert len(files) == 3
    for path in files:
        raw = path.read_bytes()
        assert b"=?utf-8?" not in raw.split(b"\r\nTo: ", 1)[1].split(b"\r\n", 1)[0]
    addresses = sorted(read(path)["To"].addresses[0].addr_spec for path in files)
    assert addresses == sorted(people)


def test_a_token_without_a_column_is_refused(site: Site) -> None:
    outbox_site(site)
    site.template("partials/intro.html", "<tr><td>{{ subscriber.plan }}</td></tr>\n")
    (site.root / "subscribers" / "main.csv").write_text("email\nann@example.com\n")
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 1
    assert (
        "the templates use {{ subscriber.plan }} but the list has no such column" in result.stderr
    )


def test_a_bulk_send_needs_an_unsubscribe_mode(site: Site) -> None:
    site.story("lead", title="Lead", date="2024-03-05 06:00:00+00:00")
    site.write_config(extra='[delivery]\ntransport = "outbox"\n')
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text("email\nann@example.com\n")
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 2
    assert "a bulk send needs an unsubscribe link: set unsubscribe.mode" in result.stderr


def test_hosted_links_need_the_secret_outside_the_outbox(site: Site) -> None:
    outbox_site(site)
    (site.root / "subscribers" / "main.csv").write_text("email\nann@example.com\n")
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes", "--transport", "smtp")
    assert result.returncode == 2
    assert "set the environment variable NEWSLETTER_SECRET" in result.stderr


def test_an_address_twice_far_apart_in_the_list_gets_the_issue_once(site: Site) -> None:
    """The send keeps a hash per reader, not the address: rows thousands of lines apart
    (in different chunks) that are one person make it read the list again, exactly."""
    outbox_site(site)
    rows = [f"reader{n:05d}@example.com,Reader {n}" for n in range(4500)]
    rows.append("READER00007@Example.com,Same person in capitals")
    rows.append("reader04499@example.com,Last one again")
    (site.root / "subscribers" / "main.csv").write_text("email,name\n" + "\n".join(rows) + "\n")
    result = run(site.config_path, "send", "--date", "2024-03-05", "--yes")
    assert result.returncode == 0, result.stderr
    assert "2 duplicate rows ignored" in result.stdout
    sent = sorted(p.name for p in (site.root / "outbox").rglob("*.eml"))
    assert sent == sorted(f"reader{n:05d}@example.com.eml" for n in range(4500))
    first = read(next((site.root / "outbox").rglob("reader00007@example.com.eml")))
    assert first["To"] == "Reader 7 <reader00007@example.com>"
