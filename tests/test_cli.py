"""The `newsletter` command run as a user runs it: a separate process, real files."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from .conftest import Site, example_copy


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "newsletter", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_lists_every_problem_and_builds_from_the_rest(site: Site) -> None:
    site.story("good", title="The good story", date="2024-03-05 06:00:00+00:00")
    (site.root / "stories" / "broken.md").write_text("---\ntitle: x\ndate: [oops\n---\n")
    site.write_config(
        extra=f"""
        [[sources]]
        kind = "feed"
        name = "dead feed"
        url = "http://127.0.0.1:{closed_port()}/feed.xml"
        timeout = 2
        """
    )
    result = run("--config", str(site.config_path), "check", "--date", "2024-03-05")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "1 story:" in result.stdout and "The good story" in result.stdout
    assert (
        f"problem: desk: {site.root / 'stories' / 'broken.md'}: line 3: invalid front matter"
        in result.stderr
    )
    assert "problem: dead feed: cannot fetch http://127.0.0.1:" in result.stderr


def test_check_on_an_empty_day_says_so_and_succeeds(site: Site) -> None:
    site.story("old", date="2020-01-01 06:00:00+00:00")
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text("email,name\n", encoding="utf-8")
    result = run("--config", str(site.config_path), "check", "--date", "2024-03-05")
    assert result.returncode == 0, result.stderr
    assert (
        "No stories for 2024-03-05: nothing was published since 2024-03-04 07:00 GMT"
        in result.stdout
    )


def test_template_error_is_one_clear_line(site: Site, tmp_path: Path) -> None:
    site.story("good")
    site.template("partials/header.html", "<tr><td>{% if %}</td></tr>\n")
    result = run("--config", str(site.config_path), "preview", "--output", str(tmp_path / "x.html"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"error: {site.root / 'templates' / 'partials' / 'header.html'}: line 1: "
    )
    assert not (tmp_path / "x.html").exists()


def test_the_example_newsletter_gives_a_full_issue_on_any_day(tmp_path: Path) -> None:
    # a copy: the README's main job leaves a state database (stories already sent) and an outbox
    config = example_copy(tmp_path / "example")
    output = tmp_path / "issue.html"
    result = run("--config", str(config), "preview", "--output", str(output))
    assert result.returncode == 0, result.stderr
    html = output.read_text(encoding="utf-8")
    assert "The Morning Brief" in html
    assert "Putin Meets Top Chinese General" in html
    assert "Good morning. Here is what happened" in html  # the example's own intro partial
    assert "4 stories" in result.stderr
    assert not (config.parent / "outbox").exists()  # a preview sends nothing


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("newsletter, version ")
    help_text = run("--help").stdout
    for command in ("check", "preview"):
        assert command in help_text
