"""The SMTP transport against a real SMTP server (aiosmtpd on 127.0.0.1).

Why: SMTP sends one message per recipient over a long-lived connection, so the
things that matter are per-message (well-formed MIME, each person's own links,
nobody twice) and per-connection (one session reused, a drop survived, a refusal
or a permanent error reported with how far it got). A fake would only repeat our
assumptions; aiosmtpd speaks the protocol, TLS and AUTH included.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import html
import ipaddress
import os
import re
import ssl
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from newsletter.app import App
from newsletter.config import SmtpSettings
from newsletter.delivery import Deliverer
from newsletter.retry import RetryPolicy, send_with_retries
from newsletter.send import Sending, SendReport, SendRequest
from newsletter.signing import Signer
from newsletter.state import Ledger
from newsletter.state.issues import PlanContent
from newsletter.transports.base import (
    InDoubtFailure,
    Message,
    PermanentFailure,
    Recipient,
    TemporaryFailure,
)
from newsletter.transports.smtp import SmtpTransport

from .conftest import NOW, Site
from .support.smtp_server import DROP, Received, SmtpServer

SECRET = "test-secret-0123456789abcdef"
BASE_URL = "https://news.example.com/n"
DATE = "2024-03-05"
SENDER = "news@example.com"
UNSUBSCRIBE_RE = re.compile(r"<(https://news\.example\.com/n/unsubscribe/([A-Za-z0-9_-]+))>")

# ~25 subscribers: markup characters in a name and in an address, and a non-ASCII name
PEOPLE = [
    ("amp.lt@example.com", "Alex & <Co>"),
    ("zoe@example.org", "Zoë Çelik-Ødegård"),
    ("tom&jerry@example.com", "Tom"),
    *((f"reader{n:02}@example.net", f"Reader {n}") for n in range(1, 23)),
]


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as running:
        yield running


# -- helpers ---------------------------------------------------------------------------


def write_list(site: Site, people: Sequence[tuple[str, str]], list_name: str = "main") -> None:
    folder = site.root / "subscribers"
    folder.mkdir(exist_ok=True)
    rows = "".join(f'{addr},"{name}"\n' for addr, name in people)
    (folder / f"{list_name}.csv").write_text("email,name\n" + rows, encoding="utf-8")


def smtp_site(site: Site, port: int, *, delivery: str = "", smtp: str = "") -> None:
    """A newsletter sending the day's story by SMTP, with hosted unsubscribe links."""
    site.story("harbour", title="Harbour bridge reopens", url="https://example.com/bridge")
    # the intro partials exist to be overridden: greet each reader by name
    site.template("partials/intro.html", "<tr><td>Dear {{ subscriber.name }},</td></tr>\n")
    site.template("partials/intro.txt", "Dear {{ subscriber.name }},\n")
    write_list(site, PEOPLE)
    site.write_config(
        extra=f"""
        [delivery]
        transport = "smtp"
        {delivery}

        [smtp]
        host = "127.0.0.1"
        port = {port}
        security = "none"
        {smtp}

        [unsubscribe]
        mode = "hosted"
        base_url = "{BASE_URL}"
        """
    )


def cli(
    site: Site, *args: str, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """`newsletter --config ... ARGS` in its own process; `None` in `env` unsets a variable."""
    environ = {**os.environ, "NEWSLETTER_SECRET": SECRET}
    for name, value in (env or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )


def send_in_process(site: Site) -> SendReport:
    """`newsletter send --date 2024-03-05 --yes`, without a process (no waits between retries)."""
    config = site.config({"NEWSLETTER_SECRET": SECRET})
    with App(config, clock=lambda: NOW) as app:
        sending = Sending(app, sleep=lambda _: None)
        return sending.send(SendRequest(date=dt.date(2024, 3, 5)), confirm=lambda _: True)


def parse(received: Received) -> EmailMessage:
    message = email.message_from_bytes(received.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(mail: EmailMessage, subtype: str) -> str:
    """The decoded text/plain or text/html part, with the wire's CRLF line ends as \\n."""
    part = mail.get_body((subtype,))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def recipients_of(server: SmtpServer) -> Counter[str]:
    """How many messages each envelope recipient got (each envelope has exactly one)."""
    assert all(len(m.rcpt_tos) == 1 for m in server.messages)
    return Counter(m.rcpt_tos[0] for m in server.messages)


def settings(server: SmtpServer, **changes: object) -> SmtpSettings:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "security": "none",
        "timeout": 5,
    }
    return SmtpSettings.model_validate({**values, **changes})


def issue_message() -> Message:
    return Message(
        subject="The Test Times",
        html="<p>Hello %%name%%, this is for %%email%%.</p>",
        text="Hello %%name:text%%, this is for %%email:text%%.",
        from_email=SENDER,
        from_name="The Test Times",
        reply_to=None,
        tokens=frozenset({"name", "email"}),
        issue_id="1",
        list_name="main",
    )


def people(count: int) -> list[Recipient]:
    out = []
    for n in range(count):
        address = f"p{n}@example.com"
        out.append(Recipient(address, f"P {n}", {"email": address, "name": f"P {n}"}))
    return out


@dataclass
class Sleeps:
    """Stands in for time.sleep in send_with_retries: records, never waits."""

    calls: list[float]

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# -- end to end through the CLI ----------------------------------------------------------


def test_cli_send_gives_every_subscriber_one_personalised_well_formed_message(
    site: Site, server: SmtpServer
) -> None:
    smtp_site(site, server.port, delivery="workers = 1")

    result = cli(site, "send", "--date", DATE, "--yes")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"to {len(PEOPLE)} recipients" in result.stdout
    assert recipients_of(server) == Counter(addr for addr, _ in PEOPLE)  # exactly one each
    assert server.connections == 1  # one session for all 25 (workers = 1)

    names = dict(PEOPLE)
    signer = Signer(SECRET)
    message_ids = set()
    for received in server.messages:
        address = received.rcpt_tos[0]
        assert received.mail_from == SENDER
        head = received.data.split(b"\r\n\r\n", 1)[0]
        raw_headers = head.decode("ascii").replace("\r\n", "\n")  # 7-bit headers
        mail = parse(received)
        assert not mail.defects

        assert mail["Subject"] == "Harbour bridge reopens"
        assert mail["From"].addresses[0].addr_spec == SENDER
        assert mail["From"].addresses[0].display_name == "The Test Times"
        (to,) = mail["To"].addresses
        assert (to.addr_spec, to.display_name) == (address, names[address])
        assert mail["Date"].datetime.tzinfo is not None
        message_ids.add(mail["Message-ID"])

        # List-Unsubscribe is plain <https://...>, never an RFC 2047 encoded word
        (header,) = re.findall(r"^List-Unsubscribe: (.*)$", raw_headers, re.MULTILINE)
        assert "=?" not in header
        match = UNSUBSCRIBE_RE.fullmatch(header)
        assert match, header
        url, token = match.groups()
        assert signer.verify("unsubscribe", token) == ("main", address.lower())  # their own
        assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

        assert mail.get_content_type() == "multipart/alternative"
        plain, rich = mail.iter_parts()
        assert plain.get_content_type() == "text/plain"
        assert rich.get_content_type() == "text/html"
        assert plain.get_content_charset() == rich.get_content_charset() == "utf-8"
        text, page = body(mail, "plain"), body(mail, "html")

        assert f"This email was sent to {address}." in text
        assert f"Unsubscribe: {url}\n" in text
        assert f"Dear {names[address]}," in text
        assert f"This email was sent to {html.escape(address)}." in page
        assert f'href="{html.escape(url)}"' in page
        assert f"Dear {html.escape(names[address])}," in page
        assert "Harbour bridge reopens" in text and "Harbour bridge reopens" in page
        assert "%%" not in text and "%%" not in page and "%%" not in raw_headers
        # nobody else's address or link ended up in this message
        for other, _ in PEOPLE:
            if other != address:
                assert f"sent to {other}." not in text

    assert len(message_ids) == len(PEOPLE)
    pages = {m.rcpt_tos[0]: body(parse(m), "html") for m in server.messages}
    assert "Dear Alex &amp; &lt;Co&gt;," in pages["amp.lt@example.com"]
    assert "sent to tom&amp;jerry@example.com." in pages["tom&jerry@example.com"]

    again = cli(site, "send", "--date", DATE, "--yes")

    assert again.returncode == 0, again.stderr
    assert "already sent" in again.stdout
    assert len(server.messages) == len(PEOPLE)  # nothing more
    assert server.connections == 1


# -- connections ---------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_one_connection_per_worker_is_reused_across_recipients_and_batches(
    site: Site, server: SmtpServer, workers: int
) -> None:
    smtp_site(site, server.port, delivery=f"workers = {workers}\nbatch_size = 5")

    report = send_in_process(site)

    assert report.outcome == "sent", report.errors
    assert report.batches == 5
    assert recipients_of(server) == Counter(addr for addr, _ in PEOPLE)
    if workers == 1:
        assert server.connections == 1
    else:
        assert 1 <= server.connections <= workers
    assert server.open_connections() == 0  # every worker's connection closed at the end
    # each message went over a connection the server counted
    assert {m.connection for m in server.messages} <= set(range(1, server.connections + 1))


@pytest.mark.parametrize(
    ("fault", "retries"),
    [
        pytest.param("rcpt", 0, id="hang-up-before-the-message"),
        pytest.param("421 4.3.2 Service shutting down", 1, id="421-then-close"),
    ],
)
def test_a_dropped_connection_is_reopened_and_nobody_gets_two(
    server: SmtpServer, fault: str, retries: int
) -> None:
    recipients = people(10)
    if fault == "rcpt":  # the 4th message never became whole: the server holds nothing of it
        server.handler.rcpt_drops[recipients[3].email] = 1
    else:  # the 4th message refused, and the connection closed
        server.handler.data_faults[4] = fault
    transport = SmtpTransport(settings(server), password=None)
    sleeps = Sleeps([])

    try:
        receipt = send_with_retries(
            transport, issue_message(), recipients, RetryPolicy(attempts=3), sleep=sleeps
        )
    finally:
        transport.close()

    assert receipt.rejected == []
    assert recipients_of(server) == Counter(r.email for r in recipients)  # exactly one each
    assert [m.rcpt_tos[0] for m in server.messages] == [r.email for r in recipients]
    assert server.connections == 2
    assert [m.connection for m in server.messages] == [1, 1, 1, *[2] * 7]
    # a hang-up is retried at once inside the transport; a 421 is a temporary
    # failure for the retry loop, which resumes after the three that went out
    assert len(sleeps.calls) == retries
    assert server.open_connections() == 0  # close() said goodbye
    for received, recipient in zip(server.messages, recipients, strict=True):
        assert parse(received)["To"].addresses[0].addr_spec == recipient.email


def test_a_hang_up_after_the_whole_message_leaves_it_in_doubt_and_never_resends_it(
    server: SmtpServer,
) -> None:
    """The server had the whole 4th message and closed without a word: it may have queued
    it (a real server often has), so sending it again could make two. It is in doubt."""
    server.handler.data_faults[4] = DROP
    recipients = people(10)
    transport = SmtpTransport(settings(server), password=None)
    sleeps = Sleeps([])

    with pytest.raises(InDoubtFailure, match=r"p3@example\.com was sent but") as failure:
        send_with_retries(
            transport, issue_message(), recipients, RetryPolicy(attempts=3), sleep=sleeps
        )
    transport.close()

    assert failure.value.done == 3  # the three before went out; the 4th is the one in doubt
    assert sleeps.calls == []  # not retried
    assert server.handler.data_commands == 4  # and not sent again
    assert [m.rcpt_tos[0] for m in server.messages] == [r.email for r in recipients[:3]]


def test_a_second_drop_in_a_row_is_a_temporary_failure_saying_how_far_it_got(
    server: SmtpServer,
) -> None:
    recipients = people(5)
    server.handler.rcpt_drops[recipients[2].email] = 2  # the first try and the reconnect
    transport = SmtpTransport(settings(server), password=None)

    with pytest.raises(TemporaryFailure, match="SMTP connection lost") as failure:
        transport.send_batch(issue_message(), recipients)
    transport.close()

    assert failure.value.done == 2
    assert len(server.messages) == 2


# -- refusals ------------------------------------------------------------------------------


def test_lines_that_start_with_a_dot_arrive_as_written(server: SmtpServer) -> None:
    """Dot-stuffing (RFC 5321 4.5.2), also on the first line and for a value that spans
    lines: a lone "." must not end the message early, and none is lost or doubled."""
    text = ".first line\n.. two dots\n.\nfor %%email:text%%\n.%%name:text%%\nend"
    html = "<style>\n.button { color: red }\n</style>\n<p>%%name%%</p>\n."
    message = dataclasses.replace(issue_message(), text=text, html=html)
    recipients = [Recipient("p0@example.com", ".P", {"email": "p0@example.com", "name": ".P"})]
    transport = SmtpTransport(settings(server), password=None)
    try:
        send_with_retries(transport, message, recipients, RetryPolicy())
    finally:
        transport.close()

    [received] = server.messages
    mail = parse(received)
    assert body(mail, "plain").rstrip("\n") == text.replace("%%email:text%%", "p0@example.com").replace("%%name:text%%", ".P")  # fmt: skip
    # the HTML's line breaks may become spaces (fewer lines on the wire): the same page
    assert body(mail, "html").split() == html.replace("%%name%%", ".P").split()


def test_a_recipient_refused_by_the_server_does_not_stop_the_others(server: SmtpServer) -> None:
    recipients = people(6)
    server.handler.rcpt_replies[recipients[2].email] = "550 5.1.1 no such user"
    transport = SmtpTransport(settings(server), password=None)

    try:
        receipt = send_with_retries(transport, issue_message(), recipients, RetryPolicy())
    finally:
        transport.close()

    assert list(receipt.rejected) == [(recipients[2].email, "550 5.1.1 no such user")]
    assert recipients_of(server) == Counter(r.email for n, r in enumerate(recipients) if n != 2)
    assert server.connections == 1  # a refusal is not a reason to reconnect


def test_a_send_reports_the_refused_recipient_and_still_completes(
    site: Site, server: SmtpServer
) -> None:
    smtp_site(site, server.port)
    server.handler.rcpt_replies["reader05@example.net"] = "550 5.1.1 no such user"

    report = send_in_process(site)

    assert report.outcome == "sent", report.errors
    assert report.rejected == [("reader05@example.net", "550 5.1.1 no such user")]
    assert len(server.messages) == len(PEOPLE) - 1


def test_a_temporary_refusal_of_a_recipient_is_retried_not_dropped(server: SmtpServer) -> None:
    """450/451 on RCPT (greylisting, a busy mailbox) means "later", not "no such user"."""
    recipients = people(4)
    server.handler.rcpt_replies[recipients[1].email] = "451 4.7.1 greylisted, try again later"
    sleeps = Sleeps([])
    transport = SmtpTransport(settings(server), password=None)

    with pytest.raises(TemporaryFailure, match="451") as failure:
        transport.send_batch(issue_message(), recipients)
    assert failure.value.done == 1

    del server.handler.rcpt_replies[recipients[1].email]
    server.handler.rcpt_replies[recipients[3].email] = "450 4.2.1 mailbox busy"

    def wait_until_the_mailbox_is_free(seconds: float) -> None:
        sleeps(seconds)
        server.handler.rcpt_replies.pop(recipients[3].email, None)

    try:
        receipt = send_with_retries(
            transport,
            issue_message(),
            recipients[1:],
            RetryPolicy(),
            sleep=wait_until_the_mailbox_is_free,
        )
    finally:
        transport.close()

    assert receipt.rejected == []
    assert len(sleeps.calls) == 1
    assert recipients_of(server) == Counter(r.email for r in recipients)  # one each, none lost


def non_ascii_batch() -> list[Recipient]:
    addresses = ["a@example.com", "josé@example.com", "b@example.com"]
    return [Recipient(a, "José", {"email": a, "name": "José"}) for a in addresses]


def test_a_non_ascii_address_goes_out_over_smtputf8(server: SmtpServer) -> None:
    transport = SmtpTransport(settings(server), password=None)
    try:
        receipt = transport.send_batch(issue_message(), non_ascii_batch())
    finally:
        transport.close()

    assert receipt.rejected == []
    assert [m.rcpt_tos[0] for m in server.messages] == [r.email for r in non_ascii_batch()]
    # RFC 6532: raw UTF-8 in the headers (which the stdlib parser leaves undecoded)
    assert "\r\nTo: José <josé@example.com>\r\n" in server.messages[1].data.decode("utf-8")
    assert "this is for josé@example.com." in body(parse(server.messages[1]), "plain")


def test_a_non_ascii_address_without_smtputf8_is_refused_alone() -> None:
    """Raised as is, smtplib's error hid how far the batch got (a rerun could repeat it)."""
    with SmtpServer(smtputf8=False) as server:
        transport = SmtpTransport(settings(server), password=None)
        try:
            receipt = transport.send_batch(issue_message(), non_ascii_batch())
        finally:
            transport.close()

    ((address, reason),) = receipt.rejected
    assert address == "josé@example.com"
    assert "SMTPUTF8" in reason
    assert [m.rcpt_tos[0] for m in server.messages] == ["a@example.com", "b@example.com"]


REFUSED = "554 5.6.0 message content rejected"


@pytest.mark.parametrize(
    ("faults", "k", "retries"),
    [
        pytest.param({1: REFUSED}, 0, 0, id="first"),
        pytest.param({4: REFUSED}, 3, 0, id="fourth"),
        # a 451 on the 2nd message, a retry from it, then the 554: done counts both attempts
        pytest.param({2: "451 4.3.0 try again later", 5: REFUSED}, 3, 1, id="after-a-retry"),
    ],
)
def test_a_permanent_error_on_data_says_how_many_went_out_before_it(
    server: SmtpServer, faults: dict[int, str], k: int, retries: int
) -> None:
    server.handler.data_faults.update(faults)
    recipients = people(6)
    transport = SmtpTransport(settings(server), password=None)
    sleeps = Sleeps([])

    with pytest.raises(PermanentFailure, match="554") as failure:
        send_with_retries(transport, issue_message(), recipients, RetryPolicy(), sleep=sleeps)
    transport.close()

    assert failure.value.done == k
    # the k before it went out exactly once each; it and the rest did not
    assert [m.rcpt_tos[0] for m in server.messages] == [r.email for r in recipients[:k]]
    assert len(sleeps.calls) == retries  # a permanent error is not retried


def test_a_refusal_before_a_temporary_failure_is_still_reported(server: SmtpServer) -> None:
    recipients = people(5)
    server.handler.rcpt_replies[recipients[1].email] = "550 5.1.1 no such user"
    server.handler.data_faults[3] = "451 4.3.0 try again later"  # recipient 3's message
    transport = SmtpTransport(settings(server), password=None)

    try:
        receipt = send_with_retries(
            transport, issue_message(), recipients, RetryPolicy(), sleep=Sleeps([])
        )
    finally:
        transport.close()

    assert recipients_of(server) == Counter(r.email for n, r in enumerate(recipients) if n != 1)
    assert list(receipt.rejected) == [(recipients[1].email, "550 5.1.1 no such user")]


def test_after_a_permanent_error_a_rerun_sends_only_to_the_rest(
    site: Site, server: SmtpServer
) -> None:
    smtp_site(site, server.port, delivery="workers = 1")
    server.handler.data_faults[8] = "554 5.6.0 message content rejected"

    first = send_in_process(site)

    assert first.outcome == "failed"
    assert first.submitted == 7
    assert any("554" in error for error in first.errors)
    assert len(server.messages) == 7

    second = send_in_process(site)

    assert second.outcome == "sent", second.errors
    assert recipients_of(server) == Counter(addr for addr, _ in PEOPLE)  # the first 7 once


# -- authentication --------------------------------------------------------------------------

PASSWORD = "correct horse battery staple 42"


def test_login_uses_the_password_from_the_named_environment_variable(site: Site) -> None:
    wrong = "not-the-password-123"
    with SmtpServer(users={"mailer": PASSWORD}) as server:
        smtp_site(
            site, server.port, smtp='username = "mailer"\npassword_env = "PAPER_SMTP_PASSWORD"'
        )
        refused = cli(
            site, "-vv", "send", "--date", DATE, "--yes", env={"PAPER_SMTP_PASSWORD": wrong}
        )
        sent = cli(
            site, "-vv", "send", "--date", DATE, "--yes", env={"PAPER_SMTP_PASSWORD": PASSWORD}
        )

    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert "SMTP login refused by 127.0.0.1: 535" in refused.stderr
    assert wrong not in refused.stdout + refused.stderr  # not even at -vv

    assert sent.returncode == 0, sent.stderr  # the rerun resumes the failed send
    assert recipients_of(server) == Counter(addr for addr, _ in PEOPLE)
    assert {m.login for m in server.messages} == {"mailer"}
    assert PASSWORD not in sent.stdout + sent.stderr


def test_a_missing_password_variable_is_a_clear_config_error(site: Site) -> None:
    smtp_site(site, 9, smtp='username = "mailer"\npassword_env = "PAPER_SMTP_PASSWORD"')
    result = cli(site, "send", "--date", DATE, "--yes", env={"PAPER_SMTP_PASSWORD": None})

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "PAPER_SMTP_PASSWORD" in result.stderr
    assert "mailer" in result.stderr


def test_a_wrong_password_is_permanent_and_never_shown() -> None:
    wrong = "not-the-password-123"
    with SmtpServer(users={"mailer": PASSWORD}) as auth_server:
        transport = SmtpTransport(settings(auth_server, username="mailer"), password=wrong)
        with pytest.raises(PermanentFailure) as failure:
            transport.send_batch(issue_message(), people(2))
        # closed at once, not left to the garbage collector (the failure still holds the frame)
        assert auth_server.open_connections() == 0
        transport.close()

    assert failure.value.done == 0
    assert "login refused" in str(failure.value)
    assert wrong not in str(failure.value) and PASSWORD not in str(failure.value)
    assert auth_server.messages == []


# -- TLS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    cert_pem: bytes
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Trusts this certificate only, with hostname checks on (as the default does)."""
        return ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(cert_pem, folder / "cert.pem", folder / "key.pem")


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_a_trusted_certificate_encrypts_and_logs_in(
    certificate: Certificate, security: str
) -> None:
    tls = certificate.server_context()
    with SmtpServer(
        users={"mailer": PASSWORD},
        tls_context=tls if security == "starttls" else None,
        implicit_tls=tls if security == "ssl" else None,
    ) as server:
        transport = SmtpTransport(
            settings(server, security=security, username="mailer"),
            password=PASSWORD,
            ssl_context=certificate.client_context(),
        )
        try:
            receipt = transport.send_batch(issue_message(), people(3))
        finally:
            transport.close()

    assert receipt.rejected == []
    assert len(server.messages) == 3
    assert all(m.login == "mailer" for m in server.messages)
    assert server.connections == 1
    if security == "starttls":  # the server saw the upgrade (SMTPS is TLS from the first byte)
        assert all(m.tls for m in server.messages)


def test_tls_refuses_a_certificate_the_system_does_not_trust(certificate: Certificate) -> None:
    with SmtpServer(tls_context=certificate.server_context()) as server:
        transport = SmtpTransport(settings(server, security="starttls"), password=None)
        with pytest.raises(TemporaryFailure, match="certificate verify failed"):
            transport.send_batch(issue_message(), people(1))
        assert server.open_connections() == 0
        transport.close()

    assert server.messages == []


def test_a_slow_batch_keeps_showing_the_claim_is_alive(
    server: SmtpServer, database_url: str
) -> None:
    """A batch over a slow relay can take longer than `stale_claim`: the sender beats while
    it waits for its workers, so nobody takes a live send over and sends its rows again."""
    server.handler.data_delay = 0.2
    owner = "this-host.example:1"
    with Ledger(database_url) as ledger:
        issue = ledger.claim("main", dt.date(2024, 3, 5), owner, dt.timedelta(hours=1)).issue
        rows = [[r.email, r.name] for r in people(5)]
        content = PlanContent(
            subject="s", html="<p>%%name%%</p>", text="%%name:text%%", tokens=frozenset({"name"}),
            story_keys=[], window_start=None, window_end=NOW, transport="smtp",
        )  # fmt: skip
        ledger.save_plan(issue.id, content, [(["email", "name"], rows)])
        before = ledger.issue("main", dt.date(2024, 3, 5))
        assert before is not None and before.heartbeat is not None
        deliverer = Deliverer(
            ledger=ledger,
            make_transport=lambda: SmtpTransport(settings(server), password=None),
            workers=1,
            in_doubt="message",
            heartbeat_every=0.1,
        )

        outcome = deliverer.deliver(
            issue.id, issue_message(), None, frozenset(), lambda: ledger.beat(issue.id, owner)
        )

        after = ledger.issue("main", dt.date(2024, 3, 5))
    assert outcome.submitted_recipients == 5 and len(server.messages) == 5
    assert after is not None and after.heartbeat is not None
    assert after.heartbeat - before.heartbeat >= dt.timedelta(seconds=0.5)  # beat mid-batch
