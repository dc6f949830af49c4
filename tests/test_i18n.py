"""The newsletter in its readers' language: every string a reader sees is translated.

The English strings are taken from the shipped catalogue template (the same strings
`python -m newsletter.catalogues` extracts from the theme and the code), then looked
for in everything a Chinese or Arabic reader gets: the issue (HTML and text), every
page of `newsletter serve`, the confirmation email and the preview page.
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
from pathlib import Path

import lxml.html
import pytest

from newsletter.app import preview_page
from newsletter.catalogues import built_in_messages, message_ids, shipped_messages
from newsletter.preview import index_page

from .conftest import NOW, REPO, Site
from .support.cli import read, run
from .support.web import ENV, confirm_link, running_web

ENGLISH = message_ids(shipped_messages())
TRANSLATED = ["zh-CN", "ar"]


def english_left(text: str) -> set[str]:
    """The theme's English strings (each piece between its placeholders) found in `text`."""
    found = set()
    for message in ENGLISH:
        for piece in re.split(r"%\(\w+\)[sd]", message):
            piece = piece.strip(" :.,?()")
            if len(piece) >= 2 and re.search(rf"(?<![A-Za-z]){re.escape(piece)}(?![A-Za-z])", text):
                found.add(piece)
    return found


def seen_in_html(html: str) -> str:
    """What a reader sees of a page: its text, titles, alt texts and labels."""
    doc = lxml.html.fromstring(html)
    for hidden in doc.xpath("//style | //script"):
        hidden.drop_tree()
    shown = doc.xpath("//@alt | //@title | //@aria-label | //@placeholder")
    return " ".join([doc.text_content(), *shown])


def test_the_shipped_catalogue_template_has_every_string_of_the_theme_and_the_code() -> None:
    """`python -m newsletter.catalogues` was run after the last string changed."""
    assert sorted(message_ids(built_in_messages())) == sorted(ENGLISH)
    assert len(ENGLISH) > 60


@pytest.mark.parametrize("language", TRANSLATED)
def test_no_english_is_left_in_the_issue(site: Site, language: str) -> None:
    site.write_config(
        site.config_path.read_text().replace("[sender]", f'language = "{language}"\n\n[sender]')
    )
    site.story(
        "one",
        title="第一",
        date="2024-03-05 06:00:00+00:00",
        url="https://e.example/1",
        author="编辑",
    )
    site.story("two", title="第二", date="2024-03-05 05:00:00+00:00", url="https://e.example/2")
    built = site.app().build_issue()
    html, text = built.personalised(
        {"email": "r@example.com", "unsubscribe_url": "https://u.example/x"}
    )
    assert english_left(seen_in_html(html)) == set()
    assert english_left(text) == set()
    assert english_left(built.email.subject + built.email.preheader) == set()


@pytest.mark.parametrize("language", TRANSLATED)
def test_no_english_is_left_in_the_pages_and_the_confirmation_email(
    site: Site, language: str
) -> None:
    with running_web(site, language) as web:
        pages = {
            "form": web.http.get("/subscribe"),
            "bad address": web.sign_up("not an address"),
            "check inbox": web.sign_up("new@example.com", "新读者"),
            "unsubscribe page": web.http.get(web.unsubscribe_url("reader@example.com")),
            "unsubscribed": web.http.post(
                web.unsubscribe_url("reader@example.com"), data={"scope": "list"}
            ),
            "help": web.http.get("/unsubscribe"),
            "archive": web.http.get("/archive"),
            "not found": web.http.get("/nothing-here"),
            "bad link": web.http.get("/confirm?token=broken"),
        }
        [sent] = web.confirmations()
        message = email.message_from_bytes(sent.read_bytes(), policy=email.policy.default)
        pages["subscribed"] = web.http.get(confirm_link(message))
    assert pages["subscribed"].status_code == 200
    assert pages["unsubscribe page"].headers["content-type"].startswith("text/html")
    for name, page in pages.items():
        assert f'lang="{language}"' in page.text, name
        assert english_left(seen_in_html(page.text)) == set(), name
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert english_left(seen_in_html(html)) == set() and english_left(text) == set()
    assert english_left(str(message["Subject"])) == set()
    rtl = language == "ar"
    assert (' dir="rtl"' in pages["form"].text) is rtl and (' dir="rtl"' in html) is rtl


@pytest.mark.parametrize("language", TRANSLATED)
def test_no_english_is_left_on_the_preview_page(site: Site, language: str) -> None:
    site.write_config(
        site.config_path.read_text().replace("[sender]", f'language = "{language}"\n\n[sender]')
    )
    site.story("one", title="第一", date="2024-03-05 06:00:00+00:00")
    page = index_page(preview_page(site.config_path, {}, None, clock=lambda: NOW), 1)
    assert english_left(seen_in_html(page)) == set()
    assert f'lang="{language}"' in page


def test_an_unknown_language_names_the_key_and_the_languages_available(site: Site) -> None:
    site.write_config(
        site.config_path.read_text().replace("[sender]", 'language = "xx"\n\n[sender]')
    )
    result = run(site.config_path, "check")
    assert result.returncode == 2
    assert (
        f"{site.config_path}: newsletter.language: no translations for 'xx'; "
        "available: ar, en, zh-CN" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_a_newsletter_overrides_a_string_adds_its_own_and_check_names_what_is_missing(
    site: Site,
) -> None:
    site.write_config(
        site.config_path.read_text().replace("[sender]", 'language = "zh-CN"\n\n[sender]')
    )
    site.story("one", title="第一", date="2024-03-05 06:00:00+00:00", url="https://e.example/1")
    site.template(
        "partials/intro.html", '<tr><td class="intro">{{ _("A word from the editor") }}</td></tr>\n'
    )
    own = site.root / "templates" / "locale" / "zh_CN" / "LC_MESSAGES" / "newsletter.po"
    own.parent.mkdir(parents=True)
    own.write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Continue reading"\nmsgstr "阅读全文"\n',
        encoding="utf-8",
    )
    html = site.app().build_issue().email.html
    assert "阅读全文" in html and "继续阅读" not in html  # the newsletter's word wins
    assert "本期内容" not in html  # (one story: no contents list)
    assert "A word from the editor" in html  # not translated yet: left in English...
    checked = run(site.config_path, "check")
    assert checked.returncode == 1  # ...and `check` says so, naming the template
    intro = site.root / "templates" / "partials" / "intro.html"
    assert f"zh-CN: not translated: 'A word from the editor' ({intro})" in checked.stderr
    assert checked.stderr.count("not translated") == 1  # the built-in strings are all there

    # a language the tool does not ship, added by the newsletter, half done
    french = site.root / "templates" / "locale" / "fr" / "LC_MESSAGES" / "newsletter.po"
    french.parent.mkdir(parents=True)
    french.write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Continue reading"\nmsgstr "Lire la suite"\n',
        encoding="utf-8",
    )
    site.write_config(site.config_path.read_text().replace('language = "zh-CN"', 'language = "fr"'))
    html = site.app().build_issue().email.html
    assert "Lire la suite" in html and "mardi 5 mars 2024" in html  # Babel's French date
    checked = run(site.config_path, "check")
    assert checked.returncode == 1
    assert "fr: not translated: 'Unsubscribe' (built-in theme)" in checked.stderr
    assert "'Continue reading'" not in checked.stderr


def test_a_broken_catalogue_is_named(site: Site) -> None:
    own = site.root / "templates" / "locale" / "en" / "LC_MESSAGES" / "newsletter.po"
    own.parent.mkdir(parents=True)
    own.write_text('msgid "Unsubscribe"\nmsgstr "Leave"\n\nmsgid "Subscribe"\n', encoding="utf-8")
    result = run(site.config_path, "check")
    assert result.returncode == 2
    assert f"error: {own}: not a readable gettext catalogue" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_chinese_example_previews_and_sends_to_the_outbox(tmp_path: Path) -> None:
    """The README's second example, as a newcomer runs it (a copy, so the repository
    stays clean)."""
    folder = tmp_path / "zh"
    shutil.copytree(
        REPO / "examples" / "zh", folder, ignore=shutil.ignore_patterns("outbox", "*.db")
    )
    config = folder / "config.toml"
    preview = run(config, "preview", "--output", str(tmp_path / "p.html"))
    assert preview.returncode == 0, preview.stderr
    assert "普京会见中国军方高层" in (tmp_path / "p.html").read_text(encoding="utf-8")
    sent = run(config, "send", "--date", "2023-11-10", "--yes", **ENV)
    assert sent.returncode == 0, sent.stderr
    files = sorted((folder / "outbox").rglob("*.eml"))
    assert len(files) == 2
    message = read(files[0])
    assert message["Subject"] == "普京会见中国军方高层，中俄建设性关系进一步加强"
    assert "退订" in message.get_body(("plain",)).get_content()


def test_a_font_stack_that_could_end_the_css_declaration_is_refused(site: Site) -> None:
    site.write_config(
        site.config_path.read_text()
        + '\n[theme]\nheadline_font = "Georgia; } .footer { display: none"\nread_more = "big"\n'
    )
    result = run(site.config_path, "check")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{site.config_path}: theme.headline_font: " in result.stderr
    assert f"{site.config_path}: theme.read_more: " in result.stderr and "'link'" in result.stderr
