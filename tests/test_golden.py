"""Golden-output tests of the built-in theme: the inlined HTML and the text part.

After an intended change to the theme or the renderer, regenerate and review:

    NEWSLETTER_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import lxml.html
import pytest

from newsletter.app import App
from newsletter.config import StateSettings, load_config
from newsletter.models import RenderedEmail

from .conftest import FIXTURES, REPO

GOLDEN = FIXTURES.parent / "golden"
UPDATE = os.environ.get("NEWSLETTER_UPDATE_GOLDEN") == "1"
# one newsletter per language: English, Simplified Chinese (the README's second example)
# and Arabic, written right to left
SITES = {
    "en": (FIXTURES / "golden-site", dt.date(2024, 6, 3)),
    "zh-CN": (REPO / "examples" / "zh", dt.date(2023, 11, 10)),
    "ar": (FIXTURES / "golden-site-ar", dt.date(2023, 11, 10)),
}


def built_email(language: str, state: Path) -> RenderedEmail:
    folder, day = SITES[language]
    config = load_config(folder / "config.toml", {})
    # the state database in a scratch folder: the example's own folder stays clean
    config = config.model_copy(update={"state": StateSettings(database_url=f"sqlite:///{state}")})
    clock = dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC)
    with App(config, clock=lambda: clock) as app:
        return app.build_issue(day).email


@pytest.fixture(scope="module", params=list(SITES))
def language(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def email(language: str, tmp_path_factory: pytest.TempPathFactory) -> RenderedEmail:
    return built_email(language, tmp_path_factory.mktemp(language) / "state.db")


@pytest.mark.parametrize(("name", "part"), [("email.html", "html"), ("email.txt", "text")])
def test_default_theme_matches_golden_output(
    email: RenderedEmail, language: str, name: str, part: str
) -> None:
    actual = getattr(email, part)
    path = GOLDEN / language / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{language}/{name} differs from the golden file; see {__doc__}"
    assert len(actual.encode()) < 100 * 1024  # under Gmail's clipping, in every language


def test_golden_issue_has_the_stories_of_its_window_only(tmp_path: Path) -> None:
    email = built_email("en", tmp_path / "state.db")
    assert "Harbour bridge reopens" in email.html
    assert "A note on our new delivery time" in email.html
    assert "yesterday" not in email.html
    assert email.subject == "Harbour bridge reopens after two years of repairs"  # the lead story


def test_each_language_has_its_own_dates_direction_and_type(tmp_path: Path) -> None:
    chinese = built_email("zh-CN", tmp_path / "zh.db")
    assert "2023年11月10日星期五" in chinese.html and "2023年11月10日星期五" in chinese.text
    assert chinese.subject == "普京会见中国军方高层，中俄建设性关系进一步加强"  # `lead: true`
    headline = lxml.html.fromstring(chinese.html).xpath("//h2[contains(@class,'headline')]")[0]
    assert headline.get("style").count("PingFang SC") == 1 and "Georgia" not in chinese.html
    arabic = built_email("ar", tmp_path / "ar.db")
    doc = lxml.html.fromstring(arabic.html)
    assert doc.get("dir") == "rtl" and doc.xpath("//body")[0].get("dir") == "rtl"
    assert {t.get("dir") for t in doc.xpath("//table[contains(@class,'container')]")} == {"rtl"}
    story = doc.xpath("//td[contains(@class,'story')]")[0]
    assert "text-align: right" in story.get("style").replace(":right", ": right")
    assert "الجمعة، 10 نوفمبر 2023" in arabic.text
    # the story marked `lead: true` opens the issue though it is not the newest
    assert arabic.subject.startswith("انطلاق جولة جديدة")
    assert doc.xpath("//td[@id='story-1']//h2")[0].text_content().startswith("انطلاق")
