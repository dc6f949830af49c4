"""A DNS server on 127.0.0.1 answering from zones the test gives (dnslib), for
`newsletter check --dns` without the outside network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dnslib import CNAME, MX, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

Records = Mapping[tuple[str, str], Sequence[str]]  # (name, type) -> values


class _ZoneResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: Records) -> None:
        self.records = {
            (name.lower().rstrip("."), kind): values for (name, kind), values in records.items()
        }

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name = str(request.q.qname).lower().rstrip(".")
        kind = QTYPE[request.q.qtype]
        known = {n for n, _ in self.records}
        for value in self.records.get((name, kind), ()):
            reply.add_answer(RR(name, request.q.qtype, rdata=_rdata(kind, value), ttl=60))
        if name not in known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def _rdata(kind: str, value: str) -> Any:
    if kind == "TXT":
        return TXT(value)
    if kind == "CNAME":
        return CNAME(value)
    if kind == "MX":
        priority, host = value.split()
        return MX(host, int(priority))
    return A(value)


class DnsServer:
    """`with DnsServer(records) as dns: dns.address` (HOST:PORT) serves `records` over UDP."""

    def __init__(self, records: Records) -> None:
        quiet = DNSLogger(logf=lambda _: None)
        self.server = DNSServer(_ZoneResolver(records), port=0, address="127.0.0.1", logger=quiet)

    @property
    def address(self) -> str:
        host, port = self.server.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> DnsServer:
        self.server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
