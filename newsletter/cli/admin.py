"""`newsletter admin`: what the editor's /admin/ pages need set up (`hash-password`)."""

from __future__ import annotations

import click

from newsletter.cli.base import Group
from newsletter.errors import NewsletterError


@click.group(cls=Group)
def admin() -> None:
    """The report pages of `newsletter serve` (/admin/)."""


@admin.command("hash-password")
def hash_password() -> None:
    """Print the hash of the editor's password, for NEWSLETTER_ADMIN_PASSWORD_HASH.

    Asks for the password twice (not shown) and prints the hash line alone; the
    password itself is stored nowhere. At least 12 characters.
    """
    from newsletter.passwords import MAX_LENGTH, MIN_LENGTH
    from newsletter.passwords import hash_password as make_hash

    # prompts go to stderr: stdout is the hash alone, ready for `export X=$(...)`
    password = click.prompt("Password", hide_input=True, confirmation_prompt="Repeat it", err=True)
    if len(password) < MIN_LENGTH:
        raise NewsletterError(f"the password must be at least {MIN_LENGTH} characters long")
    if len(password) > MAX_LENGTH:
        raise NewsletterError(f"the password must be at most {MAX_LENGTH} characters long")
    click.echo(make_hash(password))
