"""The built-in gettext catalogues, one folder per language, and where to find any.

Kept free of Babel so reading a config (which names its language) stays cheap.
"""

from __future__ import annotations

from pathlib import Path

LOCALE_DIR = Path(__file__).parent
DOMAIN = "newsletter"


def folder_name(code: str) -> str:
    """`zh-CN` is kept in `zh_CN/`, as gettext tools name it."""
    return code.replace("-", "_")


def catalogue_path(root: Path, code: str) -> Path:
    return root / folder_name(code) / "LC_MESSAGES" / f"{DOMAIN}.po"


def languages_in(root: Path | None) -> set[str]:
    if root is None or not root.is_dir():
        return set()
    return {p.parents[1].name.replace("_", "-") for p in root.glob(f"*/LC_MESSAGES/{DOMAIN}.po")}


def available(user_root: Path | None = None) -> list[str]:
    """Every language with a catalogue: built in, or in the newsletter's templates."""
    return sorted(languages_in(LOCALE_DIR) | languages_in(user_root))


def catalogue_for(code: str, user_root: Path | None = None) -> str | None:
    """The catalogue a language uses: its own, else its base language's (`en-GB`: `en`)."""
    choices = available(user_root)
    base = code.replace("_", "-").split("-", 1)[0]
    return next((c for c in (code, base) if c in choices), None)


def unknown_language(code: str, user_root: Path | None = None) -> str:
    return (
        f"no translations for {code!r}; available: {', '.join(available(user_root))} "
        "(or add templates/locale/<language>/LC_MESSAGES/newsletter.po)"
    )
