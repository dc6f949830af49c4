"""What the benchmarks in bench/ share, so each script holds only what it measures.

Sections, in the order a benchmark uses them: progress and the JSON report; the
throwaway newsletter folder; the child process's environment and command line;
timing a child process; the receivers (the counting SMTP sink, the SendGrid
emulator); and what the figures were measured on (the package copy, the commit,
the machine).

Nothing here imports `newsletter` at import time: the SMTP sink's process imports
this module too, and must stay small.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EMULATOR = REPO / "tests" / "support" / "sendgrid_emulator.py"
PROGRESS_EVERY = 15.0  # seconds between progress lines during a long run

# -- progress and the report ----------------------------------------------------------------


def log(message: str) -> None:
    """Progress for humans on stderr; stdout carries only the JSON lines."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def report(result: Mapping[str, Any]) -> None:
    """One JSON line on stdout per result: the figures that go to BENCHMARKS.md."""
    print(json.dumps(result), flush=True)


# -- the throwaway newsletter ---------------------------------------------------------------


def reader(n: int) -> tuple[str, str]:
    """The n-th deterministic reader (reader0000042@example.com, Reader 42): every run of
    every benchmark sends to the same addresses, so a message can be checked by its To."""
    return f"reader{n:07d}@example.com", f"Reader {n}"


def story(front: Mapping[str, str], body: str) -> str:
    """One story file's text: YAML front matter in the given order, then the Markdown body."""
    lines = "".join(f"{key}: {value}\n" for key, value in front.items())
    return f"---\n{lines}---\n{body}\n"


def write_list(path: Path, rows: Iterable[tuple[str, str]]) -> None:
    """A subscriber list (`email,name`), written as it is generated: a million readers
    never sit in memory at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["email", "name"])
        writer.writerows(rows)


def write_newsletter(
    folder: Path,
    config: str,
    stories: Mapping[str, str],
    readers: Iterable[tuple[str, str]],
    list_name: str = "main",
) -> Path:
    """A newsletter folder as the tool expects one (config.toml, stories/, one list file),
    rewritten in place when it exists; returns the config's path."""
    (folder / "stories").mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(config, encoding="utf-8")
    for name, text in stories.items():
        (folder / "stories" / name).write_text(text, encoding="utf-8")
    write_list(folder / "subscribers" / f"{list_name}.csv", readers)
    return path


def reset_state(folder: Path) -> None:
    """A fresh state database for each run: otherwise the second send says "already sent"."""
    for path in folder.glob("newsletter.db*"):
        path.unlink()


# -- the child process ----------------------------------------------------------------------


def child_env(
    secret: str,
    *,
    code: Path | None = None,
    drop: tuple[str, ...] = ("NEWSLETTER_",),
    **extra: str,
) -> dict[str, str]:
    """This environment without the variables starting with `drop` (a stray
    NEWSLETTER_CONFIG or NEWSLETTER_DATABASE_URL would point the child elsewhere), with
    the signing secret and `extra`, and the snapshot `code` first on the path (it wins
    over the editable install)."""
    env = {k: v for k, v in os.environ.items() if not (drop and k.startswith(drop))}
    env["NEWSLETTER_SECRET"] = secret
    env.update(extra)
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def newsletter_command(config: Path, *args: str) -> list[str]:
    """The real CLI as a separate process, as a user runs it: start-up and imports count."""
    return [sys.executable, "-m", "newsletter", "--config", str(config), *args]


def free_port() -> int:
    """A free port on 127.0.0.1 for a server the benchmark starts (aiosmtpd's Controller and
    `newsletter serve` cannot report a port 0 they bound themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- timing a child process -----------------------------------------------------------------


@dataclass(frozen=True)
class Timed:
    """What one child process cost, counted for that process alone."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int


def run_timed(
    command: Sequence[str],
    *,
    env: dict[str, str],
    stdout: IO[bytes] | int,
    stderr: IO[bytes] | int,
    cwd: Path | None = None,
    progress: Callable[[], str] | None = None,
) -> Timed:
    """Run a child to its end: its wall time, its own user+system CPU and peak RSS.

    os.wait4 gives the rusage of exactly this child, so the CPU of the harness, the
    sink and anything else on the machine is not counted. A thread prints `progress()`
    while the main thread blocks in wait4, so polling does not blur the wall time.
    """
    done = threading.Event()

    def report_progress() -> None:
        while progress is not None and not done.wait(PROGRESS_EVERY):
            log(f"  ... {progress()}")

    reporter = threading.Thread(target=report_progress, daemon=True)
    start = time.perf_counter()
    process = subprocess.Popen(list(command), env=env, cwd=cwd, stdout=stdout, stderr=stderr)
    reporter.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        wall = time.perf_counter() - start
        done.set()
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again
    reporter.join()
    return Timed(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,
        exit_code=process.returncode,
    )


# -- the receivers: the SMTP sink, the SendGrid emulator -------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process: a sink reports its own, to show whether it was
    the bottleneck."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def answer_commands(
    snapshot: Callable[[bool], dict[str, Any]],
    mark: Callable[[str], dict[str, Any]] | None = None,
) -> None:
    """A sink's side of `Sink`: a command per line of stdin, a JSON line back, until QUIT
    or the end of input. PEEK: `snapshot(False)`; STATS: `snapshot(True)` (the counts
    since the last STATS, a new epoch after); MARK <text>: `mark(text)`."""
    for line in sys.stdin:
        command = line.strip().upper()
        if command == "QUIT":
            break
        if command in {"PEEK", "STATS"}:
            answer = snapshot(command == "STATS")
        elif command.startswith("MARK ") and mark is not None:
            answer = mark(line.strip()[len("MARK ") :])
        else:
            answer = {"error": f"unknown command {command!r}"}
        print(json.dumps(answer), flush=True)


class Sink:
    """A counting receiver in its own process: the aiosmtpd server (smtp_sink.py) or the
    discarding HTTP server that stands for SendGrid in timing runs (http_sink.py)."""

    def __init__(self, sample_dir: Path, script: str = "smtp_sink.py") -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / script), str(sample_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        ready = self._readline()
        if not ready.startswith("READY "):
            raise SystemExit(f"the sink ({script}) did not start: {ready!r}")
        self.port = int(ready.split()[1])

    def _readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the sink exited (code {self.process.poll()})")
        return line.strip()

    def _ask(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
            return json.loads(self._readline())

    def peek(self) -> dict[str, Any]:
        """Counts so far, for progress lines."""
        return self._ask("PEEK")

    def mark(self, marker: str) -> None:
        """Keep as the sample the first body that begins with `marker` (http_sink.py)."""
        answer = self._ask(f"MARK {marker}")
        if answer.get("marker") != marker:
            raise SystemExit(f"the sink did not take the marker: {answer}")

    def stats(self) -> dict[str, Any]:
        """Counts since the previous call; the next run starts from zero."""
        return self._ask("STATS")

    def close(self) -> None:
        """Stops the server, killing it if it hangs: no benchmark leaves one behind."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("QUIT\n")
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Emulator:
    """The SendGrid emulator in its own process (no GIL shared with the send measured),
    validating the first request and one in `validate_every` against the official schema."""

    def __init__(self, stats: Path, api_key: str, validate_every: int) -> None:
        self.stats = stats
        self.process = subprocess.Popen(
            [sys.executable, str(EMULATOR), "--port", "0", "--api-key", api_key,
             "--validate", f"sample:{validate_every}", "--no-bodies", "--stats-file", str(stats)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()

    def stop(self) -> dict[str, Any]:
        """Stops it; what it received (requests, recipients, bytes, validation failures)."""
        self.process.terminate()
        self.process.wait(timeout=30)
        return json.loads(self.stats.read_text())


# -- what was measured ----------------------------------------------------------------------


def live_package() -> Path:
    """The newsletter package this interpreter imports (the editable install)."""
    import newsletter

    return Path(newsletter.__file__).resolve().parent


def compile_package() -> None:
    """Byte-compile the package, as an install does: with PYTHONDONTWRITEBYTECODE set (as
    here), every process would otherwise compile the edited modules again at start-up."""
    import compileall

    compileall.compile_dir(str(live_package()), quiet=1)


def snapshot_package(dest: Path) -> Path:
    """Copy the newsletter package for the runs: it is installed editable and other people
    edit and commit it meanwhile, so without a copy one run could measure other code."""
    shutil.copytree(
        live_package(), dest / "newsletter", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def source_fingerprint(package: Path) -> str:
    """A hash of the package's files (templates included): names the code measured."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def check_snapshot(code: Path, measured: str, env: dict[str, str], cwd: Path) -> None:
    """Fail unless a child with `env` imports the copy in `code`, and the copy is whole:
    otherwise the figures would name code that was not the code measured."""
    imported = subprocess.run(
        [sys.executable, "-c", "import newsletter; print(newsletter.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(imported).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the runs would import {imported}, not the copy in {code}")
    if source_fingerprint(live_package()) != measured:
        raise SystemExit("the newsletter package changed while it was being copied: run again")


def git_commit() -> str:
    """The repository's commit, for the record (uncommitted edits: see the hash)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=live_package(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(*packages: str) -> dict[str, Any]:
    """What the figures depend on: versions (Python's and `packages`'), cores, load."""
    return {
        "python": platform.python_version(),
        **{name: importlib.metadata.version(name) for name in packages},
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }
