"""Benchmark of a send over a simulated real network: where it becomes bandwidth-bound.

    python bench/network.py                    # 1,000,000 readers; 1, 4 and 8 senders; gzip off/on
    python bench/network.py --recipients 100000 --workers 1 4 --rtt-ms 50 --up-mbit 100

`newsletter send` posts through bench/throttle.py (a round trip of --rtt-ms, one
uplink of --up-mbit shared by every connection) to the discarding sink
(bench/http_sink.py). Each run is checked: the sink counts the readers of plain
bodies; for gzip bodies the state database says every batch was accepted. Prints
one JSON line per run. Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness import HERE, Sink, compile_package, log, report
from send import build_newsletter, run_send, seed_state


class Throttle:
    """bench/throttle.py in its own process, in front of the sink."""

    def __init__(self, target_port: int, rtt_ms: float, up_mbit: float) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "throttle.py"), "--target", f"127.0.0.1:{target_port}",
             "--rtt-ms", str(rtt_ms), "--up-mbit", str(up_mbit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline().split()[1])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def set_compress(folder: Path, on: bool) -> None:
    config = folder / "config.toml"
    text = config.read_text(encoding="utf-8").replace("\ncompress = true", "")
    if on:
        text = text.replace("timeout = 60", "timeout = 60\ncompress = true")
    config.write_text(text, encoding="utf-8")


def accepted_everyone(folder: Path, recipients: int) -> bool:
    from newsletter.state import Ledger

    with Ledger(f"sqlite:///{folder / 'newsletter.db'}") as ledger:
        [issue] = ledger.recent_issues("main")
        counts = ledger.batch_counts(issue.id)
    return issue.status == "sent" and counts.get("submitted", (0, 0))[1] == recipients


def one_run(folder: Path, sink: Sink, url: str, recipients: int, workers: int, gzip: bool) -> dict[str, Any]:  # fmt: skip
    build_newsletter(folder, recipients, url, workers, write_list=False)
    set_compress(folder, gzip)
    seed_state(folder, recipients)
    result = run_send(folder)
    stats = sink.stats()
    checked = stats["recipients"] == recipients if not gzip else accepted_everyone(folder, recipients)  # fmt: skip
    if not checked:
        raise SystemExit(f"{workers} senders, gzip {gzip}: not every reader was sent: {stats}")
    return {
        "recipients": recipients,
        "workers": workers,
        "gzip": gzip,
        "wall_s": round(result["wall_s"], 2),
        "send_phase_s": result["phases"].get("send"),
        "cpu_s": round(result["cpu_s"], 2),
        "requests": stats["requests"],
        "mb_on_the_wire": round(stats["bytes"] / 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--up-mbit", type=float, default=100)
    args = parser.parse_args()
    compile_package()
    work = Path(tempfile.mkdtemp(prefix="newsletter-net-"))
    folder = work / "paper"
    build_newsletter(folder, args.recipients, "http://127.0.0.1:9", 1)
    sink = Sink(work / "samples", "http_sink.py")
    throttle = Throttle(sink.port, args.rtt_ms, args.up_mbit)
    try:
        for gzip in (False, True):
            for workers in args.workers:
                log(f"{args.recipients:,} readers, {workers} senders, gzip {gzip} ...")
                url = f"http://127.0.0.1:{throttle.port}"
                result = one_run(folder, sink, url, args.recipients, workers, gzip)
                report({**result, "rtt_ms": args.rtt_ms, "up_mbit": args.up_mbit})
    finally:
        throttle.close()
        sink.close()


if __name__ == "__main__":
    main()
