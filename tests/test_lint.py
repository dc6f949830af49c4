"""The deliverability lint (newsletter/lint.py): one bad input per rule, each finding
naming the story or the template it comes from; the built-in theme lints clean."""

from __future__ import annotations

import dataclasses

import pytest

from newsletter.lint import Finding, lint
from newsletter.models import RenderedEmail
from newsletter.tokens import html_token, text_token

ADDRESS = "The Test Times\n1 Fixture Lane"
UNSUB_HTML, UNSUB_TEXT = html_token("unsubscribe_url"), text_token("unsubscribe_url")
TEXT = f"Harbour bridge reopens\nhttps://news.example.com/a\n\nThe Test Times\n{UNSUB_TEXT}\n"


def story(title: str, body: str) -> str:
    return (
        f'<tr><td class="story"><h2 class="headline"><a href="https://news.example.com/a">'
        f"{title}</a></h2><div>{body}</div>"
        f'<p class="share"><a href="https://www.facebook.com/sharer">Facebook</a></p></td></tr>'
    )


def email(body: str = "", **changes: str) -> RenderedEmail:
    html = (
        "<!DOCTYPE html><html><head><style>p { margin: 0 }</style></head><body><table>"
        + story("Harbour bridge reopens", body)
        + f'<tr><td class="footer"><a href="{UNSUB_HTML}">Unsubscribe</a></td></tr>'
        + "</table></body></html>"
    )
    fields = {"subject": "The Test Times: Tuesday", "html": html, "text": TEXT}
    return RenderedEmail(**{**fields, "preheader": "Bridges and rates", **changes})


def found(mail: RenderedEmail, unsubscribe_in_body: bool = True) -> list[Finding]:
    return lint(mail, ADDRESS, unsubscribe_in_body)


def test_a_clean_email_has_no_finding() -> None:
    assert found(email()) == []


STORY = "story 'Harbour bridge reopens'"


@pytest.mark.parametrize(
    ("mail", "level", "rule", "where", "says"),
    [
        (email(html=f'<html><body><a href="{UNSUB_HTML}">u</a>' + "x" * 110_000 + "</body></html>"), "error", "size", "the template", "Gmail clips"),
        (email(subject=" "), "error", "subject", "the subject", "empty"),
        (email(subject="a" * 81), "warning", "subject", "the subject", "81 characters"),
        (email(subject="FREE NEWS TODAY ONLY"), "warning", "subject", "the subject", "mostly capitals"),
        (email(preheader=""), "warning", "preheader", "the template", "no preheader"),
        (email(html=email().html.replace("p { margin: 0 }", "p{}" * 6000)), "warning", "style", "the template", "over 16 KB"),
        (email('<img src="https://i.example.com/a.jpg" width="536">'), "warning", "image", STORY, "no alt"),
        (email('<img src="https://i.example.com/a.jpg" alt="A" width="5" height="5" class="x">'), None, None, None, None),
        (email('<img src="http://i.example.com/a.jpg" alt="A" width="5" height="5">'), "warning", "http", STORY, "not https"),
        (email('<a href="http://plain.example.com/">read</a>', text=TEXT + "http://plain.example.com/\n"), "warning", "http", STORY, "not https"),
        (email('<a href="https://evil.example.net/x">www.mybank.com</a>', text=TEXT + "https://evil.example.net/x\n"), "warning", "link-text", STORY, "another domain"),
        (email('<a href="https://news.example.com/b">more</a>'), "warning", "text-links", STORY, "lacks the link https://news.example.com/b"),
        (email(text="Harbour bridge reopens\nhttps://news.example.com/a\nThe Test Times\n"), "error", "unsubscribe", "the template", "text part has no unsubscribe"),
        (email(html=email().html.replace(UNSUB_HTML, "#")), "error", "unsubscribe", "the template", "HTML part has no unsubscribe"),
        (email(text=f"https://news.example.com/a\n{UNSUB_TEXT}\n"), "error", "address", "the template", "postal address"),
    ],
)  # fmt: skip
def test_each_rule_finds_its_fault_and_names_where(
    mail: RenderedEmail, level: str | None, rule: str | None, where: str | None, says: str | None
) -> None:
    findings = found(mail)
    if rule is None:  # a story image needs no height: not a finding
        assert findings == []
        return
    assert [(f.level, f.rule, f.where) for f in findings] == [(level, rule, where)], findings
    assert says in findings[0].message


def test_sendgrids_own_unsubscribe_is_not_ours_to_find() -> None:
    mail = dataclasses.replace(email(), html=email().html.replace(UNSUB_HTML, "#"))
    assert found(mail, unsubscribe_in_body=False) == []
