"""Benchmark of `newsletter send --join`: one sender against two sharing one issue.

    python bench/join.py                                 # 200,000 readers, 50 ms round trip
    python bench/join.py --recipients 100000 --runs 3 --rtt-ms 50

Two folders (two "machines") hold the same newsletter and one state database. A
run is either one `newsletter send --join` alone, or two started together: one
claims and plans the issue, the other helps, each with one sender. They post
through bench/throttle.py (a round trip of --rtt-ms, as to SendGrid) to the
discarding sink, which counts every reader: a run that did not reach everyone
exactly as often as planned fails. The two kinds of run alternate; medians are
printed, one JSON line each. Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Sink, child_env, compile_package, log, newsletter_command, report
from network import Throttle
from send import API_KEY, DATE, SECRET, build_newsletter, seed_state


def start(folder: Path, database: str) -> subprocess.Popen[bytes]:
    env = child_env(SECRET, SENDGRID_API_KEY=API_KEY, NEWSLETTER_DATABASE_URL=database)
    command = newsletter_command(
        folder / "config.toml", "send", "--yes", "--join", "--date", DATE,
        "--timings", str(folder / "timings.json"),
    )  # fmt: skip
    out, err = (folder / "send.out").open("wb"), (folder / "send.err").open("wb")
    return subprocess.Popen(command, env=env, stdout=out, stderr=err)


def one_run(machines: list[Path], sink: Sink, recipients: int) -> dict[str, Any]:
    """The machines' sends started together, timed to the last one's end."""
    database = f"sqlite:///{machines[0] / 'newsletter.db'}"
    seed_state(machines[0], recipients)
    before = sink.stats()["recipients"]
    began = time.perf_counter()
    processes = [start(folder, database) for folder in machines]
    codes = [p.wait() for p in processes]
    wall = time.perf_counter() - began
    said = [(f / "send.out").read_text() + (f / "send.err").read_text() for f in machines]
    reached = sink.stats()["recipients"] - before
    if codes != [0] * len(machines) or reached != recipients:
        raise SystemExit(f"a run failed ({codes}, {reached:,} reached):\n" + "\n".join(said))
    if sum("Sent " in s for s in said) != 1 or sum("Helped " in s for s in said) != len(said) - 1:
        raise SystemExit("expected one claimant and the rest helpers:\n" + "\n".join(said))
    [claimant] = [f for f, s in zip(machines, said, strict=True) if "Sent " in s]
    phases = json.loads((claimant / "timings.json").read_text())
    return {"wall_s": wall, "send_phase_s": phases["send"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--up-mbit", type=float, default=1000)
    args = parser.parse_args()
    compile_package()
    work = Path(tempfile.mkdtemp(prefix="newsletter-join-"))
    machines = [work / "machine-a", work / "machine-b"]
    sink = Sink(work / "samples", "http_sink.py")
    throttle = Throttle(sink.port, args.rtt_ms, args.up_mbit)
    url = f"http://127.0.0.1:{throttle.port}"
    build_newsletter(machines[0], args.recipients, url, workers=1)
    shutil.copytree(machines[0], machines[1])
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    try:
        for n in range(args.runs):
            for count in (1, 2) if n % 2 == 0 else (2, 1):
                log(f"run {n + 1}: {args.recipients:,} readers, {count} machine(s) ...")
                runs[count].append(one_run(machines[:count], sink, args.recipients))
    finally:
        throttle.close()
        sink.close()
    medians = {}
    for count, results in runs.items():
        medians[count] = {k: statistics.median(r[k] for r in results) for k in results[0]}
        report(
            {
                "recipients": args.recipients,
                "machines": count,
                "rtt_ms": args.rtt_ms,
                "wall_s": round(medians[count]["wall_s"], 2),
                "send_phase_s": round(medians[count]["send_phase_s"], 2),
                "wall_s_each": [round(r["wall_s"], 2) for r in results],
            }
        )
    one, two = medians[1], medians[2]
    report(
        {
            "speed_up_wall": round(one["wall_s"] / two["wall_s"], 2),
            "speed_up_send_phase": round(one["send_phase_s"] / two["send_phase_s"], 2),
        }
    )


if __name__ == "__main__":
    main()
