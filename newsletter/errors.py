"""The project's exceptions, in one place.

Every error a person can cause or fix (a bad config key, a broken story file,
a template typo, a rejected API request) is a ``NewsletterError``. The CLI
prints its message and exits non-zero without a traceback; anything else is a
bug and keeps its traceback.

    NewsletterError
    ├── ConfigError        the config file or an environment variable
    ├── SourceError        a story source could not be read
    ├── RenderError        a template failed to render
    ├── LintError          the rendered issue would not reach readers as it should
    ├── SubscriberError    a list file or a subscriber command
    ├── LedgerError        the state database
    └── TransportError     the mail service refused or could not be reached
"""

from __future__ import annotations


class NewsletterError(Exception):
    """A problem the person running the tool can fix; shown without a traceback."""

    exit_code = 1


class ConfigError(NewsletterError):
    exit_code = 2


class SourceError(NewsletterError):
    pass


class RenderError(NewsletterError):
    pass


class LintError(NewsletterError):
    pass


class SubscriberError(NewsletterError):
    pass


class LedgerError(NewsletterError):
    pass


class TransportError(NewsletterError):
    pass
