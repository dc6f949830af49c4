"""`newsletter preview`: the issue in a browser as subscribers get it, rebuilt on every edit."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
from pathlib import Path

import click
from rich.text import Text

from newsletter.app import preview_page
from newsletter.cli.base import DATE, Command, Options, cannot_write, day_of, err, out
from newsletter.errors import NewsletterError
from newsletter.words import plural


@click.command(cls=Command)
@click.option(
    "--date", type=DATE, help="Issue date (default: today in the newsletter's time zone)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8025,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free one).",
)
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the inlined HTML (sample subscriber filled in) to FILE and exit.",
)
@click.pass_obj
def preview(
    opts: Options, date: dt.datetime | None, port: int, no_browser: bool, output: Path | None
) -> None:
    """Show the issue in a browser as subscribers will get it, reloading on every edit."""

    def build():  # type: ignore[no-untyped-def]
        return preview_page(opts.config_path, os.environ, day_of(date))

    if output is not None:
        page = build()
        try:
            output.write_text(page.html, encoding="utf-8")
        except OSError as exc:
            raise cannot_write("--output", output, exc) from None
        for note in page.notes:
            err.print(Text.assemble(("note:", "yellow"), f" {note}"))
        err.print(
            f"wrote {output} ({len(page.html.encode()) / 1024:.1f} KB, "
            f"{plural(page.stories, 'story')})"
        )
        return

    from newsletter.preview import PreviewState, Watcher, make_server

    state = PreviewState(build)
    page = state.rebuild()
    if page.error:
        raise_error = NewsletterError(page.error)
        raise raise_error
    for note in page.notes:
        err.print(Text.assemble(("note:", "yellow"), f" {note}"))
    try:
        server = make_server(state, port)
    except OSError as exc:
        raise NewsletterError(
            f"--port {port}: cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
            "choose another port, or --port 0 for any free one"
        ) from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    out.print(f"Preview at {url} (Ctrl-C to stop)", soft_wrap=True)
    sys.stdout.flush()
    watcher = Watcher(state)
    watcher.start()
    if not no_browser:
        import webbrowser  # only `preview` opens a browser

        webbrowser.open(url)
    # SIGTERM (a service manager, a terminal closed, `kill`) stops it as Ctrl-C does
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        watcher.stop()
        server.server_close()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
