"""A real SMTP server for tests (aiosmtpd on 127.0.0.1), recording what it accepts.

    with SmtpServer() as server:
        ...send to server.host:server.port...
    server.messages             # one Received per accepted DATA, in order
    server.connections          # SMTP sessions opened (a STARTTLS upgrade is not a new one)
    server.open_connections()   # sessions the client has not closed yet

Scripted faults, set before or during a test (addresses in lower case):

    server.handler.rcpt_replies["ann@example.com"] = "550 5.1.1 no such user"
    server.handler.rcpt_drops["bob@example.com"] = 2     # hang up at his RCPT, twice
    server.handler.data_faults[3] = DROP          # the 3rd DATA: hang up without a reply
    server.handler.data_faults[4] = "421 4.3.2 closing"
    server.handler.data_delay = 0.02               # a slow server: each DATA answered late

It listens on port 0 (any free port): aiosmtpd's Controller connects to its own
port to check that it started, so the bound port is read just before that check,
and that probe is not counted as a session.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

HOST = "127.0.0.1"
DROP = "drop"  # a data fault: close the connection instead of answering


@dataclass(frozen=True)
class Received:
    """One message the server accepted (answered 250 to its DATA)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    connection: int  # which SMTP session carried it, from 1
    login: str | None  # the authenticated user, if any
    tls: bool


@dataclass
class RecordingHandler:
    """Accepts everything unless told otherwise; stores each accepted envelope."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> RCPT reply
    rcpt_drops: dict[str, int] = field(default_factory=dict)  # address -> hang-ups at RCPT
    data_faults: dict[int, str] = field(default_factory=dict)  # nth DATA -> reply or DROP
    data_delay: float = 0.0  # seconds before a whole message is accepted (and recorded)
    messages: list[Received] = field(default_factory=list)
    data_commands: int = 0

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.rcpt_drops.get(address.lower()):  # hang up before the message is whole
            self.rcpt_drops[address.lower()] -= 1
            assert server.transport is not None
            server.transport.close()
            return "451 never seen"
        reply = self.rcpt_replies.get(address.lower())
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_commands += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        fault = self.data_faults.get(self.data_commands)
        if fault == DROP:
            assert server.transport is not None
            server.transport.close()  # the reply below goes nowhere
            return "451 never seen"
        if fault is not None:
            return fault
        assert envelope.mail_from is not None and isinstance(envelope.content, bytes)
        login = session.auth_data if session.authenticated else None
        self.messages.append(
            Received(
                mail_from=envelope.mail_from,
                rcpt_tos=tuple(envelope.rcpt_tos),
                data=envelope.content,
                connection=getattr(server, "connection_number", None) or 0,
                login=login.login.decode() if isinstance(login, LoginPassword) else None,
                tls=session.ssl is not None,
            )
        )
        return "250 Message accepted"


class _CountingSMTP(SMTP):
    """Numbers its connection; STARTTLS calls connection_made again on the same one."""

    def __init__(self, controller: _Controller, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._controller = controller
        self.connection_number: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.connection_number is None:
            self.connection_number = self._controller.opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._controller.closed(self.connection_number)
        super().connection_lost(error)


class _Controller(Controller):
    """Counts client connections (on the server's thread; the test thread only reads)."""

    def __init__(self, handler: RecordingHandler, **kwargs: Any) -> None:
        super().__init__(handler, hostname=HOST, port=0, **kwargs)
        self.started = False  # until then, connections are the Controller's start-up probe
        self.connections = 0
        self.open: set[int] = set()

    def opened(self) -> int:
        """A new connection: its number, from 1 (0 for the start-up probe)."""
        if not self.started:
            return 0
        self.connections += 1
        self.open.add(self.connections)
        return self.connections

    def closed(self, number: int | None) -> None:
        self.open.discard(number or 0)

    def factory(self) -> SMTP:
        return _CountingSMTP(self, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """aiosmtpd on a free port of 127.0.0.1, in a thread; a context manager.

    `users` turns on AUTH (PLAIN, LOGIN; offered before TLS too), each message
    records who logged in; `tls_context` offers STARTTLS and requires it;
    `implicit_tls` wraps the whole connection (SMTPS, what `security = "ssl"` speaks);
    `smtputf8=False` stops offering SMTPUTF8 (needed for non-ASCII addresses).
    """

    def __init__(
        self,
        handler: RecordingHandler | None = None,
        *,
        users: dict[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        smtputf8: bool = True,
    ) -> None:
        self.handler = handler or RecordingHandler()
        kwargs: dict[str, Any] = {
            "server_hostname": "smtp.test",
            "ready_timeout": 5.0,
            "enable_SMTPUTF8": smtputf8,
        }
        if users is not None:
            kwargs.update(authenticator=_Authenticator(users), auth_require_tls=False)
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=True)
        if implicit_tls is not None:
            kwargs["ssl_context"] = implicit_tls
        self._controller = _Controller(self.handler, **kwargs)

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._controller.port

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages

    @property
    def connections(self) -> int:
        """SMTP sessions opened by clients so far."""
        return self._controller.connections

    def open_connections(self, settle: float = 2.0) -> int:
        """Client connections still open, once closes under way have had `settle` s to land."""
        deadline = time.monotonic() + settle
        while self._controller.open and time.monotonic() < deadline:
            time.sleep(0.01)
        return len(self._controller.open)

    def start(self) -> SmtpServer:
        self._controller.start()
        self._controller.started = True
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> SmtpServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    def __call__(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: object,
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            if self.users.get(user) == auth_data.password.decode():
                return AuthResult(success=True, auth_data=auth_data)
        return AuthResult(success=False, handled=False)
