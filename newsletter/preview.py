"""`newsletter preview`: the day's email on a local web server, rebuilt on every edit.

`/email.html` is byte for byte what a subscriber gets (sample values filled
in), so the preview can be trusted; the page around it adds the text part,
a phone-width view and live reload.
"""

from __future__ import annotations

import gettext
import html
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

from newsletter.errors import NewsletterError

if TYPE_CHECKING:
    from newsletter.i18n import Language

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviewPage:
    """One build of the preview: the email as a subscriber gets it, or why it failed."""

    subject: str = ""
    preheader: str = ""
    html: str = ""
    text: str = ""
    stories: int = 0
    notes: tuple[str, ...] = ()
    error: str | None = None
    watch: tuple[Path, ...] = ()
    language: Language | None = None  # the newsletter's, for the page around the email


Builder = Callable[[], PreviewPage]


@dataclass
class PreviewState:
    """The current page and a version number the browser polls to know when to reload."""

    build: Builder
    page: PreviewPage = field(default_factory=PreviewPage)
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rebuild(self) -> PreviewPage:
        try:
            page = self.build()
        except NewsletterError as exc:
            page = PreviewPage(error=str(exc), watch=self.page.watch, language=self.page.language)
        with self.lock:
            self.page = page
            self.version += 1
        return page


def snapshot(paths: Iterable[Path]) -> dict[Path, float]:
    """Modification times of every file under the watched paths."""
    seen: dict[Path, float] = {}
    for root in paths:
        candidates = [root] if root.is_file() else (root.rglob("*") if root.is_dir() else [])
        for path in candidates:
            try:
                if path.is_file():
                    seen[path] = path.stat().st_mtime_ns
            except OSError:
                continue
    return seen


class Watcher(threading.Thread):
    """Polls the config, templates and story folders; rebuilds when any file changes."""

    def __init__(self, state: PreviewState, interval: float = 0.4) -> None:
        super().__init__(daemon=True, name="preview-watcher")
        self.state = state
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        before = snapshot(self.state.page.watch)
        while not self.stopped.wait(self.interval):
            now = snapshot(self.state.page.watch)
            if now != before:
                log.info("change detected, rebuilding the preview")
                page = self.state.rebuild()
                before = snapshot(page.watch)

    def stop(self) -> None:
        self.stopped.set()


class _Handler(BaseHTTPRequestHandler):
    state: PreviewState  # set on the subclass made by serve()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        with self.state.lock:
            page, version = self.state.page, self.state.version
        if path == "/":
            self._send(HTTPStatus.OK, "text/html", index_page(page, version))
        elif path == "/email.html":
            if page.error:
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", page.error)
            else:
                self._send(HTTPStatus.OK, "text/html", page.html)
        elif path == "/email.txt":
            self._send(HTTPStatus.OK, "text/plain", page.error or page.text)
        elif path == "/version":
            self._send(HTTPStatus.OK, "application/json", json.dumps({"version": version}))
        else:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", "not found")

    def _send(self, status: HTTPStatus, kind: str, body: str) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("preview: " + format, *args)


def make_server(state: PreviewState, port: int = 8025) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 only: the preview shows unsent content."""
    handler = type("PreviewHandler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    return server


def index_page(page: PreviewPage, version: int) -> str:
    e = html.escape
    words = page.language.translations if page.language else gettext.NullTranslations()
    _, ngettext = words.gettext, words.ngettext
    direction = page.language.direction if page.language else "ltr"
    code = page.language.code if page.language else "en"
    stories = ngettext("%(num)d story", "%(num)d stories", page.stories) % {"num": page.stories}
    # (outside the f-strings below, where gettext's extractor can find them)
    desktop, desktop_title = _("Desktop"), _("Email at desktop width")
    phone, phone_title = _("Phone (375 px)"), _("Email at phone width")
    text_part, live = _("Plain-text part"), _("live reload on")
    title = _("Preview: %(subject)s") % {"subject": page.subject}
    notes = "".join(f"<li>{e(n)}</li>" for n in page.notes)
    if page.error:
        body = f'<pre class="error">{e(page.error)}</pre>'
    else:
        body = f"""
<div class="views">
  <section class="view" id="desktop"><h2>{e(desktop)}</h2>
    <iframe title="{e(desktop_title)}" src="/email.html" class="desktop"></iframe></section>
  <section class="view" id="phone"><h2>{e(phone)}</h2>
    <iframe title="{e(phone_title)}" src="/email.html" class="phone"></iframe></section>
  <section class="view" id="text"><h2>{e(text_part)}</h2>
    <iframe title="{e(text_part)}" src="/email.txt" class="text"></iframe></section>
</div>"""
    return f"""<!DOCTYPE html>
<html lang="{e(code)}" dir="{direction}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>
body {{ margin: 0; font: 14px/1.45 system-ui, sans-serif; background: #e5e7eb; color: #111827; }}
header {{ background: #111827; color: #f9fafb; padding: 12px 20px; position: sticky; top: 0; z-index: 1; }}
header .subject {{ font-size: 16px; font-weight: 600; }}
header .meta {{ color: #9ca3af; font-size: 13px; }}
header ul {{ margin: 6px 0 0; padding-inline-start: 18px; color: #fbbf24; }}
.views {{ display: flex; flex-wrap: wrap; gap: 20px; padding: 20px; align-items: flex-start; }}
.view h2 {{ font-size: 12px; text-transform: uppercase; letter-spacing: 1px; color: #4b5563; margin: 0 0 6px; }}
iframe {{ border: 0; background: #fff; box-shadow: 0 1px 4px rgba(0,0,0,.2); height: 1400px; }}
iframe.desktop {{ width: 680px; }}
iframe.phone {{ width: 375px; height: 900px; border-radius: 18px; }}
iframe.text {{ width: 640px; }}
.error {{ margin: 20px; padding: 16px; background: #fee2e2; color: #7f1d1d; white-space: pre-wrap; }}
</style></head>
<body>
<header>
  <div class="subject">{e(page.subject)}</div>
  <div class="meta">{e(page.preheader)} · {e(stories)} · {e(live)}</div>
  {f"<ul>{notes}</ul>" if notes else ""}
</header>
{body}
<script>
let version = {version};
setInterval(async () => {{
  try {{
    const r = await fetch('/version', {{cache: 'no-store'}});
    const v = (await r.json()).version;
    if (v !== version) location.reload();
  }} catch (e) {{}}
}}, 700);
</script>
</body></html>"""
