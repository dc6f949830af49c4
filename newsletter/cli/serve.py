"""`newsletter serve`: the subscriber web app under uvicorn."""

from __future__ import annotations

import logging
import signal

import click

from newsletter.app import App
from newsletter.cli.base import Command, Options, out


@click.command(cls=Command)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on.",
)
@click.option(
    "--transport",
    type=click.Choice(["sendgrid", "smtp", "outbox"]),
    help="How confirmation emails leave (default: delivery.transport).",
)
@click.pass_obj
def serve(opts: Options, host: str, port: int, transport: str | None) -> None:
    """Run the subscriber web app: sign-up, unsubscribe, SendGrid events, archive.

    Put it behind a reverse proxy that terminates TLS; see README.md.
    """
    import uvicorn

    from newsletter.web import create_app, web_parts

    config = opts.config()
    root = logging.getLogger()
    root.setLevel(min(root.level, logging.INFO))  # the access log is what a server is read by
    with App(config) as app:
        asgi = create_app(web_parts(app, transport))
        out.print(f"Serving {config.newsletter.name} on http://{host}:{port} (Ctrl+C stops)")
        # uvicorn finishes the requests in flight, then raises the stop signal again for
        # whatever handler was there before; this one makes that a clean exit 0
        for stop in (signal.SIGTERM, signal.SIGINT):
            signal.signal(stop, lambda *_: None)
        uvicorn.run(
            asgi,
            host=host,
            port=port,
            log_config=None,  # our handlers and redaction
            access_log=False,  # ours leaves tokens and addresses out
            proxy_headers=True,
            forwarded_allow_ips=config.serve.forwarded_allow_ips,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
