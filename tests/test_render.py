from __future__ import annotations

import datetime as dt
import logging
import re

import lxml.html
import pytest

from newsletter.app import lint_issue
from newsletter.errors import RenderError
from newsletter.links import SHARE, STORY, LinkMatcher, issue_links
from newsletter.tokens import Personaliser

from .conftest import Site
from .support.cli import run

DAY = dt.date(2024, 3, 5)
VALUES = {
    "email": "ann@example.org",
    "first_name": "Ann",
    "unsubscribe_url": "https://news.example.com/u?t=abc",
}


def build(site: Site):  # type: ignore[no-untyped-def]
    return site.app().build_issue(DAY)


@pytest.fixture
def two_stories(site: Site) -> Site:
    site.story(
        "lead",
        body="First paragraph with a [link](https://example.com/source).\n\nSecond paragraph.\n",
        title="Lead story & more",
        date="2024-03-05 06:00:00+00:00",
        url="https://example.com/lead",
        author="Ann Writer",
        tags=["World"],
        image="https://cdn.example.com/lead.jpg",
        image_alt="A crowd",
    )
    site.story("brief", body="No link here.\n", title="A brief", date="2024-03-05 05:00:00+00:00")
    return site


def test_tokens_survive_premailer_including_inside_href(two_stories: Site) -> None:
    email = build(two_stories).email
    assert 'href="%%unsubscribe_url%%"' in email.html
    assert "%%email%%" in email.html
    assert "Unsubscribe: %%unsubscribe_url%%" in email.text  # the tool's own URL: one token
    assert "%%email:text%%" in email.text
    assert email.tokens == {"email", "unsubscribe_url"}
    assert "{{" not in email.html and "{{" not in email.text


def test_css_is_inlined_and_head_rules_keep_important(two_stories: Site) -> None:
    html = build(two_stories).email.html
    assert html.startswith("<!DOCTYPE html>")
    doc = lxml.html.fromstring(html)
    [headline] = doc.xpath("//h2[contains(@class, 'headline')]")[:1]
    assert "font-family:Georgia" in headline.get("style").replace(" ", "")
    styles = [s.text_content() for s in doc.xpath("//head/style")]
    head_css = "\n".join(styles)
    assert "&#39;" not in html.split("</head>")[0]  # quoted font names reach the CSS as written
    assert "@media only screen and (max-width: 620px)" in head_css
    assert "@media (prefers-color-scheme: dark)" in head_css
    assert "[data-ogsc]" in head_css
    assert re.search(r"\.container \{ width: 100% !important;", head_css)
    assert ".headline {" not in head_css.split("@media")[0]  # inlined, not left behind
    assert "<!--[if mso]>" in html and "<![endif]-->" in html
    assert 'name="color-scheme" content="light dark"' in html


def test_theme_has_the_parts_of_a_real_newsletter(two_stories: Site) -> None:
    built = build(two_stories)
    doc = lxml.html.fromstring(built.email.html)
    text = doc.text_content()
    assert "The Test Times" in text and "Tuesday, March 5, 2024" in text
    assert built.email.subject == "Lead story & more"  # the lead story's headline
    lead = doc.xpath("//h2[contains(@class,'headline')]/a")[0]
    assert lead.get("href") == "https://example.com/lead" and lead.text == "Lead story & more"
    assert "By Ann Writer · March 5, 2024" in text
    img = doc.xpath("//img[contains(@class,'story-image')]")[0]
    assert img.get("src") == "https://cdn.example.com/lead.jpg" and img.get("alt") == "A crowd"
    # "In this issue", each headline a link to its story
    contents = doc.xpath("//td[contains(@class,'contents')]")[0]
    assert contents.text_content().split()[:3] == ["In", "this", "issue"]
    links = [(a.text, a.get("href")) for a in contents.xpath(".//a")]
    assert links == [("Lead story & more", "#story-1"), ("A brief", "#story-2")]
    assert doc.xpath("//td[@id='story-2']//h2")[0].text_content() == "A brief"
    # one quiet link per story, no button, and one share row for the whole issue
    [more] = doc.xpath("//p[contains(@class,'continue')]/a")
    assert more.get("href") == "https://example.com/lead" and "Continue reading" in more.text
    assert not doc.xpath("//a[contains(@class,'button')]") and not doc.xpath("//p[@class='share']")
    row = doc.xpath("//td[contains(@class,'share-row')]")[0]
    assert row.text_content().split()[:3] == ["Share", "this", "issue:"]
    share = {a.text: a.get("href") for a in row.xpath(".//a")}
    issue_url = "https%3A%2F%2Fnews.example.com%2Farchive%2F2024-03-05"
    assert share["X"] == (
        f"https://x.com/intent/tweet?text=Lead%20story%20%26%20more&url={issue_url}"
    )
    assert share["LinkedIn"] == f"https://www.linkedin.com/sharing/share-offsite/?url={issue_url}"
    assert share["Facebook"] == f"https://www.facebook.com/sharer/sharer.php?u={issue_url}"
    assert share["Email"] == f"mailto:?subject=Lead%20story%20%26%20more&body={issue_url}"
    # the story without a URL: plain headline, no link to continue
    brief = doc.xpath("//td[contains(@class,'story')]")[1]
    assert not brief.xpath(".//a")
    preheader = doc.xpath("//div[contains(@class,'preheader')]")[0]
    assert "display: none" in preheader.get("style")
    assert " ".join(preheader.text_content().split()).startswith("Lead story & more · A brief")
    footer = doc.xpath("//td[contains(@class,'footer')]")[0].text_content()
    assert "1 Fixture Lane" in footer and "Unsubscribe" in footer and "View in browser" in footer
    assert "You are receiving this email because you subscribed to The Test Times." in footer
    view = doc.xpath("//td[contains(@class,'topbar')]/a")[0]
    assert view.get("href") == "https://news.example.com/archive/2024-03-05"


def test_no_archive_url_means_no_view_in_browser(two_stories: Site) -> None:
    two_stories.write_config(
        two_stories.config_path.read_text().replace(
            'archive_url = "https://news.example.com/archive"\n', ""
        )
    )
    assert "View in browser" not in build(two_stories).email.html


def test_text_part_reads_on_its_own(two_stories: Site) -> None:
    built = build(two_stories)
    text = Personaliser(built.email.text).fill(VALUES)
    assert "First paragraph with a link (https://example.com/source)." in text
    assert "Continue reading: https://example.com/lead" in text
    assert "In this issue\n1. Lead story & more\n2. A brief\n" in text
    assert "Share this issue: https://news.example.com/archive/2024-03-05" in text
    assert "Unsubscribe: https://news.example.com/u?t=abc" in text
    assert "1 Fixture Lane" in text
    assert "\u034f" not in text and "&zwnj;" not in text and "<" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_story_text_cannot_forge_a_token(site: Site) -> None:
    site.story(
        "trap",
        body="Click %%unsubscribe_url%% or [here](https://evil.example/?%%email%%) %%first_name%%\n",
        title="Win %%first_name%%",
        date="2024-03-05 06:00:00+00:00",
        url="https://example.com/%%email%%",
    )
    built = build(site)
    assert Personaliser(built.email.html).names == {"email", "unsubscribe_url"}
    assert Personaliser(built.email.text).names == {"email", "unsubscribe_url"}
    html, text = built.personalised(VALUES)
    assert "Ann" not in html and "Ann" not in text
    assert "https://news.example.com/u?t=abc" not in html.split('class="footer"')[0]
    assert "https://example.com/%25%25email%25%25" in html
    visible = lxml.html.fromstring(html).text_content().replace("\u2060", "")
    assert "Click %%unsubscribe_url%% or here %%first_name%%" in visible


# Every story field the theme shows, each with its own forged token: the name tells which
# field's guard gave way. The text part shows no tags, image or alt text.
TRAP_FIELDS = {
    "html": ("title", "url", "author", "tag", "image", "alt", "summary", "body"),
    "text": ("title", "url", "author", "summary", "body"),
}


@pytest.mark.parametrize("story_text", ["full", "summary"])
def test_no_story_field_can_forge_a_token(site: Site, story_text: str) -> None:
    site.write_config(extra=f'[issue]\nstory_text = "{story_text}"\n')
    fields = {
        "title": "Win %%in_title%%",
        "url": "https://example.com/%%in_url%%",
        "author": "Ann %%in_author%%",
        "tags": ["%%in_tag%%", "%%in_second_tag%%"],
        "image": "https://cdn.example.com/%%in_image%%.jpg",
        "image_alt": "A crowd %%in_alt%% and %%in_alt:text%%",
        "summary": "Summary %%in_summary%% and %%in_summary:text%%",
    }
    site.story("full", "Body %%in_body%% and %%in_body:text%%\n", **fields)
    # without a body, full mode shows the summary too (another URL: not a duplicate)
    fields["url"] = "https://example.com/short/%%in_url%%"
    site.story("short", "", **fields, date="2024-03-05 05:00:00+00:00")
    built = build(site)

    html_names = Personaliser(built.email.html).names
    text_names = Personaliser(built.email.text).names
    assert html_names == {"email", "unsubscribe_url"}, html_names
    assert text_names == {"email", "unsubscribe_url"}, text_names
    # each trap reached the part it was meant to test, visibly and broken
    html = lxml.html.fromstring(built.email.html)
    seen_html = html.text_content() + " ".join(html.xpath("//@href | //@src | //@alt"))
    shown = {
        part: seen.replace("\u2060", "").replace("%25%25", "%%")
        for part, seen in (("html", seen_html), ("text", built.email.text))
    }
    for part, names in TRAP_FIELDS.items():
        for name in names:
            if name == "body" and story_text == "summary":
                assert f"%%in_{name}%%" not in shown[part], part
            else:
                assert f"%%in_{name}%%" in shown[part], (part, name)


def test_values_are_escaped_in_html_but_not_in_text(two_stories: Site) -> None:
    built = build(two_stories)
    html, text = built.personalised({**VALUES, "email": "a&b<i>@example.org"})
    assert "This email was sent to a&amp;b&lt;i&gt;@example.org." in html
    assert "This email was sent to a&b<i>@example.org." in text


def test_a_user_template_overrides_one_partial(two_stories: Site) -> None:
    two_stories.template(
        "partials/footer.html",
        '<tr><td class="footer">Custom foot {{ newsletter.postal_address }} <a href="{{ subscriber.unsubscribe_url }}">Leave</a></td></tr>\n',
    )
    html = build(two_stories).email.html
    assert "Custom foot" in html and "Leave</a>" in html
    assert "Continue reading" in html  # the rest still comes from the built-in theme


def test_template_syntax_error_names_file_and_line(two_stories: Site) -> None:
    path = two_stories.template("partials/story.html", "<tr><td>\n{{ story.title }\n</td></tr>\n")
    with pytest.raises(RenderError, match=rf"^{re.escape(str(path))}: line 2: unexpected '}}'"):
        build(two_stories)


def test_undefined_variable_names_file_and_line(two_stories: Site) -> None:
    path = two_stories.template(
        "partials/story.html", "<tr><td>\n\n{{ story.headline }}</td></tr>\n"
    )
    with pytest.raises(RenderError) as info:
        build(two_stories)
    assert str(info.value).startswith(f"{path}: line 3: ")
    assert "headline" in str(info.value)


def test_bad_subject_template_names_the_setting(two_stories: Site) -> None:
    text = two_stories.config_path.read_text()
    two_stories.config_path.write_text(
        text.replace("[sender]", 'subject = "{{ issue.nope }}"\n\n[sender]')
    )
    with pytest.raises(RenderError, match=r"config.toml: newsletter.subject: .*nope"):
        build(two_stories)


def test_an_oversized_email_is_a_lint_error_and_stops_the_send(site: Site) -> None:
    site.write_config(extra='[unsubscribe]\nmode = "hosted"\nbase_url = "https://n.example.com"\n')
    long_body = "\n\n".join(["Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 8] * 30)
    for n in range(10):
        site.story(f"long-{n}", body=long_body, date=f"2024-03-05 06:{n:02d}:00+00:00")
    email = build(site).email
    assert email.html_bytes > 100 * 1024
    [finding] = lint_issue(site.config(), email)
    assert (finding.level, finding.rule) == ("error", "size") and "Gmail clips" in finding.message

    sent = run(site.config_path, "send", "--date", "2024-03-05", "--yes", "--transport", "outbox")

    assert sent.returncode == 1 and "Traceback" not in sent.stderr
    assert "not sent, the issue would not reach readers" in sent.stderr
    assert "Gmail clips" in sent.stderr
    assert not (site.root / "outbox").exists()
    checked = run(site.config_path, "check", "--date", "2024-03-05")
    assert checked.returncode == 1 and "error: the template: the HTML is" in checked.stderr


def test_a_normal_issue_lints_clean(two_stories: Site) -> None:
    assert lint_issue(two_stories.config(), build(two_stories).email) == []


def test_css_parser_noise_goes_to_debug(
    two_stories: Site, caplog: pytest.LogCaptureFixture
) -> None:
    two_stories.template(
        "email.css", "{% include 'theme/email.css' %}\n.story { colr: red; ; width: }\n@bogus;\n"
    )
    caplog.set_level(logging.DEBUG)
    build(two_stories)
    css_records = [r for r in caplog.records if r.name == "newsletter.css"]
    assert css_records and all(r.levelno == logging.DEBUG for r in css_records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_sendgrid_unsubscribe_mode_uses_sendgrids_own_link(two_stories: Site) -> None:
    two_stories.write_config(extra='[unsubscribe]\nmode = "sendgrid"\n')
    email = build(two_stories).email
    assert 'href="<%asm_group_unsubscribe_raw_url%>"' in email.html
    assert "%%unsubscribe_url%%" not in email.html


def test_an_empty_issue_still_renders_a_footer(site: Site) -> None:
    email = build(site).email
    assert "No new stories today." in email.html and "1 Fixture Lane" in email.html


def test_long_lines_are_broken_only_where_a_newline_means_a_space() -> None:
    from newsletter.lines import wrap_long_lines

    words = " ".join(f"word{n}" for n in range(300))
    pre = "<pre>" + "keep  these   spaces " * 40 + "</pre>"
    style = "<style>p { font-family: 'Segoe UI', sans-serif; } " * 20 + "</style>"
    quoted = '<a title="' + "a b " * 200 + '" href="https://x">link</a>'
    html = f"<p>{words}</p>{pre}{style}{quoted}"
    wrapped = wrap_long_lines(html, limit=100)
    assert wrapped.replace("\n", " ") == html  # only spaces became newlines
    assert pre in wrapped
    assert wrapped.count("'Segoe UI'") == 20  # CSS breaks between words, never inside a string
    assert 'title="' + "a b " * 200 + '"' in wrapped  # the attribute's value untouched
    text_lines = wrapped.split("<pre>")[0].split("\n")
    assert len(text_lines) > 10 and max(len(line) for line in text_lines) <= 100
    assert wrap_long_lines("<p>short</p>") == "<p>short</p>"
    joined = wrap_long_lines(
        "<p>a\nb</p>\n<pre>x\ny</pre>\n<style>/* it's */ p {}\n</style>", 500, join=True
    )
    assert joined == "<p>a b</p> <pre>x\ny</pre> <style>/* it's */ p {} </style>"


def test_rendered_html_lines_fit_in_a_mail_line(two_stories: Site) -> None:
    html = build(two_stories).email.html
    assert max(len(line.encode()) for line in html.split("\n")) <= 998


def test_the_default_subject_is_the_lead_headline_cut_to_fit_an_inbox(site: Site) -> None:
    title = "A very long headline about the harbour bridge " * 3
    site.story("long", title=title.strip(), date="2024-03-05 06:00:00+00:00")
    subject = build(site).email.subject
    assert subject.endswith("…") and len(subject) <= 79 and title.startswith(subject[:-1])


def test_the_old_layout_is_a_theme_setting_away(two_stories: Site) -> None:
    config = two_stories.config_path.read_text()
    two_stories.write_config(
        config + '\n[theme]\nread_more = "button"\nshare = "stories"\ncontents = false\n'
    )
    doc = lxml.html.fromstring(build(two_stories).email.html)
    assert doc.xpath("//a[contains(@class,'button')]")[0].get("href") == "https://example.com/lead"
    assert len(doc.xpath("//p[contains(@class,'share')]/a")) == 4  # under the story with a URL
    assert not doc.xpath("//td[contains(@class,'contents')]")
    assert not doc.xpath("//td[contains(@class,'share-row')]")
    two_stories.write_config(
        config.replace('archive_url = "https://news.example.com/archive"\n', "")
    )
    row = lxml.html.fromstring(build(two_stories).email.html).xpath(
        "//td[contains(@class,'share-row')]"
    )
    assert "Forward it to someone" in row[0].text_content() and not row[0].xpath(".//a")


def test_share_links_under_a_story_count_as_shares_of_it_not_reads(two_stories: Site) -> None:
    config = two_stories.config_path.read_text()
    two_stories.write_config(config + '\n[theme]\nshare = "stories"\n')
    links = issue_links(build(two_stories).email.html)
    shares = [link for link in links if link.kind == SHARE]
    assert len(shares) == 4 and {link.position for link in shares} == {1}
    lead = [link for link in links if link.kind == STORY and link.position == 1]
    assert [link.url for link in lead] == ["https://example.com/lead", "https://example.com/source"]
    clicked = LinkMatcher(links).match(shares[0].url + "&utm_source=sendgrid")
    assert clicked is not None and clicked.kind == SHARE
