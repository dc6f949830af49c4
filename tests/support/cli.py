"""The real `newsletter` command in a child process, and the emails it leaves in the outbox."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from pathlib import Path


def run(config: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SENDGRID_"))}
    return subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**clean, **env},
    )  # fmt: skip


def read(path: Path) -> email.message.EmailMessage:
    """An .eml file as a message. One to a non-ASCII address is SMTPUTF8 (RFC 6532): its
    headers are UTF-8, which the email package reads only from text, not from bytes."""
    data = path.read_bytes()
    head = data.split(b"\r\n\r\n", 1)[0]
    if head.isascii():
        return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]
    return email.message_from_string(data.decode("utf-8"), policy=email.policy.default)  # type: ignore[return-value]
