"""The strings a reader sees, as gettext extracts them: from the theme's templates and
from the code of the web pages, the preview and the one-to-one emails.

`python -m newsletter.catalogues` rewrites `locale/newsletter.pot` and brings every
built-in `.po` up to date with it (new strings empty, for a translator to fill).
`newsletter check` uses the same extraction on a newsletter's own templates to say
which strings its language leaves untranslated.
"""

from __future__ import annotations

import sys
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

from newsletter.i18n import Language, missing_strings
from newsletter.locale import DOMAIN, LOCALE_DIR, catalogue_path, languages_in

PACKAGE = Path(__file__).parent
JINJA = "jinja2.ext:babel_extract"
JINJA_OPTIONS = {
    "extensions": "jinja2.ext.i18n",
    "trim_blocks": "true",
    "lstrip_blocks": "true",
    "newstyle_gettext": "true",
}
TEMPLATE_PATTERNS = ("**.html", "**.txt", "**.css")


def template_messages(folder: Path) -> Catalog:
    """Every `_()` / `ngettext()` of the templates under `folder`."""
    catalog = Catalog(domain=DOMAIN)
    if not folder.is_dir():
        return catalog
    methods = [(pattern, JINJA) for pattern in TEMPLATE_PATTERNS]
    options = {pattern: JINJA_OPTIONS for pattern in TEMPLATE_PATTERNS}
    _add(catalog, folder, methods, options)
    return catalog


def built_in_messages() -> Catalog:
    """The theme's strings and the code's, as the built-in catalogues must translate."""
    catalog = template_messages(PACKAGE / "theme")
    # the SendGrid client builds its URLs with `._("segment")`: not a string to translate
    _add(catalog, PACKAGE, [("transports/**.py", "ignore"), ("**.py", "python")], {})
    return catalog


def _add(
    catalog: Catalog,
    folder: Path,
    methods: list[tuple[str, str]],
    options: dict[str, dict[str, str]],
) -> None:
    for filename, lineno, message, comments, context in extract_from_dir(
        str(folder), methods, options
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)


def message_ids(catalog: Catalog) -> list[str]:
    """The English source of each string (the singular of a plural)."""
    return [message_ids_of(m) for m in catalog if m.id]


def shipped_messages() -> Catalog:
    """The built-in strings as shipped in `locale/newsletter.pot` (no extraction needed)."""
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("rb") as fh:
        return read_po(fh)


def untranslated(language: Language, templates: Path | None) -> list[str]:
    """One line per string a reader would see in English: the theme's and the code's,
    and those the newsletter's own templates add, that `language` does not translate."""
    wanted: dict[str, str] = {}
    own = template_messages(templates) if templates is not None else Catalog()
    for catalog, root in ((shipped_messages(), None), (own, templates)):
        for message in catalog:
            if message.id:
                where = message.locations[0][0] if message.locations else ""
                place = str(root / where) if root is not None and where else "built-in theme"
                wanted.setdefault(message_ids_of(message), place)
    missing = missing_strings(language, wanted)
    return [f"{language.code}: not translated: {m!r} ({wanted[m]})" for m in missing]


def message_ids_of(message: Message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


def update() -> None:
    """Rewrite the template catalogue and merge it into each built-in language."""
    template = built_in_messages()
    with (LOCALE_DIR / f"{DOMAIN}.pot").open("wb") as fh:
        write_po(fh, template, omit_header=False, width=88)
    for code in sorted(languages_in(LOCALE_DIR)):
        path = catalogue_path(LOCALE_DIR, code)
        with path.open("rb") as fh:
            catalog = read_po(fh, locale=code.replace("-", "_"))
        catalog.update(template, no_fuzzy_matching=True)
        with path.open("wb") as fh:
            write_po(fh, catalog, width=88, ignore_obsolete=True)
        print(f"{path}: {len(catalog)} strings", file=sys.stderr)


if __name__ == "__main__":
    update()
