"""FeedSource against a real HTTP server on 127.0.0.1: parsing, sanitising, failures, caching."""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from newsletter.errors import SourceError
from newsletter.models import SourceProblem, Window
from newsletter.state import Ledger
from newsletter.stories.base import gather
from newsletter.stories.cache import FeedCache, MemoryFeedCache
from newsletter.stories.feed import FeedSource

FEEDS = Path(__file__).parent / "fixtures" / "feeds"
RSS = (FEEDS / "rss2.xml").read_bytes()
ATOM = (FEEDS / "atom.xml").read_bytes()
NOT_A_FEED = (FEEDS / "not-a-feed.html").read_bytes()
RSS_TYPE = "application/rss+xml; charset=utf-8"
ATOM_TYPE = "application/atom+xml; charset=utf-8"


# -- a real HTTP server, told per path what to answer -------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering
    repeat: int = 1  # send the body this many times: a large feed without a large fixture
    trickle: float = 0.0  # seconds to wait between repeats: a server that never quite stops


@dataclass
class Request:
    """What the server received, and how far its answer got."""

    path: str
    headers: dict[str, str]  # names lower-cased
    status: int | None = None
    sent: int = 0  # body bytes written to the socket
    complete: bool = False  # the whole answer was written
    finished: threading.Event = field(default_factory=threading.Event)


Route = Reply | Callable[[Request], Reply]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # a connection left open by a client never outlives the test by long
    server: _Server

    def do_GET(self) -> None:
        feeds = self.server.feeds
        request = Request(self.path, {k.lower(): v for k, v in self.headers.items()})
        feeds.requests.append(request)
        try:
            route = feeds.routes.get(self.path, Reply(404, b"no such feed\n"))
            reply = route(request) if callable(route) else route
            if reply.delay and feeds.stopping.wait(reply.delay):
                return  # the test is over: answer nothing
            request.status = reply.status
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.status != 304:
                self.send_header("Content-Length", str(len(reply.body) * reply.repeat))
            self.end_headers()
            if reply.status != 304:
                for _ in range(reply.repeat):
                    if reply.trickle and feeds.stopping.wait(reply.trickle):
                        return
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                    request.sent += len(reply.body)
            request.complete = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client hung up, as some tests want
        finally:
            request.finished.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping never blocks shutdown
    feeds: FeedServer

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-answer is what several tests do on purpose."""


class FeedServer:
    """Serves ``routes`` on 127.0.0.1 at a free port and records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self.stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.feeds = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)


def conditional(body: bytes, content_type: str, etag: str, last_modified: str) -> Route:
    """A route that answers 304 when the client names the current ETag, else the feed."""
    validators = {"ETag": etag, "Last-Modified": last_modified}

    def answer(request: Request) -> Reply:
        if request.headers.get("if-none-match") == etag:
            return Reply(304, headers=validators)
        return Reply(200, body, {"Content-Type": content_type, **validators})

    return answer


class _Markup(HTMLParser):
    """Every start tag with its attributes, to assert on sanitised HTML."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


@pytest.fixture
def server() -> Iterator[FeedServer]:
    feeds = FeedServer()
    yield feeds
    feeds.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False) as http:  # no proxy from the environment
        yield http


def make_source(
    server: FeedServer,
    client: httpx.Client,
    path: str = "/feed.xml",
    *,
    name: str = "Example blog",
    cache: FeedCache | None = None,
    timeout: float = 10.0,
    max_bytes: int = 5_000_000,
) -> FeedSource:
    if cache is None:
        cache = MemoryFeedCache()
    url = server.url(path)
    return FeedSource(name, url, client, cache, timeout=timeout, max_bytes=max_bytes)


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=dt.UTC)


# -- parsing ---------------------------------------------------------------------------


def test_rss_items_become_stories(server: FeedServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE})

    cafe, tabs = make_source(server, client).fetch().stories

    assert cafe.title == 'Café prices & the "oat milk" index'  # entities decoded
    assert cafe.id == "tag:blog.example.com,2024:cafe-prices"
    assert cafe.url == "https://blog.example.com/2024/05/cafe-prices/"
    assert cafe.published == utc(2024, 5, 14, 13, 15)  # 08:15 -0500
    assert cafe.published.utcoffset() == dt.timedelta(0)
    assert cafe.source == "Example blog"
    assert cafe.author == "Jane Doe"  # dc:creator
    assert cafe.tags == ("Economics", "Coffee")
    assert cafe.image == "https://cdn.example.com/cafe-thumb.jpg"  # media:thumbnail
    assert cafe.summary == "What a flat white tells you about a city’s rent."
    assert cafe.body_html is not None
    assert "<strong>flat white</strong>" in cafe.body_html  # content:encoded, not description

    assert tabs.title == "Why tabs won the office vote"  # markup in a CDATA title dropped
    assert tabs.url == tabs.id == "https://blog.example.com/2024/05/tabs/"
    assert tabs.published == utc(2024, 5, 13, 21, 45)  # 23:45 +0200
    assert tabs.author == "Sam Roe"  # not "sam@example.com (Sam Roe)"
    assert tabs.tags == ("Culture",)
    assert tabs.image == "https://cdn.example.com/tabs-cover.jpg"  # enclosure type image/jpeg
    assert tabs.body_html == "<p>A close result: <b>52</b> to 48.</p>"  # from description
    assert tabs.summary is None


def test_atom_entries_become_stories(server: FeedServer, client: httpx.Client) -> None:
    server.routes["/atom.xml"] = Reply(body=ATOM, headers={"Content-Type": ATOM_TYPE})

    release, maintenance = make_source(server, client, "/atom.xml", name="Status").fetch().stories

    assert release.title == "Version 2.4: faster builds & smaller images"  # type="html" title
    assert release.id == "urn:uuid:1225c695-cfb8-4ebb-aaaa-80da344efa6a"
    assert release.url == "https://status.example.org/releases/2.4"  # the text/html alternate
    assert release.published == utc(2024, 5, 14, 5, 0)  # only <updated>, 07:00+02:00
    assert release.published.utcoffset() == dt.timedelta(0)
    assert release.author == "Priya Natarajan"  # without her email address
    assert release.tags == ("release", "builds")
    assert release.image is None
    assert release.summary == "Builds are 30% faster and images 40% smaller."
    assert release.body_html == (
        "<h2>Highlights</h2>\n"
        "<p>Builds are <strong>30%</strong> faster.</p>\n"
        '<p><img alt="Build times" src="https://status.example.org/img/builds.png"></p>\n'
        "\n"
        '<p>See the <a href="https://docs.example.org/2.4" rel="noopener noreferrer">'
        "upgrade guide</a>.</p>"
    )

    assert maintenance.title == "Scheduled maintenance on 20 May"
    assert maintenance.published == utc(2024, 5, 10, 18, 30)
    assert maintenance.author == "Ops"
    assert maintenance.body_html == "<p>Expect <em>brief</em> API interruptions.</p>"


def test_feed_html_is_reduced_to_an_email_safe_allowlist(
    server: FeedServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE})

    body = make_source(server, client).fetch().stories[0].body_html
    assert body is not None
    tags = _Markup(body).tags

    names = {name for name, _ in tags}
    assert names == {"p", "strong", "em", "a", "img", "ul", "li", "blockquote"}
    for banned in ("script", "style", "iframe", "form", "input", "button", "object", "param"):
        assert f"<{banned}" not in body
    # script and style lose their content too, not just their tags
    assert "document.write" not in body
    assert "tracker.example" not in body
    assert "display: none" not in body
    for name, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (name, attrs)  # onclick, onerror
        assert "style" not in attrs and "class" not in attrs, (name, attrs)
        for url_attr in ("href", "src"):
            if url_attr in attrs:
                assert urlsplit(attrs[url_attr] or "").scheme in {"http", "https"}, attrs
    # no javascript: link and no data: image survived with its URL
    assert ("a", {"rel": "noopener noreferrer"}) in tags
    assert ("img", {"alt": "inline"}) in tags

    # the harmless structure is kept
    assert "<p>We priced a <strong>flat white</strong> in <em>forty</em> cities.</p>" in body
    assert '<a href="https://blog.example.com/data.csv" rel="noopener noreferrer">' in body
    chart = {"alt": "Price chart", "src": "https://cdn.example.com/chart.png", "width": "600"}
    assert ("img", chart) in tags
    assert "<ul><li>Cheapest: Lisbon</li><li>Dearest: Zürich</li></ul>" in body
    assert "<blockquote>Coffee is a proxy for rent.</blockquote>" in body


def test_undated_entries_are_skipped_and_counted(server: FeedServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE})

    result = make_source(server, client).fetch()

    assert [s.title for s in result.stories] == [
        'Café prices & the "oat milk" index',
        "Why tabs won the office vote",
    ]
    assert result.problems == [
        SourceProblem("Example blog", "2 entries without a date were skipped")
    ]


# -- HTTP ------------------------------------------------------------------------------


def test_request_names_the_newsletter_and_asks_for_feeds(
    server: FeedServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE})

    make_source(server, client).fetch()

    (request,) = server.requests
    assert request.headers["user-agent"].startswith("newsletter/")
    assert "application/rss+xml" in request.headers["accept"]
    assert "application/atom+xml" in request.headers["accept"]
    assert "if-none-match" not in request.headers
    assert "if-modified-since" not in request.headers


def test_slow_server_times_out(server: FeedServer, client: httpx.Client) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE}, delay=2.0)
    source = make_source(server, client, timeout=0.5)

    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out after 0\.5s") as caught:
        source.fetch()

    assert time.monotonic() - started < 1.5
    assert source.url in str(caught.value)


def test_a_trickling_server_is_cut_off_by_the_total_deadline(
    server: FeedServer, client: httpx.Client
) -> None:
    # each byte arrives well within the per-read timeout, but the whole never ends
    server.routes["/feed.xml"] = Reply(
        body=b" ", headers={"Content-Type": RSS_TYPE}, repeat=10_000, trickle=0.1
    )
    source = make_source(server, client, timeout=0.3)

    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out: still downloading after 0\.9s"):
        source.fetch()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(("status", "phrase"), [(404, "Not Found"), (500, "Internal Server Error")])
def test_http_error_names_status_and_url(
    server: FeedServer, client: httpx.Client, status: int, phrase: str
) -> None:
    server.routes["/feed.xml"] = Reply(status, b"<html>oops</html>", {"Content-Type": "text/html"})
    source = make_source(server, client)

    with pytest.raises(SourceError) as caught:
        source.fetch()

    assert str(caught.value) == f"HTTP {status} {phrase} from {source.url}"


def test_connection_refused(client: httpx.Client) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, and nobody listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/feed.xml"

    with pytest.raises(SourceError, match="cannot fetch") as caught:
        FeedSource("Gone", url, client, MemoryFeedCache()).fetch()

    assert url in str(caught.value)


def test_feed_over_max_bytes_is_refused_without_reading_it_all(
    server: FeedServer, client: httpx.Client
) -> None:
    chunk = b"<!-- padding padding padding -->\n" * 2048  # 66 KiB
    total = len(chunk) * 1024  # 66 MiB announced and offered
    server.routes["/feed.xml"] = Reply(
        body=chunk, repeat=1024, headers={"Content-Type": RSS_TYPE, "ETag": '"big"'}
    )
    cache = MemoryFeedCache()
    source = make_source(server, client, cache=cache, max_bytes=100_000)

    with pytest.raises(SourceError, match=r"larger than max_bytes \(100000 bytes\)"):
        source.fetch()

    (request,) = server.requests
    assert request.finished.wait(5)
    assert not request.complete  # the client hung up ...
    assert request.sent < total // 2  # ... long before the end of the body
    assert cache.load(source.url) is None


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        pytest.param(NOT_A_FEED, "text/html; charset=utf-8", id="html-page"),
        pytest.param(NOT_A_FEED, "application/xhtml+xml", id="well-formed-xhtml-page"),
        pytest.param(RSS[:300] + b"\x00\xff\xfe<<garbage", RSS_TYPE, id="truncated-garbage"),
        pytest.param(b"", RSS_TYPE, id="empty-body"),
    ],
)
def test_not_a_feed_is_refused(
    server: FeedServer, client: httpx.Client, body: bytes, content_type: str
) -> None:
    server.routes["/feed.xml"] = Reply(body=body, headers={"Content-Type": content_type})

    with pytest.raises(SourceError, match="not a valid RSS or Atom feed"):
        make_source(server, client).fetch()


def test_redirect_is_followed(server: FeedServer, client: httpx.Client) -> None:
    server.routes["/old-feed"] = Reply(301, b"moved\n", {"Location": "/atom.xml"})
    server.routes["/atom.xml"] = Reply(body=ATOM, headers={"Content-Type": ATOM_TYPE})

    result = make_source(server, client, "/old-feed").fetch()

    assert [s.title for s in result.stories] == [
        "Version 2.4: faster builds & smaller images",
        "Scheduled maintenance on 20 May",
    ]
    assert [(r.path, r.status) for r in server.requests] == [("/old-feed", 301), ("/atom.xml", 200)]
    assert server.requests[1].headers["user-agent"].startswith("newsletter/")


def test_relative_links_resolve_against_the_final_url(
    server: FeedServer, client: httpx.Client
) -> None:
    feed = RSS_RELATIVE.encode()
    server.routes["/old"] = Reply(301, b"moved\n", {"Location": "/blog/feed.xml"})
    server.routes["/blog/feed.xml"] = Reply(body=feed, headers={"Content-Type": RSS_TYPE})

    [story] = make_source(server, client, "/old").fetch().stories

    assert story.url == server.url("/blog/posts/one.html")
    assert f'href="{server.url("/blog/about.html")}"' in (story.body_html or "")


RSS_RELATIVE = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>t</title><link>/blog/</link><description>d</description>
<item><title>One</title><link>posts/one.html</link><pubDate>Tue, 05 Mar 2024 06:00:00 GMT</pubDate>
<description>&lt;p&gt;See &lt;a href="about.html"&gt;about&lt;/a&gt;&lt;/p&gt;</description></item>
</channel></rss>"""


# -- conditional GET -------------------------------------------------------------------

ETAG = '"rss-v1-5f2a"'
LAST_MODIFIED = "Tue, 14 May 2024 09:30:00 GMT"


def test_conditional_get_across_runs_with_the_ledger(server: FeedServer, tmp_path: Path) -> None:
    server.routes["/feed.xml"] = conditional(RSS, RSS_TYPE, ETAG, LAST_MODIFIED)
    database = "sqlite:///" + str(tmp_path / "state.db")
    url = server.url("/feed.xml")

    def run() -> list[str]:
        """One run of the tool: its own ledger and HTTP client, closed at the end."""
        ledger = Ledger(database)
        try:
            with httpx.Client(trust_env=False) as http:
                result = FeedSource("Example blog", url, http, ledger).fetch()
        finally:
            ledger.close()
        return [story.title for story in result.stories]

    first = run()
    saved = Ledger(database)
    try:
        stored = saved.load(url)
    finally:
        saved.close()
    second = run()

    assert stored is not None
    assert (stored.etag, stored.last_modified, stored.body) == (ETAG, LAST_MODIFIED, RSS)
    assert stored.content_type == RSS_TYPE
    fresh, revalidated = server.requests
    assert "if-none-match" not in fresh.headers and fresh.status == 200
    assert revalidated.headers["if-none-match"] == ETAG
    assert revalidated.headers["if-modified-since"] == LAST_MODIFIED
    assert revalidated.status == 304
    assert first == second == ['Café prices & the "oat milk" index', "Why tabs won the office vote"]


def test_not_modified_in_one_process_reuses_the_memory_cache(
    server: FeedServer, client: httpx.Client
) -> None:
    server.routes["/atom.xml"] = conditional(ATOM, ATOM_TYPE, ETAG, LAST_MODIFIED)
    source = make_source(server, client, "/atom.xml", cache=MemoryFeedCache())

    first = source.fetch()
    second = source.fetch()

    assert [r.status for r in server.requests] == [200, 304]
    assert second.stories == first.stories
    assert len(second.stories) == 2


def test_not_modified_with_nothing_cached_is_a_clear_error(
    server: FeedServer, client: httpx.Client
) -> None:
    # We sent no validators, so a 304 is the server's mistake: refetching would ask the same.
    server.routes["/feed.xml"] = Reply(304, headers={"ETag": ETAG})
    cache = MemoryFeedCache()
    source = make_source(server, client, cache=cache)

    with pytest.raises(SourceError, match="304 Not Modified") as caught:
        source.fetch()

    assert "no cached copy" in str(caught.value)
    assert "if-none-match" not in server.requests[0].headers
    assert cache.load(source.url) is None  # an empty body is never remembered as the feed


# -- gather ----------------------------------------------------------------------------


def test_gather_builds_the_issue_from_the_feeds_that_work(
    server: FeedServer, client: httpx.Client
) -> None:
    server.routes["/feed.xml"] = Reply(body=RSS, headers={"Content-Type": RSS_TYPE})
    server.routes["/broken.xml"] = Reply(500, b"boom\n", {"Content-Type": "text/plain"})
    broken = make_source(server, client, "/broken.xml", name="Broken feed")
    working = make_source(server, client, "/feed.xml", name="Example blog")

    gathered = gather([broken, working], Window(utc(2024, 5, 13), utc(2024, 5, 15)))

    assert [s.title for s in gathered.stories] == [
        'Café prices & the "oat milk" index',
        "Why tabs won the office vote",
    ]
    assert {s.source for s in gathered.stories} == {"Example blog"}
    assert gathered.problems == (
        SourceProblem("Broken feed", f"HTTP 500 Internal Server Error from {broken.url}"),
        SourceProblem("Example blog", "2 entries without a date were skipped"),
    )
