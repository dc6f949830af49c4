"""The newsletter's settings: TOML on disk, pydantic models in memory.

Unknown keys are rejected (a typo must not silently fall back to a default),
relative paths resolve against the config file's folder, and secrets are read
from environment variables named in the config, never from the file itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from newsletter.controls import find_control
from newsletter.errors import ConfigError
from newsletter.locale import catalogue_for, unknown_language

CONFIG_ENV = "NEWSLETTER_CONFIG"
DATABASE_URL_ENV = "NEWSLETTER_DATABASE_URL"
DEFAULT_CONFIG_NAME = "config.toml"


def _to_path(value: Any) -> Any:
    """TOML has no path type: a path is written as a string."""
    if isinstance(value, str):
        return Path(value)
    if isinstance(value, Path):
        return value
    raise ValueError(f"expected a path as a string, got {value!r}")


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = value.expanduser()
    if base is not None and not value.is_absolute():
        value = Path(base) / value
    return value


RelPath = Annotated[Path, BeforeValidator(_to_path), AfterValidator(_resolve_path)]


def _parse_duration(value: Any) -> Any:
    """Accept "90m", "24h", "2d", "1h30m" or "0", or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "0":  # no time at all needs no unit
            return timedelta()
        match = re.fullmatch(r"(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
        if match and text and any(match.groups()):
            days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
            return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        raise ValueError(f'expected a duration such as "24h", "90m" or "2d", got {value!r}')
    return value


Duration = Annotated[timedelta, BeforeValidator(_parse_duration)]


def _parse_time(value: Any) -> Any:
    """A time of day: "07:00" (a string), or TOML's own 07:00:00."""
    if isinstance(value, str):
        try:
            return dt.time.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f'expected a time of day such as "07:00", got {value!r}') from None
    return value


TimeOfDay = Annotated[dt.time, BeforeValidator(_parse_time)]


def _parse_window(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() == "all":
        return None
    return _parse_duration(value)


def _check_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'unknown time zone {value!r} (use an IANA name such as "Europe/London")'
        ) from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_check_zone)]
NonEmpty = Annotated[str, Field(min_length=1)]


class Settings(BaseModel):
    # validate_default: default paths resolve against the config's folder too.
    # strict: "yes" is not a boolean nor "4" a number; the only conversions are the
    # deliberate ones above (durations, times of day, paths), which TOML cannot type.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        validate_default=True,
        strict=True,
    )


class NewsletterSettings(Settings):
    name: NonEmpty
    tagline: str = ""
    url: str | None = None
    timezone: TimeZoneName = "UTC"
    language: str = "en"
    postal_address: NonEmpty
    reason: str = ""
    archive_url: str | None = None
    # the lead story's headline; the name and the date on a day without stories
    subject: str = (
        '{% if lead %}{{ lead.title | truncate(78, end="…", leeway=0) }}{% else %}'
        "{{ newsletter.name }}: {{ issue.date | long_date }}{% endif %}"
    )
    preheader: str | None = None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _one_line(value: str) -> str:
    code = find_control(value)
    if code is not None:
        raise ValueError(
            f"contains a control character ({code}): it goes into mail headers, "
            "so it must be one line of plain text"
        )
    return value


# a setting written into a mail header: a line break in it would forge another header
OneLine = Annotated[str, AfterValidator(_one_line)]


class SenderSettings(Settings):
    from_email: NonEmpty
    from_name: OneLine | None = None
    reply_to: str | None = None

    @field_validator("from_email", "reply_to")
    @classmethod
    def _looks_like_address(cls, value: str | None) -> str | None:
        if value is not None and (
            not re.fullmatch(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+", value)
            or find_control(value) is not None
        ):
            raise ValueError(f"not an email address: {value!r}")
        return value


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_days(value: str) -> frozenset[int]:
    """Cron-style days of the week ("*", "mon-fri", "mon,wed,fri") as weekday numbers."""
    text = value.strip().lower()
    if text in ("*", ""):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise ValueError(
                f'expected days such as "*", "mon-fri" or "mon,wed,fri", got {value!r}'
            )
        start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        span = range(start, end + 1) if start <= end else [*range(start, 7), *range(0, end + 1)]
        days.update(span)
    return frozenset(days)


def _check_days(value: str) -> str:
    parse_days(value)
    return value


class ScheduleSettings(Settings):
    time: TimeOfDay = dt.time(7, 0)
    days: Annotated[str, AfterValidator(_check_days)] = "*"
    list: str = "main"
    misfire_grace: Duration = timedelta(hours=2)
    retry_every: Duration = timedelta(minutes=10)
    admin_email: str | None = None
    # SendGrid only: build and submit the issue this long before `time`, with SendGrid
    # holding it until then, so a run that dies is resent exactly once and an editor can
    # cancel it until ten minutes before (`scheduling.py`); 0: submitted at `time`
    submit_ahead: Duration = timedelta()
    # schedulers on several machines (one PostgreSQL): the ones that find the issue
    # claimed help send it (`send --join`) instead of waiting to retry
    join: bool = False

    @property
    def weekdays(self) -> frozenset[int]:
        return parse_days(self.days)

    @field_validator("submit_ahead")
    @classmethod
    def _within_sendgrids_hold(cls, value: timedelta) -> timedelta:
        if not timedelta() <= value <= timedelta(hours=72):
            raise ValueError("must be between 0 and 72h: SendGrid holds a send 72 hours at most")
        return value


class IssueSettings(Settings):
    window: Annotated[timedelta | None, BeforeValidator(_parse_window)] = timedelta(hours=24)
    max_stories: int = Field(default=10, ge=1, le=100)
    order: Literal["newest_first", "oldest_first"] = "newest_first"
    story_text: Literal["full", "summary"] = "full"


class MarkdownSourceSettings(Settings):
    kind: Literal["markdown"]
    name: str | None = None
    path: RelPath

    @property
    def label(self) -> str:
        return self.name or f"markdown:{self.path.name}"


class FeedSourceSettings(Settings):
    kind: Literal["feed"]
    name: str | None = None
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: float = Field(default=10.0, gt=0, le=120)
    max_bytes: int = Field(default=5_000_000, gt=0)

    @property
    def label(self) -> str:
        return self.name or self.url


SourceSettings = Annotated[MarkdownSourceSettings | FeedSourceSettings, Field(discriminator="kind")]


class TemplateSettings(Settings):
    path: RelPath | None = Path("templates")


# a CSS font-family list: names, quotes, commas; nothing that could end the declaration
FontStack = Annotated[str, Field(pattern=r"^[A-Za-z0-9 ,'\"_-]+$")]


class ThemeSettings(Settings):
    accent_color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")] = "#1f5f8b"
    logo_url: str | None = None
    logo_width: int = Field(default=160, gt=0, le=600)
    # "In this issue": the headlines at the top, when there are two stories or more
    contents: bool = True
    # how a story leads to its page: a quiet "Continue reading" link, or a button
    read_more: Literal["link", "button"] = "link"
    # one share row for the whole issue in the footer (a forward link without a web
    # version), share links under every story, or none
    share: Literal["issue", "stories", "none"] = "issue"
    # font stacks; by default they follow the language's script (`typography.py`)
    headline_font: FontStack | None = None
    body_font: FontStack | None = None


class SubscriberSettings(Settings):
    path: RelPath = Path("subscribers")


class StateSettings(Settings):
    database_url: str | None = None


class DeliverySettings(Settings):
    transport: Literal["sendgrid", "smtp", "outbox"] = "sendgrid"
    batch_size: int = Field(default=1000, ge=1, le=1000)
    workers: int = Field(default=4, ge=1, le=32)
    attempts: int = Field(default=5, ge=1, le=20)
    retry_delay: Duration = timedelta(seconds=1)
    max_retry_delay: Duration = timedelta(seconds=60)
    stale_claim: Duration = timedelta(minutes=15)


# no characters that HTML would need escaped, and no control character: the link is
# written into emails and their List-Unsubscribe header as is
_LINK_PATTERN = r"^https?://[^\s&<>\"'\x00-\x1f\x7f-\x9f]+$"


class UnsubscribeSettings(Settings):
    mode: Literal["hosted", "sendgrid"] | None = None
    base_url: Annotated[str, Field(pattern=_LINK_PATTERN)] | None = None
    mailto: OneLine | None = None
    secret_env: str = "NEWSLETTER_SECRET"


class SendGridSettings(Settings):
    api_url: str = "https://api.sendgrid.com"
    api_key_env: str = "SENDGRID_API_KEY"
    timeout: float = Field(default=30.0, gt=0, le=300)
    asm_group_id: int | None = None
    categories: list[str] = []
    ip_pool_name: str | None = None
    click_tracking: bool = False
    open_tracking: bool = False
    # gzip mail/send bodies (SendGrid offers it to high-volume senders: ask them first)
    compress: bool = False
    # the Signed Event Webhook's verification key (public, so it may live here)
    webhook_public_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9+/=\s]+$")] | None = None
    webhook_max_age: Duration = timedelta(minutes=10)


LIST_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ListName = Annotated[str, Field(pattern=LIST_NAME_PATTERN)]


class ServeSettings(Settings):
    """`newsletter serve`: sign-up, unsubscribe, mail events, archive."""

    # list -> how the sign-up form names it (default: the scheduled list, by the newsletter's name)
    lists: dict[ListName, NonEmpty] = {}
    # lists whose sent issues are in the public archive (default: the scheduled list)
    archive_lists: list[ListName] | None = None
    # what a subscriber agrees to; stored with each confirmation, with its version
    consent: str = ""
    confirm_within: Duration = timedelta(hours=48)
    signups_per_ip: int = Field(default=5, ge=1)
    signup_period: Duration = timedelta(hours=1)
    max_form_bytes: int = Field(default=16_384, ge=1024)
    max_webhook_bytes: int = Field(default=8_000_000, ge=1024)
    # proxies whose X-Forwarded-For / -Proto are believed (uvicorn's forwarded_allow_ips)
    forwarded_allow_ips: str = "127.0.0.1"
    # /admin/ (the report) exists only when one of these environment variables is set:
    # the hash `newsletter admin hash-password` prints, or a long random token
    admin_password_hash_env: str = "NEWSLETTER_ADMIN_PASSWORD_HASH"
    admin_token_env: str = "NEWSLETTER_ADMIN_TOKEN"
    admin_session: Duration = timedelta(hours=12)
    admin_attempts: int = Field(default=5, ge=1)  # sign-in attempts per address per period
    admin_attempt_period: Duration = timedelta(minutes=15)


# SendGrid redelivers an event batch for up to 24 hours (duplicates have been seen 29 hours
# on); a redelivered event is known by the one kept, so none may go sooner than this
MIN_KEEP_EVENTS = timedelta(days=3)
KEEP_EVENTS_WHY = (
    "must be at least 3d: SendGrid redelivers events for a day and more, and a redelivered "
    "event is recognised only by the one kept (else it counts twice)"
)


class AnalyticsSettings(Settings):
    """What `newsletter report` counts and how long the raw events are kept."""

    # keep who clicked what (addresses) as well as the counts
    per_recipient: bool = False
    # raw events and per-reader rows older than this go with `newsletter events prune`
    keep_events: Duration = timedelta(days=90)
    # issues shown with their clicks per story (the most recent ones)
    detail_issues: int = Field(default=10, ge=0, le=1000)

    @field_validator("keep_events")
    @classmethod
    def _past_redeliveries(cls, value: timedelta) -> timedelta:
        if value < MIN_KEEP_EVENTS:
            raise ValueError(KEEP_EVENTS_WHY)
        return value


class SmtpSettings(Settings):
    host: str = "localhost"
    port: int = 587
    security: Literal["starttls", "ssl", "none"] = "starttls"
    username: str | None = None
    password_env: str = "SMTP_PASSWORD"
    timeout: float = Field(default=30.0, gt=0, le=300)
    # the DKIM selector the mail server signs with, for `newsletter check --dns`
    dkim_selector: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = None


class OutboxSettings(Settings):
    path: RelPath = Path("outbox")


class Config(Settings):
    newsletter: NewsletterSettings
    sender: SenderSettings
    schedule: ScheduleSettings = ScheduleSettings()
    issue: IssueSettings = IssueSettings()
    sources: list[SourceSettings] = []
    templates: TemplateSettings = TemplateSettings()
    theme: ThemeSettings = ThemeSettings()
    subscribers: SubscriberSettings = SubscriberSettings()
    state: StateSettings = StateSettings()
    delivery: DeliverySettings = DeliverySettings()
    unsubscribe: UnsubscribeSettings = UnsubscribeSettings()
    sendgrid: SendGridSettings = SendGridSettings()
    serve: ServeSettings = ServeSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    smtp: SmtpSettings = SmtpSettings()
    outbox: OutboxSettings = OutboxSettings()

    @model_validator(mode="before")
    @classmethod
    def _every_section_validated(cls, data: Any) -> Any:
        """A section left out is validated as empty, so its relative defaults resolve too."""
        if isinstance(data, dict):
            sections = [
                n for n, f in cls.model_fields.items() if f.default is not PydanticUndefined
            ]
            data = {**{name: {} for name in sections if name != "sources"}, **data}
        return data

    _path: Path = PrivateAttr(default=Path(DEFAULT_CONFIG_NAME))
    _environ: Mapping[str, str] = PrivateAttr(default_factory=dict)

    @property
    def path(self) -> Path:
        """The config file this was read from; the base of every relative path."""
        return self._path

    @property
    def root(self) -> Path:
        return self._path.parent

    @property
    def database_url(self) -> str:
        url = self._environ.get(DATABASE_URL_ENV) or self.state.database_url
        if not url:
            return f"sqlite:///{self.root / 'newsletter.db'}"
        return _resolve_sqlite_url(url, self.root)

    @property
    def signup_lists(self) -> dict[str, str]:
        """The lists open to sign-up, with the names the form shows."""
        return dict(self.serve.lists) or {self.schedule.list: self.newsletter.name}

    @property
    def archive_lists(self) -> list[str]:
        return (
            self.serve.archive_lists
            if self.serve.archive_lists is not None
            else [self.schedule.list]
        )

    def consent_wording(self, gettext: Callable[[str], str]) -> str:
        """What a sign-up agrees to: `[serve] consent`, or the default in the language."""
        return self.serve.consent or gettext(
            "Send me %(name)s by email. I can unsubscribe at any time with the link in every email."
        ) % {"name": self.newsletter.name}

    @model_validator(mode="after")
    def _language_has_translations(self) -> Config:
        user_root = self.templates.path / "locale" if self.templates.path else None
        if catalogue_for(self.newsletter.language, user_root) is None:
            raise ValueError(
                f"newsletter.language: {unknown_language(self.newsletter.language, user_root)}"
            )
        return self

    def secret(self, env_name: str) -> str | None:
        """A secret from the environment, or None; the value never enters the config."""
        value = self._environ.get(env_name)
        return value or None


def _resolve_sqlite_url(url: str, base: Path) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":memory:"):
            return prefix + str(base / rest)
    return url


def find_config(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str]) -> Path:
    """`--config PATH`, else `$NEWSLETTER_CONFIG`, else `./config.toml`."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate one config file; every problem is a ConfigError naming the key."""
    environ = dict(os.environ if environ is None else environ)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        hint = ""
        if path.name == DEFAULT_CONFIG_NAME:
            hint = " (pass --config PATH, set $NEWSLETTER_CONFIG, or copy config.example.toml)"
        raise ConfigError(f"{path}: config file not found{hint}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    base_dir = path.resolve().parent
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(path, exc)) from None
    config._path = path.resolve()
    config._environ = environ
    return config


_SOURCE_KINDS = {"markdown", "feed"}


def _key_path(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        elif i == 2 and loc[0] == "sources" and item in _SOURCE_KINDS:
            continue  # pydantic's union tag, not a key the user wrote
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


# strict types: what to write instead of what was written
_TYPE_HINTS = {
    "bool_type": "true or false, without quotes",
    "int_type": "a whole number, without quotes",
    "float_type": "a number, without quotes",
    "string_type": "text in quotes",
    "list_type": "a list in [brackets]",
    "dict_type": "a table",
    "model_type": "a table",
}


def _toml(value: Any) -> str:
    """A value as it was written in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # TOML's escapes too: no raw control codes
    return repr(value) if isinstance(value, int | float) else type(value).__name__


def format_validation_error(path: Path, exc: ValidationError) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        kind = error["type"]
        if kind == "missing":
            message = "is required"
        elif kind == "extra_forbidden":
            message = "unknown setting"
        elif kind == "union_tag_invalid":
            message = f"unknown source kind (expected one of: {', '.join(sorted(_SOURCE_KINDS))})"
        elif kind == "union_tag_not_found":
            message = 'needs a "kind" (markdown or feed)'
        elif kind in _TYPE_HINTS:
            message = f"{error['msg']} ({_TYPE_HINTS[kind]}), got {_toml(error['input'])}"
        else:
            message = error["msg"].removeprefix("Value error, ")
        where = f"{_key_path(tuple(error['loc']))}: " if error["loc"] else ""  # names its key
        lines.append(f"{path}: {where}{message}")
    return "\n".join(lines)
