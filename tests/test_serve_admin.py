"""/admin/ of `newsletter serve`: the editor's report behind a password or a token.

Real parts: uvicorn on 127.0.0.1, real HTTP (httpx), the real `newsletter` command for
`admin hash-password` and for `serve` refusing a bad secret, SendGrid's emulator and
signed events through the real webhook for a report with numbers in it.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import io
import logging
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from newsletter.passwords import PasswordHash, hash_password
from newsletter.state import Ledger
from newsletter.state.admin import admin_nonces, admin_sessions

from .conftest import NOW, Site
from .support.admin import (
    CSRF,
    HASH_ENV,
    PASSWORD,
    PASSWORD_HASH,
    SESSION,
    TOKEN,
    TOKEN_ENV,
    admin_get,
    field,
    newsroom,
    request,
    send_issues_with_events,
    session,
    set_cookies,
    sign_in,
    sign_in_form,
    sign_out,
)
from .support.cli import run
from .support.sendgrid_emulator import SendGridEmulator
from .support.web import SECRET, Web, running_web

CREDENTIALS = {"password": ({HASH_ENV: PASSWORD_HASH}, PASSWORD), "token": ({TOKEN_ENV: TOKEN}, TOKEN)}  # fmt: skip


@pytest.fixture(params=list(CREDENTIALS))
def admin(request: pytest.FixtureRequest, site: Site) -> Iterator[tuple[Web, str]]:
    """`serve` with an admin password hash, or a token; yields it and the right secret."""
    env, secret = CREDENTIALS[request.param]
    with running_web(site, env=env) as web:
        yield web, secret


def is_login_redirect(answer: object, web: Web) -> bool:
    return answer.status_code == 303 and answer.headers["location"] == f"{web.url}/admin/login"  # type: ignore[attr-defined]


# -- without a password or a token there is no /admin ---------------------------------------


def test_without_a_password_hash_or_token_every_admin_path_is_a_plain_404(web: Web) -> None:
    unknown = web.http.get("/no-such-page")
    assert unknown.status_code == 404
    for method, path in [
        ("GET", "/admin"),
        ("GET", "/admin/"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/logout"),
        ("GET", "/admin/csv/issues.csv"),
        ("GET", "/admin/anything/else"),
    ]:
        answer = web.http.request(method, path)
        assert answer.status_code == 404, (method, path)
        assert answer.text == unknown.text, (method, path)
        assert "set-cookie" not in answer.headers


# -- signing in ----------------------------------------------------------------------------------


def test_signing_in_gives_a_strict_secure_session_and_the_report(admin: tuple[Web, str]) -> None:
    web, secret = admin
    # not signed in: the report and the bare /admin send the browser to the form
    first = admin_get(web, "/admin/", None)
    assert is_login_redirect(first, web)
    assert first.headers["cache-control"] == "no-store"
    bare = admin_get(web, "/admin", None)
    assert bare.status_code == 303 and bare.headers["location"] == f"{web.url}/admin/"

    page = request(web, "GET", "/admin/login")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text.lower()
    assert '<input type="password" id="secret" name="password"' in page.text
    label = "Password" if secret == PASSWORD else "Access token"
    assert f'<label for="secret">{label}</label>' in page.text
    csrf_cookie = set_cookies(page)[CSRF]
    for attribute in ("secure", "httponly"):
        assert csrf_cookie.has(attribute)
    assert csrf_cookie.has("samesite", "strict") and csrf_cookie.has("path", "/admin")

    answer = sign_in(web, secret)
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == f"{web.url}/admin/"
    assert answer.headers["cache-control"] == "no-store"
    cookie = set_cookies(answer)[SESSION]
    assert cookie.has("secure") and cookie.has("httponly")
    assert cookie.has("samesite", "strict") and cookie.has("path", "/admin")
    assert "SameSite=Strict" in answer.headers["set-cookie"]
    assert cookie.attributes["max-age"] == str(12 * 3600)
    assert len(cookie.value) >= 43  # 32 random bytes

    report = admin_get(web, "/admin/", cookie.value)
    assert report.status_code == 200, report.text
    assert "<title>The Test Times: report</title>" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    assert report.headers["cache-control"] == "no-store"
    assert "<script" not in report.text.lower()
    assert "nothing to report" in report.text  # nothing sent yet
    assert 'action="/admin/logout"' in report.text
    # already signed in: the form sends the editor to the report
    again = admin_get(web, "/admin/login", cookie.value)
    assert again.status_code == 303 and again.headers["location"] == f"{web.url}/admin/"

    # the database holds the cookie's hash, never the cookie
    with web.app.ledger.engine.connect() as conn:
        stored = conn.execute(sa.select(admin_sessions)).all()
    assert len(stored) == 1
    assert cookie.value not in repr(stored)


def test_a_wrong_or_missing_secret_is_refused_without_a_cookie(admin: tuple[Web, str]) -> None:
    web, secret = admin
    for wrong in ["", "wrong", secret[:-1], secret + "x", secret.upper(), " " * 40, "é" * 2000]:
        answer = sign_in(web, wrong)
        assert answer.status_code == 403, wrong
        assert SESSION not in set_cookies(answer)
        assert "That is not the" in answer.text
        if wrong.strip():
            assert wrong not in answer.text  # the page does not echo what was typed
    form = sign_in_form(web)
    no_field = request(
        web, "POST", "/admin/login", cookies={CSRF: form.csrf_cookie}, data=form.fields
    )
    assert no_field.status_code == 403 and SESSION not in set_cookies(no_field)
    with web.app.ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(admin_sessions)).scalar() == 0


def test_a_sign_in_needs_the_forms_csrf_cookie_and_field(admin: tuple[Web, str]) -> None:
    web, secret = admin
    form = sign_in_form(web)
    other = sign_in_form(web)
    attempts = {
        "no cookie": request(web, "POST", "/admin/login", data={**form.fields, "password": secret}),
        "another form's cookie": request(
            web, "POST", "/admin/login", cookies={CSRF: other.csrf_cookie},
            data={**form.fields, "password": secret},
        ),
        "no field": request(
            web, "POST", "/admin/login", cookies={CSRF: form.csrf_cookie},
            data={"nonce": form.fields["nonce"], "password": secret},
        ),
    }  # fmt: skip
    for what, answer in attempts.items():
        assert answer.status_code == 403, what
        assert "The form had expired" in answer.text, what
        assert SESSION not in set_cookies(answer), what


def test_a_captured_sign_in_cannot_be_replayed(admin: tuple[Web, str]) -> None:
    web, secret = admin
    form = sign_in_form(web)
    first = form.post(web, secret)
    assert first.status_code == 303
    replayed = form.post(web, secret)  # the same cookie and fields, byte for byte
    assert replayed.status_code == 403
    assert "used already or is too old" in replayed.text
    assert SESSION not in set_cookies(replayed)

    # a failed attempt uses its form up too
    failed = sign_in_form(web)
    assert failed.post(web, "wrong").status_code == 403
    assert failed.post(web, secret).status_code == 403

    # a nonce the server did not make, and one past its hour
    forged = sign_in_form(web)
    nonce = forged.fields["nonce"]
    tampered = nonce[:-2] + ("AA" if nonce[-2:] != "AA" else "BB")
    for fields in ({**forged.fields, "nonce": tampered}, {**forged.fields, "nonce": ""}):
        answer = request(
            web,
            "POST",
            "/admin/login",
            cookies={CSRF: forged.csrf_cookie},
            data={**fields, "password": secret},
        )
        assert answer.status_code == 403 and SESSION not in set_cookies(answer)
    late = sign_in_form(web)
    web.clock.advance(hours=1, seconds=1)
    assert late.post(web, secret).status_code == 403
    in_time = sign_in_form(web)
    web.clock.advance(minutes=59)
    assert in_time.post(web, secret).status_code == 303

    # only the nonce's hash is kept, and only until it would have expired anyway
    with web.app.ledger.engine.connect() as conn:
        kept = conn.execute(sa.select(admin_nonces.c.nonce_hash)).scalars().all()
    assert kept and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in kept)


def test_signing_out_revokes_the_session_everywhere(admin: tuple[Web, str]) -> None:
    web, secret = admin
    cookie = session(web, secret)
    other = session(web, secret)  # another browser of the editor's
    report = admin_get(web, "/admin/", cookie)
    assert report.status_code == 200
    csrf = field(report.text, "csrf")
    assert cookie not in report.text

    # without the form's CSRF field, or with another session's, nothing happens
    assert sign_out(web, cookie, None).status_code == 403
    assert sign_out(web, cookie, field(admin_get(web, "/admin/", other).text, "csrf")).status_code == 403  # fmt: skip
    assert admin_get(web, "/admin/", cookie).status_code == 200

    out = sign_out(web, cookie, csrf)
    assert out.status_code == 303 and out.headers["location"] == f"{web.url}/admin/login"
    gone = set_cookies(out)[SESSION]
    assert gone.value == "" and gone.attributes["max-age"] == "0" and gone.has("path", "/admin")

    # the old cookie, replayed, is refused on every page
    assert is_login_redirect(admin_get(web, "/admin/", cookie), web)
    assert admin_get(web, "/admin/csv/issues.csv", cookie).status_code == 401
    assert is_login_redirect(sign_out(web, cookie, csrf), web)
    assert admin_get(web, "/admin/login", cookie).status_code == 200  # the form again
    # the other session is the other browser's to end
    assert admin_get(web, "/admin/", other).status_code == 200


def test_a_session_ends_when_it_expires(admin: tuple[Web, str]) -> None:
    web, secret = admin
    cookie = session(web, secret)
    web.clock.advance(hours=11, minutes=59)
    assert admin_get(web, "/admin/", cookie).status_code == 200
    web.clock.advance(minutes=1)  # admin_session: 12 hours
    refused = admin_get(web, "/admin/", cookie)
    assert is_login_redirect(refused, web)
    assert set_cookies(refused)[SESSION].attributes["max-age"] == "0"  # told to forget it
    assert admin_get(web, "/admin/csv/issues.csv", cookie).status_code == 401
    # a new sign-in clears the expired row away
    session(web, secret)
    with web.app.ledger.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(admin_sessions)).scalar() == 1


def test_a_forged_cookie_is_refused(admin: tuple[Web, str]) -> None:
    web, secret = admin
    real = session(web, secret)
    with web.app.ledger.engine.connect() as conn:
        stored_hash = conn.execute(sa.select(admin_sessions.c.token_hash)).scalar_one()
    form = sign_in_form(web)
    for forged in [
        secrets.token_urlsafe(32),
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        real[:20],
        stored_hash,  # what a copy of the database shows
        form.csrf_cookie,  # a genuine cookie of another kind
        "x" * 5000,
        "';--",
        "%00",
    ]:
        assert is_login_redirect(admin_get(web, "/admin/", forged), web), forged[:30]
        assert admin_get(web, "/admin/csv/issues.csv", forged).status_code == 401


def test_sign_in_attempts_are_limited_per_network_right_or_wrong(admin: tuple[Web, str]) -> None:
    """admin_attempts (5) per admin_attempt_period (15 minutes), counted per client network
    (an IPv6 /64 is one), successful sign-ins included: then 429, even for the right secret."""
    web, secret = admin
    ip = "203.0.113.7"
    for _ in range(4):
        assert sign_in(web, "wrong guess", ip).status_code == 403
    assert sign_in(web, secret, ip).status_code == 303  # the fifth: still allowed
    refused = sign_in(web, secret, ip)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 15 * 60 + 1
    assert refused.headers["cache-control"] == "no-store"
    assert SESSION not in set_cookies(refused)
    assert sign_in(web, secret, "203.0.113.8").status_code == 303  # another network

    # one IPv6 /64 is one network
    for n in range(5):
        assert sign_in(web, "wrong", f"2001:db8:1:2::{n + 1}").status_code == 403
    assert sign_in(web, secret, "2001:db8:1:2:ffff::9").status_code == 429
    assert sign_in(web, secret, "2001:db8:1:3::1").status_code == 303


# -- the report and its CSV --------------------------------------------------------------------


@pytest.fixture
def reporting(site: Site, sendgrid_emulator: SendGridEmulator) -> Iterator[tuple[Web, str]]:
    """Three issues sent through SendGrid, their events posted through the webhook."""
    with newsroom(site, sendgrid_emulator, {TOKEN_ENV: TOKEN}) as web:
        send_issues_with_events(web)
        yield web, session(web, TOKEN)


def test_the_report_shows_the_numbers_the_events_add_up_to(reporting: tuple[Web, str]) -> None:
    web, cookie = reporting
    page = admin_get(web, "/admin/", cookie)
    assert page.status_code == 200
    text = page.text
    assert "<script" not in text.lower()
    assert "List main" in text
    assert "Latest issue: Tue 5 Mar 2024" in text
    # 5 March: 7 of 8 delivered, 5 human opens (71.4%), 3 readers clicked (42.9%)
    assert ">71.4%<" in text and ">42.9%<" in text and "7 of 8 submitted" in text
    assert "<svg" in text  # the charts, inline
    assert '<option value="main" selected>' not in text  # every list by default
    assert '<option value="weekly">' in text  # the lists the config knows

    # the filters: one list, a start date; they carry over to the CSV links
    filtered = admin_get(web, "/admin/?list=main&since=2024-03-05", cookie)
    assert filtered.status_code == 200
    assert '<option value="main" selected>' in filtered.text
    assert 'value="2024-03-05"' in filtered.text
    assert 'href="/admin/csv/issues.csv?list=main&amp;since=2024-03-05"' in filtered.text
    assert "Tue 4 Mar 2024" not in filtered.text
    nothing = admin_get(web, "/admin/?list=weekly", cookie)
    assert nothing.status_code == 200 and "nothing to report" in nothing.text
    unknown = admin_get(web, "/admin/?list=no-such-list", cookie)
    assert unknown.status_code == 200 and "nothing to report" in unknown.text
    assert '<option value="no-such-list" selected>' in unknown.text  # the filter says so
    repeated = admin_get(web, "/admin/?list=weekly&utm_source=x&list=main", cookie)
    assert repeated.status_code == 200  # the last `list` wins; other parameters are ignored
    assert '<option value="main" selected>' in repeated.text

    latest = admin_get(web, "/admin/?list=main&issues=1", cookie)  # the last issue only
    assert (
        latest.status_code == 200 and 'name="issues" min="1" max="100000" value="1"' in latest.text
    )
    assert "list main, the last issue" in latest.text and "Tue 4 Mar 2024" not in latest.text
    assert 'href="/admin/csv/issues.csv?list=main&amp;issues=1"' in latest.text

    bad_filters = ["list=Main!", "list=../x", "since=2024-02-30", "since=yesterday",
                   "since=20240305", "issues=0", "issues=-1", "issues=two", "issues=1e3"]  # fmt: skip
    for bad in bad_filters:
        refused = admin_get(web, f"/admin/?{bad}", cookie)
        assert refused.status_code == 400, bad
        assert "Not a report filter" in refused.text


def test_the_csv_tables(reporting: tuple[Web, str]) -> None:
    web, cookie = reporting
    answer = admin_get(web, "/admin/csv/issues.csv", cookie)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/csv; charset=utf-8"
    assert answer.headers["content-disposition"] == 'attachment; filename="issues.csv"'
    assert answer.headers["cache-control"] == "no-store"
    rows = {r["date"]: r for r in csv.DictReader(io.StringIO(answer.text))}
    assert sorted(rows) == ["2024-03-03", "2024-03-04", "2024-03-05"]
    latest = rows["2024-03-05"]
    assert (latest["submitted"], latest["delivered"], latest["bounced_hard"]) == ("8", "7", "1")
    assert (latest["human_opens"], latest["readers_who_clicked"]) == ("5", "3")

    since = admin_get(web, "/admin/csv/issues.csv?since=2024-03-04", cookie)
    assert [r["date"] for r in csv.DictReader(io.StringIO(since.text))] == ["2024-03-04", "2024-03-05"]  # fmt: skip
    for table in ("stories", "links", "list_growth"):
        other = admin_get(web, f"/admin/csv/{table}.csv?list=main", cookie)
        assert other.status_code == 200, table
        assert other.text.startswith("list,"), table

    for missing in ("nope", "clicks_by_reader", "issues.csv", "ISSUES", "..%2Fissues"):
        assert admin_get(web, f"/admin/csv/{missing}.csv", cookie).status_code == 404, missing
    assert admin_get(web, "/admin/csv/issues.csv?since=x", cookie).status_code == 400
    unsigned = admin_get(web, "/admin/csv/issues.csv", None)
    assert unsigned.status_code == 401
    assert "text/csv" not in unsigned.headers["content-type"]


# -- setting it up: the CLI's hash, and `serve` refusing what it cannot use ----------------------


def hash_password_cli(*typed: str) -> subprocess.CompletedProcess[str]:
    """`newsletter admin hash-password` with `typed` lines on its standard input (outside any
    terminal, so the hidden prompt reads them there)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "admin", "hash-password"],
        input="".join(f"{line}\n" for line in typed), capture_output=True, text=True,
        timeout=60, env=clean, start_new_session=True,
    )  # fmt: skip


def test_the_cli_hash_signs_in(site: Site) -> None:
    made = hash_password_cli("a phrase for the editor ✓", "a phrase for the editor ✓")
    assert made.returncode == 0, made.stderr
    line = made.stdout
    assert re.fullmatch(r"scrypt\$32768\$8\$1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}\n", line)
    assert "a phrase" not in made.stdout + made.stderr
    assert PasswordHash.parse(line).matches("a phrase for the editor ✓")
    with running_web(site, env={HASH_ENV: line.strip()}) as web:
        assert sign_in(web, "a phrase for the editor ✓").status_code == 303
        assert sign_in(web, "a phrase for the editor").status_code == 403

    mismatch = hash_password_cli("a phrase for the editor", "another phrase entirely")
    assert mismatch.returncode != 0 and mismatch.stdout == ""
    assert "do not match" in mismatch.stderr
    short = hash_password_cli("short", "short")
    assert short.returncode != 0 and short.stdout == ""
    assert "at least 12 characters" in short.stderr
    assert "Traceback" not in mismatch.stderr + short.stderr


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({HASH_ENV: "hunter2hunter2"}, f"error: {HASH_ENV} is not a password hash"),
        ({HASH_ENV: "scrypt$16384$8$1$c2FsdA$"}, f"error: {HASH_ENV} is not a password hash"),
        ({HASH_ENV: PASSWORD_HASH.replace("$32768$", "$30000$")}, f"error: {HASH_ENV} is not"),
        ({HASH_ENV: PASSWORD_HASH.replace("$32768$8$", "$1048576$32$")}, "256 MiB"),
        ({HASH_ENV: PASSWORD_HASH[:-4] + "!!!!"}, f"error: {HASH_ENV} is not"),
        ({TOKEN_ENV: "short-token-31-characters-long!"}, f"error: {TOKEN_ENV} is too short"),
        ({HASH_ENV: PASSWORD_HASH, TOKEN_ENV: "x" * 12}, f"error: {TOKEN_ENV} is too short"),
    ],
    ids=[
        "a-plain-password",
        "no-hash",
        "n-not-a-power-of-two",
        "too-much-memory",
        "not-base64",
        "short-token",
        "short-token-beside-a-good-hash",
    ],
)
def test_serve_refuses_a_malformed_hash_or_short_token(
    site: Site, env: dict[str, str], says: str
) -> None:
    site.write_config(
        extra="""
        [delivery]
        transport = "outbox"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"
        """
    )
    result = run(site.config_path, "serve", "--port", "0", NEWSLETTER_SECRET=SECRET, **env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Serving" not in result.stdout
    for value in env.values():
        assert value not in result.stderr + result.stdout


def test_no_secret_reaches_the_log(
    admin: tuple[Web, str], caplog: pytest.LogCaptureFixture
) -> None:
    web, secret = admin
    caplog.set_level(logging.DEBUG)
    form = sign_in_form(web)
    assert form.post(web, "a wrong guess of mine").status_code == 403
    cookie = session(web, secret)
    report = admin_get(web, "/admin/?list=main", cookie)
    csrf = field(report.text, "csrf")
    assert sign_out(web, cookie, csrf).status_code == 303
    # the server's own log (the test's HTTP client logs its requests whole)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("newsletter"))
    assert "admin sign-in refused: wrong" in logged and "admin signed in" in logged
    assert '"GET /admin/" 200' in logged
    for value in [secret, "a wrong guess of mine", cookie, csrf, form.fields["nonce"],
                  form.csrf_cookie, PASSWORD_HASH, "list=main"]:  # fmt: skip
        assert value not in logged


def test_the_hash_format_round_trips_and_names_its_parameters() -> None:
    line = hash_password("another long passphrase")
    parsed = PasswordHash.parse(line)
    assert str(parsed) == line
    assert (parsed.n, parsed.r, parsed.p) == (2**15, 8, 1)
    assert "another" not in repr(parsed) and parsed.salt.hex() not in repr(parsed)
    assert PasswordHash.parse(f"  {line}\n").matches("another long passphrase")  # pasted
    # the same characters, composed or not (NFC), are the same password
    accented = hash_password("caf\u00e9 au lait, s'il vous plait")
    assert PasswordHash.parse(accented).matches("cafe\u0301 au lait, s'il vous plait")
    # a hash made elsewhere with other parameters checks too: they are in it
    salt = b"sixteen byte salt"
    digest = hashlib.scrypt(b"made elsewhere, long", salt=salt, n=1024, r=4, p=2, dklen=24)
    elsewhere = "$".join(["scrypt", "1024", "4", "2", base64.b64encode(salt).decode(),
                          base64.b64encode(digest).decode()])  # fmt: skip
    assert PasswordHash.parse(elsewhere).matches("made elsewhere, long")
    assert not PasswordHash.parse(elsewhere).matches("made elsewhere, long!")


def test_serve_refuses_an_attempt_period_of_nothing(site: Site) -> None:
    """A zero period would let every guess through: a config error naming the key."""
    site.write_config(
        extra="""
        [delivery]
        transport = "outbox"

        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"

        [serve]
        admin_attempt_period = "0"
        """
    )
    result = run(site.config_path, "serve", "--port", "0", NEWSLETTER_SECRET=SECRET, **{TOKEN_ENV: TOKEN})  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "config.toml: serve.admin_attempt_period must be longer than 0" in result.stderr
    assert TOKEN not in result.stderr


def test_the_sign_in_page_warns_when_it_came_over_plain_http(admin: tuple[Web, str]) -> None:
    web, _ = admin
    warning = "This page came over plain HTTP"
    assert warning not in request(web, "GET", "/admin/login").text  # 127.0.0.1: browsers allow it
    far = web.http.get("/admin/login", headers={"host": "news.example.com"})
    assert far.status_code == 200 and warning in far.text
    proxied = web.http.get(
        "/admin/login", headers={"host": "news.example.com", "x-forwarded-proto": "https"}
    )
    assert proxied.status_code == 200 and warning not in proxied.text


def test_the_session_store(database_url: str) -> None:
    """Sessions and nonces on SQLite and PostgreSQL: only hashes stored, expiry by the
    caller's clock, a nonce taken once, expired rows pruned."""
    hour = dt.timedelta(hours=1)
    with Ledger(database_url) as ledger:
        ledger.create_admin_session("cookie-one", NOW, NOW + hour)
        ledger.create_admin_session("cookie-two", NOW, NOW + 2 * hour)
        assert ledger.admin_session_valid("cookie-one", NOW)
        assert ledger.admin_session_valid("cookie-one", NOW + hour - dt.timedelta(seconds=1))
        assert not ledger.admin_session_valid("cookie-one", NOW + hour)
        assert not ledger.admin_session_valid("cookie-three", NOW)
        assert ledger.revoke_admin_session("cookie-two")
        assert not ledger.revoke_admin_session("cookie-two")
        assert not ledger.admin_session_valid("cookie-two", NOW)
        with ledger.engine.connect() as conn:
            hashes = conn.execute(sa.select(admin_sessions.c.token_hash)).scalars().all()
        assert hashes == [hashlib.sha256(b"cookie-one").hexdigest()]

        assert ledger.use_admin_nonce("nonce-a", NOW, NOW + hour)
        assert not ledger.use_admin_nonce("nonce-a", NOW, NOW + hour)  # a replay
        assert ledger.use_admin_nonce("nonce-b", NOW, NOW + 2 * hour)
        assert ledger.prune_admin_sessions(NOW + hour) == 1  # cookie-one's time is up
        with ledger.engine.connect() as conn:
            nonces = conn.execute(sa.select(admin_nonces.c.nonce_hash)).scalars().all()
        assert nonces == [hashlib.sha256(b"nonce-b").hexdigest()]
