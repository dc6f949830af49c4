"""Type that fits the script: font stacks, line height and tracking per writing system.

A Latin headline in Georgia is right; a Chinese one in Georgia draws its digits in
Georgia and its glyphs in whatever sans-serif the client falls back to. Each script
gets stacks whose fonts cover digits and glyphs alike, and spacing that suits it
(CJK wants more leading; Arabic letters join, so no letter-spacing, no capitals).
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM_SANS = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"


@dataclass(frozen=True)
class Typography:
    headline: str  # font-family of the masthead and headlines
    body: str  # font-family of everything else
    outlook_headline: str  # what Outlook on Windows gets (it ignores web fonts' fallbacks)
    outlook_body: str
    body_line_height: int  # px, for 16px text
    headline_size: int  # px
    headline_line_height: int  # px
    capitals: bool  # kicker and date line in spaced capitals (Latin only)


LATIN = Typography(
    headline="Georgia, 'Times New Roman', Times, serif",
    body=SYSTEM_SANS,
    outlook_headline="Georgia, 'Times New Roman', serif",
    outlook_body="Arial, Helvetica, sans-serif",
    body_line_height=26,
    headline_size=26,
    headline_line_height=32,
    capitals=True,
)

SIMPLIFIED_CHINESE = Typography(
    headline=(
        "'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans CJK SC', "
        "'Noto Sans SC', 'Source Han Sans SC', sans-serif"
    ),
    body=(
        "'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans CJK SC', "
        "'Noto Sans SC', 'Source Han Sans SC', sans-serif"
    ),
    outlook_headline="'Microsoft YaHei', SimHei, sans-serif",
    outlook_body="'Microsoft YaHei', SimSun, sans-serif",
    body_line_height=28,
    headline_size=24,
    headline_line_height=34,
    capitals=False,
)

ARABIC = Typography(
    headline=(
        "'Geeza Pro', 'Noto Naskh Arabic', 'Noto Sans Arabic', 'Segoe UI', Tahoma, "
        "'Arabic Typesetting', Arial, sans-serif"
    ),
    body="'Geeza Pro', 'Noto Sans Arabic', 'Segoe UI', Tahoma, Arial, sans-serif",
    outlook_headline="'Segoe UI', Tahoma, Arial, sans-serif",
    outlook_body="'Segoe UI', Tahoma, Arial, sans-serif",
    body_line_height=28,
    headline_size=26,
    headline_line_height=36,
    capitals=False,
)

BY_SCRIPT = {"Latn": LATIN, "Hans": SIMPLIFIED_CHINESE, "Arab": ARABIC}


def typography_for(
    script: str, headline_font: str | None = None, body_font: str | None = None
) -> Typography:
    """The script's type, with `[theme] headline_font` / `body_font` winning when set.
    A script without its own profile gets the Latin one with neutral spacing."""
    base = BY_SCRIPT.get(script) or Typography(
        **{**LATIN.__dict__, "headline": SYSTEM_SANS, "capitals": False}
    )
    return Typography(
        **{
            **base.__dict__,
            "headline": headline_font or base.headline,
            "body": body_font or base.body,
        }
    )
