"""What sending is made of, built from the config in one place for the composition root.

`App.parts` builds, and every use case asks it rather than building its own:

- transports (SendGrid, SMTP, outbox), each checking its secret before anything is sent;
- what a crash can leave in doubt with each transport (`IN_DOUBT`);
- the signer of subscriber links (the development secret only ever for the outbox),
  and the stricter one `newsletter serve` checks links with;
- the unsubscribe links of a send, with the `unsubscribe.mode` checks;
- the retry policy and the `Deliverer` with the delivery settings;
- outbox folders: per issue, per test send, per confirmation email, for the admin's notes;
- the issue's `Message` from the sender settings;
- SendGrid as a service beside sending: reading its suppressions, forgetting an unsubscribe.

The send use case (`send.py`), the scheduler's note to the admin and the web app
(`web/`) use these, so a secret or a setting is checked the same way everywhere.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from newsletter.config import Config
from newsletter.delivery import Deliverer, Progress
from newsletter.errors import ConfigError
from newsletter.planning import UnsubscribeLinks
from newsletter.retry import RetryPolicy
from newsletter.scheduling import Scheduling
from newsletter.senders import SenderPool
from newsletter.signing import DEVELOPMENT_SECRET, Signer
from newsletter.transports.base import InDoubt, Message, Transport
from newsletter.transports.headers import list_fields
from newsletter.transports.outbox import OutboxTransport
from newsletter.transports.sendgrid import SendGridTransport
from newsletter.transports.smtp import SmtpTransport

if TYPE_CHECKING:
    from newsletter.state import Ledger
    from newsletter.state.attempts import Attempt
    from newsletter.state.issues import IssueRow

# the warnings here are the send's own (its JSON log lines say `"logger": "newsletter.send"`)
log = logging.getLogger("newsletter.send")

IN_DOUBT: dict[str, InDoubt] = {
    t.name: t.in_doubt for t in (SendGridTransport, SmtpTransport, OutboxTransport)
}


@dataclass(frozen=True)
class Route:
    """How one send reaches its readers, built before anything is claimed or sent.

    `make_transport` makes one client per worker; `links` is None when no link is
    added here (SendGrid adds its own in `sendgrid` mode, a test send may have none);
    `outbox` is the folder an outbox send writes to; `in_doubt` is what a crash
    can leave unknown with this transport.
    """

    transport: str
    make_transport: Callable[[], Transport]
    links: UnsubscribeLinks | None
    outbox: Path | None
    in_doubt: InDoubt


class Parts:
    """Builds the parts of sending from the config (and the clock, for folder names)."""

    def __init__(self, config: Config, clock: Callable[[], dt.datetime]) -> None:
        self.config = config
        self.clock = clock

    # -- transports ----------------------------------------------------------------------

    def transport_name(self, requested: str | None) -> str:
        """`--transport` if given, else the config's."""
        return requested or self.config.delivery.transport

    def transport_factory(self, name: str, outbox: Path | None) -> Callable[[], Transport]:
        cfg = self.config
        if name == "sendgrid":
            key = cfg.secret(cfg.sendgrid.api_key_env)
            if not key:
                raise ConfigError(
                    f"SendGrid needs an API key: set the environment variable "
                    f"{cfg.sendgrid.api_key_env} (named by sendgrid.api_key_env in {cfg.path.name})"
                )
            return lambda: SendGridTransport(cfg.sendgrid, key)
        if name == "smtp":
            password = cfg.secret(cfg.smtp.password_env)
            if cfg.smtp.username and not password:
                raise ConfigError(
                    f"SMTP login as {cfg.smtp.username} needs a password: set the environment "
                    f"variable {cfg.smtp.password_env} (named by smtp.password_env)"
                )
            return lambda: SmtpTransport(cfg.smtp, password)
        assert outbox is not None
        return lambda: OutboxTransport(outbox)

    def outbox_folder(self, list_name: str, date: dt.date, test: bool) -> Path:
        suffix = f"-{self.clock():%H%M%S}" if test else ""
        return self.config.outbox.path / f"{date.isoformat()}-{list_name}{suffix}"

    def route(self, list_name: str, date: dt.date, transport: str, *, test: bool) -> Route:
        """The transport, outbox folder and unsubscribe links of one send, in that order:
        a missing API key is reported before a missing link setting."""
        outbox = self.outbox_folder(list_name, date, test) if transport == "outbox" else None
        factory = self.transport_factory(transport, outbox)
        links = self.unsubscribe_links(list_name, transport)
        return Route(transport, factory, links, outbox, IN_DOUBT[transport])

    def confirmation_transports(self, name: str) -> Callable[[], Transport]:
        """A fresh transport per confirmation email of `newsletter serve`."""
        if name != "outbox":
            return self.transport_factory(name, None)
        # a folder per message: the outbox refuses to write one address twice
        folder = self.config.outbox.path / "confirmations"

        def make_transport() -> Transport:
            unique = f"{self.clock():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
            return self.transport_factory(name, folder / unique)()

        return make_transport

    def admin_transport(self, name: str) -> Transport:
        """A transport for one note to the admin (the outbox writes it under `admin/`)."""
        folder = self.config.outbox.path / "admin" if name == "outbox" else None
        return self.transport_factory(name, folder)()

    # -- links ---------------------------------------------------------------------------

    def require_unsubscribe(self) -> None:
        """A bulk send carries an unsubscribe link: refuse one without `unsubscribe.mode`."""
        if self.config.unsubscribe.mode is None:
            raise ConfigError(
                f"{self.config.path.name}: a bulk send needs an unsubscribe link: "
                'set unsubscribe.mode ("hosted" or "sendgrid")'
            )

    def unsubscribe_links(self, list_name: str, transport: str) -> UnsubscribeLinks | None:
        """Per-recipient links for `hosted` mode; SendGrid makes its own in `sendgrid` mode."""
        u = self.config.unsubscribe
        if u.mode == "sendgrid":
            if transport != "sendgrid":
                raise ConfigError(
                    f'{self.config.path.name}: unsubscribe.mode = "sendgrid" works only with the '
                    f"sendgrid transport (this send uses {transport})"
                )
            if self.config.sendgrid.asm_group_id is None:
                raise ConfigError(
                    f"{self.config.path.name}: unsubscribe.mode = "
                    '"sendgrid" needs sendgrid.asm_group_id'
                )
            return None
        if u.mode is None:
            return None
        if not u.base_url:
            raise ConfigError(
                f'{self.config.path.name}: unsubscribe.mode = "hosted" needs unsubscribe.base_url'
            )
        return UnsubscribeLinks(self.signer(transport), u.base_url, list_name, u.mailto)

    def signer(self, transport: str) -> Signer:
        """Signs (and checks) subscriber links with the secret named by unsubscribe.secret_env."""
        u = self.config.unsubscribe
        secret = self.config.secret(u.secret_env)
        if not secret:
            if transport != "outbox":
                raise ConfigError(
                    f"unsubscribe links are signed with a secret: set the environment variable "
                    f"{u.secret_env} (named by unsubscribe.secret_env) to a long random string"
                )
            log.warning(
                "%s is not set: outbox links are signed with a development secret", u.secret_env
            )
            secret = DEVELOPMENT_SECRET
        return Signer(secret)

    def serve_signer(self) -> Signer:
        """The signer `newsletter serve` checks links and forms with: the real secret only."""
        config = self.config
        secret = config.secret(config.unsubscribe.secret_env)
        if not secret:
            # never the development secret here: anyone could forge links with it
            raise ConfigError(
                f"`serve` checks signed links: set the environment variable "
                f"{config.unsubscribe.secret_env} (named by unsubscribe.secret_env) to the "
                "secret `send` signs with"
            )
        return Signer(secret)

    # -- delivering ----------------------------------------------------------------------

    def message(
        self,
        *,
        subject: str,
        html: str,
        text: str,
        tokens: frozenset[str],
        issue_id: str,
        list_name: str,
        sandbox: bool,
        send_at: int | None = None,
        batch_id: str | None = None,
        zone: str | None = None,
        anchor: int | None = None,
        date: dt.date | None = None,
    ) -> Message:
        """The issue as every reader gets it, from the sender settings; with the issue's
        `date`, the bulk-mail headers too (`list_headers`)."""
        s = self.config.sender
        return Message(
            headers=self.list_headers(list_name, date) if date is not None else (),
            send_at=send_at,
            batch_id=batch_id,
            zone=zone,
            anchor=anchor,
            subject=subject,
            html=html,
            text=text,
            from_email=s.from_email,
            from_name=s.from_name,
            reply_to=s.reply_to,
            tokens=tokens,
            issue_id=issue_id,
            list_name=list_name,
            sandbox=sandbox,
        )

    def issue_message(self, issue: IssueRow, attempt: Attempt | None) -> Message:
        """The day's issue from its stored plan, as the claimant and its helpers send it:
        under its scheduled attempt, if it has one (`scheduling.py`), whose send time,
        batch ID and anchor every request carries."""
        held = attempt is not None
        return self.message(
            subject=issue.subject or "",
            html=issue.html or "",
            text=issue.text or "",
            tokens=issue.tokens,
            issue_id=str(issue.id),
            list_name=issue.list_name,
            sandbox=False,
            date=issue.issue_date,
            send_at=int(attempt.send_at.timestamp()) if held else None,
            batch_id=attempt.batch_id if held else None,
            zone=self.config.newsletter.timezone if held else None,
            anchor=int(attempt.anchor.timestamp()) if held else None,
        )

    def list_headers(self, list_name: str, date: dt.date) -> tuple[tuple[str, str], ...]:
        """List-Id and Feedback-ID (`headers.list_fields`), under the newsletter's domain:
        its web address's, else the sender's."""
        n = self.config.newsletter
        host = urlsplit(n.url).hostname if n.url else None
        domain = host or self.config.sender.from_email.rpartition("@")[2]
        return list_fields(n.name, list_name, domain, date)

    def retry_policy(self) -> RetryPolicy:
        d = self.config.delivery
        return RetryPolicy(
            d.attempts, d.retry_delay.total_seconds(), d.max_retry_delay.total_seconds()
        )

    def deliverer(
        self,
        route: Route,
        ledger: Ledger,
        *,
        progress: Progress,
        should_stop: Callable[[], bool],
        sleep: Callable[[float], None],
    ) -> Deliverer | SenderPool:
        """The delivery settings around the route; the ledger and the hooks are the send's.

        A transport that sends a batch in one request gets sender processes claiming
        batches from the database (`senders.py`); one that sends a message at a time
        gets worker threads, which wait on the network, not on the CPU."""
        d = self.config.delivery
        deliverer = Deliverer(
            ledger=ledger,
            make_transport=route.make_transport,
            policy=self.retry_policy(),
            workers=1 if route.transport == "outbox" else d.workers,
            progress=progress,
            should_stop=should_stop,
            sleep=sleep,
            in_doubt=route.in_doubt,
        )
        if route.in_doubt != "batch":
            return deliverer
        return SenderPool(deliverer, self.config, route.transport, d.workers, progress, should_stop)

    # -- SendGrid beside sending -----------------------------------------------------------

    def scheduling(self, ledger: Ledger, sleep: Callable[[float], None]) -> Scheduling:
        """Scheduled attempts at SendGrid: submitted ahead, cancelled, paused, resumed."""
        make_transport = self.transport_factory("sendgrid", None)
        return Scheduling(
            ledger,
            lambda: cast(SendGridTransport, make_transport()),
            self.retry_policy(),
            self.clock,
            sleep,
            self.config.newsletter.timezone,
        )

    def suppressions_at_service(self, transport: str) -> Callable[[], list[tuple[str, str]]] | None:
        """Reads who SendGrid will not deliver to, as (address, reason); None: not SendGrid."""
        if transport != "sendgrid":
            return None
        client = self.transport_factory("sendgrid", None)()
        assert isinstance(client, SendGridTransport)
        return lambda: client.fetch_suppressions(self.config.sendgrid.asm_group_id)

    def forget_at_service(self, name: str) -> Callable[[str], None] | None:
        """Takes a returning reader off SendGrid's unsubscribe lists; None: not SendGrid."""
        if name != "sendgrid":
            return None
        config = self.config
        make_transport = self.transport_factory(name, None)

        def forget(address: str) -> None:
            transport = make_transport()
            assert isinstance(transport, SendGridTransport)
            try:
                transport.forget_unsubscribe(address, config.sendgrid.asm_group_id)
            finally:
                transport.close()

        return forget
