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
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]
