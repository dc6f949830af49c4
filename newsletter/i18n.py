"""The reader's language: gettext catalogues for every string, Babel for dates and lists.

The built-in catalogues live in `newsletter/locale/<code>/LC_MESSAGES/newsletter.po`
(English, Simplified Chinese, Arabic). A newsletter's own `templates/locale/` can add
a language or override single strings: its catalogue is laid over the built-in one.
Catalogues are read as `.po` and compiled in memory, so there is no build step.
"""

from __future__ import annotations

import datetime as dt
import gettext
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.core import get_global
from babel.dates import format_date, format_time
from babel.lists import format_list
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal

from newsletter.errors import ConfigError
from newsletter.locale import (
    LOCALE_DIR,
    catalogue_for,
    catalogue_path,
    folder_name,
    unknown_language,
)

SOURCE_LANGUAGE = "en"


def read_catalogue(path: Path) -> Catalog:
    try:
        with path.open("rb") as fh:
            return read_po(fh, abort_invalid=True)
    except Exception as exc:  # babel raises PoFileError and friends; all are the file's fault
        raise ConfigError(f"{path}: not a readable gettext catalogue: {exc}") from None


def _compiled(catalogues: Iterable[Catalog]) -> gettext.GNUTranslations:
    """The catalogues merged, later ones winning, as one GNUTranslations."""
    merged: Catalog | None = None
    for catalogue in catalogues:
        if merged is None:
            merged = catalogue
            continue
        for message in catalogue:
            if message.id and message.string and any(_texts(message.string)):
                # (setting an id the catalogue has would keep its old translation)
                if message.id in merged:
                    merged.delete(message.id)
                merged[message.id] = message
    buffer = io.BytesIO()
    write_mo(buffer, merged or Catalog())
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def _texts(string: str | tuple[str, ...]) -> tuple[str, ...]:
    return string if isinstance(string, tuple) else (string,)


@dataclass(frozen=True)
class Language:
    """One language: its translations, its direction and Babel's formats for it."""

    code: str
    locale: Locale
    translations: gettext.NullTranslations

    @property
    def direction(self) -> str:
        return "rtl" if self.locale.text_direction == "rtl" else "ltr"

    @property
    def start(self) -> str:
        """The side a line begins on: `left`, or `right` in Arabic."""
        return "right" if self.direction == "rtl" else "left"

    @property
    def end(self) -> str:
        return "left" if self.direction == "rtl" else "right"

    @property
    def script(self) -> str:
        """The script the language is written in (`Latn`, `Hans`, `Arab`...), for type."""
        subtags = get_global("likely_subtags")
        full = subtags.get(str(self.locale), subtags.get(self.locale.language, ""))
        return self.locale.script or (full.split("_")[1] if "_" in full else "Latn")

    def gettext(self, message: str) -> str:
        return self.translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self.translations.ngettext(singular, plural, n)

    def long_date(self, value: dt.date) -> str:
        return format_date(value, "full", locale=self.locale)

    def short_date(self, value: dt.date) -> str:
        return format_date(value, "long", locale=self.locale)

    def time(self, value: dt.time | dt.datetime) -> str:
        return format_time(value, "short", locale=self.locale)

    def number(self, value: float) -> str:
        return format_decimal(value, locale=self.locale)

    def join(self, items: Iterable[str]) -> str:
        """`Ann, Bob and Cy` in the reader's language."""
        items = list(items)
        return format_list(items, locale=self.locale) if items else ""


def load_language(code: str, user_root: Path | None = None, key: str = "language") -> Language:
    """The language `code` (`en`, `zh-CN`, `ar`, or one a newsletter adds), or a
    ConfigError naming the key and what is available. `en-GB` uses the `en`
    catalogue with British dates; a language with no catalogue at all is refused."""
    catalogue_code = catalogue_for(code, user_root)
    try:
        locale = Locale.parse(folder_name(code))
    except (UnknownLocaleError, ValueError, TypeError):
        locale = None
    if locale is None or catalogue_code is None:
        raise ConfigError(f"{key}: {unknown_language(code, user_root)}")
    paths = [catalogue_path(LOCALE_DIR, catalogue_code)]
    if user_root is not None:
        paths.append(catalogue_path(user_root, catalogue_code))
        if code != catalogue_code:
            paths.append(catalogue_path(user_root, code))
    found = [read_catalogue(p) for p in paths if p.is_file()]
    return Language(code=code, locale=locale, translations=_compiled(found))


def missing_strings(language: Language, wanted: Iterable[str]) -> list[str]:
    """The strings of `wanted` the language leaves in English (none for English)."""
    if language.locale.language == SOURCE_LANGUAGE:
        return []
    catalog = getattr(language.translations, "_catalog", {})
    return sorted({m for m in wanted if m and not catalog.get(m) and (m, 0) not in catalog})
