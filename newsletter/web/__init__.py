"""`newsletter serve`: sign-up, unsubscribe, SendGrid events, the public archive and the
editor's report under /admin/."""

from __future__ import annotations

from newsletter.app import App
from newsletter.errors import ConfigError
from newsletter.state.analytics import ReaderKeys
from newsletter.web.admin_access import AdminAccess
from newsletter.web.events import SignatureChecker
from newsletter.web.guards import Csrf, RateLimiter
from newsletter.web.server import WebParts, create_app
from newsletter.web.subscriptions import Subscriptions, transport_mailer

# one address gets at most this many confirmation emails an hour, whoever asks
CONFIRMATIONS_PER_ADDRESS = 3


def web_parts(app: App, transport: str | None = None) -> WebParts:
    """Everything the web app uses, from the same config, lists and ledger as the CLI.

    The signer, the confirmation emails' transport and SendGrid's unsubscribe lists
    come from `app.parts`, as a send's do; the web's own guards are built here.
    """
    config = app.config
    public_url = config.unsubscribe.base_url
    if not public_url:
        raise ConfigError(
            f"{config.path.name}: `serve` needs unsubscribe.base_url, the public address "
            "it is reached at (links in emails point there)"
        )
    name = app.parts.transport_name(transport)
    signer = app.parts.serve_signer()
    make_transport = app.parts.confirmation_transports(name)
    webhook = None
    if config.sendgrid.webhook_public_key:
        webhook = SignatureChecker(
            config.sendgrid.webhook_public_key, config.sendgrid.webhook_max_age
        )
    forget = app.parts.forget_at_service(name)
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
        language=app.renderer.language,
        readers=ReaderKeys(config.secret(config.unsubscribe.secret_env) or ""),
        analytics=app.ledger,
        admin_sessions=app.ledger,
        admin=AdminAccess.from_config(config, signer),
    )


__all__ = ["WebParts", "create_app", "web_parts"]
