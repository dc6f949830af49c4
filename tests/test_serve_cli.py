"""The real `newsletter serve` command: started, used over HTTP, stopped by the process manager."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from newsletter.signing import UNSUBSCRIBE, Signer
from newsletter.state import Ledger

from .conftest import Site
from .support.cli import run
from .support.web import SECRET


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_runs_answers_and_stops_cleanly_on_sigterm(site: Site) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    site.write_config(
        extra=f"""
        [delivery]
        transport = "outbox"

        [unsubscribe]
        mode = "hosted"
        base_url = "{url}/n"
        """
    )
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text("email\nreader@example.com\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    server = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "serve", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**clean, "NEWSLETTER_SECRET": SECRET},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)
        assert health.json() == {"status": "ok", "database": "ok"}

        token = Signer(SECRET).sign(UNSUBSCRIBE, "main", "reader@example.com")
        link = f"{url}/unsubscribe/{token}"
        assert httpx.get(link).status_code == 200
        with Ledger(f"sqlite:///{site.root / 'newsletter.db'}") as ledger:
            assert ledger.suppressed("main") == frozenset()
            one_click = httpx.post(link, data={"List-Unsubscribe": "One-Click"})
            assert one_click.status_code == 200
            assert ledger.suppressed("main") == {"reader@example.com"}
        assert httpx.get(f"{url}/confirm", params={"token": token}).status_code == 400
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0, err
    assert f"Serving The Test Times on http://127.0.0.1:{port}" in out
    assert "Traceback" not in err
    assert '"POST /unsubscribe/…" 200' in err
    assert '"GET /confirm" 400' in err
    assert token not in err and token[-20:] not in err
    assert "reader@example.com" not in err


def test_serve_without_a_public_address_says_what_to_set(site: Site) -> None:
    site.write_config(extra='[delivery]\ntransport = "outbox"\n')
    result = run(site.config_path, "serve", "--port", str(free_port()), NEWSLETTER_SECRET=SECRET)
    assert result.returncode != 0
    assert "`serve` needs unsubscribe.base_url" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_to_start_without_the_signing_secret(site: Site) -> None:
    """Not even with the outbox: links checked with a known secret could be forged by anyone."""
    site.write_config(
        extra="""
        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"

        [delivery]
        transport = "outbox"
        """
    )
    result = run(site.config_path, "serve", "--port", str(free_port()))
    assert result.returncode != 0
    assert "set the environment variable NEWSLETTER_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


def rsa_public_key() -> str:
    """A valid public key of the wrong kind: SendGrid signs with elliptic curves."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    der = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


@pytest.mark.parametrize("key", ["bm90IGEga2V5", rsa_public_key()], ids=["garbage", "rsa"])
def test_serve_with_a_bad_webhook_key_names_the_setting(site: Site, key: str) -> None:
    site.write_config(
        extra=f"""
        [unsubscribe]
        mode = "hosted"
        base_url = "https://news.example.com/n"

        [sendgrid]
        webhook_public_key = "{key}"

        [delivery]
        transport = "outbox"
        """
    )
    result = run(site.config_path, "serve", "--port", str(free_port()), NEWSLETTER_SECRET=SECRET)
    assert result.returncode != 0
    assert "sendgrid.webhook_public_key is not a valid public key" in result.stderr
    assert "Traceback" not in result.stderr
