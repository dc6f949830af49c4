"""A network between the sender and the sink: round-trip time and an uplink's bandwidth.

    python bench/throttle.py --target 127.0.0.1:PORT --rtt-ms 50 --up-mbit 100

A TCP proxy on 127.0.0.1 (it prints `READY <port>` and runs until stdin closes).
Every byte is delivered half the round trip after it was sent, and what the
sender sends goes through one uplink of the given bandwidth shared by all its
connections, as a sender's office or server has; answers come back at the same
delay, without a bandwidth limit (they are a few hundred bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

CHUNK = 64 * 1024


class Uplink:
    """One shared pipe: each chunk leaves when the ones before it have."""

    def __init__(self, bytes_per_second: float) -> None:
        self.rate = bytes_per_second
        self.free_at = 0.0

    def leaves_at(self, size: int, now: float) -> float:
        self.free_at = max(now, self.free_at) + size / self.rate
        return self.free_at


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    uplink: Uplink | None,
) -> None:
    """Forward one direction: read as it comes, deliver each chunk at its time."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, chunk = await queue.get()
            if not chunk:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    delivering = asyncio.create_task(deliver())
    try:
        while chunk := await reader.read(CHUNK):
            now = loop.time()
            sent = uplink.leaves_at(len(chunk), now) if uplink else now
            queue.put_nowait((sent + delay, chunk))
    except ConnectionError:
        pass
    queue.put_nowait((loop.time() + delay, b""))
    await delivering


async def serve(target: tuple[str, int], rtt: float, uplink: Uplink) -> None:
    async def connection(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(*target)
        await asyncio.gather(
            pump(client_r, server_w, rtt / 2, uplink),
            pump(server_r, client_w, rtt / 2, None),
            return_exceptions=True,
        )

    server = await asyncio.start_server(connection, "127.0.0.1", 0)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of the sink")
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--up-mbit", type=float, default=100)
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    uplink = Uplink(args.up_mbit * 1_000_000 / 8)
    asyncio.run(serve((host, int(port)), args.rtt_ms / 1000, uplink))


if __name__ == "__main__":
    main()
