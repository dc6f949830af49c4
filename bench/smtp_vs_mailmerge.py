"""Benchmark: `newsletter send` over SMTP against `mailmerge`, same issue, same sink.

The project's target: the SMTP transport sends one issue to 10,000 recipients
through a local aiosmtpd server at least 10 times faster than `mailmerge` (the
PyPI command-line mail merge tool, which opens one SMTP connection per
message). Both contenders run as separate processes, send the same rendered
issue personalised per recipient (address, name, signed unsubscribe link) to
the same counting sink, and are timed in the same run, alternating their order
each round. One JSON line with the figures goes to stdout; progress to stderr.

    /work/venv/bin/python bench/smtp_vs_mailmerge.py [--recipients 10000] [--runs 3]

`--mailmerge-recipients M` sends mailmerge's runs to the first M recipients only
and scales its times by N/M (mailmerge is slow: see the report's `scaled` flag).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import email
import email.policy
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jinja2

import newsletter
from newsletter.app import SAMPLE_SUBSCRIBER, App, preview_page
from newsletter.config import load_config
from newsletter.delivery import UnsubscribeLinks
from newsletter.signing import Signer
from newsletter.tokens import TOKEN_RE

HERE = Path(__file__).resolve().parent
ISSUE_DATE = dt.date(2024, 6, 3)
LIST_NAME = "main"
# Deterministic, so reruns sign the same links; long enough for `newsletter send`.
SECRET = "bench-secret-not-for-production-0123456789"
BASE_URL = "https://news.example.com/n"
FROM_EMAIL = "brief@example.com"
FROM_NAME = "The Morning Brief"
TARGET_RATIO = 10.0
PROGRESS_EVERY = 15.0  # seconds between progress lines during a long run

# Story bodies from the repository's example newsletter (stories/ and the
# 2023-11-09 digest fixture), copied so the benchmark depends on neither.
BODIES = (
    """On November 8, Russian President Vladimir Putin hosted Zhang Youxia, the Vice Chairman of the Central Military Commission of China in Moscow. Zhang Youxia conveyed President Xi Jinping’s warm greetings and best wishes to President Putin.

Zhang Youxia stated that the China-Russia friendship continues to grow and strengthen over time. In this year, China and Russia have achieved several successful meetings and a series of important consensus. China is willing to work with Russia to jointly safeguard the interests of both countries as well as world and regional prosperity and stability.

During the meeting, Putin emphasized, “Russia and China are not seeking to create any military alliances using Cold War-era templates.” Points out that although military cooperation is becoming increasingly important, China and Russia are currently paying more attention to the economic front and have been quite effective in these efforts, which is a positive momentum in bilateral trade and economic ties.""",
    """At the invitation of US Treasury Secretary Janet Yellen, He Lifeng, member of the Political Bureau of the CPC Central Committee, Vice Premier of the State Council, and the Chinese lead for Sino-US economic and trade, departed for San Francisco on November 8 to visit the United States.

This trip is to implement the consensus reached at the meeting between the heads of the two countries in Bali – during the Bali meeting, the two heads of state agreed that the financial teams of the two countries would conduct dialogue and coordination on macroeconomic policies and economic and trade issues.

In September of this year, to implement the important consensus of the meeting in Bali, China and the US agreed to establish working groups in the economic field, including the “Economic Working Group” and the “Financial Working Group”. Half a month ago, the Sino-US Economic Working Group and the Sino-US Financial Working Group held their first meetings respectively. This visit to the US will contribute to strengthening cooperation between China and the US in the economic field.

Sino-US relations are a hot topic on the Chinese internet. The general consensus among Chinese netizens is that a possible win-win of Sino-US relations is beneficial for economic development for both countries.""",
    """On November 8, the China Internet Development Report 2023 and the World Internet Development Report 2023 were unveiled during the prestigious 2023 World Internet Conference Wuzhen Summit.

According to the report, as of June, an impressive **364 million** individuals in China were utilizing Internet healthcare services, showcasing the profound integration of digital technology into people’s daily lives. Furthermore, an average of 68,000 disabled individuals annually found employment opportunities through the Internet in China, underscoring the transformative power of digital platforms.

In addition to its domestic advancements, China has demonstrated its commitment to global digital public services enhancement. The country has actively engaged in international collaboration, particularly in the realm of internet-based poverty alleviation.

The release of these reports signifies China’s dedication to fostering digital innovation, expanding internet access, and utilizing technology for the betterment of society at large.""",
    """Every story in this newsletter is a Markdown file in the `stories/` folder. The lines between the two `---` markers at the top are its *front matter*:

- `title` and `date` are required; a date without a time zone is read in the newsletter's own.
- `url`, `summary`, `author`, `tags`, `image` and `image_alt` are optional.
- `draft: true` keeps a story out of every issue until you remove it.

> Write the way you would talk to one reader over breakfast.

Run `newsletter preview` while you write: the browser reloads each time you save.""",
)
# (title, tag, summary); bodies are reused in turn, so ten stories come out realistic in size.
HEADLINES = (
    ("Putin Meets Top Chinese General", "World", "Putin hosted Zhang Youxia in Moscow."),
    ("New Round of Sino-US Economic Dialogue", "Economy", "He Lifeng travels to San Francisco."),
    ("Online Medical Service Users Reach 364 Million", "Technology", "Reports from Wuzhen."),
    ("How to Add a Story to This Newsletter", "Housekeeping", "One Markdown file per story."),
    ("Defence Ties Discussed in Moscow", "World", "Military cooperation, economic focus."),
    ("Working Groups Meet Ahead of the Visit", "Economy", "Economic and financial groups met."),
    ("Digital Platforms Bring Jobs to Thousands", "Technology", "68,000 found work online."),
    ("Writing for the Morning Brief", "Housekeeping", "Front matter, drafts and previews."),
    ("Leaders Reaffirm Constructive Ties", "World", "No Cold War-era alliances, says Putin."),
    ("Bali Consensus Put Into Practice", "Economy", "Macroeconomic coordination continues."),
)


def log(message: str) -> None:
    """Progress for humans on stderr; stdout carries only the final JSON line."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the throwaway newsletter ---------------------------------------------------------------


def config_toml(port: int, workers: int = 1) -> str:
    """A minimal newsletter config: SMTP on the sink, hosted unsubscribe links.

    One worker (one SMTP connection) by default: the issue's target is about the
    transport, not about parallelism a 2-core machine cannot give.
    """
    return f"""\
[newsletter]
name = "{FROM_NAME}"
timezone = "Europe/London"
postal_address = \"\"\"The Morning Brief
1 Example Street
London EC1A 1AA, United Kingdom\"\"\"

[sender]
from_email = "{FROM_EMAIL}"
from_name = "{FROM_NAME}"

[issue]
window = "24h"
max_stories = 10

[[sources]]
kind = "markdown"
name = "newsroom"
path = "stories"

[delivery]
transport = "smtp"
workers = {workers}

[smtp]
host = "127.0.0.1"
port = {port}
security = "none"

[unsubscribe]
mode = "hosted"
base_url = "{BASE_URL}"
"""


def write_stories(folder: Path, date: dt.date) -> None:
    """Ten stories published in the early hours of the issue date (inside its window)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (title, tag, summary) in enumerate(HEADLINES):
        published = dt.datetime.combine(date, dt.time(0, 30)) + dt.timedelta(minutes=30 * index)
        slug = f"story-{index + 1:02d}"
        (folder / f"{date.isoformat()}-{slug}.md").write_text(
            f"""---
title: {title}
date: {published.isoformat()}+01:00
url: https://example.com/{date:%Y/%m/%d}/{slug}
author: Newsroom
tags: [{tag}]
summary: {summary}
---
{BODIES[index % len(BODIES)]}
""",
            encoding="utf-8",
        )


def subscriber(index: int) -> tuple[str, str]:
    """The index-th deterministic subscriber (1-based): reader0000001@example.com, Reader 1."""
    return f"reader{index:07d}@example.com", f"Reader {index}"


def write_subscribers(path: Path, count: int) -> None:
    """The list the newsletter sends to (`email,name`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["email", "name"])
        writer.writerows(subscriber(i) for i in range(1, count + 1))


def build_newsletter(
    root: Path, port: int, recipients: int, date: dt.date, workers: int = 1
) -> Path:
    """The throwaway newsletter folder; returns its config path."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(config_toml(port, workers), encoding="utf-8")
    write_stories(root / "stories", date)
    write_subscribers(root / "subscribers" / f"{LIST_NAME}.csv", recipients)
    return config


def child_env(code: Path | None = None) -> dict[str, str]:
    """The signing secret, no stray NEWSLETTER_CONFIG or NEWSLETTER_DATABASE_URL, and
    the snapshot of the package first on the path (it wins over the editable install)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_SECRET"] = SECRET
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code), env.get("PYTHONPATH")]))
    return env


def reset_state(root: Path) -> None:
    """A fresh ledger for each run: otherwise the second send says "already sent"."""
    for path in root.glob("newsletter.db*"):
        path.unlink()


# -- mailmerge's inputs ---------------------------------------------------------------------


def to_jinja(document: str, *, html: bool) -> str:
    """Our once-rendered part with its %%tokens%% turned into mailmerge's Jinja fields.

    The static text is wrapped in {% raw %} so braces in the issue (CSS, story text)
    can never be read as Jinja. mailmerge's Jinja does not autoescape, so the HTML part
    escapes explicitly, as our Personaliser does.
    """
    pieces = TOKEN_RE.split(document)
    out: list[str] = []
    for i in range(0, len(pieces), 3):
        static = pieces[i]
        if "{% endraw %}" in static:
            raise SystemExit("the rendered issue contains '{% endraw %}': cannot template it")
        if static:
            out.append("{% raw %}" + static + "{% endraw %}")
        if i + 1 < len(pieces):
            name = pieces[i + 1]
            out.append(f"{{{{ {name}|e }}}}" if html else f"{{{{ {name} }}}}")
    return "".join(out)


def mailmerge_template(subject: str, html: str, text: str, multipart: bool) -> str:
    """A mailmerge template sending what our SMTP transport sends.

    Same headers (To with the name, From, Subject, List-Unsubscribe and its
    one-click POST) and the same multipart/alternative text + HTML body. No
    Content-Transfer-Encoding is declared: mailmerge picks one itself (base64
    for UTF-8 text) and would otherwise send the raw text under a wrong label.
    `multipart=False` sends only the HTML part (less work for mailmerge).
    """
    headers = "\n".join(
        [
            'TO: "{{ name }}" <{{ email }}>',
            f"FROM: {FROM_NAME} <{FROM_EMAIL}>",
            f"SUBJECT: {subject}",
            "List-Unsubscribe: <{{ unsubscribe_url }}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
        ]
    )
    html_jinja = to_jinja(html, html=True)
    if not multipart:
        return f'{headers}\nContent-Type: text/html; charset="utf-8"\n\n{html_jinja}\n'
    boundary = "==bench-boundary-7f3a1c=="
    assert boundary not in html and boundary not in text
    return (
        f'{headers}\nContent-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f'--{boundary}\nContent-Type: text/plain; charset="utf-8"\n\n'
        f"{to_jinja(text, html=False)}\n"
        f'--{boundary}\nContent-Type: text/html; charset="utf-8"\n\n'
        f"{html_jinja}\n"
        f"--{boundary}--\n"
    )


def signed_unsubscribe_url(address: str) -> str:
    """The link our send puts in this recipient's message (signed with the project's code)."""
    return UnsubscribeLinks(Signer(SECRET), BASE_URL, LIST_NAME, None).for_address(address)[0]


def write_mailmerge_database(path: Path, count: int) -> None:
    """mailmerge's CSV: our columns plus the values our send computes per recipient.

    first_name and the signed unsubscribe URL are computed here, outside the timed
    run (mailmerge cannot sign links), with the project's own code, so the links are
    the ones our send puts in the same recipient's message.
    """
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["email", "name", "first_name", "unsubscribe_url"])
        for i in range(1, count + 1):
            address, name = subscriber(i)
            writer.writerow([address, name, name.split()[0], signed_unsubscribe_url(address)])


def mailmerge_server_conf(port: int) -> str:
    """Plain SMTP on the sink, no login, and no rate limit (0): the tools race, not a sleep."""
    return f"""\
[smtp_server]
host = 127.0.0.1
port = {port}
security = Never
ratelimit = 0
"""


@dataclass(frozen=True)
class MailmergeInputs:
    template: Path
    database: Path
    config: Path
    subject: str
    tokens: list[str]


def build_mailmerge_inputs(
    folder: Path,
    newsletter_config: Path,
    port: int,
    recipients: int,
    date: dt.date,
    *,
    multipart: bool,
) -> MailmergeInputs:
    """Render the issue once with our code and turn it into mailmerge's three files.

    The issue is built as `newsletter send` builds it (tokens left in), rather than
    from `preview --output`, whose sample values would have to be guessed back out of
    the HTML and which has no text part. As a check, the template filled with the
    preview's sample subscriber must reproduce the preview's HTML byte for byte.
    """
    folder.mkdir(parents=True, exist_ok=True)
    environ = child_env()
    with App(load_config(newsletter_config, environ)) as app:
        built = app.build_issue(date, LIST_NAME)
    reset_state(newsletter_config.parent)
    if built.issue.is_empty or len(built.issue.stories) != len(HEADLINES):
        raise SystemExit(f"expected {len(HEADLINES)} stories, got {len(built.issue.stories)}")
    rendered = built.email

    page = preview_page(newsletter_config, environ, date)
    reset_state(newsletter_config.parent)
    sample = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        to_jinja(rendered.html, html=True)
    )
    if sample.render(SAMPLE_SUBSCRIBER) != page.html:
        raise SystemExit("the mailmerge template does not reproduce the preview's HTML")

    inputs = MailmergeInputs(
        template=folder / "mailmerge_template.txt",
        database=folder / "mailmerge_database.csv",
        config=folder / "mailmerge_server.conf",
        subject=rendered.subject,
        tokens=sorted(rendered.tokens),
    )
    inputs.template.write_text(
        mailmerge_template(rendered.subject, rendered.html, rendered.text, multipart),
        encoding="utf-8",
    )
    write_mailmerge_database(inputs.database, recipients)
    inputs.config.write_text(mailmerge_server_conf(port), encoding="utf-8")
    return inputs


# -- the sink -------------------------------------------------------------------------------


class Sink:
    """The counting aiosmtpd server, in its own process (see smtp_sink.py)."""

    def __init__(self, sample_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "smtp_sink.py"), str(sample_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lock = threading.Lock()
        ready = self._readline()
        if not ready.startswith("READY "):
            raise SystemExit(f"the SMTP sink did not start: {ready!r}")
        self.port = int(ready.split()[1])

    def _readline(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the SMTP sink exited (code {self.process.poll()})")
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

    def stats(self) -> dict[str, Any]:
        """Counts since the previous call; the next run starts from zero."""
        return self._ask("STATS")

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("QUIT\n")
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- running and measuring ------------------------------------------------------------------


@dataclass
class Run:
    """One contender's run: the child's wall and CPU time, and what the sink got."""

    contender: str
    round: int
    recipients: int
    wall_seconds: float
    cpu_seconds: float
    sink: dict[str, Any] = field(default_factory=dict)


def run_child(
    command: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    stdout: IO[bytes] | int,
    stderr: IO[bytes],
    progress: Callable[[], str],
) -> tuple[float, float, int]:
    """Run a child; (wall seconds, its own user+system CPU seconds, exit code).

    os.wait4 gives the rusage of exactly this child, so the CPU of the harness, the
    sink and anything else on the machine is not counted. A thread prints progress
    while the main thread blocks in wait4, so polling does not blur the wall time.
    """
    done = threading.Event()

    def report() -> None:
        while not done.wait(PROGRESS_EVERY):
            log(f"  ... {progress()}")

    reporter = threading.Thread(target=report, daemon=True)
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
    return wall, usage.ru_utime + usage.ru_stime, process.returncode


def verify(run: Run, expected_html: str | None) -> str:
    """Fail loudly unless the sink got exactly one personalised message per recipient.

    Returns the first message's decoded HTML, so the two contenders' messages to the
    same recipient can be compared.
    """
    sink = run.sink
    problems = [
        f"{key} = {sink[key]}, expected {run.recipients}"
        for key in ("messages", "recipients", "unique_recipients")
        if sink[key] != run.recipients
    ]
    if problems:
        raise SystemExit(f"{run.contender} round {run.round}: " + "; ".join(problems))
    if not sink["sample"]:
        raise SystemExit(f"{run.contender} round {run.round}: no sample message")
    message = email.message_from_bytes(
        Path(sink["sample"]).read_bytes(), policy=email.policy.default
    )
    # with several connections the first message to arrive may be anyone's: check it
    # against the subscriber it is addressed to
    address = message["To"].addresses[0].addr_spec
    index = int(address.removeprefix("reader").split("@")[0])
    name = subscriber(index)[1]
    html_part = message.get_body(preferencelist=("html",))
    if html_part is None:
        raise SystemExit(f"{run.contender}: the first message has no HTML part")
    html = html_part.get_content().replace("\r\n", "\n").rstrip("\n")
    expected_url = signed_unsubscribe_url(address)
    checks = {
        "To has the address": address in str(message["To"]),
        "To has the name": name in str(message["To"]),
        "List-Unsubscribe is the recipient's": expected_url in str(message["List-Unsubscribe"]),
        "the HTML has the unsubscribe link": expected_url in html,
        "no token left": "%%" not in html,
    }
    failed = [what for what, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"{run.contender}: the first message fails: {', '.join(failed)}")
    # the same document for the same reader; line breaks may differ (a local transport
    # joins lines where a newline and a space mean the same)
    html = " ".join(
        html.replace(address, "<reader>").replace(expected_url, "<unsubscribe>").split()
    )
    if expected_html is not None and html != expected_html:
        raise SystemExit(f"{run.contender}: its HTML differs from the other contender's")
    return html


@dataclass
class Bench:
    """Everything a round needs: the newsletter, mailmerge's files, the sink, the logs."""

    root: Path
    newsletter_config: Path
    mailmerge: MailmergeInputs
    sink: Sink
    recipients: int
    mailmerge_recipients: int
    date: dt.date
    logs: Path
    code: Path
    runs: list[Run] = field(default_factory=list)
    html: str | None = None

    def progress(self, expected: int) -> Callable[[], str]:
        def line() -> str:
            done = self.sink.peek()["messages"]
            return f"{done}/{expected} messages"

        return line

    def run_newsletter(self, round_: int) -> Run:
        """Contender A: the real CLI, `newsletter send --yes`, with a fresh ledger."""
        reset_state(self.root)
        command = [
            sys.executable,
            "-m",
            "newsletter",
            "--config",
            str(self.newsletter_config),
            "send",
            "--yes",
            "--date",
            self.date.isoformat(),
        ]
        with (
            (self.logs / f"newsletter-{round_}.out").open("wb") as out,
            (self.logs / f"newsletter-{round_}.err").open("wb") as err,
        ):
            wall, cpu, code = run_child(
                command,
                env=child_env(self.code),
                cwd=self.root,
                stdout=out,
                stderr=err,
                progress=self.progress(self.recipients),
            )
        if code != 0:
            raise SystemExit(f"newsletter send exited {code}; see {self.logs}")
        return Run("newsletter", round_, self.recipients, wall, cpu)

    def run_mailmerge(self, round_: int) -> Run:
        """Contender B: mailmerge, printing each message to /dev/null (it has no quiet mode)."""
        m = self.mailmerge
        command = [
            str(Path(sys.executable).parent / "mailmerge"),
            "--no-dry-run",
            "--no-limit",
            "--output-format",
            "text",
            "--template",
            str(m.template),
            "--database",
            str(m.database),
            "--config",
            str(m.config),
        ]
        with (self.logs / f"mailmerge-{round_}.err").open("wb") as err:
            wall, cpu, code = run_child(
                command,
                env=child_env(self.code),
                cwd=m.template.parent,
                stdout=subprocess.DEVNULL,
                stderr=err,
                progress=self.progress(self.mailmerge_recipients),
            )
        if code != 0:
            raise SystemExit(f"mailmerge exited {code}; see {self.logs}")
        return Run("mailmerge", round_, self.mailmerge_recipients, wall, cpu)

    def measure(self, contender: str, round_: int) -> Run:
        """One run, checked against the sink's counts."""
        self.sink.stats()  # start a fresh epoch: nothing from before counts
        log(f"round {round_ + 1}: {contender} starts")
        run = (
            self.run_newsletter(round_) if contender == "newsletter" else self.run_mailmerge(round_)
        )
        run.sink = self.sink.stats()
        self.html = verify(run, self.html)
        log(
            f"round {round_ + 1}: {contender} sent {run.recipients} in {run.wall_seconds:.2f} s "
            f"wall, {run.cpu_seconds:.2f} s CPU ({run.recipients / run.wall_seconds:.0f} msg/s; "
            f"sink CPU {run.sink['sink_cpu_seconds']:.2f} s, "
            f"{run.sink['connections']} connections)"
        )
        self.runs.append(run)
        return run


def summarise(bench: Bench, contender: str) -> dict[str, Any]:
    """Medians and per-run figures of one contender, scaled to the full list if needed."""
    runs = [r for r in bench.runs if r.contender == contender]
    walls = [round(r.wall_seconds, 3) for r in runs]
    cpus = [round(r.cpu_seconds, 3) for r in runs]
    sent = runs[0].recipients
    scale = bench.recipients / sent
    median_wall = statistics.median(walls)
    median_cpu = statistics.median(cpus)
    return {
        "recipients_sent": sent,
        "scaled": scale != 1,
        "wall_seconds": walls,
        "cpu_seconds": cpus,
        "median_wall_seconds": round(median_wall, 3),
        "median_cpu_seconds": round(median_cpu, 3),
        "median_wall_seconds_for_full_list": round(median_wall * scale, 3),
        "median_cpu_seconds_for_full_list": round(median_cpu * scale, 3),
        "messages_per_second": round(sent / median_wall, 1),
        "sink_cpu_seconds": [r.sink["sink_cpu_seconds"] for r in runs],
        "smtp_connections": runs[0].sink["connections"],
        "average_message_bytes": round(runs[0].sink["bytes"] / sent),
        "rounds": [r.round + 1 for r in runs],
    }


LIVE_PACKAGE = Path(newsletter.__file__).resolve().parent


def snapshot_package(dest: Path) -> Path:
    """Copy the newsletter package for the runs: it is installed editable and other people
    edit and commit it meanwhile, so without a copy one run could measure other code."""
    shutil.copytree(LIVE_PACKAGE, dest / "newsletter", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def source_fingerprint(package: Path) -> str:
    """A hash of the package's files (templates included): names the code measured."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit() -> str:
    """The repository's commit, for the record (uncommitted edits: see the hash)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=LIVE_PACKAGE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    """What the figures depend on: versions, cores, load."""
    return {
        "python": platform.python_version(),
        "newsletter": importlib.metadata.version("newsletter"),
        "mailmerge": importlib.metadata.version("mailmerge"),
        "aiosmtpd": importlib.metadata.version("aiosmtpd"),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000, help="list size (10000)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of both contenders (3)")
    parser.add_argument(
        "--mailmerge-recipients",
        type=int,
        default=None,
        help="send mailmerge's runs to only this many and scale linearly (default: all)",
    )
    parser.add_argument(
        "--mailmerge-format",
        choices=["multipart", "html"],
        default="multipart",
        help="multipart: text + HTML, like ours (default); html: the HTML part only",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="newsletter's delivery.workers (1: one connection)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.mailmerge_recipients is None:
        args.mailmerge_recipients = args.recipients
    if not 1 <= args.mailmerge_recipients <= args.recipients or args.runs < 1 or args.workers < 1:
        parser.error(
            "need 1 <= --mailmerge-recipients <= --recipients, --runs >= 1, --workers >= 1"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("mailmerge", path=str(Path(sys.executable).parent)) is None:
        raise SystemExit(f"mailmerge is not installed next to {sys.executable}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    log(f"working in {workdir}")
    commit = git_commit()
    code = snapshot_package(workdir / "code")
    measured = source_fingerprint(code / "newsletter")
    imported = subprocess.run(
        [sys.executable, "-c", "import newsletter; print(newsletter.__file__)"],
        env=child_env(code),
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(imported).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"the runs would import {imported}, not the copy in {code}")
    if source_fingerprint(LIVE_PACKAGE) != measured:
        raise SystemExit("the newsletter package changed while it was being copied: run again")
    sink = Sink(workdir / "samples")
    try:
        root = workdir / "paper"
        config = build_newsletter(root, sink.port, args.recipients, ISSUE_DATE, args.workers)
        inputs = build_mailmerge_inputs(
            workdir / "mailmerge",
            config,
            sink.port,
            args.mailmerge_recipients,
            ISSUE_DATE,
            multipart=args.mailmerge_format == "multipart",
        )
        logs = workdir / "logs"
        logs.mkdir()
        bench = Bench(
            root,
            config,
            inputs,
            sink,
            args.recipients,
            args.mailmerge_recipients,
            ISSUE_DATE,
            logs,
            code,
        )
        log(
            f"sink on 127.0.0.1:{sink.port}; {args.recipients} recipients "
            f"(mailmerge: {args.mailmerge_recipients}), {args.runs} rounds"
        )
        for round_ in range(args.runs):
            order = ("newsletter", "mailmerge") if round_ % 2 == 0 else ("mailmerge", "newsletter")
            for contender in order:
                bench.measure(contender, round_)
        ours = summarise(bench, "newsletter")
        theirs = summarise(bench, "mailmerge")
        wall_ratio = theirs["median_wall_seconds_for_full_list"] / ours["median_wall_seconds"]
        cpu_ratio = theirs["median_cpu_seconds_for_full_list"] / ours["median_cpu_seconds"]
        live_changed = source_fingerprint(LIVE_PACKAGE) != measured
        if live_changed:
            log("note: the live newsletter package changed meanwhile; the runs used the copy")
        result = {
            "benchmark": "smtp_vs_mailmerge",
            "recipients": args.recipients,
            "mailmerge_recipients": args.mailmerge_recipients,
            "mailmerge_format": args.mailmerge_format,
            "newsletter_workers": args.workers,
            "runs": args.runs,
            "issue_date": ISSUE_DATE.isoformat(),
            "subject": inputs.subject,
            "tokens": inputs.tokens,
            "newsletter": ours,
            "mailmerge": theirs,
            "ratio_wall": round(wall_ratio, 2),
            "ratio_cpu": round(cpu_ratio, 2),
            "target_ratio": TARGET_RATIO,
            "target_met": wall_ratio >= TARGET_RATIO,
            "same_html_for_first_recipient": True,  # verify() fails otherwise
            "code": {"git_commit": commit, "package_sha256": measured},
            "live_package_changed_during_run": live_changed,
            "environment": environment(),
        }
        log(
            f"median wall: newsletter {ours['median_wall_seconds']:.2f} s, mailmerge "
            f"{theirs['median_wall_seconds_for_full_list']:.2f} s"
            f"{' (scaled)' if theirs['scaled'] else ''}; ratio {wall_ratio:.1f}x "
            f"(CPU {cpu_ratio:.1f}x)"
        )
        print(json.dumps(result), flush=True)
    finally:
        sink.close()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
