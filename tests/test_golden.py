"""Golden-output tests of the built-in theme: the inlined HTML and the text part.

After an intended change to the theme or the renderer, regenerate and review:

    NEWSLETTER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import datetime as dt
import os

import pytest

from newsletter.app import App
from newsletter.config import load_config

from .conftest import FIXTURES

SITE = FIXTURES / "golden-site"
GOLDEN = FIXTURES.parent / "golden"
UPDATE = os.environ.get("NEWSLETTER_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def email():  # type: ignore[no-untyped-def]
    config = load_config(SITE / "config.toml", {})
    with App(config, clock=lambda: dt.datetime(2024, 6, 3, 12, tzinfo=dt.UTC)) as app:
        return app.build_issue(dt.date(2024, 6, 3)).email


@pytest.mark.parametrize(("name", "part"), [("email.html", "html"), ("email.txt", "text")])
def test_default_theme_matches_golden_output(email, name: str, part: str) -> None:  # type: ignore[no-untyped-def]
    actual = getattr(email, part)
    path = GOLDEN / name
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{name} differs from the golden file; see {__doc__}"


def test_golden_issue_has_the_stories_of_its_window_only(email) -> None:  # type: ignore[no-untyped-def]
    assert "Harbour bridge reopens" in email.html
    assert "A note on our new delivery time" in email.html
    assert "yesterday" not in email.html
    assert email.subject == "The Golden Gazette: Monday, 3 June 2024"
