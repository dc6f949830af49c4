"""Tests of the SendGrid emulator, driven by the official `sendgrid` client.

Why: other tests trust the emulator to answer like SendGrid; these pin that down against the
official OpenAPI spec and the client the newsletter uses.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sendgrid
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    TooManyRequestsError,
    UnauthorizedError,
)
from sendgrid.helpers.mail import Mail

from tests.support import fixtures
from tests.support.fixtures import SENDGRID_TEST_API_KEY as KEY
from tests.support.sendgrid_emulator import (
    SUPPRESSION_LISTS,
    Fault,
    SendGridEmulator,
    group_key,
    suppression_response_validator,
)

sendgrid_emulator = fixtures.sendgrid_emulator

MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{22}$")
EMULATOR_SCRIPT = Path(__file__).parent / "support" / "sendgrid_emulator.py"


def client(
    emu: SendGridEmulator, timeout: float = 2.0, key: str = KEY
) -> sendgrid.SendGridAPIClient:
    sg = sendgrid.SendGridAPIClient(key, host=emu.url)
    sg.client.timeout = timeout  # propagated to every sub-client built from it
    return sg


def mail(n: int = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "from": {"email": "news@example.com", "name": "Daily"},
        "subject": "Today's issue",
        "content": [
            {"type": "text/plain", "value": "Hello"},
            {"type": "text/html", "value": "<p>Hello</p>"},
        ],
        "personalizations": [
            {"to": [{"email": f"reader{i}@example.com"}], "custom_args": {"sid": str(i)}}
            for i in range(n)
        ],
    }
    body.update(extra)
    return body


def post_raw(emu: SendGridEmulator, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{emu.url}/v3/mail/send", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# ---------------------------------------------------------------- accepted mail


def test_helper_mail_is_accepted_with_message_id(sendgrid_emulator: SendGridEmulator) -> None:
    message = Mail(
        from_email="news@example.com",
        to_emails=["a@example.com", "b@example.com"],
        subject="Hello",
        plain_text_content="Hi",
        html_content="<p>Hi</p>",
    )
    response = client(sendgrid_emulator).send(message)

    assert response.status_code == 202
    assert response.body == b""
    assert MESSAGE_ID.match(response.headers["X-Message-Id"])
    [record] = sendgrid_emulator.requests
    assert (
        record.accepted
        and record.validated
        and record.message_id == response.headers["X-Message-Id"]
    )
    assert record.headers["authorization"] == f"Bearer {KEY}"
    assert sendgrid_emulator.accepted() == [message.get()]
    assert sendgrid_emulator.recipients() == ["a@example.com", "b@example.com"]


def test_thousand_personalizations_are_accepted(sendgrid_emulator: SendGridEmulator) -> None:
    response = client(sendgrid_emulator).send(mail(1000))

    assert response.status_code == 202
    assert len(sendgrid_emulator.recipients()) == 1000
    stats = sendgrid_emulator.stats()
    assert (stats.accepted, stats.personalizations, stats.recipients) == (1, 1000, 1000)
    assert stats.bytes_received == sendgrid_emulator.requests[0].size > 0


def test_message_ids_are_fresh(sendgrid_emulator: SendGridEmulator) -> None:
    sg = client(sendgrid_emulator)
    ids = {sg.send(mail()).headers["X-Message-Id"] for _ in range(5)}
    assert len(ids) == 5


def test_sandbox_mode_answers_200(sendgrid_emulator: SendGridEmulator) -> None:
    body = mail(mail_settings={"sandbox_mode": {"enable": True}})
    response = client(sendgrid_emulator).send(body)

    assert response.status_code == 200
    assert MESSAGE_ID.match(response.headers["X-Message-Id"])
    assert sendgrid_emulator.requests[0].accepted


def test_gzip_body_is_accepted(sendgrid_emulator: SendGridEmulator) -> None:
    data = gzip.compress(json.dumps(mail(3)).encode())
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        "Content-Encoding": "gzip",
    }
    assert post_raw(sendgrid_emulator, data, headers) == (202, b"")
    assert len(sendgrid_emulator.recipients()) == 3


# ---------------------------------------------------------------- rejected mail


def _without_from() -> dict[str, Any]:
    body = mail()
    del body["from"]
    return body


INVALID_BODIES = {
    "missing from": (_without_from(), "from"),
    "email not a string": (
        mail(personalizations=[{"to": [{"email": 42}]}]),
        "personalizations.0.to.0.email",
    ),
    "email without @": (
        mail(personalizations=[{"to": [{"email": "nobody"}]}]),
        "personalizations.0.to.0.email",
    ),
    "top-level custom_args object (spec says string)": (
        mail(custom_args={"issue": "2024-05-01"}),
        "custom_args",
    ),
    "1001 personalizations": (mail(1001), "personalizations"),
    "1001 recipients in one personalization": (
        mail(
            personalizations=[
                {
                    "to": [{"email": f"t{i}@example.com"} for i in range(600)],
                    "cc": [{"email": f"c{i}@example.com"} for i in range(401)],
                }
            ]
        ),
        "personalizations",
    ),
    "duplicate recipient": (
        mail(
            personalizations=[
                {"to": [{"email": "a@example.com"}], "bcc": [{"email": "A@example.com"}]}
            ]
        ),
        "personalizations.0.bcc",
    ),
    "reply_to and reply_to_list": (
        mail(reply_to={"email": "r@example.com"}, reply_to_list=[{"email": "s@example.com"}]),
        "reply_to_list",
    ),
    "neither content nor template_id": (mail(content=[]), "content"),
    "html before plain": (
        mail(
            content=[
                {"type": "text/html", "value": "<p>x</p>"},
                {"type": "text/plain", "value": "x"},
            ]
        ),
        "content",
    ),
    "no subject anywhere": (mail(subject=None), "subject"),
    "empty to": (mail(personalizations=[{"to": []}]), "personalizations.0.to"),
}


@pytest.mark.parametrize(("body", "field"), INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_invalid_body_is_rejected_naming_the_field(
    sendgrid_emulator: SendGridEmulator, body: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(BadRequestsError) as caught:
        client(sendgrid_emulator).send(body)

    errors = caught.value.to_dict["errors"]
    assert field in [e["field"] for e in errors], errors
    assert all(set(e) == {"field", "message", "help"} and e["message"] for e in errors)
    assert all(len(e["message"]) < 400 for e in errors)  # never echoes the whole body
    [record] = sendgrid_emulator.requests
    assert (record.status, record.accepted, record.errors) == (400, False, errors)
    assert sendgrid_emulator.accepted() == []
    assert sendgrid_emulator.stats().validation_failures == 1


@pytest.mark.parametrize("sendgrid_emulator", [{"lenient_custom_args": True}], indirect=True)
def test_lenient_custom_args_accepts_an_object_like_the_live_api(
    sendgrid_emulator: SendGridEmulator,
) -> None:
    assert client(sendgrid_emulator).send(mail(custom_args={"issue": "1"})).status_code == 202


def test_non_json_body_is_400(sendgrid_emulator: SendGridEmulator) -> None:
    status, body = post_raw(sendgrid_emulator, b"{not json", {"Authorization": f"Bearer {KEY}"})
    assert status == 400
    assert json.loads(body) == {"errors": [{"field": None, "message": "Bad Request", "help": None}]}
    assert not sendgrid_emulator.requests[0].accepted


@pytest.mark.parametrize("sendgrid_emulator", [{"max_body_bytes": 2000}], indirect=True)
def test_oversized_body_is_413(sendgrid_emulator: SendGridEmulator) -> None:
    sg = client(sendgrid_emulator)
    with pytest.raises(PayloadTooLargeError):
        sg.send(mail(100))
    assert sg.send(mail(1)).status_code == 202  # the server still works afterwards


def test_wrong_key_is_401(sendgrid_emulator: SendGridEmulator) -> None:
    with pytest.raises(UnauthorizedError) as caught:
        client(sendgrid_emulator, key="SG.wrong").send(mail())

    assert caught.value.to_dict == {
        "errors": [
            {
                "field": None,
                "message": "The provided authorization grant is invalid, expired, or revoked",
                "help": None,
            }
        ]
    }
    assert sendgrid_emulator.requests[0].status == 401
    assert sendgrid_emulator.stats().accepted == 0


def test_missing_authorization_is_401(sendgrid_emulator: SendGridEmulator) -> None:
    status, _ = post_raw(sendgrid_emulator, json.dumps(mail()).encode(), {})
    assert status == 401


def test_unknown_path_is_404(sendgrid_emulator: SendGridEmulator) -> None:
    with pytest.raises(HTTPError) as caught:
        client(sendgrid_emulator).client.nope.get()
    assert caught.value.status_code == 404


# ---------------------------------------------------------------- validation sampling


@pytest.mark.parametrize(
    ("sendgrid_emulator", "expected"),
    [
        ({"validate": "sample:3"}, [400, 202, 202, 400, 202, 202, 400]),
        ({"validate": "first"}, [400, 202, 202, 202]),
        ({"validate": "none"}, [202, 202]),
    ],
    indirect=["sendgrid_emulator"],
)
def test_validation_sampling(sendgrid_emulator: SendGridEmulator, expected: list[int]) -> None:
    sg = client(sendgrid_emulator)
    statuses = []
    for _ in expected:
        try:
            statuses.append(sg.send(_without_from()).status_code)
        except BadRequestsError as err:
            statuses.append(err.status_code)

    assert statuses == expected
    stats = sendgrid_emulator.stats()
    assert stats.validated == stats.validation_failures == expected.count(400)
    assert stats.personalizations == expected.count(202)  # counted without validation too


@pytest.mark.parametrize("sendgrid_emulator", [{"record_bodies": False}], indirect=True)
def test_count_only_mode_keeps_no_bodies(sendgrid_emulator: SendGridEmulator) -> None:
    sg = client(sendgrid_emulator)
    for _ in range(3):
        sg.send(mail(10))

    assert all(r.body is None and r.personalizations == 10 for r in sendgrid_emulator.requests)
    stats = sendgrid_emulator.stats()
    assert (stats.requests, stats.personalizations, stats.recipients) == (3, 30, 30)
    with pytest.raises(RuntimeError):
        sendgrid_emulator.recipients()


# ---------------------------------------------------------------- faults


def test_scripted_faults_are_consumed_in_order(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.script(
        Fault(status=429, headers={"Retry-After": "1"}),
        Fault(status=503),
        Fault(status=400, errors=[{"field": "personalizations.0.to", "message": "scripted"}]),
    )
    sg = client(sendgrid_emulator)

    with pytest.raises(TooManyRequestsError) as too_many:
        sg.send(mail())
    assert too_many.value.headers["Retry-After"] == "1"
    with pytest.raises(ServiceUnavailableError):
        sg.send(mail())
    with pytest.raises(BadRequestsError) as bad:
        sg.send(mail())
    assert bad.value.to_dict == {
        "errors": [{"field": "personalizations.0.to", "message": "scripted"}]
    }
    assert sg.send(mail()).status_code == 202

    records = sendgrid_emulator.requests
    assert [(r.status, r.fault, r.accepted) for r in records] == [
        (429, "status:429", False),
        (503, "status:503", False),
        (400, "status:400", False),
        (202, None, True),
    ]
    assert all(r.body == mail() for r in records)  # faulted bodies are recorded too
    assert len(sendgrid_emulator.accepted()) == 1
    assert sendgrid_emulator.stats().rejected == 3


def test_hang_times_out_the_client_and_does_not_block_stop() -> None:
    emu = SendGridEmulator(api_key=KEY).start()
    try:
        emu.script(Fault(hang=True))
        with pytest.raises(TimeoutError):  # urllib raises socket.timeout while reading the reply
            client(emu, timeout=0.3).send(mail())
        [record] = emu.requests
        assert (record.status, record.fault, record.accepted) == (None, "hang", False)
    finally:
        started = time.monotonic()
        emu.stop()
    assert time.monotonic() - started < 0.5


def test_stop_releases_a_request_still_hanging(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.fail_all(Fault(hang=True))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            client(sendgrid_emulator, timeout=10).send(mail())
        except Exception as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert sendgrid_emulator.wait_for_requests(1, timeout=2)
    started = time.monotonic()
    sendgrid_emulator.stop()
    sender.join(2)
    assert time.monotonic() - started < 0.5
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)


def test_a_held_request_is_answered_when_released_and_dropped_on_stop(
    sendgrid_emulator: SendGridEmulator,
) -> None:
    sendgrid_emulator.script(Fault(hold=True))
    answers: list[Any] = []

    def send() -> None:
        try:
            answers.append(client(sendgrid_emulator, timeout=60).send(mail()).status_code)
        except Exception as exc:
            answers.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    assert sendgrid_emulator.wait_for_held(1, timeout=30)
    assert answers == [] and sendgrid_emulator.requests == []  # in flight, not yet answered
    sendgrid_emulator.release()
    sender.join(30)
    assert answers == [202]
    [record] = sendgrid_emulator.requests
    assert (record.status, record.fault, record.accepted) == (202, "hold", True)

    sendgrid_emulator.reset()  # held again until released; this time the emulator stops
    sendgrid_emulator.script(Fault(hold=True))
    sender = threading.Thread(target=send)
    sender.start()
    assert sendgrid_emulator.wait_for_held(1, timeout=30)
    sendgrid_emulator.stop()
    sender.join(30)
    assert len(answers) == 2 and isinstance(answers[1], ConnectionError)
    [record] = sendgrid_emulator.requests
    assert (record.status, record.fault, record.accepted) == (None, "hold", False)


def test_drop_closes_without_answer(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.script(Fault(drop=True))
    with pytest.raises(ConnectionError):  # http.client.RemoteDisconnected
        client(sendgrid_emulator).send(mail())

    [record] = sendgrid_emulator.requests
    assert (record.status, record.fault, record.accepted) == (None, "drop", False)
    assert sendgrid_emulator.stats().rejected == 1


def test_delay_answers_normally_afterwards(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.script(Fault(delay=0.2))
    started = time.monotonic()
    response = client(sendgrid_emulator).send(mail())
    assert response.status_code == 202
    assert time.monotonic() - started >= 0.2
    assert sendgrid_emulator.requests[0].fault == "delay:0.2"


def test_fail_all_until_cleared(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.fail_all(Fault(status=500))
    sg = client(sendgrid_emulator)
    for _ in range(3):
        with pytest.raises(HTTPError) as caught:
            sg.send(mail())
        assert caught.value.status_code == 500
    sendgrid_emulator.clear_faults()
    assert sg.send(mail()).status_code == 202


def test_faults_only_match_their_path(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.script(Fault(status=503, path="/v3/suppression/bounces"))
    sg = client(sendgrid_emulator)
    assert sg.send(mail()).status_code == 202
    with pytest.raises(ServiceUnavailableError):
        sg.client.suppression.bounces.get()
    assert sendgrid_emulator.pending_faults() == 0


def test_concurrent_sends_and_faults_are_counted(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.script(*[Fault(status=429)] * 5)
    outcomes: list[int] = []
    lock = threading.Lock()

    def worker(start: int) -> None:
        sg = client(sendgrid_emulator)
        for i in range(start, start + 5):
            try:
                status = sg.send(mail(personalizations=[{"to": [{"email": f"r{i}@x.org"}]}]))
                code = status.status_code
            except TooManyRequestsError as err:
                code = err.status_code
            with lock:
                outcomes.append(code)

    threads = [threading.Thread(target=worker, args=(n * 5,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)

    assert sorted(outcomes) == [202] * 35 + [429] * 5
    assert len(set(sendgrid_emulator.recipients())) == 35
    stats = sendgrid_emulator.stats()
    assert (stats.requests, stats.accepted, stats.faulted) == (40, 35, 5)


# ---------------------------------------------------------------- suppressions


def test_suppression_lists_page_with_limit_and_offset(sendgrid_emulator: SendGridEmulator) -> None:
    emails = [f"b{i}@example.com" for i in range(1203)]
    sendgrid_emulator.suppressions["bounces"] = emails
    bounces = client(sendgrid_emulator).client.suppression.bounces

    pages, offset = [], 0
    while True:
        page = bounces.get(query_params={"limit": 500, "offset": offset}).to_dict
        if not page:
            break
        pages.append(page)
        offset += 500

    assert [len(p) for p in pages] == [500, 500, 203]
    assert [item["email"] for page in pages for item in page] == emails
    assert len(bounces.get(query_params={"limit": 7, "offset": 1200}).to_dict) == 3
    assert len(bounces.get().to_dict) == 500  # the spec's default is unstated; we use its max
    gets = [r for r in sendgrid_emulator.requests if r.method == "GET"]
    assert len(gets) == 6 and gets[0].query == {"limit": ["500"], "offset": ["0"]}
    assert sendgrid_emulator.stats().suppression_requests == 6


@pytest.mark.parametrize("query", [{"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "x"}])
def test_suppression_paging_rejects_out_of_range(
    sendgrid_emulator: SendGridEmulator, query: dict[str, Any]
) -> None:
    with pytest.raises(BadRequestsError) as caught:
        client(sendgrid_emulator).client.suppression.unsubscribes.get(query_params=query)
    assert caught.value.to_dict["errors"][0]["field"] == next(iter(query))


@pytest.mark.parametrize("sendgrid_emulator", [{"default_page_size": 2}], indirect=True)
def test_default_page_size_is_configurable(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.suppressions["blocks"] = ["a@x.org", "b@x.org", "c@x.org"]
    assert len(client(sendgrid_emulator).client.suppression.blocks.get().to_dict) == 2


@pytest.mark.parametrize("name", SUPPRESSION_LISTS)
def test_suppression_responses_match_the_spec(
    sendgrid_emulator: SendGridEmulator, name: str
) -> None:
    sendgrid_emulator.suppressions[name] = [
        "plain@example.com",
        {"email": "custom@example.com", "created": 1443651141},
    ]
    response = client(sendgrid_emulator).client.suppression._(name).get()

    payload = response.to_dict
    assert response.status_code == 200
    assert [p["email"] for p in payload] == ["plain@example.com", "custom@example.com"]
    assert all(isinstance(p["created"], int) for p in payload)
    suppression_response_validator(f"/v3/suppression/{name}").validate(payload)


def test_suppression_time_filters(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.suppressions["unsubscribes"] = [
        {"email": f"u{t}@x.org", "created": t} for t in (100, 200, 300)
    ]
    got = client(sendgrid_emulator).client.suppression.unsubscribes.get(
        query_params={"start_time": 150, "end_time": 300}
    )
    assert [u["email"] for u in got.to_dict] == ["u200@x.org", "u300@x.org"]


def test_group_suppressions_are_a_list_of_emails(sendgrid_emulator: SendGridEmulator) -> None:
    sendgrid_emulator.suppressions[group_key(42)] = ["x@example.com", {"email": "y@example.com"}]
    groups = client(sendgrid_emulator).client.asm.groups

    payload = groups._(42).suppressions.get().to_dict
    assert payload == ["x@example.com", "y@example.com"]
    suppression_response_validator("/v3/asm/groups/{group_id}/suppressions").validate(payload)
    assert groups._(7).suppressions.get().to_dict == []


def test_suppression_endpoints_need_the_key(sendgrid_emulator: SendGridEmulator) -> None:
    with pytest.raises(UnauthorizedError):
        client(sendgrid_emulator, key="SG.nope").client.suppression.bounces.get()


# ---------------------------------------------------------------- standalone process


def test_standalone_process_serves_and_writes_stats(tmp_path: Path) -> None:
    stats_file = tmp_path / "stats.json"
    command = [
        sys.executable,
        str(EMULATOR_SCRIPT),
        "--port",
        "0",
        "--api-key",
        "SG.x",
        "--validate",
        "sample:100",
        "--no-bodies",
        "--stats-file",
        str(stats_file),
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(10, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        sg = sendgrid.SendGridAPIClient("SG.x", host=url)
        sg.client.timeout = 2
        assert sg.send(mail(2)).status_code == 202
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    stats = json.loads(stats_file.read_text())
    assert stats["requests"] == stats["accepted"] == stats["validated"] == 1
    assert stats["personalizations"] == 2
    assert stats["validation_failures"] == 0
    assert stats["bytes_received"] > 0
