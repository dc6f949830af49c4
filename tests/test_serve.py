"""`newsletter serve` over real HTTP: uvicorn on 127.0.0.1, the outbox as the mail service."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import xml.etree.ElementTree as ET

import httpx
import pytest

from newsletter.signing import CONFIRM, UNSUBSCRIBE, Signer

from .conftest import NOW
from .support.cli import read, run
from .support.web import ENV, SECRET, EventSigner, Web, confirm_link

# -- sign-up with double opt-in -----------------------------------------------------------


def test_double_opt_in_from_form_to_list_with_a_consent_record(web: Web) -> None:
    answer = web.sign_up("New.Reader@example.com", "New Reader", list="weekly")
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    assert not web.list_file("weekly").exists()  # nothing until the click

    [sent] = web.confirmations()
    mail = read(sent)
    assert mail["To"] == "New.Reader@example.com"  # not the typed name: it is anyone's text
    assert mail["Subject"] == "Confirm your subscription to The Test Times Weekly"
    link = confirm_link(mail)
    assert link.startswith(f"{web.url}/confirm?token=")
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert link.replace("&", "&amp;") in html

    web.clock.advance(hours=47)  # inside confirm_within (48h)
    confirmed = web.http.get(link, headers={"User-Agent": "TestBrowser/1.0"})
    assert confirmed.status_code == 200
    assert "You&#39;re subscribed" in confirmed.text
    assert (
        web.list_file("weekly")
        .read_text()
        .splitlines()[1]
        .startswith("New.Reader@example.com,New Reader,2024-03-07T08:00:00+00:00,signup")
    )
    [consent] = web.app.ledger.consents("new.reader@example.com")
    assert consent["list_name"] == "weekly"
    assert consent["ip"] == "127.0.0.1"
    assert consent["user_agent"] == "TestBrowser/1.0"
    assert consent["signed_up_at"] == NOW
    assert consent["confirmed_at"] == NOW.replace(day=7, hour=8)
    assert consent["wording"].startswith("Send me The Test Times by email.")
    assert len(consent["form_version"]) == 12

    # followed again (a second click, a link scanner): nothing more happens
    assert web.http.get(link).status_code == 200
    assert len(web.app.ledger.consents("new.reader@example.com")) == 1
    assert web.list_file("weekly").read_text().count("New.Reader") == 1


def test_an_old_confirmation_link_does_not_undo_a_later_unsubscribe(web: Web) -> None:
    web.sign_up("fickle@example.com")
    link = confirm_link(read(web.confirmations()[0]))
    assert web.http.get(link).status_code == 200
    web.clock.advance(hours=1)
    web.http.post(web.unsubscribe_url("fickle@example.com"), data={"List-Unsubscribe": "One-Click"})
    web.clock.advance(hours=20)
    again = web.http.get(link)
    assert again.status_code == 410
    assert "fickle@example.com" in web.app.ledger.suppressed("main")


def test_the_answer_is_the_same_whether_or_not_the_address_is_subscribed(web: Web) -> None:
    known = web.sign_up("reader@example.com")
    unknown = web.sign_up("stranger@example.com")
    assert known.status_code == unknown.status_code == 200
    strip = lambda r: r.text.replace(r.request.url.host, "")  # noqa: E731
    assert strip(known) == strip(unknown)
    assert len(web.confirmations()) == 2  # a subscriber may confirm again; nothing leaks


def test_an_expired_confirmation_link_adds_nobody(web: Web) -> None:
    web.sign_up("late@example.com")
    link = confirm_link(read(web.confirmations()[0]))
    web.clock.advance(hours=48, seconds=1)
    answer = web.http.get(link)
    assert answer.status_code == 410
    assert "expired" in answer.text
    assert "late@example.com" not in web.list_file().read_text()
    assert web.app.ledger.consents("late@example.com") == []


def test_a_confirmation_link_cannot_be_changed_to_another_address(web: Web) -> None:
    web.sign_up("me@example.com")
    link = confirm_link(read(web.confirmations()[0]))
    token = link.split("token=")[1]
    assert "me@example.com" not in base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode(
        "latin-1"
    )  # sealed: the address cannot be read, so it cannot be edited either
    elsewhere = Signer("another-secret-of-some-length").sign_text(
        CONFIRM, json.dumps({"e": "victim@example.com", "l": ["main"]})
    )
    flipped = token[:5] + ("A" if token[5] != "A" else "B") + token[6:]
    for forged in (flipped, token[:-2], elsewhere, "", "x.y.z", "é.é"):
        answer = web.http.get("/confirm", params={"token": forged})
        assert answer.status_code == 400, forged
        assert "not valid" in answer.text
    assert web.list_file().read_text().count("@") == 2
    # an unsubscribe token is not a confirmation token, though both are sealed
    unsub = web.unsubscribe_url("victim@example.com").rsplit("/", 1)[1]
    assert web.http.get("/confirm", params={"token": unsub}).status_code == 400


def test_the_honeypot_answers_like_success_and_sends_nothing(web: Web) -> None:
    answer = web.sign_up("bot@example.com", website="http://spam.example")
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    assert web.confirmations() == []


def test_a_post_without_the_forms_csrf_token_is_refused(web: Web) -> None:
    web.form()  # the cookie is set, but another site cannot read it to sign a field
    for csrf in ("", "forged", Signer(SECRET).sign_text("csrf", "another-cookie")):
        answer = web.http.post("/subscribe", data={"csrf": csrf, "email": "x@example.com"})
        assert answer.status_code == 403
        assert "expired" in answer.text
    with httpx.Client(base_url=web.url) as fresh:  # no cookie at all (a cross-site post)
        answer = fresh.post("/subscribe", data={"csrf": web.form(), "email": "x@example.com"})
        assert answer.status_code == 403
    assert web.confirmations() == []


def test_sign_ups_from_one_address_are_rate_limited(web: Web) -> None:
    answers = [web.sign_up(f"person{i}@example.com").status_code for i in range(6)]
    assert answers == [200, 200, 200, 200, 429, 429]
    limited = web.sign_up("one-more@example.com")
    assert int(limited.headers["Retry-After"]) > 0
    assert len(web.confirmations()) == 4


def test_one_address_gets_at_most_three_confirmations_an_hour(web: Web) -> None:
    for _ in range(4):
        assert web.sign_up("target@example.com").status_code == 200
    sent = [read(path)["To"] for path in web.confirmations()]
    assert sent == ["target@example.com"] * 3


def test_oversized_and_malformed_bodies_are_refused(web: Web) -> None:
    csrf = web.form()
    big = web.http.post("/subscribe", data={"csrf": csrf, "email": "a@example.com", "x": "y" * 20_000})  # fmt: skip
    assert big.status_code == 413
    bad = web.http.post("/subscribe", content=b"\xff\xfe", headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert bad.status_code == 400
    wrong = web.sign_up("not an address")
    assert wrong.status_code == 400
    assert "does not look like an email address" in wrong.text
    assert 'value="not an address"' in wrong.text  # what was typed stays in the form
    unknown_list = web.sign_up("a@example.com", list="secret-list")
    assert unknown_list.status_code == 400
    assert web.confirmations() == []


def test_a_suppressed_address_comes_back_only_by_confirming_and_only_to_that_list(
    web: Web,
) -> None:
    ledger = web.app.ledger
    (web.site.root / "subscribers" / "weekly.csv").write_text("email\ngone@example.com\n")
    ledger.suppress([("gone@example.com", "unsubscribed")], source="link", list_name="main")
    ledger.suppress([("gone@example.com", "spam")], source="webhook")
    web.clock.now = dt.datetime.now(dt.UTC)  # the ledger stamps suppressions with the real time
    web.sign_up("gone@example.com")
    assert "gone@example.com" in ledger.suppressed("main")  # asking alone changes nothing
    web.clock.advance(minutes=5)
    web.http.get(confirm_link(read(web.confirmations()[0])))
    assert "gone@example.com" not in ledger.suppressed("main")
    assert "gone@example.com" in web.list_file().read_text()
    # the complaint still stands for the list they did not come back to
    assert "gone@example.com" in ledger.suppressed("weekly")
    assert ledger.suppression_reasons() == {}  # the complaint now lives on per list


def test_a_reader_who_bounced_can_confirm_two_lists_one_after_the_other(web: Web) -> None:
    """Converting the bounce to per-list rows keeps its time: not taken for a later unsubscribe."""
    web.app.ledger.suppress([("gone@example.com", "bounced")], source="webhook")
    web.clock.now = dt.datetime.now(dt.UTC)
    web.sign_up("gone@example.com", list="main")
    web.sign_up("gone@example.com", list="weekly")
    web.clock.advance(minutes=2)
    first, second = (confirm_link(read(path)) for path in web.confirmations())
    assert web.http.get(first).status_code == 200
    assert web.http.get(second).status_code == 200
    assert "gone@example.com" not in web.app.ledger.suppressed("main")
    assert "gone@example.com" not in web.app.ledger.suppressed("weekly")


# -- unsubscribe ---------------------------------------------------------------------------


def test_get_shows_a_button_and_unsubscribes_nobody(web: Web) -> None:
    url = web.unsubscribe_url("reader@example.com")
    page = web.http.get(url)
    assert page.status_code == 200
    assert "reader@example.com" in page.text
    assert '<button type="submit">Unsubscribe</button>' in page.text
    assert 'value="all"' in page.text  # several lists: the choice of one or all
    assert page.headers["referrer-policy"] == "no-referrer"
    assert web.app.ledger.suppressed("main") == frozenset()


def test_the_pages_button_can_stop_every_list(web: Web) -> None:
    weekly = "email,referred_by\nthe.reader@example.com,\nfriend@example.com,reader@example.com\n"
    web.list_file("weekly").write_text(weekly)  # the address, but not as a reader's
    filler = "".join(f"r{n}@example.com,R\n" for n in range(60_000))  # past one read block
    web.list_file("monthly").write_text(f"email,name\n{filler}Reader@Example.com,R\n")
    answer = web.http.post(web.unsubscribe_url("reader@example.com"), data={"scope": "all"})
    assert answer.status_code == 200
    assert "You&#39;re unsubscribed" in answer.text
    for name in ("main", "weekly", "monthly"):
        assert "reader@example.com" in web.app.ledger.suppressed(name)
    assert "other@example.com" not in web.app.ledger.suppressed("main")
    # a loss in the growth of the lists the address was on, not of the one it never was
    losses = {name: sum(c.get("unsubscribe_link", 0) for c in days.values())
              for name, days in web.app.ledger.list_days(None, None).items()}  # fmt: skip
    assert losses == {"main": 1, "monthly": 1}


def test_a_tampered_unsubscribe_link_changes_nothing(web: Web) -> None:
    url = web.unsubscribe_url("reader@example.com")
    token = url.rsplit("/", 1)[1]
    other = base64.urlsafe_b64encode(b"main\nother@example.com").decode().rstrip("=")
    elsewhere = Signer("another-secret-of-some-length").sign(UNSUBSCRIBE, "main", "x@example.com")
    flipped = token[:3] + ("A" if token[3] != "A" else "B") + token[3 + 1 :]
    for forged in (flipped, token[:-1], f"{other}.{token[-24:]}", other, elsewhere, "%00"):
        answer = web.http.post(f"/unsubscribe/{forged}", data={"List-Unsubscribe": "One-Click"})
        assert answer.status_code == 400, forged
    assert web.app.ledger.suppressed("main") == frozenset()


def test_one_click_from_a_sent_email_stops_the_next_send(web: Web) -> None:
    """The whole loop: send, the mail client's RFC 8058 POST, the next send skips the reader."""
    config = web.site.config_path
    first = run(config, "send", "--date", "2024-03-05", "--yes", **ENV)
    assert first.returncode == 0, first.stderr
    mail = read(web.outbox / "2024-03-05-main" / "reader@example.com.eml")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = mail["List-Unsubscribe"].split(",")[0].strip()[1:-1]
    assert link.startswith(f"{web.url}/unsubscribe/")

    # exactly what Gmail sends (RFC 8058 section 3.2)
    answer = web.http.post(
        link,
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 200  # no redirect for a one-click POST
    assert "reader@example.com" in web.app.ledger.suppressed("main")
    assert "reader@example.com" not in web.app.ledger.suppressed("weekly")

    web.site.story("second", title="Next day", date="2024-03-06 06:00:00+00:00")
    second = run(config, "send", "--date", "2024-03-06", "--yes", **ENV)
    assert second.returncode == 0, second.stderr
    assert "1 suppressed" in second.stdout
    sent = sorted(p.name for p in (web.outbox / "2024-03-06-main").glob("*.eml"))
    assert sent == ["other@example.com.eml"]


# -- SendGrid Event Webhook ----------------------------------------------------------------


def event(kind: str, email: str, n: int, **extra: object) -> dict[str, object]:
    fields = {"email": email, "event": kind, "sg_event_id": f"ev-{kind}-{n}", "timestamp": int(NOW.timestamp())}  # fmt: skip
    return {**fields, "sg_message_id": f"msg{n}.filter", "issue_id": "1", "list": "main", **extra}


BATCH = [
    event("processed", "a@example.com", 1),
    event("delivered", "a@example.com", 2),
    event("delivered", "b@example.com", 3),
    event("open", "a@example.com", 4, useragent="Mozilla/5.0"),
    event("click", "a@example.com", 5, url="https://news.example.com/lead"),
    event("bounce", "hard@example.com", 6, type="bounce", reason="550 5.1.1 no such user"),
    event("bounce", "full@example.com", 7, type="blocked", reason="452 mailbox full"),
    event("dropped", "bad@example.com", 8, reason="Invalid"),
    event("spamreport", "angry@example.com", 9),
    event("unsubscribe", "gone@example.com", 10),
    event("group_unsubscribe", "grouped@example.com", 11, asm_group_id=1),
    event("delivered", "test@example.com", 12, issue_id="test"),
]


def test_a_signed_batch_is_applied_once(web: Web) -> None:
    answer = web.post_events(BATCH)
    assert answer.status_code == 200
    assert answer.json() == {"received": 12, "new": 12, "skipped": 0}
    ledger = web.app.ledger
    assert ledger.suppression_reasons() == {
        "hard@example.com": "bounced",
        "bad@example.com": "invalid",
        "angry@example.com": "spam",
        "gone@example.com": "unsubscribed",
        "grouped@example.com": "unsubscribed",  # the group is the whole newsletter's
    }
    assert "full@example.com" not in ledger.suppressed("main")  # a soft bounce is not final
    counts = ledger.event_counts(1)
    assert counts["delivered"] == 2 and counts["open"] == 1 and counts["click"] == 1

    # SendGrid redelivers (it did not see our 200): nothing is counted twice
    again = web.post_events([*BATCH[:3], event("delivered", "c@example.com", 13)])
    assert again.json() == {"received": 4, "new": 1, "skipped": 0}
    assert ledger.event_counts(1)["delivered"] == 3


def test_unsigned_forged_and_stale_batches_are_refused(web: Web) -> None:
    body = json.dumps(BATCH).encode()
    stamp = int(NOW.timestamp())
    headers = web.signer.headers(body, stamp)
    unsigned = web.http.post("/webhooks/sendgrid", content=body)
    assert unsigned.status_code == 401
    tampered = body.replace(b"hard@example.com", b"ceo@example.com")
    forged = web.http.post("/webhooks/sendgrid", content=tampered, headers=headers)
    assert forged.status_code == 403
    other_key = EventSigner().headers(body, stamp)
    assert web.http.post("/webhooks/sendgrid", content=body, headers=other_key).status_code == 403
    garbage = {**headers, "X-Twilio-Email-Event-Webhook-Signature": "not base64!"}
    assert web.http.post("/webhooks/sendgrid", content=body, headers=garbage).status_code == 403
    assert web.post_events(BATCH, age=11 * 60).status_code == 403  # older than webhook_max_age
    assert web.app.ledger.suppression_reasons() == {}
    assert web.app.ledger.event_counts(1) == {}


def test_a_body_that_is_not_an_event_array_is_refused_whole(web: Web) -> None:
    for events in ({"not": "a list"}, "text", 42):
        assert web.post_events(events).status_code == 400
    body = b'[{"sg_event_id": "x", '
    answer = web.http.post(
        "/webhooks/sendgrid",
        content=body,
        headers=web.signer.headers(body, int(NOW.timestamp())),
    )
    assert answer.status_code == 400
    assert web.app.ledger.event_counts(1) == {}
    assert web.app.ledger.suppression_reasons() == {}


def test_one_odd_event_does_not_lose_its_batch(web: Web) -> None:
    """SendGrid resends a refused body unchanged for a day, then drops it: skip the odd one."""
    odd = [{"event": "delivered", "email": "x@example.com"}, "not an object",
           event("bounce", "y" * 330 + "@example.com", 99)]  # fmt: skip
    answer = web.post_events([*BATCH[:6], *odd])
    assert answer.status_code == 200
    assert answer.json() == {"received": 9, "new": 6, "skipped": 3}
    assert web.app.ledger.suppression_reasons() == {"hard@example.com": "bounced"}


def test_status_shows_the_events_of_an_issue(web: Web) -> None:
    sent = run(web.site.config_path, "send", "--date", "2024-03-05", "--yes", **ENV)
    assert sent.returncode == 0, sent.stderr
    issue_id = web.app.ledger.issue("main", NOW.date()).id  # type: ignore[union-attr]
    events = [event("delivered", "reader@example.com", 1, issue_id=str(issue_id)),
              event("delivered", "other@example.com", 2, issue_id=str(issue_id)),
              event("open", "reader@example.com", 3, issue_id=str(issue_id))]  # fmt: skip
    assert web.post_events(events).status_code == 200
    status = run(web.site.config_path, "status", "--date", "2024-03-05", **ENV)
    assert "events reported by SendGrid: 2 delivered, 1 open" in status.stdout
    recent = run(web.site.config_path, "status", **ENV)
    assert "[2 delivered, 1 open]" in recent.stdout


# -- archive, health, logs -----------------------------------------------------------------


def test_the_archive_shows_sent_issues_with_nobodys_data(web: Web) -> None:
    assert "No issue has been sent yet." in web.http.get("/archive").text
    sent = run(web.site.config_path, "send", "--date", "2024-03-05", "--yes", **ENV)
    assert sent.returncode == 0, sent.stderr
    mail = read(web.outbox / "2024-03-05-main" / "reader@example.com.eml")
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f'href="{web.url}/archive/2024-03-05"' in html  # "View in browser"

    index = web.http.get("/archive")
    assert f'href="{web.url}/archive/2024-03-05"' in index.text
    issue = web.http.get("/archive/2024-03-05")
    assert issue.status_code == 200
    assert "Lead story" in issue.text
    assert "This email was sent to a subscriber." in issue.text
    assert "@example.com" not in issue.text.replace("news@example.com", "")
    assert "%%" not in issue.text
    assert f'href="{web.url}/unsubscribe"' in issue.text
    assert web.http.get(f"{web.url}/unsubscribe").status_code == 200
    assert web.http.get("/archive/2024-03-04").status_code == 404
    assert web.http.get("/archive/not-a-date").status_code == 404

    feed = web.http.get("/archive/feed.xml")
    assert feed.headers["content-type"] == "application/atom+xml"
    atom = "{http://www.w3.org/2005/Atom}"
    root = ET.fromstring(feed.content)
    [entry] = root.findall(f"{atom}entry")
    assert entry.find(f"{atom}title").text == mail["Subject"]  # type: ignore[union-attr]
    assert entry.find(f"{atom}link").get("href") == f"{web.url}/archive/2024-03-05"  # type: ignore[union-attr]


def test_health_and_an_access_log_without_tokens_or_addresses(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    health = web.http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "database": "ok"}
    unsubscribe = web.unsubscribe_url("reader@example.com")
    web.http.get(unsubscribe)
    web.sign_up("private@example.com")
    web.http.get(confirm_link(read(web.confirmations()[0])))
    access = [r.getMessage() for r in caplog.records if r.name == "newsletter.access"]
    assert any('"GET /unsubscribe/…" 200' in line for line in access)
    assert any('"GET /confirm" 200' in line for line in access)
    web.http.get("/archive/x%0AFAKE 127.0.0.1 %22GET /healthz%22 200")  # a forged log line
    access = [r.getMessage() for r in caplog.records if r.name == "newsletter.access"]
    assert all("\n" not in line for line in access)
    assert any("/archive/x\\x0aFAKE" in line for line in access)
    # ours only: pytest hands uvicorn's own access logger a handler, which the CLI does not
    everything = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith("newsletter")
    )
    token = unsubscribe.rsplit("/", 1)[1]
    assert token.split(".")[0] not in everything
    assert "token=" not in everything
    assert "private@example.com" not in everything
    assert "reader@example.com" not in everything
