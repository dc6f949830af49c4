"""The report in a real headless Chromium, at desktop and phone width, opened from disk:
a month of issues whose counts were added the way the webhook adds them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from newsletter.report import ReportQuery, build_report, render_html
from newsletter.state import Ledger

from .support.browser import ARTIFACTS
from .support.report_data import fill

SIZES = {"desktop": {"width": 1280, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="module")
def report_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    with Ledger(f"sqlite:///{folder / 'state.db'}") as ledger:
        fill(ledger, days=30, readers=400)
        report = build_report(ledger, ReportQuery(today=dt.date(2024, 3, 5)))
    path = folder / "report.html"
    path.write_text(render_html(report, title="The Test Times: report"), encoding="utf-8")
    return path


@pytest.mark.parametrize("size", SIZES)
def test_the_report_reads_on_a_desktop_and_a_phone(
    browser: Browser, report_file: Path, size: str
) -> None:
    context = browser.new_context(viewport=SIZES[size], offline=True)  # nothing to fetch
    page = context.new_page()
    page.goto(report_file.as_uri())
    width = SIZES[size]["width"]
    # only the wide tables scroll, inside their own box; the page never does
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page scrolls sideways at {size} width: {scroll}px"
    wider = page.evaluate(
        """(width) => [...document.querySelectorAll('body *')]
             .filter(el => !el.closest('.table'))
             .filter(el => el.getBoundingClientRect().right > width + 0.5)
             .map(el => el.tagName + '.' + el.className)""",
        width,
    )
    assert wider == [], wider
    # the numbers a reader needs first are the biggest text on the page
    sizes = page.evaluate(
        """() => [...document.querySelectorAll('main *')]
             .filter(el => el.childElementCount === 0 && el.textContent.trim())
             .filter(el => !el.closest('svg'))
             .map(el => [el.className, parseFloat(getComputedStyle(el).fontSize)])"""
    )
    kpi = min(px for name, px in sizes if name == "value")
    assert all(px < kpi for name, px in sizes if name != "value"), sizes
    # every chart is drawn, titled, with labelled axes, and fits the page
    charts = page.locator("svg.chart")
    assert charts.count() == 3  # the rates, the list's growth, the latest issue's stories
    for n in range(charts.count()):
        chart = charts.nth(n)
        assert chart.get_attribute("aria-label")
        box = chart.bounding_box()
        assert box is not None and box["width"] > 0.8 * min(width - 40, 720)
        text = chart.evaluate("el => el.textContent")
        assert any(
            unit in text
            for unit in ("% of delivered", "Readers per day", "Readers (unique clicks)")
        )
    assert page.locator("text=Open rate").first.is_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"report-{size}.png"), full_page=True)
    if size == "desktop":  # it prints: every chart and table on paper, nothing cut
        page.emulate_media(media="print")
        pdf = ARTIFACTS / "report.pdf"
        page.pdf(path=str(pdf), format="A4", print_background=True)
        assert pdf.stat().st_size > 20_000
    context.close()
