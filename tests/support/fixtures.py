"""Pytest fixture for the SendGrid emulator, for `tests/conftest.py` to import.

Why a separate module: conftest.py belongs to the main suite; importing this keeps the emulator's
lifecycle (start per test, prompt stop even with hanging requests) in one place.

    # tests/conftest.py
    from tests.support.fixtures import sendgrid_emulator  # noqa: F401

Options per test via indirect parametrization:

    @pytest.mark.parametrize("sendgrid_emulator", [{"validate": "first"}], indirect=True)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .sendgrid_emulator import SendGridEmulator

SENDGRID_TEST_API_KEY = "SG.test-emulator-key"
# the client's timeout (the most allowed) while the emulator holds a request until released
HELD = 300


@pytest.fixture
def sendgrid_emulator(request: pytest.FixtureRequest) -> Iterator[SendGridEmulator]:
    """A running emulator accepting `SENDGRID_TEST_API_KEY`; `request.param` overrides options."""
    options = {"api_key": SENDGRID_TEST_API_KEY, **getattr(request, "param", {})}
    with SendGridEmulator(**options) as emulator:
        yield emulator
