"""Benchmark of `/webhooks/sendgrid`: how fast a signed batch of events is answered.

    python bench/webhook.py                       # batches of 100 and 1,000 events, 7 posts each
    python bench/webhook.py --events 1000 --posts 5

Runs the real `newsletter serve` as a separate process on 127.0.0.1 (SQLite state
database), posts SendGrid-style signed batches of fresh events (delivered, opens,
clicks and one bounce in fifty) and measures the time to the 200, which comes only
after the batch is committed. Then re-posts one batch (SendGrid's retry): every
event must be reported as already seen. Prints one JSON line per batch size
(medians). Not a test: figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from harness import child_env, free_port, newsletter_command, report

SECRET = "bench-signing-secret-0123456789"


def events(start: int, count: int, issue_id: int = 1) -> list[dict[str, object]]:
    kinds = ("delivered", "delivered", "open", "click", "processed")
    batch: list[dict[str, object]] = []
    for n in range(start, start + count):
        kind = "bounce" if n % 50 == 0 else kinds[n % len(kinds)]
        batch.append({
            "email": f"reader{n}@example.com", "event": kind, "sg_event_id": f"bench-{n}",
            "sg_message_id": f"m{n // 1000}.filter", "timestamp": int(time.time()),
            "issue_id": str(issue_id), "list": "main", "type": "bounce",
        })  # fmt: skip
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--posts", type=int, default=7)
    args = parser.parse_args()

    key = ec.generate_private_key(ec.SECP256R1())
    public = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "config.toml").write_text(
            f"""
[newsletter]
name = "The Bench Times"
postal_address = "1 Benchmark Road"
[sender]
from_email = "news@example.com"
[delivery]
transport = "outbox"
[unsubscribe]
mode = "hosted"
base_url = "{url}"
[sendgrid]
webhook_public_key = "{public}"
""",
            encoding="utf-8",
        )
        server = subprocess.Popen(
            newsletter_command(folder / "config.toml", "serve", "--port", str(port)),
            env=child_env(SECRET, drop=()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        http.get("/healthz")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise SystemExit("serve did not start") from None
                        time.sleep(0.1)
                start = 0
                for size in args.events:
                    times = []
                    for _ in range(args.posts):
                        body = json.dumps(events(start, size)).encode()
                        start += size
                        times.append(post(http, key, body, expect_new=size))
                    replay = post(http, key, body, expect_new=0)
                    report({
                        "events": size, "posts": args.posts,
                        "median_ms": round(statistics.median(times) * 1000, 1),
                        "per_event_us": round(statistics.median(times) / size * 1e6, 1),
                        "runs_ms": [round(t * 1000, 1) for t in times],
                        "replay_ms": round(replay * 1000, 1),
                    })  # fmt: skip
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)


def post(
    http: httpx.Client, key: ec.EllipticCurvePrivateKey, body: bytes, expect_new: int
) -> float:
    stamp = str(int(time.time()))
    signature = base64.b64encode(key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256())))
    headers = {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": signature.decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }
    began = time.perf_counter()
    answer = http.post("/webhooks/sendgrid", content=body, headers=headers)
    took = time.perf_counter() - began
    assert answer.status_code == 200, answer.text
    assert answer.json()["new"] == expect_new, answer.json()
    return took


if __name__ == "__main__":
    main()
