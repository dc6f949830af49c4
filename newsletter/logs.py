"""Logging that cannot leak a secret, whatever a library decides to log."""

from __future__ import annotations

import datetime as dt
import json
import logging

from newsletter.redaction import redact


class RedactSecrets(logging.Filter):
    """Rewrites each record's message with secrets masked before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for journald and containers; `extra={"fields": {...}}` adds keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class PlainFormatter(logging.Formatter):
    """Plain lines with a UTC timestamp, for services whose output is not a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def configure(level: int, fmt: str, stream, interactive: bool) -> None:  # type: ignore[no-untyped-def]
    """Rich lines for a person at a terminal, plain or JSON lines for everything else."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler: logging.Handler
    if fmt == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif interactive:
        handler = RichHandler(
            console=Console(file=stream, highlight=False, soft_wrap=True),
            show_path=False,
            show_time=False,
            markup=False,
        )
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(PlainFormatter())
    handler.addFilter(RedactSecrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # the HTTP client under sendgrid logs whole requests, Authorization header included
    logging.getLogger("python_http_client").setLevel(logging.WARNING)
