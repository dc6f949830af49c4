"""Tests of the emulator's scheduled sends: batch IDs, `send_at`, cancel and pause.

Why: a test of cancelling a newsletter is only as good as the emulator's idea of SendGrid's
rules (72-hour horizon, the 10-minute window, at most 10 cancels/pauses). These drive it with
the official `sendgrid` client on the emulator's own clock, and check every answer of the new
endpoints against the official specs.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
import sendgrid
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    InternalServerError,
    NotFoundError,
    UnauthorizedError,
)

from tests.support import fixtures
from tests.support.fixtures import SENDGRID_TEST_API_KEY as KEY
from tests.support.sendgrid_emulator import (
    MAIL_SPEC,
    SCHEDULED_SENDS_SPEC,
    Delivery,
    Fault,
    SendGridEmulator,
    spec_response_validator,
)

sendgrid_emulator = fixtures.sendgrid_emulator

HOUR = 3600
BATCH_ID = re.compile(r"^[A-Za-z0-9]{32}$")
SENDS = "/v3/user/scheduled_sends"
SEND = "/v3/user/scheduled_sends/{batch_id}"


def client(emu: SendGridEmulator, key: str = KEY) -> sendgrid.SendGridAPIClient:
    sg = sendgrid.SendGridAPIClient(api_key=key, host=emu.url)
    sg.client.timeout = 5.0
    return sg


def conforms(spec: str, path: str, method: str, status: int, body: bytes) -> None:
    """The answer is one the spec documents: a body matching its schema, or none if it has
    none."""
    validator = spec_response_validator(spec, path, method, status)
    if validator is None:
        assert body == b""
    else:
        validator.validate(httpx.Response(status, content=body).json())


def new_batch(emu: SendGridEmulator) -> str:
    response = client(emu).client.mail.batch.post()
    assert response.status_code == 201
    conforms(MAIL_SPEC, "/v3/mail/batch", "post", 201, response.body)
    return response.to_dict["batch_id"]


def set_status(emu: SendGridEmulator, batch_id: str, status: str) -> None:
    body = {"batch_id": batch_id, "status": status}
    response = client(emu).client.user.scheduled_sends.post(request_body=body)
    assert (response.status_code, response.to_dict) == (201, body)
    conforms(SCHEDULED_SENDS_SPEC, SENDS, "post", 201, response.body)


def delete_status(emu: SendGridEmulator, batch_id: str) -> None:
    response = client(emu).client.user.scheduled_sends._(batch_id).delete()
    assert response.status_code == 204
    conforms(SCHEDULED_SENDS_SPEC, SEND, "delete", 204, response.body)


def refused(call: Any, kind: type[HTTPError]) -> HTTPError:
    """The error the official client raised for `call()`; it must be exactly of `kind`."""
    with pytest.raises(HTTPError) as caught:
        call()
    assert type(caught.value) is kind, caught.value.body
    return caught.value


def mail(*personalizations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "from": {"email": "news@example.com", "name": "Daily"},
        "subject": "Today's issue",
        "content": [{"type": "text/plain", "value": "Hello"}],
        "personalizations": list(personalizations),
        **extra,
    }


def to(email: str, **extra: Any) -> dict[str, Any]:
    return {"to": [{"email": email}], **extra}


def post_mail(emu: SendGridEmulator, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{emu.url}/v3/mail/send",
        json=body,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=5.0,
    )


def schedule(emu: SendGridEmulator, body: dict[str, Any]) -> str:
    """Send `body`; its X-Message-Id."""
    response = post_mail(emu, body)
    assert response.status_code == 202, response.text
    return response.headers["X-Message-Id"]


# ---------------------------------------------------------------- batch IDs


def test_batch_ids_are_created_and_validated(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    first, second = new_batch(emu), new_batch(emu)
    assert first != second and BATCH_ID.match(first) and BATCH_ID.match(second)

    response = client(emu).client.mail.batch._(first).get()
    assert (response.status_code, response.to_dict) == (200, {"batch_id": first})
    conforms(MAIL_SPEC, "/v3/mail/batch/{batch_id}", "get", 200, response.body)

    unknown = refused(client(emu).client.mail.batch._("NotOneOfOurs").get, BadRequestsError)
    assert unknown.to_dict == {
        "errors": [{"field": "batch_id", "message": "The batch ID is not valid."}]
    }
    conforms(MAIL_SPEC, "/v3/mail/batch/{batch_id}", "get", 400, unknown.body)

    for call in (
        client(emu, key="SG.wrong").client.mail.batch.post,
        client(emu, key="SG.wrong").client.mail.batch._(first).get,
    ):
        conforms(MAIL_SPEC, "/v3/mail/batch", "post", 401, refused(call, UnauthorizedError).body)

    # recorded beside mail/send, but not counted as mail requests
    assert [r.path for r in emu.requests][:2] == ["/v3/mail/batch", "/v3/mail/batch"]
    assert emu.mail_requests() == [] and emu.stats().requests == 0


def test_reset_forgets_batches_but_keeps_the_clock(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    schedule(emu, mail(to("later@example.com"), batch_id=batch, send_at=int(emu.now()) + HOUR))
    emu.advance(10 * HOUR)
    ahead = emu.now()

    emu.reset()

    assert emu.now() >= ahead  # still 10 hours ahead of time.time()
    assert (emu.scheduled(), emu.deliveries(), emu.statuses()) == (0, [], {})
    refused(client(emu).client.mail.batch._(batch).get, BadRequestsError)


# ---------------------------------------------------------------- mail/send with send_at


def test_scheduled_mail_waits_for_the_clock_then_goes_out_at_send_at(
    sendgrid_emulator: SendGridEmulator,
) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    start = int(emu.now())
    body = mail(
        to("top@example.com"),  # the top-level send_at
        to("half@example.com", send_at=start + HOUR // 2),  # its own overrides it
        to("now@example.com", send_at=start - 60),  # already due: goes out at once
        batch_id=batch,
        send_at=start + HOUR,
    )
    message_id = schedule(emu, body)
    accepted_at = emu.now()

    [immediate] = emu.deliveries()
    assert (immediate.email, immediate.batch_id, immediate.message_id) == (
        "now@example.com",
        batch,
        message_id,
    )
    assert start <= immediate.at <= accepted_at
    assert emu.scheduled() == 2
    # recipients() still counts what SendGrid accepted, scheduled or not
    assert emu.recipients() == ["top@example.com", "half@example.com", "now@example.com"]

    emu.advance(HOUR // 2 - 120)
    assert len(emu.deliveries()) == 1 and emu.scheduled() == 2

    emu.advance(3 * HOUR)
    assert emu.deliveries()[1:] == [
        Delivery("half@example.com", start + HOUR // 2, batch, message_id),
        Delivery("top@example.com", start + HOUR, batch, message_id),
    ]
    assert emu.scheduled() == 0
    assert emu.delivered() == {"now@example.com": 1, "half@example.com": 1, "top@example.com": 1}


def test_mail_without_send_at_is_delivered_at_once_and_sandbox_never(
    sendgrid_emulator: SendGridEmulator,
) -> None:
    emu = sendgrid_emulator
    before = emu.now()
    message_id = schedule(emu, mail(to("a@example.com"), to("b@example.com")))
    sandbox = {"sandbox_mode": {"enable": True}}
    later = int(emu.now()) + HOUR
    response = post_mail(emu, mail(to("c@example.com"), send_at=later, mail_settings=sandbox))
    assert response.status_code == 200  # accepted, as the live API does in sandbox mode

    assert [(d.email, d.batch_id, d.message_id) for d in emu.deliveries()] == [
        ("a@example.com", None, message_id),
        ("b@example.com", None, message_id),
    ]
    assert all(before <= d.at <= emu.now() for d in emu.deliveries())
    emu.advance(2 * HOUR)
    assert emu.scheduled() == 0 and "c@example.com" not in emu.delivered()


def test_send_at_more_than_72_hours_ahead_is_refused(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    now = int(emu.now())
    message = "The send_at parameter must be no more than 72 hours from now."

    top = post_mail(emu, mail(to("a@example.com"), send_at=now + 72 * HOUR + 60))
    own = post_mail(emu, mail(to("a@example.com"), to("b@example.com", send_at=now + 73 * HOUR)))
    assert (top.status_code, own.status_code) == (400, 400)
    assert top.json()["errors"] == [{"field": "send_at", "message": message, "help": None}]
    assert own.json()["errors"] == [
        {"field": "personalizations.1.send_at", "message": message, "help": None}
    ]
    assert emu.scheduled() == 0 and emu.deliveries() == []

    schedule(emu, mail(to("c@example.com"), send_at=now + 71 * HOUR))
    emu.advance(72 * HOUR)
    assert [d.email for d in emu.deliveries()] == ["c@example.com"]


def test_batch_id_not_created_here_is_refused(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    body = mail(to("a@example.com"), batch_id="MadeUpBatch", send_at=int(emu.now()) + HOUR)

    response = post_mail(emu, body)

    assert response.status_code == 400
    assert response.json() == {
        "errors": [{"field": "batch_id", "message": "The batch ID is not valid.", "help": None}]
    }
    assert emu.scheduled() == 0 and emu.accepted() == []
    [record] = emu.mail_requests()
    assert record.errors == response.json()["errors"]


# ---------------------------------------------------------------- cancel and pause


def test_cancel_well_ahead_discards_the_mail_for_good(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    start = int(emu.now())
    schedule(emu, mail(to("one@example.com"), batch_id=batch, send_at=start + HOUR))
    schedule(emu, mail(to("three@example.com"), batch_id=batch, send_at=start + 3 * HOUR))
    set_status(emu, batch, "cancel")

    emu.advance(2 * HOUR)  # one@ reached its send_at while cancelled: discarded
    assert emu.deliveries() == [] and emu.scheduled() == 1
    delete_status(emu, batch)
    emu.advance(70 * HOUR)

    assert [d.email for d in emu.deliveries()] == ["three@example.com"]  # one@ never
    assert emu.scheduled() == 0


def test_cancel_stops_nothing_due_within_ten_minutes(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    start = int(emu.now())
    message_id = schedule(
        emu,
        mail(
            to("soon@example.com", send_at=start + 300),
            to("later@example.com", send_at=start + HOUR),
            batch_id=batch,
        ),
    )
    set_status(emu, batch, "cancel")
    emu.advance(2 * HOUR)

    # not guaranteed to be cancelled, so emulated as going out anyway
    assert emu.deliveries() == [Delivery("soon@example.com", start + 300, batch, message_id)]
    assert emu.scheduled() == 0
    assert emu.statuses() == {}  # every item passed its send_at: the cancel stops counting


def test_pause_holds_mail_until_deleted(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    send_at = int(emu.now()) + HOUR
    schedule(emu, mail(to("held@example.com"), batch_id=batch, send_at=send_at))
    set_status(emu, batch, "pause")

    emu.advance(5 * HOUR)
    assert emu.deliveries() == [] and emu.scheduled() == 1
    assert emu.statuses() == {batch: "pause"}  # still counts: its mail is still waiting

    delete_status(emu, batch)
    lifted = emu.now()
    assert emu.deliveries() == []  # delivered at the next advance, not before
    emu.advance(0)

    [delivery] = emu.deliveries()
    assert delivery.email == "held@example.com"
    assert send_at + 4 * HOUR <= lifted <= delivery.at <= emu.now()  # late, when let go


def test_paused_mail_expires_after_72_hours(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    schedule(emu, mail(to("held@example.com"), batch_id=batch, send_at=int(emu.now()) + HOUR))
    set_status(emu, batch, "pause")

    emu.advance(HOUR + 71 * HOUR)
    assert emu.scheduled() == 1
    emu.advance(2 * HOUR)

    assert emu.scheduled() == 0 and emu.deliveries() == [] and emu.statuses() == {}


def test_patch_changes_a_pause_into_a_cancel(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    schedule(emu, mail(to("a@example.com"), batch_id=batch, send_at=int(emu.now()) + HOUR))
    set_status(emu, batch, "pause")
    one = client(emu).client.user.scheduled_sends._(batch)

    response = one.patch(request_body={"status": "cancel"})
    assert (response.status_code, response.body) == (204, b"")
    conforms(SCHEDULED_SENDS_SPEC, SEND, "patch", 204, response.body)
    got = one.get()
    assert got.to_dict == [{"batch_id": batch, "status": "cancel"}]
    conforms(SCHEDULED_SENDS_SPEC, SEND, "get", 200, got.body)

    bad = refused(lambda: one.patch(request_body={"status": "stop"}), BadRequestsError)
    assert [e["field"] for e in bad.to_dict["errors"]] == ["status"]
    conforms(SCHEDULED_SENDS_SPEC, SEND, "patch", 400, bad.body)

    emu.advance(2 * HOUR)
    assert emu.deliveries() == [] and emu.scheduled() == 0


def test_at_most_ten_cancels_or_pauses(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    sends = client(emu).client.user.scheduled_sends
    batches = [new_batch(emu) for _ in range(12)]
    schedule(emu, mail(to("a@example.com"), batch_id=batches[0], send_at=int(emu.now()) + HOUR))
    for i, batch in enumerate(batches[:10]):
        set_status(emu, batch, "pause" if i % 2 else "cancel")

    def eleventh() -> Any:
        return sends.post(request_body={"batch_id": batches[10], "status": "cancel"})

    full = refused(eleventh, BadRequestsError)
    assert full.to_dict == {
        "errors": [{"message": "The maximum number of cancellations/pauses (10) has been reached."}]
    }
    conforms(SCHEDULED_SENDS_SPEC, SENDS, "post", 400, full.body)
    listed = sends.get()
    assert sorted(e["batch_id"] for e in listed.to_dict) == sorted(batches[:10])
    conforms(SCHEDULED_SENDS_SPEC, SENDS, "get", 200, listed.body)

    delete_status(emu, batches[5])  # a deleted status stops counting
    set_status(emu, batches[10], "cancel")
    refused(lambda: sends.post(request_body={"batch_id": batches[11], "status": "pause"}), BadRequestsError)  # fmt: skip

    emu.advance(2 * HOUR)  # batches[0]'s only mail was discarded: its cancel stops counting
    assert emu.deliveries() == [] and emu.scheduled() == 0
    set_status(emu, batches[11], "pause")
    assert len(emu.statuses()) == 10 and batches[0] not in emu.statuses()


def test_status_requests_that_are_refused(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    sends = client(emu).client.user.scheduled_sends
    batch = new_batch(emu)
    set_status(emu, batch, "pause")

    cases = [
        ({"batch_id": batch, "status": "cancel"}, "batch_id", "already has a cancel or pause"),
        ({"batch_id": "NotOneOfOurs", "status": "pause"}, "batch_id", "The batch ID is not valid."),
        ({"batch_id": batch, "status": "stop"}, "status", "must be one of"),
        ({"status": "pause"}, "batch_id", "The batch_id parameter is required."),
    ]
    for body, field, message in cases:
        error = refused(lambda body=body: sends.post(request_body=body), BadRequestsError)
        [item] = error.to_dict["errors"]
        assert item["field"] == field and message in item["message"], item
        conforms(SCHEDULED_SENDS_SPEC, SENDS, "post", 400, error.body)
    assert emu.statuses() == {batch: "pause"}

    other = new_batch(emu)
    missing = [
        refused(lambda: sends._(other).patch(request_body={"status": "cancel"}), NotFoundError),
        refused(sends._(other).delete, NotFoundError),
    ]
    for error, method in zip(missing, ("patch", "delete"), strict=True):
        assert error.to_dict == {
            "errors": [
                {"field": "batch_id", "message": "This batch ID has no cancel or pause status."}
            ]
        }
        conforms(SCHEDULED_SENDS_SPEC, SEND, method, 404, error.body)
    none = sends._(other).get()
    assert (none.status_code, none.to_dict) == (200, [])
    conforms(SCHEDULED_SENDS_SPEC, SEND, "get", 200, none.body)

    stranger = client(emu, key="SG.wrong").client.user.scheduled_sends
    for call, path, method in [
        (stranger.get, SENDS, "get"),
        (lambda: stranger.post(request_body={"batch_id": other, "status": "pause"}), SENDS, "post"),
        (stranger._(batch).delete, SEND, "delete"),
    ]:
        conforms(SCHEDULED_SENDS_SPEC, path, method, 401, refused(call, UnauthorizedError).body)
    assert emu.statuses() == {batch: "pause"}
    assert emu.stats().requests == 0  # none of these is a mail request


def test_scripted_fault_on_the_scheduled_sends_path(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    batch = new_batch(emu)
    emu.script(Fault(path="/v3/user/scheduled_sends", status=500))
    sends = client(emu).client.user.scheduled_sends

    failed = refused(
        lambda: sends.post(request_body={"batch_id": batch, "status": "cancel"}),
        InternalServerError,
    )
    conforms(SCHEDULED_SENDS_SPEC, SENDS, "post", 500, failed.body)
    assert emu.statuses() == {} and emu.pending_faults() == 0

    set_status(emu, batch, "cancel")  # the fault was used up; the retry works
    assert [(r.method, r.status, r.fault) for r in emu.requests if r.path == SENDS] == [
        ("POST", 500, "status:500"),
        ("POST", 201, None),
    ]


def test_advance_only_moves_forward(sendgrid_emulator: SendGridEmulator) -> None:
    emu = sendgrid_emulator
    with pytest.raises(ValueError):
        emu.advance(-1)
    target = emu.now() + 2 * HOUR
    emu.advance_to(target)
    assert target <= emu.now() < target + 60
    emu.advance_to(target - HOUR)  # already past: the clock stays
    assert emu.now() >= target
