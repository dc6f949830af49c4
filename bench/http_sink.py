"""An HTTP sink for benchmarks: answers every request 202, reads and discards the body.

It stands where SendGrid would, costing the sender nothing: it parses only the
request line and headers, reads each body into one reusable buffer, and counts
requests, bytes and recipients (occurrences of `{"to":[`, a C-level count of the
buffer: gzip bodies are not counted). Keep-alive is honoured, as SendGrid does.

Run as its own process (`python bench/http_sink.py SAMPLE_DIR`): it prints
`READY <port>` once it listens on 127.0.0.1, then answers commands read from
stdin, one per line, each with one JSON line on stdout (as bench/smtp_sink.py):

- `PEEK`: the counts so far;
- `STATS`: the counts since the previous `STATS`, then starts a new epoch;
- `QUIT` (or end of input): stops and exits.

The first request body of each epoch that begins with the marker set by `MARK
<text>` (any body, without one) is written to `SAMPLE_DIR/epoch-<n>.json`, so the
caller can compare what two senders built for the same readers, byte for byte.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any

from harness import answer_commands, cpu_seconds

RECIPIENT = b'{"to":['
BUFFER = 1 << 20
HEAD_LIMIT = 64 * 1024


class Counts:
    def __init__(self, sample_dir: Path) -> None:
        self.sample_dir = sample_dir
        self.lock = threading.Lock()
        self.epoch = 0
        self.marker = b""
        self._reset()

    def _reset(self) -> None:
        self.connections = 0
        self.requests = 0
        self.recipients = 0
        self.bytes = 0
        self.gzip_requests = 0
        self.cpu_start = cpu_seconds()
        self.sample: str | None = None

    def add(self, body_bytes: int, recipients: int, gzip: bool, first: bytes | None) -> bool:
        """Count one request; True if this request's body is wanted as the epoch's sample."""
        with self.lock:
            self.requests += 1
            self.bytes += body_bytes
            self.recipients += recipients
            self.gzip_requests += gzip
            if first is not None and self.sample is None:
                path = self.sample_dir / f"epoch-{self.epoch}.json"
                path.write_bytes(first)
                self.sample = str(path)
            return self.sample is None

    def snapshot(self, *, new_epoch: bool) -> dict[str, Any]:
        with self.lock:
            stats = {
                "epoch": self.epoch,
                "connections": self.connections,
                "requests": self.requests,
                "recipients": self.recipients,
                "bytes": self.bytes,
                "gzip_requests": self.gzip_requests,
                "sink_cpu_seconds": round(cpu_seconds() - self.cpu_start, 3),
                "sample": self.sample,
            }
            if new_epoch:
                self.epoch += 1
                self._reset()
        return stats


def serve(conn: socket.socket, counts: Counts) -> None:
    """One connection: requests one after another until the client closes it."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    pending = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in pending:
                chunk = conn.recv(65536)
                if not chunk or len(pending) > HEAD_LIMIT:
                    return
                pending += chunk
            head, _, pending = pending.partition(b"\r\n\r\n")
            fields = head.lower().split(b"\r\n")
            length, close, gzip = 0, False, False
            for line in fields[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = b"close" in value
                elif name == b"content-encoding":
                    gzip = b"gzip" in value
            body_start, pending = pending[:length], pending[length:]
            remaining = length - len(body_start)
            wanted = counts.sample is None and length > 0
            kept = [body_start] if wanted else None
            first_part = body_start
            found = 0 if gzip else body_start.count(RECIPIENT)
            tail = body_start[-(len(RECIPIENT) - 1) :]
            while remaining:
                got = conn.recv_into(view, min(remaining, BUFFER))
                if not got:
                    return
                remaining -= got
                if not gzip:
                    found += buffer.count(RECIPIENT, 0, got)
                    # a marker split across two reads
                    edge = tail + bytes(view[: len(RECIPIENT) - 1])
                    found += edge.count(RECIPIENT)
                    tail = bytes(view[max(0, got - len(RECIPIENT) + 1) : got])
                if kept is not None:
                    kept.append(bytes(view[:got]))
                    if len(first_part) < 512:
                        first_part += bytes(view[: 512 - len(first_part)])
            sample = b"".join(kept) if kept is not None and counts.marker in first_part else None
            counts.add(length, found, gzip, sample)
            conn.sendall(
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n"
                b"X-Message-Id: sink\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n"
            )
            if close:
                return


def accept(server: socket.socket, counts: Counts) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with counts.lock:
            counts.connections += 1
        threading.Thread(target=serve, args=(conn, counts), daemon=True).start()


def main() -> int:
    sample_dir = Path(sys.argv[1])
    sample_dir.mkdir(parents=True, exist_ok=True)
    counts = Counts(sample_dir)
    server = socket.create_server(("127.0.0.1", 0), backlog=128)
    threading.Thread(target=accept, args=(server, counts), daemon=True).start()
    print(f"READY {server.getsockname()[1]}", flush=True)

    def mark(text: str) -> dict[str, Any]:
        counts.marker = text.encode()
        return {"marker": text}

    answer_commands(lambda new_epoch: counts.snapshot(new_epoch=new_epoch), mark)
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
