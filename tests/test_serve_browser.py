"""The `newsletter serve` pages in a real headless Chromium at phone width, end to end."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, expect

from .support.browser import ARTIFACTS
from .support.cli import read
from .support.web import Web, confirm_link

PHONE = {"width": 390, "height": 844}
LONG_ADDRESS = "alexandra.konstantinopoulou.smythe@mail.example.co.uk"  # no hyphen: wraps only if the CSS lets it


def check_phone_layout(page: Page, shot: str) -> None:
    """No sideways scrolling, big enough buttons, every field labelled; then a screenshot."""
    scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll <= inner, f"{page.url}: horizontal scrolling ({scroll}px > {inner}px)"
    for button in page.get_by_role("button").all():
        box = button.bounding_box()
        assert box is not None and box["height"] >= 44, f"{page.url}: button too small: {box}"
        assert box["x"] >= 0 and box["x"] + box["width"] <= inner, f"{page.url}: button clipped"
    for choice in page.locator("label:has(input[type=radio])").all():
        box = choice.bounding_box()
        assert box is not None and box["height"] >= 44, f"{page.url}: choice too small: {box}"
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
           .filter(el => el.labels.length === 0 || ![...el.labels].some(l => l.textContent.trim()))
           .map(el => el.name)"""
    )
    assert unlabelled == [], f"{page.url}: fields without a label: {unlabelled}"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"serve-{shot}.png"), full_page=True)


def test_sign_up_confirm_unsubscribe_and_archive_on_a_phone(browser: Browser, web: Web) -> None:
    context = browser.new_context(viewport=PHONE, device_scale_factor=2, color_scheme="light")
    page = context.new_page()

    # 1. the sign-up form
    page.goto(f"{web.url}/subscribe")
    expect(page.get_by_role("heading", name="Subscribe to The Test Times")).to_be_visible()
    email = page.get_by_label("Email address")
    name = page.get_by_label("Name (optional)")
    expect(email).to_be_visible()
    expect(name).to_be_visible()
    expect(page.get_by_role("radio", name="The Test Times (daily)")).to_be_checked()
    honeypot = page.locator("input[name=website]")
    box = honeypot.bounding_box()
    assert not honeypot.is_visible() or (box is not None and box["x"] + box["width"] <= 0), box
    expect(honeypot).to_have_attribute("tabindex", "-1")
    check_phone_layout(page, "subscribe")

    email.fill(LONG_ADDRESS)
    name.fill("Phone Reader")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    check_phone_layout(page, "check-inbox")

    # 2. the confirmation email, followed in the browser
    [sent] = web.confirmations()
    mail = read(sent)
    assert mail["To"] == LONG_ADDRESS  # the bare address: a typed name is never put in an inbox
    assert LONG_ADDRESS not in web.list_file().read_text()
    page.goto(confirm_link(mail))
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    expect(page.get_by_text(f"will come to {LONG_ADDRESS}")).to_be_visible()
    expect(page.get_by_role("link", name="Read past issues")).to_be_visible()
    check_phone_layout(page, "subscribed")
    assert f"{LONG_ADDRESS},Phone Reader," in web.list_file().read_text()

    # 3. unsubscribing: the page alone changes nothing, the button does
    page.goto(web.unsubscribe_url("reader@example.com"))
    expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    expect(page.get_by_text("reader@example.com", exact=True)).to_be_visible()
    expect(page.get_by_role("radio", name="The Test Times (daily) only")).to_be_checked()
    check_phone_layout(page, "unsubscribe")
    assert "reader@example.com" not in web.app.ledger.suppressed("main")
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You're unsubscribed")).to_be_visible()
    expect(
        page.get_by_text("reader@example.com will get no more email from The Test Times (daily).")
    ).to_be_visible()
    check_phone_layout(page, "unsubscribed")
    assert "reader@example.com" in web.app.ledger.suppressed("main")
    assert "reader@example.com" not in web.app.ledger.suppressed("weekly")

    # 4. the archive (nothing sent yet)
    page.goto(f"{web.url}/archive")
    expect(page).to_have_title("Past issues · The Test Times")
    expect(page.get_by_role("heading", name="Past issues")).to_be_visible()
    expect(page.get_by_text("No issue has been sent yet.")).to_be_visible()
    expect(page.get_by_role("link", name="Atom feed")).to_have_attribute(
        "href", f"{web.url}/archive/feed.xml"
    )
    check_phone_layout(page, "archive")
    context.close()
