"""The real `newsletter preview` server, loaded in a real headless Chromium."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from .conftest import Site
from .support.browser import ARTIFACTS

HEADLINES = ["Harbour bridge reopens", "Markets steady as rates hold", "A note on delivery"]


@pytest.fixture
def preview_url(site: Site) -> Iterator[str]:
    site.story(
        "bridge",
        title="Harbour bridge reopens",
        date="2024-03-05 06:00:00+00:00",
        url="https://example.com/b",
        body="The bridge opened at dawn.\n",
    )
    site.story(
        "markets",
        title="Markets steady as rates hold",
        date="2024-03-05 05:00:00+00:00",
        url="https://example.com/m",
        tags=["Business"],
    )
    site.story("delivery", title="A note on delivery", date="2024-03-05 04:00:00+00:00")
    process = subprocess.Popen(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "preview", "--date", "2024-03-05", "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    assert match, f"no URL in {line!r}; stderr: {process.stderr.read() if process.stderr else ''}"
    yield match.group(0)
    # SIGTERM, not SIGINT: a child of a shell's background job inherits SIGINT ignored
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stderr is not None and "stopped" in process.stderr.read()


def visible_width(page: Page) -> int:
    return page.evaluate("document.scrollingElement.scrollWidth")


def test_preview_in_chromium_at_desktop_and_phone_width(browser: Browser, preview_url: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    for name, width, height in [("desktop", 1024, 900), ("phone", 375, 812)]:
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(preview_url + "email.html")
        for headline in HEADLINES:
            expect(page.get_by_role("heading", name=headline)).to_be_visible()
        expect(page.get_by_role("link", name="Unsubscribe")).to_be_visible()
        assert visible_width(page) <= width, f"horizontal scrolling at {width}px"
        container = page.locator("table.container").bounding_box()
        assert container is not None
        assert container["width"] <= 600 if width > 620 else container["width"] == width
        page.screenshot(path=str(ARTIFACTS / f"preview-{name}.png"), full_page=True)
        page.close()


def test_preview_page_shows_text_part_and_reloads_on_edit(
    browser: Browser, preview_url: str, site: Site
) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(preview_url)
    expect(page.locator(".subject")).to_have_text("Harbour bridge reopens")
    desktop = page.frame_locator("iframe.desktop")
    expect(desktop.get_by_role("heading", name="Harbour bridge reopens")).to_be_visible()
    phone = page.frame_locator("iframe.phone")
    expect(phone.get_by_role("heading", name="Markets steady as rates hold")).to_be_visible()
    text = page.frame_locator("iframe.text")
    expect(text.locator("body")).to_contain_text("Continue reading: https://example.com/b")
    expect(text.locator("body")).to_contain_text(
        "Unsubscribe: https://example.com/unsubscribe?preview"
    )
    page.screenshot(path=str(ARTIFACTS / "preview-page.png"))

    time.sleep(0.05)  # a distinct mtime on coarse file systems
    site.story("bridge", title="Harbour bridge reopens early", date="2024-03-05 06:00:00+00:00")
    expect(desktop.get_by_role("heading", name="Harbour bridge reopens early")).to_be_visible(
        timeout=10_000
    )

    site.template("partials/story.html", "<tr><td>{{ story.title }</td></tr>\n")
    expect(page.locator("pre.error")).to_contain_text("partials/story.html: line 1", timeout=10_000)
    (site.root / "templates" / "partials" / "story.html").unlink()
    expect(desktop.get_by_role("heading", name="Harbour bridge reopens early")).to_be_visible(
        timeout=10_000
    )
    page.close()


def test_dark_mode_recolours_the_email(browser: Browser, preview_url: str) -> None:
    page = browser.new_page(viewport={"width": 800, "height": 900}, color_scheme="dark")
    page.goto(preview_url + "email.html")
    background = page.evaluate(
        "getComputedStyle(document.querySelector('table.container')).backgroundColor"
    )
    headline = page.evaluate("getComputedStyle(document.querySelector('.headline')).color")
    assert background == "rgb(22, 27, 34)"
    assert headline == "rgb(240, 243, 246)"
    expect(page.get_by_role("heading", name="Harbour bridge reopens")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "preview-dark.png"), full_page=True)
    page.close()
