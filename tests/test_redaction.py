"""What a mail server sends back may quote our secrets: they never reach output or the ledger.

The SendGrid emulator and a real SMTP server answer errors that echo the API
key, the Authorization header and the SMTP password; the real CLI sends,
then `status` shows the stored errors.
"""

from __future__ import annotations

import base64

from newsletter.redaction import redact

from .conftest import Site
from .support.sendgrid_emulator import Fault, SendGridEmulator
from .support.smtp_server import SmtpServer
from .test_send_sendgrid import DATE, env, newsletter, send, setup_site
from .test_smtp_transport import PEOPLE, cli, smtp_site

# a key not shaped like SendGrid's: only knowing its value can mask it
KEY = "plain-looking-service-key-8c1f2e"
OTHER_KEY = "SG.AbCdEfGhIjKlMnOp.QrStUvWxYz0123456789abcdef"  # shaped like one, not ours


def state_bytes(site: Site) -> bytes:
    """The state database as it lies on disk: the file and its write-ahead log."""
    return b"".join(p.read_bytes() for p in site.root.glob("newsletter.db*"))


def test_a_sendgrid_error_echoing_the_key_is_masked_in_output_status_and_ledger(
    site: Site, sendgrid_emulator: SendGridEmulator
) -> None:
    sendgrid_emulator.api_key = KEY
    setup_site(site, sendgrid_emulator, 3)
    sendgrid_emulator.script(
        Fault(
            status=400,
            errors=[
                {"field": "subject", "message": f"bad request from key {KEY}"},
                {"field": None, "message": f"also seen: {OTHER_KEY}"},
            ],
            echo_authorization=True,  # and the header itself: "Bearer <key>"
        )
    )

    result = send(site, environ=env(SENDGRID_API_KEY=KEY))
    status = newsletter(site, "status", "--date", DATE, environ=env(SENDGRID_API_KEY=KEY))
    overview = newsletter(site, "status", environ=env(SENDGRID_API_KEY=KEY))

    assert result.returncode == 1
    # the error is still shown, with the secrets cut out of it
    assert (
        "SendGrid refused the request: 400 Bad Request: subject: bad request from key *** "
        "(Authorization: Bearer ***); also seen: SG.*** (Authorization: Bearer ***)"
    ) in result.stderr, result.stderr
    assert "bad request from key ***" in status.stdout
    for text in (result.stdout, result.stderr, status.stdout, status.stderr, overview.stdout):
        assert KEY not in text and OTHER_KEY not in text
    stored = state_bytes(site)
    assert b"bad request from key ***" in stored  # the error was stored, masked
    assert KEY.encode() not in stored and OTHER_KEY.encode() not in stored


PASSWORD = "correct horse battery staple 42"


def test_an_smtp_reply_quoting_the_login_is_masked_in_output_status_and_ledger(
    site: Site,
) -> None:
    plain = base64.b64encode(f"\0mailer\0{PASSWORD}".encode()).decode()
    refused = PEOPLE[1][0]
    with SmtpServer(users={"mailer": PASSWORD}) as server:
        smtp_site(
            site,
            server.port,
            delivery="workers = 1\nattempts = 1",
            smtp='username = "mailer"\npassword_env = "PAPER_SMTP_PASSWORD"',
        )
        # a server that quotes the login back, in a refusal and in a failure
        server.handler.rcpt_replies[refused.lower()] = f"550 5.1.1 no such user (auth {plain})"
        server.handler.data_faults[3] = f"554 5.7.1 rejected for mailer/{PASSWORD}"
        result = cli(site, "send", "--date", DATE, "--yes", env={"PAPER_SMTP_PASSWORD": PASSWORD})
    status = cli(site, "status", "--date", DATE)

    assert result.returncode == 1
    assert f"refused: {refused}: 550 5.1.1 no such user (auth ***)" in result.stderr
    assert "SMTP server refused the message: 554 5.7.1 rejected for mailer/***" in (result.stderr)
    assert "5.7.1 rejected for mailer/***" in status.stdout
    for text in (result.stdout, result.stderr, status.stdout, status.stderr):
        assert PASSWORD not in text and plain not in text
    stored = state_bytes(site)
    assert PASSWORD.encode() not in stored and plain.encode() not in stored


def test_redact_masks_known_secrets_and_secret_shapes_only() -> None:
    text = f"key {KEY}, Bearer abc.def-ghi, {OTHER_KEY}, postgresql://u:pw@db/x, ok words"
    assert redact(text, [KEY, None, "", "abc"]) == (
        "key ***, Bearer ***, SG.***, postgresql://u:***@db/x, ok words"
    )
    assert redact("a short one: abc", ["abc"]) == "a short one: abc"  # too short to search for
