"""`newsletter check --dns`: the sender's domain as receivers see it (dnspython).

Gmail and Yahoo want bulk senders authenticated: SPF naming the service that
sends, DKIM signing with the From domain, DMARC published, and a domain that can
receive mail. Each finding says exactly which record to add or change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

import dns.exception
import dns.resolver

from newsletter.errors import NewsletterError

TIMEOUT = 5.0  # seconds for each lookup, retries included


@dataclass(frozen=True)
class DnsFinding:
    level: str  # "ok" | "warning" | "error"
    record: str  # SPF, DKIM, DMARC, MX
    message: str


def resolver_for(server: str | None) -> dns.resolver.Resolver:
    """The system's resolver, or the server `HOST[:PORT]` asked for."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "")
        resolver = dns.resolver.Resolver(configure=False)
        try:
            ipaddress.ip_address(host)
            resolver.nameservers = [host]
            resolver.port = int(port or 53)
            if not 0 < resolver.port < 65536:
                raise ValueError(port)
        except ValueError:
            raise NewsletterError(
                f"--dns-server {server!r}: give an IP address and, if not 53, a port "
                "(127.0.0.1:5353)"
            ) from None
    resolver.lifetime = TIMEOUT
    return resolver


def check_domain(
    domain: str, transport: str, dkim_selector: str | None, resolver: dns.resolver.Resolver
) -> list[DnsFinding]:
    """Every finding about `domain` (the From address's) for sending with `transport`."""
    lookup = _Lookup(resolver)
    found = [*_mail_host(domain, lookup), *_spf(domain, transport, lookup)]
    found += _dkim(domain, transport, dkim_selector, lookup)
    found += _dmarc(domain, lookup)
    return found


class _Lookup:
    """Answers as text; a name without records is an empty answer, not an error."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def __call__(self, name: str, kind: str) -> list[str]:
        try:
            answer = self.resolver.resolve(name, kind, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            return []
        except dns.exception.Timeout:
            raise DnsUnreachable(f"no answer about {name} within {TIMEOUT:g}s") from None
        if kind == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text() for r in answer]


class DnsUnreachable(Exception):
    """The resolver did not answer: nothing can be said about the records."""


def _mail_host(domain: str, lookup: Callable[[str, str], list[str]]) -> list[DnsFinding]:
    if lookup(domain, "MX") or lookup(domain, "A") or lookup(domain, "AAAA"):
        return [DnsFinding("ok", "MX", f"{domain} can receive mail (MX or A record)")]
    return [
        DnsFinding(
            "error",
            "MX",
            f"{domain} has no MX or A record: receivers refuse mail from a domain that "
            f"cannot be answered. Add an MX record for {domain} pointing to the server "
            "that receives its mail.",
        )
    ]


def _spf(domain: str, transport: str, lookup: Callable[[str, str], list[str]]) -> list[DnsFinding]:
    records = [t for t in lookup(domain, "TXT") if t.lower().startswith("v=spf1")]
    needed = "include:sendgrid.net" if transport == "sendgrid" else "a mx"
    suggestion = f'TXT record at {domain}: "v=spf1 {needed} ~all"'
    if not records:
        return [DnsFinding("error", "SPF", f"{domain} has no SPF record. Add a {suggestion}.")]
    if len(records) > 1:
        return [
            DnsFinding(
                "error",
                "SPF",
                f"{domain} has {len(records)} SPF records, which receivers treat as none: "
                "merge them into one TXT record starting v=spf1.",
            )
        ]
    [spf] = records
    terms = spf.lower().split()
    if "+all" in terms or "all" in terms:
        return [DnsFinding("error", "SPF", f"{domain}'s SPF ends in +all: anyone may send as it.")]
    if transport == "sendgrid" and "include:sendgrid.net" not in terms:
        return [
            DnsFinding(
                "error",
                "SPF",
                f"{domain}'s SPF ({spf}) does not name SendGrid: add include:sendgrid.net "
                "before its all term.",
            )
        ]
    return [DnsFinding("ok", "SPF", f"SPF: {spf}")]


def _dkim(
    domain: str,
    transport: str,
    selector: str | None,
    lookup: Callable[[str, str], list[str]],
) -> list[DnsFinding]:
    if transport == "sendgrid":
        found = []
        for name in ("s1", "s2"):
            host = f"{name}._domainkey.{domain}"
            targets = lookup(host, "CNAME")
            if targets and targets[0].rstrip(".").endswith(".sendgrid.net"):
                found.append(DnsFinding("ok", "DKIM", f"{host} → {targets[0].rstrip('.')}"))
            else:
                found.append(
                    DnsFinding(
                        "error",
                        "DKIM",
                        f"{host} is {'not SendGrid' if targets else 'missing'}: add the CNAME "
                        f"record {host} → {name}.domainkey.uNNN.wlNNN.sendgrid.net that "
                        "SendGrid shows under Settings → Sender Authentication.",
                    )
                )
        return found
    if not selector:
        return [
            DnsFinding(
                "warning",
                "DKIM",
                "set [smtp] dkim_selector to the selector your mail server signs with, to "
                "check its DKIM key",
            )
        ]
    host = f"{selector}._domainkey.{domain}"
    keys = [t for t in lookup(host, "TXT") if "p=" in t.replace(" ", "")]
    if keys and not keys[0].replace(" ", "").rstrip(";").endswith("p="):
        return [DnsFinding("ok", "DKIM", f"{host} publishes a DKIM key")]
    return [
        DnsFinding(
            "error",
            "DKIM",
            f"{host} has no DKIM key: add the TXT record your mail server gives for "
            f'selector {selector} ("v=DKIM1; k=rsa; p=...").',
        )
    ]


def _dmarc(domain: str, lookup: Callable[[str, str], list[str]]) -> list[DnsFinding]:
    host = f"_dmarc.{domain}"
    records = [t for t in lookup(host, "TXT") if t.replace(" ", "").upper().startswith("V=DMARC1")]
    if not records:
        return [
            DnsFinding(
                "error",
                "DMARC",
                f"{domain} publishes no DMARC policy, which Gmail and Yahoo require of bulk "
                f'senders: add a TXT record at {host}: "v=DMARC1; p=none; '
                f'rua=mailto:dmarc@{domain}", and move to p=quarantine once its reports '
                "are clean.",
            )
        ]
    tags = dict(part.strip().split("=", 1) for part in records[0].split(";") if "=" in part.strip())
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return [DnsFinding("error", "DMARC", f"{host} has no valid p= policy: {records[0]}")]
    found = [DnsFinding("ok", "DMARC", f"DMARC policy {policy}: {records[0]}")]
    if policy == "none":
        found.append(
            DnsFinding(
                "warning",
                "DMARC",
                "p=none only reports: once the reports show your mail aligned, raise it to "
                "p=quarantine",
            )
        )
    if tags.get("aspf", "r").lower() == "s" and tags.get("adkim", "r").lower() == "s":
        found.append(
            DnsFinding(
                "warning",
                "DMARC",
                "strict alignment (aspf=s, adkim=s): a service's bounce subdomain fails "
                "strict SPF alignment, so DKIM alone must carry every message",
            )
        )
    return found
