"""The SMTP benchmark's inputs: the newsletter both contenders send, and mailmerge's copy.

`build_newsletter` writes the newsletter folder `newsletter send` runs in (ten
stories, SMTP on the sink, hosted unsubscribe links); `build_mailmerge_inputs`
renders that issue once with the project's own code and turns it into mailmerge's
template, database and server config, so that both send the same message to the
same reader. Used by smtp_vs_mailmerge.py.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import jinja2
from harness import child_env, reader, reset_state, story, write_newsletter

from newsletter.app import SAMPLE_SUBSCRIBER, App, preview_page
from newsletter.config import load_config
from newsletter.planning import UnsubscribeLinks
from newsletter.signing import Signer
from newsletter.tokens import TOKEN_RE

ISSUE_DATE = dt.date(2024, 6, 3)
LIST_NAME = "main"
# Deterministic, so reruns sign the same links; long enough for `newsletter send`.
SECRET = "bench-secret-not-for-production-0123456789"
BASE_URL = "https://news.example.com/n"
FROM_EMAIL = "brief@example.com"
FROM_NAME = "The Morning Brief"

# Story bodies from the repository's example newsletter (stories/ and the
# 2023-11-09 digest fixture), copied so the benchmark depends on neither.
BODIES = (
    """On November 8, Russian President Vladimir Putin hosted Zhang Youxia, the Vice Chairman of the Central Military Commission of China in Moscow. Zhang Youxia conveyed President Xi Jinping’s warm greetings and best wishes to President Putin.

Zhang Youxia stated that the China-Russia friendship continues to grow and strengthen over time. In this year, China and Russia have achieved several successful meetings and a series of important consensus. China is willing to work with Russia to jointly safeguard the interests of both countries as well as world and regional prosperity and stability.

During the meeting, Putin emphasized, “Russia and China are not seeking to create any military alliances using Cold War-era templates.” Points out that although military cooperation is becoming increasingly important, China and Russia are currently paying more attention to the economic front and have been quite effective in these efforts, which is a positive momentum in bilateral trade and economic ties.""",
    """At the invitation of US Treasury Secretary Janet Yellen, He Lifeng, member of the Political Bureau of the CPC Central Committee, Vice Premier of the State Council, and the Chinese lead for Sino-US economic and trade, departed for San Francisco on November 8 to visit the United States.

This trip is to implement the consensus reached at the meeting between the heads of the two countries in Bali – during the Bali meeting, the two heads of state agreed that the financial teams of the two countries would conduct dialogue and coordination on macroeconomic policies and economic and trade issues.

In September of this year, to implement the important consensus of the meeting in Bali, China and the US agreed to establish working groups in the economic field, including the “Economic Working Group” and the “Financial Working Group”. Half a month ago, the Sino-US Economic Working Group and the Sino-US Financial Working Group held their first meetings respectively. This visit to the US will contribute to strengthening cooperation between China and the US in the economic field.

Sino-US relations are a hot topic on the Chinese internet. The general consensus among Chinese netizens is that a possible win-win of Sino-US relations is beneficial for economic development for both countries.""",
    """On November 8, the China Internet Development Report 2023 and the World Internet Development Report 2023 were unveiled during the prestigious 2023 World Internet Conference Wuzhen Summit.

According to the report, as of June, an impressive **364 million** individuals in China were utilizing Internet healthcare services, showcasing the profound integration of digital technology into people’s daily lives. Furthermore, an average of 68,000 disabled individuals annually found employment opportunities through the Internet in China, underscoring the transformative power of digital platforms.

In addition to its domestic advancements, China has demonstrated its commitment to global digital public services enhancement. The country has actively engaged in international collaboration, particularly in the realm of internet-based poverty alleviation.

The release of these reports signifies China’s dedication to fostering digital innovation, expanding internet access, and utilizing technology for the betterment of society at large.""",
    """Every story in this newsletter is a Markdown file in the `stories/` folder. The lines between the two `---` markers at the top are its *front matter*:

- `title` and `date` are required; a date without a time zone is read in the newsletter's own.
- `url`, `summary`, `author`, `tags`, `image` and `image_alt` are optional.
- `draft: true` keeps a story out of every issue until you remove it.

> Write the way you would talk to one reader over breakfast.

Run `newsletter preview` while you write: the browser reloads each time you save.""",
)
# (title, tag, summary); bodies are reused in turn, so ten stories come out realistic in size.
HEADLINES = (
    ("Putin Meets Top Chinese General", "World", "Putin hosted Zhang Youxia in Moscow."),
    ("New Round of Sino-US Economic Dialogue", "Economy", "He Lifeng travels to San Francisco."),
    ("Online Medical Service Users Reach 364 Million", "Technology", "Reports from Wuzhen."),
    ("How to Add a Story to This Newsletter", "Housekeeping", "One Markdown file per story."),
    ("Defence Ties Discussed in Moscow", "World", "Military cooperation, economic focus."),
    ("Working Groups Meet Ahead of the Visit", "Economy", "Economic and financial groups met."),
    ("Digital Platforms Bring Jobs to Thousands", "Technology", "68,000 found work online."),
    ("Writing for the Morning Brief", "Housekeeping", "Front matter, drafts and previews."),
    ("Leaders Reaffirm Constructive Ties", "World", "No Cold War-era alliances, says Putin."),
    ("Bali Consensus Put Into Practice", "Economy", "Macroeconomic coordination continues."),
)


# -- the newsletter -------------------------------------------------------------------------


def config_toml(port: int, workers: int = 1) -> str:
    """A minimal newsletter config: SMTP on the sink, hosted unsubscribe links.

    One worker (one SMTP connection) by default: the issue's target is about the
    transport, not about parallelism a 2-core machine cannot give.
    """
    return f"""\
[newsletter]
name = "{FROM_NAME}"
timezone = "Europe/London"
postal_address = \"\"\"The Morning Brief
1 Example Street
London EC1A 1AA, United Kingdom\"\"\"

[sender]
from_email = "{FROM_EMAIL}"
from_name = "{FROM_NAME}"

[issue]
window = "24h"
max_stories = 10

[[sources]]
kind = "markdown"
name = "newsroom"
path = "stories"

[delivery]
transport = "smtp"
workers = {workers}

[smtp]
host = "127.0.0.1"
port = {port}
security = "none"

[unsubscribe]
mode = "hosted"
base_url = "{BASE_URL}"
"""


def stories(date: dt.date) -> dict[str, str]:
    """Ten stories published in the early hours of the issue date (inside its window)."""
    files = {}
    for index, (title, tag, summary) in enumerate(HEADLINES):
        published = dt.datetime.combine(date, dt.time(0, 30)) + dt.timedelta(minutes=30 * index)
        slug = f"story-{index + 1:02d}"
        front = {
            "title": title,
            "date": f"{published.isoformat()}+01:00",
            "url": f"https://example.com/{date:%Y/%m/%d}/{slug}",
            "author": "Newsroom",
            "tags": f"[{tag}]",
            "summary": summary,
        }
        files[f"{date.isoformat()}-{slug}.md"] = story(front, BODIES[index % len(BODIES)])
    return files


def build_newsletter(
    root: Path, port: int, recipients: int, date: dt.date, workers: int = 1
) -> Path:
    """The throwaway newsletter folder, readers 1 to `recipients`; returns its config path."""
    readers = (reader(i) for i in range(1, recipients + 1))
    return write_newsletter(root, config_toml(port, workers), stories(date), readers, LIST_NAME)


# -- mailmerge's inputs ---------------------------------------------------------------------


def to_jinja(document: str, *, html: bool) -> str:
    """Our once-rendered part with its %%tokens%% turned into mailmerge's Jinja fields.

    The static text is wrapped in {% raw %} so braces in the issue (CSS, story text)
    can never be read as Jinja. mailmerge's Jinja does not autoescape, so the HTML part
    escapes explicitly, as our Personaliser does.
    """
    pieces = TOKEN_RE.split(document)
    out: list[str] = []
    for i in range(0, len(pieces), 3):
        static = pieces[i]
        if "{% endraw %}" in static:
            raise SystemExit("the rendered issue contains '{% endraw %}': cannot template it")
        if static:
            out.append("{% raw %}" + static + "{% endraw %}")
        if i + 1 < len(pieces):
            name = pieces[i + 1]
            out.append(f"{{{{ {name}|e }}}}" if html else f"{{{{ {name} }}}}")
    return "".join(out)


def mailmerge_template(subject: str, html: str, text: str, multipart: bool) -> str:
    """A mailmerge template sending what our SMTP transport sends.

    Same headers (To with the name, From, Subject, List-Unsubscribe and its
    one-click POST) and the same multipart/alternative text + HTML body. No
    Content-Transfer-Encoding is declared: mailmerge picks one itself (base64
    for UTF-8 text) and would otherwise send the raw text under a wrong label.
    `multipart=False` sends only the HTML part (less work for mailmerge).
    """
    headers = "\n".join(
        [
            'TO: "{{ name }}" <{{ email }}>',
            f"FROM: {FROM_NAME} <{FROM_EMAIL}>",
            f"SUBJECT: {subject}",
            "List-Unsubscribe: <{{ unsubscribe_url }}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            "MIME-Version: 1.0",
        ]
    )
    html_jinja = to_jinja(html, html=True)
    if not multipart:
        return f'{headers}\nContent-Type: text/html; charset="utf-8"\n\n{html_jinja}\n'
    boundary = "==bench-boundary-7f3a1c=="
    assert boundary not in html and boundary not in text
    return (
        f'{headers}\nContent-Type: multipart/alternative; boundary="{boundary}"\n\n'
        f'--{boundary}\nContent-Type: text/plain; charset="utf-8"\n\n'
        f"{to_jinja(text, html=False)}\n"
        f'--{boundary}\nContent-Type: text/html; charset="utf-8"\n\n'
        f"{html_jinja}\n"
        f"--{boundary}--\n"
    )


def signed_unsubscribe_url(address: str) -> str:
    """The link our send puts in this recipient's message (signed with the project's code)."""
    return UnsubscribeLinks(Signer(SECRET), BASE_URL, LIST_NAME, None).for_address(address)[0]


def write_mailmerge_database(path: Path, count: int) -> None:
    """mailmerge's CSV: our columns plus the values our send computes per recipient.

    first_name and the signed unsubscribe URL are computed here, outside the timed
    run (mailmerge cannot sign links), with the project's own code, so the links are
    the ones our send puts in the same recipient's message.
    """
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["email", "name", "first_name", "unsubscribe_url"])
        for i in range(1, count + 1):
            address, name = reader(i)
            writer.writerow([address, name, name.split()[0], signed_unsubscribe_url(address)])


def mailmerge_server_conf(port: int) -> str:
    """Plain SMTP on the sink, no login, and no rate limit (0): the tools race, not a sleep."""
    return f"""\
[smtp_server]
host = 127.0.0.1
port = {port}
security = Never
ratelimit = 0
"""


@dataclass(frozen=True)
class MailmergeInputs:
    """mailmerge's three files, and what the report says about the issue they send."""

    template: Path
    database: Path
    config: Path
    subject: str
    tokens: list[str]


def build_mailmerge_inputs(
    folder: Path,
    newsletter_config: Path,
    port: int,
    recipients: int,
    date: dt.date,
    *,
    multipart: bool,
) -> MailmergeInputs:
    """Render the issue once with our code and turn it into mailmerge's three files.

    The issue is built as `newsletter send` builds it (tokens left in), rather than
    from `preview --output`, whose sample values would have to be guessed back out of
    the HTML and which has no text part. As a check, the template filled with the
    preview's sample subscriber must reproduce the preview's HTML byte for byte.
    """
    folder.mkdir(parents=True, exist_ok=True)
    environ = child_env(SECRET)
    with App(load_config(newsletter_config, environ)) as app:
        built = app.build_issue(date, LIST_NAME)
    reset_state(newsletter_config.parent)
    if built.issue.is_empty or len(built.issue.stories) != len(HEADLINES):
        raise SystemExit(f"expected {len(HEADLINES)} stories, got {len(built.issue.stories)}")
    rendered = built.email

    page = preview_page(newsletter_config, environ, date)
    reset_state(newsletter_config.parent)
    sample = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(
        to_jinja(rendered.html, html=True)
    )
    if sample.render(SAMPLE_SUBSCRIBER) != page.html:
        raise SystemExit("the mailmerge template does not reproduce the preview's HTML")

    inputs = MailmergeInputs(
        template=folder / "mailmerge_template.txt",
        database=folder / "mailmerge_database.csv",
        config=folder / "mailmerge_server.conf",
        subject=rendered.subject,
        tokens=sorted(rendered.tokens),
    )
    inputs.template.write_text(
        mailmerge_template(rendered.subject, rendered.html, rendered.text, multipart),
        encoding="utf-8",
    )
    write_mailmerge_database(inputs.database, recipients)
    inputs.config.write_text(mailmerge_server_conf(port), encoding="utf-8")
    return inputs
