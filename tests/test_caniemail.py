"""The default theme against caniemail's data (npm @jsx-email/doiuse-email, installed by
.ci/run into .ci/node): every feature it uses that Gmail, Outlook on Windows, Apple Mail
or Yahoo lacks must be one the theme has a fallback for, named here with its reason."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = Path(os.environ.get("NEWSLETTER_TEST_CANIEMAIL", REPO / ".ci" / "node" / "node_modules"))
CLIENTS = ["gmail.*", "outlook.windows", "apple-mail.*", "yahoo.*"]
SCRIPT = """
const { doIUseEmail } = require('@jsx-email/doiuse-email');
const html = require('fs').readFileSync(0, 'utf8');
console.log(JSON.stringify(doIUseEmail(html, { emailClients: JSON.parse(process.argv[1]) })));
"""
HEAD_STYLES = (
    "the <style> block is progressive: every rule the email needs is inlined by Premailer; "
    "the head adds phone sizes, dark mode and link resets where a client reads it"
)
# feature -> why the email still reads right where it is missing
FALLBACKS = {
    "ID selector": HEAD_STYLES,
    "Class selector": HEAD_STYLES,
    "Type selector": HEAD_STYLES,
    "Attribute selector": HEAD_STYLES,
    "Descendant combinator": HEAD_STYLES,
    "Adjacent sibling combinator": HEAD_STYLES,
    "@media": HEAD_STYLES,
    "<body> element": "the background colour is repeated on the wrapper table (bgcolor)",
    "display:none": "the preheader is also hidden by max-height 0, overflow, opacity 0, "
    "a 1px font and mso-hide",
    "overflow": "the same preheader: each client honours one of its hiding rules",
    "opacity": "the same preheader: each client honours one of its hiding rules",
    "border-radius": "square corners where it is missing: cosmetic",
    "outline": "an image reset: without it a client draws no outline anyway",
    "Local anchors": "'In this issue' still reads as the list of headlines where a client "
    "does not scroll to a story (Gmail and Yahoo on phones); the stories follow in that order",
}


def caniemail(html: str) -> list[tuple[str, str]]:
    """(feature, client) for each use the linter says the client lacks."""
    node = shutil.which("node")
    assert node, "install Node.js (.ci/run installs Debian's nodejs)"
    assert MODULES.is_dir(), "npm install --prefix .ci/node @jsx-email/doiuse-email (.ci/run does)"
    result = subprocess.run(
        [node, "-e", SCRIPT, json.dumps(CLIENTS)],
        input=html, capture_output=True, text=True, timeout=120,
        env={**os.environ, "NODE_PATH": str(MODULES)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    found = []
    for error in report.get("errors", []):
        match = re.match(r"`(.+?)` is not supported by `(.+?)`", error)
        assert match, error
        found.append((match.group(1), match.group(2)))
    return found


@pytest.mark.parametrize("language", ["en", "zh-CN", "ar"])
def test_every_feature_a_client_lacks_has_a_named_fallback(language: str) -> None:
    html = (REPO / "tests" / "golden" / language / "email.html").read_text(encoding="utf-8")
    lacking = caniemail(html)
    assert lacking  # the linter ran and read the email
    unexplained = sorted(
        {f"{feature} ({client})" for feature, client in lacking if feature not in FALLBACKS}
    )
    assert not unexplained, f"features without a fallback: {unexplained}"


def test_the_linter_would_name_a_feature_without_a_fallback() -> None:
    lacking = caniemail('<html><body><div style="position: fixed">x</div></body></html>')
    assert any(feature not in FALLBACKS for feature, _ in lacking), lacking
