"""/admin/ in a real headless Chromium, at desktop and phone width: sign in, read the report
of issues sent through SendGrid (the emulator) with their events, sign out.

Screenshots go to test-artifacts/ (serve-admin-*.png). At phone width nothing may be
wider than the screen except inside the report's `.table` boxes, which scroll sideways.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser, Page, expect

from .conftest import Site
from .support.admin import HASH_ENV, PASSWORD, PASSWORD_HASH, newsroom, send_issues_with_events
from .support.browser import ARTIFACTS
from .support.sendgrid_emulator import SendGridEmulator

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

# elements (outside a .table box and outside the charts' drawing) that stick out of the
# viewport, or (with a width of their own) out of their parent
TOO_WIDE = """() => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.parentElement.closest('.table') || el.closest('svg') !== el && el.closest('svg')) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if (box.left < -0.5 || box.right > window.innerWidth + 0.5) {
      out.push(`${el.tagName.toLowerCase()}.${el.className.baseVal ?? el.className}: ${Math.round(box.left)}..${Math.round(box.right)}`);
    }
  }
  return out;
}"""


def check_layout(page: Page, shot: str, phone: bool) -> None:
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{page.url}: the page scrolls sideways ({scroll}px > {inner}px)"
    assert page.evaluate(TOO_WIDE) == [], f"{page.url}: wider than the screen"
    assert page.locator("script").count() == 0
    if phone:
        for button in page.get_by_role("button").all():
            box = button.bounding_box()
            assert box is not None and box["height"] >= 32, f"{page.url}: button too small: {box}"
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
           .filter(el => el.labels.length === 0 || ![...el.labels].some(l => l.textContent.trim()))
           .map(el => el.name)"""
    )
    assert unlabelled == [], f"{page.url}: fields without a label: {unlabelled}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-admin-{shot}.png"), full_page=True)


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_sign_in_read_the_report_and_sign_out(
    browser: Browser, site: Site, sendgrid_emulator: SendGridEmulator, width: str
) -> None:
    phone = width == "phone"
    with newsroom(site, sendgrid_emulator, {HASH_ENV: PASSWORD_HASH}) as web:
        send_issues_with_events(web)
        context = browser.new_context(
            viewport=PHONE if phone else DESKTOP,
            device_scale_factor=2 if phone else 1,
            color_scheme="light",
        )
        page = context.new_page()

        # the report sends a stranger to the sign-in form
        page.goto(f"{web.url}/admin/")
        assert page.url == f"{web.url}/admin/login"
        expect(page).to_have_title("Sign in · The Test Times")
        expect(page.get_by_role("heading", name="Sign in to the report")).to_be_visible()
        secret = page.get_by_label("Password")
        expect(secret).to_be_focused()
        check_layout(page, f"login-{width}", phone)
        if phone:
            page.emulate_media(color_scheme="dark")
            check_layout(page, "login-phone-dark", phone)
            page.emulate_media(color_scheme="light")

        secret.fill("not the password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text(
            "That is not the password. Please try again."
        )
        check_layout(page, f"login-refused-{width}", phone)

        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_title("The Test Times: report")
        assert page.url == f"{web.url}/admin/"
        expect(page.get_by_role("heading", name="List main")).to_be_visible()
        expect(page.locator(".kpi").first).to_contain_text("71.4%")
        cookie = next(c for c in context.cookies() if c["name"] == "newsletter_admin")
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/admin"
        check_layout(page, f"report-{width}", phone)

        # the filter form
        page.get_by_label("Since").fill("2024-03-05")
        page.get_by_role("button", name="Show").click()
        assert page.url == f"{web.url}/admin/?list=&since=2024-03-05&issues="
        expect(page.locator("header.top p")).to_contain_text("issues since Tue 5 Mar 2024")
        page.get_by_role("spinbutton", name="Last issues").fill("2")
        page.get_by_role("button", name="Show").click()
        expect(page.locator("header.top p")).to_contain_text("the last 2 issues since Tue 5 Mar")
        check_layout(page, f"report-filtered-{width}", phone)

        # signing out ends the session: the report asks to sign in again
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to the report")).to_be_visible()
        page.goto(f"{web.url}/admin/")
        assert page.url == f"{web.url}/admin/login"
        context.close()
