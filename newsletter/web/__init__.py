"""`newsletter serve`: sign-up, unsubscribe, SendGrid events and the public archive."""

from __future__ import annotations

import secrets

from newsletter.app import App
from newsletter.errors import ConfigError
from newsletter.send import Sending
from newsletter.signing import Signer
from newsletter.transports.base import Transport
from newsletter.transports.sendgrid import SendGridTransport
from newsletter.web.events import SignatureChecker
from newsletter.web.guards import Csrf, RateLimiter
from newsletter.web.server import WebParts, create_app
from newsletter.web.subscriptions import Subscriptions, transport_mailer

# one address gets at most this many confirmation emails an hour, whoever asks
CONFIRMATIONS_PER_ADDRESS = 3


def web_parts(app: App, transport: str | None = None) -> WebParts:
    """Everything the web app uses, from the same config, lists and ledger as the CLI."""
    config = app.config
    public_url = config.unsubscribe.base_url
    if not public_url:
        raise ConfigError(
            f"{config.path.name}: `serve` needs unsubscribe.base_url, the public address "
            "it is reached at (links in emails point there)"
        )
    sending = Sending(app)
    name = transport or config.delivery.transport
    secret = config.secret(config.unsubscribe.secret_env)
    if not secret:
        # never the development secret here: anyone could forge links with it
        raise ConfigError(
            f"`serve` checks signed links: set the environment variable "
            f"{config.unsubscribe.secret_env} (named by unsubscribe.secret_env) to the "
            "secret `send` signs with"
        )
    signer = Signer(secret)
    if name == "outbox":
        # a folder per message: the outbox refuses to write one address twice
        folder = config.outbox.path / "confirmations"

        def make_transport() -> Transport:
            unique = f"{app.clock():%Y%m%dT%H%M%S}-{secrets.token_hex(4)}"
            return sending.transport_factory(name, folder / unique)()
    else:
        make_transport = sending.transport_factory(name, None)
    webhook = None
    if config.sendgrid.webhook_public_key:
        webhook = SignatureChecker(
            config.sendgrid.webhook_public_key, config.sendgrid.webhook_max_age
        )
    forget = None
    if name == "sendgrid":

        def forget(address: str) -> None:
            transport = make_transport()
            assert isinstance(transport, SendGridTransport)
            try:
                transport.forget_unsubscribe(address, config.sendgrid.asm_group_id)
            finally:
                transport.close()

    templates = app.renderer.env
    return WebParts(
        config=config,
        events=app.ledger,
        archive=app.ledger,
        database=app.ledger,
        subscriptions=Subscriptions(
            config,
            app.ledger,
            signer,
            transport_mailer(make_transport),
            templates,
            public_url,
            forget,
        ),
        templates=templates,
        public_url=public_url.rstrip("/"),
        clock=app.clock,
        webhook=webhook,
        signup_limiter=RateLimiter(
            config.serve.signups_per_ip, config.serve.signup_period.total_seconds()
        ),
        address_limiter=RateLimiter(CONFIRMATIONS_PER_ADDRESS, 3600),
        csrf=Csrf(signer),
    )


__all__ = ["WebParts", "create_app", "web_parts"]
