"""A counting SMTP sink for benchmarks: accepts every message, keeps only counts.

Run as its own process (`python bench/smtp_sink.py SAMPLE_DIR`) so that the
server does not share a GIL with the client being measured. It prints
`READY <port>` on stdout once it listens on 127.0.0.1, then answers commands
read from stdin, one per line, each with one JSON line on stdout:

- `PEEK`: the counts so far (for progress reports);
- `STATS`: the counts since the previous `STATS`, then starts a new epoch;
- `QUIT` (or end of input): stops the server and exits.

The first message of each epoch is written to `SAMPLE_DIR/epoch-<n>.eml`, so
the caller can check that messages were personalised; every other message is
counted and discarded.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from harness import free_port

# aiosmtpd calls socket.getfqdn() for every connection unless given a name;
# one-connection-per-message clients would pay for the sink's DNS lookups.
SERVER_NAME = "sink.bench.invalid"


def cpu_seconds() -> float:
    """User + system CPU of this process: shows whether the sink was the bottleneck."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CountingHandler:
    """Counts connections, messages, recipients and bytes; keeps one sample per epoch."""

    def __init__(self, sample_dir: Path) -> None:
        self.sample_dir = sample_dir
        self.lock = threading.Lock()
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.connections = 0
        self.messages = 0
        self.recipients = 0
        self.unique: set[str] = set()
        self.bytes = 0
        self.cpu_start = cpu_seconds()
        self.sample_written = False

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list
    ) -> list:
        """One EHLO per connection: counts connections without patching the server."""
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Counted before the 250 reply: once the client has finished, the counts are final."""
        content = envelope.original_content or b""
        with self.lock:
            self.messages += 1
            self.recipients += len(envelope.rcpt_tos)
            self.unique.update(r.lower() for r in envelope.rcpt_tos)
            self.bytes += len(content)
            if not self.sample_written:
                self.sample_written = True
                (self.sample_dir / f"epoch-{self.epoch}.eml").write_bytes(content)
        return "250 OK"

    def snapshot(self, *, new_epoch: bool) -> dict[str, Any]:
        """The counts (and sink CPU) since the epoch began; optionally start the next one."""
        with self.lock:
            stats = {
                "epoch": self.epoch,
                "connections": self.connections,
                "messages": self.messages,
                "recipients": self.recipients,
                "unique_recipients": len(self.unique),
                "bytes": self.bytes,
                "sink_cpu_seconds": round(cpu_seconds() - self.cpu_start, 3),
                "sample": str(self.sample_dir / f"epoch-{self.epoch}.eml")
                if self.sample_written
                else None,
            }
            if new_epoch:
                self.epoch += 1
                self._reset()
        return stats


def main() -> int:
    sample_dir = Path(sys.argv[1])
    sample_dir.mkdir(parents=True, exist_ok=True)
    handler = CountingHandler(sample_dir)
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        server_hostname=SERVER_NAME,
        ready_timeout=10,
    )
    controller.start()
    try:
        print(f"READY {controller.port}", flush=True)
        for line in sys.stdin:
            command = line.strip().upper()
            if command == "QUIT":
                break
            if command in {"PEEK", "STATS"}:
                print(json.dumps(handler.snapshot(new_epoch=command == "STATS")), flush=True)
            else:
                print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
