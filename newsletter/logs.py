"""Logging that cannot leak a secret, whatever a library decides to log."""

from __future__ import annotations

import logging
import re

# SendGrid keys ("SG.<id>.<secret>"), bearer tokens, and passwords in URLs
_SECRETS = [
    (re.compile(r"SG\.[A-Za-z0-9_\-]{4,}(?:\.[A-Za-z0-9_\-]+)?"), "SG.***"),
    (re.compile(r"(?i)(bearer\s+)[^\s'\",]+"), r"\1***"),
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
]


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with secrets masked before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
