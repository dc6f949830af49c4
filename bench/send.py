"""Benchmark of the whole send path: `newsletter send` to N subscribers, as a separate
process, beside the floor (bench/floor.py: the least work the same send needs), with
the time split by phase.

    python bench/send.py                          # 100,000 and 1,000,000 recipients, 3 runs each
    python bench/send.py --recipients 100000 --runs 1 --no-naive
    PYTHONPATH=/path/to/older/checkout BENCH_OLDER_CODE=1 python bench/send.py ...
                                                  # an older commit beside the same floor

The timed runs post to a sink that reads and discards (bench/http_sink.py), the
project and the floor alternating which goes first; the floor's first request
body must equal the project's byte for byte. Then one untimed run per size goes
to the SendGrid emulator, which checks requests against the official schema.
Prints one JSON line per list size (medians, and project / floor), and one for
the naive way (render and inline per recipient, one API call each), measured on
a sample and scaled. Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import (
    HERE,
    REPO,
    Emulator,
    Sink,
    child_env,
    compile_package,
    log,
    newsletter_command,
    reader,
    report,
    reset_state,
    run_timed,
    story,
    write_newsletter,
)

DIGEST = REPO / "tests" / "fixtures" / "digest-2023-11-09.txt"
API_KEY = "SG.bench-key"
SECRET = "bench-signing-secret-0123456789"
DATE = "2024-03-05"
SUPPRESSED_SHARE = 100  # one subscriber in this many has unsubscribed
# the emulator checks the first request and one in this many against the OpenAPI schema
# (a check of 1,000 personalizations takes it ~200 ms: more often and it is the bottleneck)
VALIDATE_EVERY = 250


def build_newsletter(
    folder: Path, recipients: int, api_url: str, workers: int = 4, *, write_list: bool = True
) -> None:
    """A newsletter with ten stories and a deterministic list of `recipients` subscribers
    (`write_list` False: the config and stories only, the list as it is)."""
    paragraphs = [
        p.strip() for p in DIGEST.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 80
    ]
    stories = {}
    for n in range(10):
        body = "\n\n".join(paragraphs[(n + k) % len(paragraphs)] for k in range(3))
        front = {
            "title": f"Story number {n} of the day",
            "date": f"2024-03-05 0{n % 7}:0{n % 6}:00+00:00",
            "url": f"https://example.com/2024/03/05/story-{n}",
            "author": "Desk",
            "tags": "[News]",
        }
        stories[f"story-{n}.md"] = story(front, body)
    config = f"""
[newsletter]
name = "The Bench Times"
timezone = "UTC"
postal_address = "1 Benchmark Road\\nTestville"
archive_url = "https://example.com/archive"

[sender]
from_email = "news@example.com"
from_name = "The Bench Times"

[schedule]
time = "07:00"

[issue]
window = "24h"

[[sources]]
kind = "markdown"
path = "stories"

[delivery]
transport = "sendgrid"
batch_size = 1000
workers = {workers}

[unsubscribe]
mode = "hosted"
base_url = "https://example.com/n"

[sendgrid]
api_url = "{api_url}"
timeout = 60
"""
    if write_list:
        write_newsletter(folder, config, stories, readers(recipients))
    else:
        (folder / "config.toml").write_text(config, encoding="utf-8")


def readers(recipients: int) -> Iterator[tuple[str, str]]:
    """`recipients` readers and, after each 50,000 of them, one former subscriber per
    hundred, who unsubscribed: the send must skip them."""
    step = 50_000
    for start in range(0, recipients, step):
        end = min(recipients, start + step)
        yield from map(reader, range(start, end))
        for n in range(start, end, SUPPRESSED_SHARE):
            yield f"gone{n:07d}@example.com", f"Gone {n}"


def seed_state(folder: Path, recipients: int) -> int:
    """A fresh state database in which the former subscribers are suppressed."""
    reset_state(folder)
    from newsletter.state import Ledger

    gone = [
        (f"gone{n:07d}@example.com", "unsubscribed") for n in range(0, recipients, SUPPRESSED_SHARE)
    ]
    with Ledger(f"sqlite:///{folder / 'newsletter.db'}") as ledger:
        ledger.suppress(gone, source="bench")
    return len(gone)


def run_send(folder: Path) -> dict[str, Any]:
    """One `newsletter send` process: wall, CPU and peak RSS of that process alone."""
    timings = folder / "timings.json"
    env = child_env(SECRET, drop=(), SENDGRID_API_KEY=API_KEY)
    command = newsletter_command(
        folder / "config.toml", "send", "--yes", "--date", DATE, "--timings", str(timings)
    )
    with (folder / "send.out").open("wb") as out, (folder / "send.err").open("wb") as err:
        timed = run_timed(command, env=env, stdout=out, stderr=err)
    printed = (folder / "send.out").read_text(encoding="utf-8")
    if timed.exit_code != 0 or "Sent " not in printed:
        errors = (folder / "send.err").read_text(encoding="utf-8")
        raise SystemExit(f"send failed:\n{printed}\n{errors}")
    phases = json.loads(timings.read_text())
    return {
        "wall_s": timed.wall_s,
        "cpu_s": timed.cpu_s,
        "peak_rss_mb": timed.peak_rss_mb,
        "phases": phases,
        "startup_and_rest_s": timed.wall_s - sum(phases.values()),
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["wall_s", "cpu_s", "peak_rss_mb", "startup_and_rest_s"]
    result = {k: round(statistics.median(r[k] for r in runs), 3) for k in keys}
    names = runs[0]["phases"].keys()
    result["phases_s"] = {
        n: round(statistics.median(r["phases"][n] for r in runs), 3) for n in names
    }
    result["wall_s_each"] = [round(r["wall_s"], 3) for r in runs]
    return result


def render_once(folder: Path, repeats: int = 7) -> dict[str, float]:
    """Render and inline the ten-story issue in this process: the first (cold) and the median."""
    from newsletter.app import App
    from newsletter.config import load_config

    config = load_config(folder / "config.toml", {})
    with App(config) as app:
        issue = app.gather_issue(dt.date.fromisoformat(DATE))
        assert len(issue.stories) == 10, len(issue.stories)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            app.renderer.render(issue)
            times.append(time.perf_counter() - start)
    return {
        "render_cold_ms": round(times[0] * 1000, 1),
        "render_median_ms": round(statistics.median(times) * 1000, 1),
    }


def naive(folder: Path, api_url: str, sample: int) -> dict[str, float]:
    """The way to avoid: render and inline per recipient, one API request each."""
    from sendgrid import SendGridAPIClient

    from newsletter.app import App
    from newsletter.config import load_config
    from newsletter.render import Renderer
    from newsletter.tokens import Personaliser

    config = load_config(folder / "config.toml", {})
    with App(config) as app:
        issue = app.gather_issue(dt.date.fromisoformat(DATE))
        renderer = Renderer(config)
        client = SendGridAPIClient(api_key=API_KEY, host=api_url)
        client.client.timeout = 60
        start = time.perf_counter()
        for n in range(sample):
            email = renderer.render(issue)  # Jinja and Premailer for every single reader
            values = {
                "email": f"reader{n:07d}@example.com",
                "unsubscribe_url": "https://example.com/n/u",
            }
            html, text = (
                Personaliser(email.html).fill(values),
                Personaliser(email.text).fill(values),
            )
            client.client.mail.send.post(
                request_body={
                    "personalizations": [{"to": [{"email": values["email"]}]}],
                    "from": {"email": "news@example.com"},
                    "subject": email.subject,
                    "content": [
                        {"type": "text/plain", "value": text},
                        {"type": "text/html", "value": html},
                    ],
                }
            )
        elapsed = time.perf_counter() - start
    return {
        "naive_sample": sample,
        "naive_sample_s": round(elapsed, 3),
        "naive_per_recipient_ms": round(elapsed / sample * 1000, 2),
    }


def point_at(folder: Path, api_url: str) -> None:
    config = folder / "config.toml"
    text = config.read_text(encoding="utf-8")
    start = text.index('api_url = "')
    end = text.index('"', start + len('api_url = "'))
    config.write_text(text[:start] + f'api_url = "{api_url}' + text[end:], encoding="utf-8")


def checked_run(work: Path, folder: Path, recipients: int) -> dict[str, Any]:
    """One send against the emulator, which checks requests against the official schema:
    not timed (its parsing would be measured too), only what it received is checked."""
    suppressed = seed_state(folder, recipients)
    emulator = Emulator(work / "emulator-stats.json", API_KEY, VALIDATE_EVERY)
    try:
        point_at(folder, emulator.url)
        run_send(folder)
    finally:
        stats = emulator.stop()
    if stats["recipients"] != recipients or stats["validation_failures"]:
        raise SystemExit(
            f"the emulator saw {stats['recipients']} recipients, expected {recipients}: {stats}"
        )
    return {"suppressed": suppressed, "requests": stats["requests"], "validated": stats["validated"]}  # fmt: skip


def project_run(folder: Path, sink: Sink, recipients: int) -> dict[str, Any]:
    """One timed `newsletter send` against the sink, which costs it nothing."""
    seed_state(folder, recipients)
    result = run_send(folder)
    stats = sink.stats()
    if stats["recipients"] != recipients:
        raise SystemExit(f"the sink counted {stats['recipients']} recipients, not {recipients}")
    return {**result, "requests": stats["requests"], "bytes_sent": stats["bytes"], "sink_cpu_s": stats["sink_cpu_seconds"], "sample": stats["sample"]}  # fmt: skip


def common_fields(sample: Path, dest: Path) -> Path:
    """What the floor needs from a body the project built: every field but the readers."""
    import orjson

    body = orjson.loads(sample.read_bytes())
    people = body.pop("personalizations")
    body["__custom_args__"] = people[0]["custom_args"]
    dest.write_bytes(orjson.dumps(body))
    return dest


def floor_run(work: Path, folder: Path, sink: Sink, recipients: int, common: Path, project_sample: Path, processes: int) -> dict[str, Any]:  # fmt: skip
    """bench/floor.py against the same sink; its first body must be the project's."""
    seed_state(folder, recipients)
    first = work / "floor-first.json"
    command = [
        sys.executable, str(HERE / "floor.py"), "--list", str(folder / "subscribers" / "main.csv"),
        "--database", str(folder / "newsletter.db"), "--common", str(common),
        "--url", f"http://127.0.0.1:{sink.port}", "--processes", str(processes),
        "--secret", SECRET, "--first-body", str(first),
    ]  # fmt: skip
    timed = run_timed(command, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=None)
    stats = sink.stats()
    if timed.exit_code != 0 or stats["recipients"] != recipients:
        raise SystemExit(f"the floor failed: exit {timed.exit_code}, {stats}")
    ours, theirs = project_sample.read_bytes(), first.read_bytes()
    if ours != theirs and not os.environ.get("BENCH_OLDER_CODE"):
        at = next((n for n, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs)))  # fmt: skip
        os.environ["BENCH_KEEP"] = "1"  # the files stay for a look
        raise SystemExit(
            f"the floor's first body differs from the project's at byte {at} of {len(ours)} / "
            f"{len(theirs)}:\nproject {ours[max(0, at - 80) : at + 80]!r}\nfloor   {theirs[max(0, at - 80) : at + 80]!r}"
        )
    return {"wall_s": timed.wall_s, "cpu_s": timed.cpu_s, "peak_rss_mb": timed.peak_rss_mb}


def measure(work: Path, folder: Path, recipients: int, runs: int, processes: int) -> dict[str, Any]:
    """Project and floor side by side, alternating which goes first, then the checked run."""
    sink = Sink(work / "samples", "http_sink.py")
    # the body of the list's first readers: the same batch from the project and the floor
    sink.mark('{"personalizations":[{"to":[{"email":"' + reader(0)[0] + '"')
    try:
        point_at(folder, f"http://127.0.0.1:{sink.port}")
        project: list[dict[str, Any]] = []
        floor: list[dict[str, Any]] = []
        common: Path | None = None
        for run in range(runs):
            log(f"{recipients:,} recipients, run {run + 1} of {runs} ...")
            order = ["project", "floor"] if run % 2 == 0 else ["floor", "project"]
            for who in order:
                if who == "project":
                    project.append(project_run(folder, sink, recipients))
                    sample = work / "project-first.json"
                    shutil.copyfile(project[-1]["sample"], sample)
                    common = common or common_fields(sample, work / "common.json")
                else:
                    assert common is not None
                    floor.append(floor_run(work, folder, sink, recipients, common, sample, processes))  # fmt: skip
    finally:
        sink.close()
    checked = checked_run(work, folder, recipients)
    result = {"recipients": recipients, **checked, "runs": runs, **median_run(project)}
    result["bytes_sent"] = project[0]["bytes_sent"]
    result["sink_cpu_s"] = statistics.median(r["sink_cpu_s"] for r in project)
    result["floor_processes"] = processes
    result["floor_wall_s"] = round(statistics.median(r["wall_s"] for r in floor), 3)
    result["floor_wall_s_each"] = [round(r["wall_s"], 3) for r in floor]
    result["floor_cpu_s"] = round(statistics.median(r["cpu_s"] for r in floor), 3)
    result["floor_peak_rss_mb"] = round(statistics.median(r["peak_rss_mb"] for r in floor), 1)
    ratios = [p["wall_s"] / f["wall_s"] for p, f in zip(project, floor, strict=True)]
    result["project_over_floor"] = round(statistics.median(ratios), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--naive-sample", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2, help="[delivery] workers")
    parser.add_argument("--floor-processes", type=int, default=2)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive way and render")
    args = parser.parse_args()
    compile_package()

    work = Path(tempfile.mkdtemp(prefix="newsletter-bench-"))
    folder = work / "paper"
    try:
        results = []
        for recipients in args.recipients:
            build_newsletter(folder, recipients, "http://127.0.0.1:9", args.workers)
            result = measure(work, folder, recipients, args.runs, args.floor_processes)
            results.append(result)
            report(result)
        if args.no_naive:
            return
        render = render_once(folder)
        emulator = Emulator(work / "emulator-stats.json", API_KEY, VALIDATE_EVERY)
        try:
            slow = naive(folder, emulator.url, args.naive_sample)
        finally:
            emulator.stop()
        for result in results:
            naive_s = slow["naive_per_recipient_ms"] / 1000 * result["recipients"]
            report({"recipients": result["recipients"], "naive_scaled_s": round(naive_s, 1), "speedup_vs_naive": round(naive_s / result["wall_s"], 1)})  # fmt: skip
        report({**render, **slow})
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
