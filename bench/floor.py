"""The floor: the least work a SendGrid send of this benchmark's issue needs.

    python bench/floor.py --list LIST.csv --database newsletter.db --common COMMON.json \\
        --url http://127.0.0.1:PORT --processes 2

Reads the list (each process its own share of the file's bytes), skips the
addresses suppressed in the state database, seals each reader's unsubscribe
link (AES-SIV, the project's token format), builds the mail/send bodies
(1,000 personalizations, orjson) byte for byte as the project does, and POSTs
them over one keep-alive connection per process. Nothing else: no render (the
fields shared by every request come from COMMON.json, taken from a body the
project sent), no state database writes, no retries, no progress.

`bench/send.py` runs it beside `newsletter send`, against the same sink, in the
same run, and compares its first body with the project's.
"""

from __future__ import annotations

import argparse
import binascii
import csv
import hashlib
import http.client
import sqlite3
import sys
import urllib.parse
from multiprocessing import get_context
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

BATCH = 1000
URLSAFE = bytes.maketrans(b"+/", b"-_")
HTML_SPECIAL = set("&<>\"'")


def shares(path: Path, processes: int) -> list[tuple[int, int]]:
    """Byte ranges of the list, one per process, each starting at a line (header skipped)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        f.readline()
        starts = [f.tell()]
        for k in range(1, processes):
            f.seek(max(starts[-1], size * k // processes))
            f.readline()
            starts.append(f.tell())
    return list(zip(starts, [*starts[1:], size], strict=True))


def rows(path: Path, start: int, end: int) -> list[list[str]]:
    with path.open("rb") as f:
        f.seek(start)
        text = f.read(end - start).decode("utf-8")
    return list(csv.reader(text.splitlines()))


def send_share(args: argparse.Namespace, start: int, end: int, first_body: str | None) -> int:
    common = orjson.loads(Path(args.common).read_bytes())
    custom_args = common.pop("__custom_args__")
    with sqlite3.connect(args.database) as db:
        suppressed = {e for (e,) in db.execute("SELECT email FROM suppressions")}
    siv = AESSIV(hashlib.sha512(b"newsletter sealed links\0" + args.secret.encode()).digest())
    seal, data = siv.encrypt, [b"unsubscribe"]
    b2a = binascii.b2a_base64
    prefix = f"{args.list_name}\n"
    base = args.base_url.rstrip("/") + "/unsubscribe/"
    url = urllib.parse.urlsplit(args.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer SG.floor"}
    people = []
    sent = 0

    def post() -> None:
        nonlocal first_body
        body = orjson.dumps({"personalizations": people, **common})
        if first_body is not None:
            Path(first_body).write_bytes(body)
            first_body = None
        conn.request("POST", "/v3/mail/send", body, headers)
        response = conn.getresponse()
        response.read()
        if response.status != 202:
            raise SystemExit(f"the sink answered {response.status}")

    for email, name in rows(Path(args.list), start, end):
        key = email.lower()
        if key in suppressed:
            continue
        token = b2a(seal((prefix + key).encode(), data), newline=False).translate(URLSAFE)
        link = base + token.rstrip(b"=").decode()
        shown = email
        if not HTML_SPECIAL.isdisjoint(email):
            shown = email.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            shown = shown.replace('"', "&quot;").replace("'", "&#x27;")
        people.append(
            {
                "to": [{"email": email, "name": name} if name else {"email": email}],
                "substitutions": {
                    "%%email%%": shown,
                    "%%email:text%%": email,
                    "%%unsubscribe_url%%": link,
                },
                "headers": {
                    "List-Unsubscribe": f"<{link}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                "custom_args": custom_args,
            }
        )
        if len(people) == BATCH:
            post()
            sent += len(people)
            people = []
    if people:
        post()
        sent += len(people)
    conn.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", required=True)
    parser.add_argument("--database", required=True, help="the SQLite state database")
    parser.add_argument("--common", required=True, help="the request's fields but personalizations")
    parser.add_argument("--url", required=True, help="the sink's base URL")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--secret", default="bench-signing-secret-0123456789")
    parser.add_argument("--list-name", default="main")
    parser.add_argument("--base-url", default="https://example.com/n")
    parser.add_argument("--first-body", help="write the first request body here")
    args = parser.parse_args()
    parts = shares(Path(args.list), args.processes)
    with get_context("spawn").Pool(args.processes) as pool:
        jobs = [
            pool.apply_async(send_share, (args, start, end, args.first_body if k == 0 else None))
            for k, (start, end) in enumerate(parts)
        ]
        print(sum(job.get() for job in jobs))


if __name__ == "__main__":
    sys.exit(main())
