"""The issue in three languages, drawn by a real Chromium at desktop and phone width, in
light and dark: the screenshots go to test-artifacts/ to be looked at, and what can be
measured is measured (nothing wider than the phone, Arabic set from the right, one font
for all of a Chinese headline)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page

from .conftest import Site
from .support.browser import ARTIFACTS
from .support.web import running_web
from .test_golden import SITES, built_email

SIZES = [("desktop", 800), ("phone", 375)]
SCHEMES = ["light", "dark"]


@pytest.fixture(scope="module")
def emails(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Each language's golden issue with a reader's values filled in."""
    from newsletter.tokens import Personaliser

    values = {"email": "reader@example.com", "unsubscribe_url": "https://example.com/u/x"}
    return {
        language: Personaliser(
            built_email(language, tmp_path_factory.mktemp(language) / "s.db").html
        ).fill(values)
        for language in SITES
    }


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    width, scheme = request.param
    page = browser.new_page(viewport={"width": width, "height": 900}, color_scheme=scheme)
    yield page
    page.close()


def shoot(page: Page, html: str, name: str) -> None:
    page.set_content(html)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("language", list(SITES))
@pytest.mark.parametrize(
    "page",
    [(w, s) for _, w in SIZES for s in SCHEMES],
    ids=[f"{n}-{s}" for n, _ in SIZES for s in SCHEMES],
    indirect=True,
)
def test_each_language_at_each_width_in_light_and_dark(
    page: Page, emails: dict[str, str], language: str
) -> None:
    width = page.viewport_size["width"] if page.viewport_size else 0
    scheme = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
    name = (
        f"email-{language}-{'phone' if width < 600 else 'desktop'}-{'dark' if scheme else 'light'}"
    )
    shoot(page, emails[language], name)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width  # no sideways scroll
    container = page.locator("table.container").bounding_box()
    assert container is not None
    for headline in page.locator("h2.headline").all():
        box = headline.bounding_box()
        assert box is not None and box["width"] > 0
        assert (
            container["x"] <= box["x"]
            and box["x"] + box["width"] <= container["x"] + container["width"]
        )
    links = page.locator("td.contents a").all()
    assert len(links) == 3
    first = links[0].bounding_box()
    assert first is not None
    # where a line starts: the left of the column, or its right in Arabic
    padding = 20 if width < 600 else 32
    if language == "ar":
        end = container["x"] + container["width"] - padding
        assert abs(first["x"] + first["width"] - end) <= 2, (first, container)
    else:
        assert abs(first["x"] - (container["x"] + padding)) <= 2, (first, container)
    if scheme:  # dark: the page is dark and the headlines light
        background = page.evaluate(
            "getComputedStyle(document.querySelector('table.container')).backgroundColor"
        )
        colour = page.evaluate("getComputedStyle(document.querySelector('h2.headline a')).color")
        assert background == "rgb(22, 27, 34)" and colour == "rgb(240, 243, 246)"


def platform_fonts(page: Page, selector: str) -> list[str]:
    """The fonts Chromium really drew a node's text with (not the stack it was asked for)."""
    session = page.context.new_cdp_session(page)
    session.send("DOM.enable")
    session.send("CSS.enable")
    root = session.send("DOM.getDocument")["root"]["nodeId"]
    node = session.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    fonts = session.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    return [f["familyName"] for f in fonts if f["glyphCount"]]


@pytest.mark.parametrize("page", [(800, "light")], indirect=True)
def test_a_chinese_headline_is_drawn_in_one_font_digits_and_all(
    page: Page, emails: dict[str, str]
) -> None:
    """With Georgia first, "3.64" came from a Latin serif and the rest from a CJK font."""
    page.set_content(emails["zh-CN"])
    headline = "#story-3 h2.headline a"
    assert "3.64" in page.locator(headline).inner_text()
    fonts = platform_fonts(page, headline)
    assert len(fonts) == 1 and "CJK" in fonts[0], fonts  # .ci/run installs Noto CJK


@pytest.mark.parametrize("language", ["zh-CN", "ar"])
@pytest.mark.parametrize(
    "page", [(375, "light"), (375, "dark")], indirect=True, ids=["light", "dark"]
)
def test_the_sign_up_and_unsubscribe_pages_at_phone_width(
    page: Page, site: Site, language: str
) -> None:
    with running_web(site, language) as web:
        dark = page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches")
        for name, url in [
            ("subscribe", f"{web.url}/subscribe"),
            ("unsubscribe", web.unsubscribe_url("reader@example.com")),
        ]:
            page.goto(url)
            ARTIFACTS.mkdir(exist_ok=True)
            shot = f"serve-{name}-{language}-phone-{'dark' if dark else 'light'}.png"
            page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
            assert page.evaluate("document.scrollingElement.scrollWidth") <= 375
            family = page.evaluate("getComputedStyle(document.body).fontFamily")
            assert ("Noto Sans Arabic" if language == "ar" else "PingFang SC") in family
            card = page.locator(".card").bounding_box()
            heading = page.locator("h1").bounding_box()
            assert card is not None and heading is not None
            if language == "ar":  # set from the right edge of the card
                assert abs(card["x"] + card["width"] - (heading["x"] + heading["width"])) <= 28
            else:
                assert abs(heading["x"] - card["x"]) <= 28
