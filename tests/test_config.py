from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from newsletter.config import find_config, load_config
from newsletter.errors import ConfigError

from .conftest import BASE_CONFIG, REPO, Site


def test_example_config_loads_with_every_path_resolved_against_its_folder() -> None:
    config = load_config(REPO / "config.example.toml", {})
    assert config.newsletter.name == "The Morning Brief"
    assert config.templates.path == REPO / "templates"
    assert config.subscribers.path == REPO / "subscribers"
    assert config.sources[0].path == REPO / "stories"
    assert config.database_url == f"sqlite:///{REPO / 'newsletter.db'}"
    assert config.schedule.misfire_grace == dt.timedelta(hours=2)
    assert config.issue.window is None  # "all"


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.write_config(extra='[state]\ndatabase_url = "sqlite:///state/db.sqlite"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("paper/config.toml"), {})
    assert config.sources[0].path == site.root.resolve() / "stories"
    assert config.database_url == f"sqlite:///{site.root.resolve() / 'state/db.sqlite'}"


def test_database_url_from_the_environment_wins(site: Site) -> None:
    config = site.config({"NEWSLETTER_DATABASE_URL": "postgresql://u@db/newsletter"})
    assert config.database_url == "postgresql://u@db/newsletter"


def test_discovery_order(tmp_path: Path) -> None:
    assert find_config("given.toml", {"NEWSLETTER_CONFIG": "env.toml"}) == Path("given.toml")
    assert find_config(None, {"NEWSLETTER_CONFIG": "env.toml"}) == Path("env.toml")
    assert find_config(None, {}) == Path("config.toml")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[newsletter]\n", "invalid TOML"),  # a table defined twice
        ("[issue]\nmax_storys = 5\n", "issue.max_storys: unknown setting"),
        ("[issue]\nmax_stories = 'ten'\n", "issue.max_stories: Input should be a valid integer"),
        ("[issue]\nwindow = 'yesterday'\n", 'issue.window: expected a duration such as "24h"'),
        ("[delivery]\nbatch_size = 5000\n", "delivery.batch_size: Input should be less than or equal to 1000"),
        ("[[sources]]\nkind = 'feed'\nurl = 'ftp://x'\n", "sources[1].url: String should match pattern"),
        ("[[sources]]\nkind = 'feed'\nurl = 'https://x'\ntimout = 3\n", "sources[1].timout: unknown setting"),
        ("[[sources]]\nkind = 'twitter'\n", "sources[1]: unknown source kind"),
        ("[theme]\naccent_color = 'blue'\n", "theme.accent_color: String should match pattern"),
        ("[bogus]\nx = 1\n", "bogus: unknown setting"),
        ("[serve]\nlists = { 'Main List' = 'x' }\n", "serve.lists.Main List.[key]: String should match pattern"),
        ("[serve]\nconfirm_within = 'soon'\n", 'serve.confirm_within: expected a duration such as "24h"'),
        ("[serve]\nsignups_per_ip = 0\n", "serve.signups_per_ip: Input should be greater than or equal to 1"),
        ("[serve]\narchive_lists = ['../etc']\n", "serve.archive_lists[0]: String should match pattern"),
        ("[sendgrid]\nwebhook_public_key = 'not a key!'\n", "sendgrid.webhook_public_key: String should match pattern"),
        # strict types: nothing is guessed from a string
        ("[sendgrid]\nclick_tracking = 'yes'\n", 'sendgrid.click_tracking: Input should be a valid boolean (true or false, without quotes), got "yes"'),
        ("[sendgrid]\ncompress = 'yes'\n", 'sendgrid.compress: Input should be a valid boolean (true or false, without quotes), got "yes"'),
        ("[delivery]\nworkers = '4'\n", 'delivery.workers: Input should be a valid integer (a whole number, without quotes), got "4"'),
        ("[smtp]\ntimeout = '30'\n", 'smtp.timeout: Input should be a valid number (a number, without quotes), got "30"'),
        ("[issue]\nmax_stories = 2.5\n", "issue.max_stories: Input should be a valid integer (a whole number, without quotes), got 2.5"),
        ("[smtp]\nhost = 25\n", "smtp.host: Input should be a valid string (text in quotes), got 25"),
        ("[subscribers]\npath = true\n", "subscribers.path: expected a path as a string, got True"),
        ("[delivery]\nretry_delay = true\n", "delivery.retry_delay: Input should be a valid timedelta"),
        ("[smtp]\ndkim_selector = 'a b'\n", "smtp.dkim_selector: String should match pattern"),
    ],
)  # fmt: skip
def test_bad_config_names_the_file_and_the_key(site: Site, extra: str, expected: str) -> None:
    site.write_config(extra=extra)
    with pytest.raises(ConfigError) as info:
        site.config()
    message = str(info.value)
    assert message.startswith(
        f"{site.config_path.resolve().parent}/config.toml"
    ) or message.startswith(str(site.config_path))
    assert expected in message


def test_durations_times_and_paths_are_still_written_as_strings_or_numbers(site: Site) -> None:
    site.write_config(
        BASE_CONFIG.replace('time = "07:00"', "time = 06:30:00")  # TOML's own time of day
        + textwrap.dedent(
            """
            [delivery]
            retry_delay = 5
            max_retry_delay = "1m30s"

            [smtp]
            timeout = 20

            [subscribers]
            path = "people"
            """
        )
    )
    config = site.config()
    assert config.schedule.time == dt.time(6, 30)
    assert config.delivery.retry_delay == dt.timedelta(seconds=5)
    assert config.delivery.max_retry_delay == dt.timedelta(seconds=90)
    assert config.smtp.timeout == 20.0
    assert config.subscribers.path == site.root.resolve() / "people"
    site.write_config(BASE_CONFIG.replace('time = "07:00"', 'time = "seven"'))
    with pytest.raises(ConfigError) as bad_time:
        site.config()
    assert "schedule.time: expected a time of day such as \"07:00\", got 'seven'" in str(
        bad_time.value
    )
    site.write_config()
    assert site.config().schedule.time == dt.time(7, 0)


def test_invalid_time_zone(site: Site) -> None:
    site.write_config(BASE_CONFIG.replace("Europe/London", "Europe/Londn"))
    with pytest.raises(ConfigError, match=r"newsletter.timezone: unknown time zone 'Europe/Londn'"):
        site.config()


def test_missing_postal_address_is_refused(site: Site) -> None:
    text = BASE_CONFIG.replace(
        'postal_address = """The Test Times\n1 Fixture Lane\nTestville TE5 7ST"""\n', ""
    )
    assert "postal_address" not in text
    site.write_config(text)
    with pytest.raises(ConfigError, match=r"config.toml: newsletter.postal_address: is required"):
        site.config()


def test_blank_postal_address_is_refused(site: Site) -> None:
    site.write_config(
        BASE_CONFIG.replace('postal_address = """The Test Times', 'postal_address = """ ').replace(
            "1 Fixture Lane\nTestville TE5 7ST", ""
        )
    )
    with pytest.raises(
        ConfigError, match=r"newsletter.postal_address: String should have at least 1"
    ):
        site.config()


def test_missing_file_gives_a_hint(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: config file not found \(pass --config"):
        load_config(tmp_path / "config.toml", {})


def test_cli_reports_a_bad_config_in_one_line_without_traceback(site: Site) -> None:
    site.write_config(extra="[issue]\nmax_storys = 5\n")
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "--config", str(site.config_path), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {site.config_path}: issue.max_storys: unknown setting"


def test_config_found_through_the_environment_variable(site: Site, tmp_path: Path) -> None:
    site.story("hello", title="Hello from the env", date="2024-03-05 06:00:00+00:00")
    (site.root / "subscribers").mkdir()
    (site.root / "subscribers" / "main.csv").write_text("email,name\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "newsletter", "check", "--date", "2024-03-05"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**_env(), "NEWSLETTER_CONFIG": str(site.config_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "Hello from the env" in result.stdout


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}


def test_default_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "paper"
    folder.mkdir()
    (folder / "config.toml").write_text(
        '[newsletter]\nname = "N"\npostal_address = "1 Road"\n[sender]\nfrom_email = "a@example.com"\n'
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("paper/config.toml"), {})
    assert config.subscribers.path == folder / "subscribers"
    assert config.templates.path == folder / "templates"
    assert config.outbox.path == folder / "outbox"
    assert config.database_url == f"sqlite:///{folder / 'newsletter.db'}"


def test_an_unsubscribe_base_url_needing_html_escapes_is_refused(site: Site) -> None:
    site.write_config(
        extra='[unsubscribe]\nmode = "hosted"\nbase_url = "https://x.example.com/u?a=1&b=2"\n'
    )
    with pytest.raises(ConfigError, match=r"unsubscribe.base_url: String should match pattern"):
        site.config()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"0"', dt.timedelta()),
        ('"20m"', dt.timedelta(minutes=20)),
        ('"72h"', dt.timedelta(hours=72)),
    ],
)
def test_submit_ahead_is_a_duration_within_sendgrids_hold(
    site: Site, value: str, expected: dt.timedelta
) -> None:
    site.write_config(BASE_CONFIG.replace("[schedule]\n", f"[schedule]\nsubmit_ahead = {value}\n"))
    assert site.config().schedule.submit_ahead == expected


def test_submit_ahead_past_sendgrids_72_hours_names_the_key(site: Site) -> None:
    site.write_config(BASE_CONFIG.replace("[schedule]\n", '[schedule]\nsubmit_ahead = "73h"\n'))
    with pytest.raises(ConfigError, match=r"schedule\.submit_ahead: .*72 hours at most"):
        site.config()


def test_raw_events_are_kept_past_sendgrids_redeliveries(site: Site) -> None:
    site.write_config(BASE_CONFIG + '\n[analytics]\nkeep_events = "12h"\n')
    with pytest.raises(ConfigError, match=r"analytics\.keep_events: .*at least 3d"):
        site.config()
    site.write_config(BASE_CONFIG + '\n[analytics]\nkeep_events = "3d"\n')
    assert site.config().analytics.keep_events == dt.timedelta(days=3)
