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

A minimal SMTP server on asyncio's protocol layer, not aiosmtpd: a sink that
parses little costs the senders it is measuring little CPU beside them (aiosmtpd
took more CPU than the sender it received from). It speaks what a client sending
mail needs: EHLO (8BITMIME, SMTPUTF8), HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

from harness import answer_commands, cpu_seconds

END_OF_DATA = b"\r\n.\r\n"


class Counts:
    """Connections, messages, recipients and bytes; one sample per epoch."""

    def __init__(self, sample_dir: Path) -> None:
        self.sample_dir = sample_dir
        self.lock = threading.Lock()
        self.epoch = 0
        self._reset()

    def _reset(self) -> None:
        self.connections = 0
        self.messages = 0
        self.recipients = 0
        self.unique: set[bytes] = set()
        self.bytes = 0
        self.cpu_start = cpu_seconds()
        self.sample_written = False

    def message(self, recipients: list[bytes], size: int, content: bytes | None) -> None:
        with self.lock:
            self.messages += 1
            self.recipients += len(recipients)
            self.unique.update(r.lower() for r in recipients)
            self.bytes += size
            if content is not None and not self.sample_written:
                self.sample_written = True
                (self.sample_dir / f"epoch-{self.epoch}.eml").write_bytes(content)

    def wants_sample(self) -> bool:
        return not self.sample_written

    def snapshot(self, *, new_epoch: bool) -> dict[str, Any]:
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


class Session(asyncio.Protocol):
    """One SMTP connection: commands line by line; message data counted as it streams."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.in_data = False
        self.recipients: list[bytes] = []
        self.size = 0
        self.kept: list[bytes] | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        with self.counts.lock:
            self.counts.connections += 1
        self.transport.write(b"220 sink.bench.invalid ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        if self.in_data:
            self._data(data)
            return
        self.buffer += data
        while not self.in_data and b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self._command(line)
        if self.in_data and self.buffer:
            rest, self.buffer = self.buffer, b""
            self._data(rest)

    def _command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.transport.write(b"250-sink.bench.invalid\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
        elif verb == b"MAIL":
            self.recipients = []
            self.transport.write(b"250 OK\r\n")
        elif verb == b"RCPT":
            address = line.partition(b":")[2].strip().split(b" ")[0].strip(b"<>")
            self.recipients.append(address)
            self.transport.write(b"250 OK\r\n")
        elif verb == b"DATA":
            self.in_data, self.size, self.tail = True, 0, b"\r\n"
            self.kept = [] if self.counts.wants_sample() else None
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 Bye\r\n")
            self.transport.close()
        elif verb == b"RSET":
            self.recipients = []
            self.transport.write(b"250 OK\r\n")
        else:  # HELO, NOOP and anything else: fine
            self.transport.write(b"250 OK\r\n")

    def _data(self, data: bytes) -> None:
        """Message bytes until <CRLF>.<CRLF>, found in this chunk or across its edge."""
        edge = self.tail + data
        end = edge.find(END_OF_DATA)
        if end < 0:
            self.size += len(data)
            if self.kept is not None:
                self.kept.append(data)
            self.tail = edge[-4:]
            return
        cut = end + 2 - len(self.tail)  # where the message ends in `data` (after its CRLF)
        self.size += max(0, cut)
        content = None
        if self.kept is not None:
            if cut < 0 and self.kept:  # the end began in the chunk before
                self.kept[-1] = self.kept[-1][:cut]
            self.kept.append(data[: max(0, cut)])
            raw = b"".join(self.kept)
            content = raw.replace(b"\r\n..", b"\r\n.")  # undo the client's dot-stuffing
        self.counts.message(self.recipients, self.size, content)
        self.in_data, self.kept, self.recipients = False, None, []
        self.transport.write(b"250 OK queued\r\n")
        rest = data[cut + 3 :]
        if rest:
            self.data_received(rest)


async def serve(counts: Counts) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Session(counts), "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await loop.run_in_executor(
        None, answer_commands, lambda new_epoch: counts.snapshot(new_epoch=new_epoch)
    )
    server.close()


def main() -> int:
    sample_dir = Path(sys.argv[1])
    sample_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(Counts(sample_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
