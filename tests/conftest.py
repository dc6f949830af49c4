"""Shared fixtures: a throwaway newsletter folder per test, written like a user would."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from newsletter.app import App
from newsletter.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

BASE_CONFIG = """\
[newsletter]
name = "The Test Times"
tagline = "All the news that fits in a test."
url = "https://news.example.com"
timezone = "Europe/London"
postal_address = \"\"\"The Test Times
1 Fixture Lane
Testville TE5 7ST\"\"\"
archive_url = "https://news.example.com/archive"

[sender]
from_email = "news@example.com"
from_name = "The Test Times"
reply_to = "editor@example.com"

[schedule]
time = "07:00"

[[sources]]
kind = "markdown"
name = "desk"
path = "stories"

[templates]
path = "templates"
"""


def example_copy(folder: Path) -> Path:
    """A copy of the repository's example newsletter, without the state and outbox that the
    README's own commands leave in the repository; returns its config file."""
    folder.mkdir(parents=True)
    shutil.copy(REPO / "config.example.toml", folder / "config.example.toml")
    for name in ("stories", "templates", "subscribers"):
        shutil.copytree(REPO / name, folder / name)
    return folder / "config.example.toml"


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


NOW = utc(2024, 3, 5, 9, 0)


@dataclass
class Site:
    """A newsletter folder: config.toml, stories/, templates/, subscribers/."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    def write_config(self, text: str = BASE_CONFIG, extra: str = "") -> Path:
        self.config_path.write_text(text + textwrap.dedent(extra), encoding="utf-8")
        return self.config_path

    def story(self, slug: str, body: str = "A paragraph of news.", **front: object) -> Path:
        front.setdefault("title", slug.replace("-", " ").title())
        front.setdefault("date", "2024-03-05 06:00:00+00:00")
        header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
        path = self.root / "stories" / f"{slug}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"---\n{header}---\n{textwrap.dedent(body)}", encoding="utf-8")
        return path

    def template(self, name: str, text: str) -> Path:
        path = self.root / "templates" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def config(self, environ: dict[str, str] | None = None) -> Config:
        return load_config(self.config_path, environ or {})

    def app(self, now: dt.datetime = NOW, **kwargs: object) -> App:
        return App(self.config(), clock=lambda: now, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def site(tmp_path: Path) -> Site:
    site = Site(tmp_path / "paper")
    (site.root / "stories").mkdir(parents=True)
    (site.root / "templates").mkdir()
    site.write_config()
    return site


# the local SendGrid emulator, one per test that asks for it
# Debian's headless Chromium, one per test module
from tests.support.browser import browser  # noqa: E402, F401
from tests.support.fixtures import SENDGRID_TEST_API_KEY, sendgrid_emulator  # noqa: E402, F401

# `newsletter serve` under uvicorn, with a clock the test moves
from tests.support.web import web  # noqa: E402, F401

# -- the state database: SQLite always, PostgreSQL where .ci/run (or you) provides one ----------

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL")
REQUIRE_PG = os.environ.get("NEWSLETTER_REQUIRE_POSTGRES") == "1"


def _reset_postgres(url: str) -> None:
    """Every test starts from an empty database: our tables and APScheduler's dropped."""
    import sqlalchemy as sa

    from newsletter.state.database import metadata

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE IF EXISTS apscheduler_jobs"))
        metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state database URL: a fresh SQLite file, then the shared PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    if not PG_URL:
        if REQUIRE_PG:
            pytest.fail("NEWSLETTER_TEST_DATABASE_URL is not set but .ci/run requires PostgreSQL")
        pytest.skip("set NEWSLETTER_TEST_DATABASE_URL to a PostgreSQL URL (.ci/run does)")
    _reset_postgres(PG_URL)
    return PG_URL


def pytest_sessionstart(session: pytest.Session) -> None:
    """Each run's fault figures (RELIABILITY.md) start from an empty table."""
    from tests.support.faults import ARTIFACTS

    (ARTIFACTS / "reliability.tsv").unlink(missing_ok=True)
