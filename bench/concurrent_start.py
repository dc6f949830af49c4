"""Concurrent first starts: N `newsletter schedule` processes at once on a fresh database.

Each try empties the state database (a new SQLite file, or every table of the given
PostgreSQL database dropped), starts N schedulers on the example newsletter at the
same moment, waits until each has said "scheduler started" (or exited), stops them
with SIGTERM and counts the processes that did not exit 0 cleanly. Not a test: the
figures go to the report of the change they measure.

    python bench/concurrent_start.py --tries 30                      # SQLite
    python bench/concurrent_start.py --tries 30 --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from harness import REPO, child_env, log, newsletter_command, report

EXAMPLE = ("config.example.toml", "stories", "templates", "subscribers")


def example_copy(folder: Path) -> Path:
    for name in EXAMPLE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy2(source, folder / name)
    return folder / "config.example.toml"


def empty_postgres(url: str) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            names = sa.inspect(conn).get_table_names()
            for name in names:
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    finally:
        engine.dispose()


def one_try(config: Path, url: str, processes: int, timeout: float) -> list[tuple[int, str]]:
    """(exit code, stderr) of each process; -9 for one that ignored SIGTERM and was killed."""
    env = child_env(
        "bench-secret-" + "x" * 24, drop=("NEWSLETTER_", "SENDGRID_"), NEWSLETTER_DATABASE_URL=url
    )
    command = newsletter_command(config, "schedule")
    started = [
        subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=config.parent,
        )
        for _ in range(processes)
    ]
    results = []
    for process in started:
        assert process.stderr is not None
        lines = []
        deadline = time.monotonic() + timeout
        for line in process.stderr:  # until it says it started, or exits
            lines.append(line)
            if "scheduler started" in line or time.monotonic() > deadline:
                break
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, rest = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            _, rest = process.communicate()
            rest += "\n(did not stop on SIGTERM: killed)\n"
        results.append((process.returncode, "".join(lines) + rest))
    return results


def failure_kind(code: int, err: str) -> str:
    """The exception line, else the last line without its time: enough to tell the races apart."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    last = errors[-1] if errors else re.sub(r"^\S+Z ", "", lines[-1] if lines else "")
    return f"exit {code}: {last[:160]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=30)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--database-url", help="a PostgreSQL URL (emptied!); default SQLite")
    parser.add_argument("--timeout", type=float, default=20, help="seconds to start or stop")
    args = parser.parse_args()

    failures = 0
    kinds: collections.Counter[str] = collections.Counter()
    first_failure = None
    with tempfile.TemporaryDirectory(prefix="concurrent-start-") as tmp:
        config = example_copy(Path(tmp))
        for n in range(args.tries):
            if args.database_url:
                url = args.database_url
                empty_postgres(url)
            else:
                url = f"sqlite:///{Path(tmp) / f'state-{n}.db'}"
            for code, err in one_try(config, url, args.processes, args.timeout):
                if code != 0 or "Traceback" in err:
                    failures += 1
                    kinds[failure_kind(code, err)] += 1
                    first_failure = first_failure or err
            log(f"try {n + 1}/{args.tries}: {failures} failed so far")
    kind = "postgresql" if args.database_url else "sqlite"
    summary = {"database": kind, "tries": args.tries, "processes": args.processes}
    report(summary | {"failed_processes": failures, "kinds": kinds})
    if first_failure:
        print("first failure's stderr:\n" + first_failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
