"""`newsletter check --dns` against a DNS server on 127.0.0.1 serving good and broken zones:
SPF, DKIM, DMARC and MX of the From domain, and exactly which record to add."""

from __future__ import annotations

import pytest

from .conftest import Site
from .support.cli import run
from .support.dns_server import DnsServer
from .test_send_sendgrid import DATE, setup_site

DOMAIN = "example.com"  # the test newsletter sends as news@example.com
GOOD = {
    (DOMAIN, "MX"): ["10 mx.example.com."],
    (DOMAIN, "TXT"): ["v=spf1 include:sendgrid.net ~all", "some-verification=abc"],
    (f"s1._domainkey.{DOMAIN}", "CNAME"): ["s1.domainkey.u123.wl1.sendgrid.net."],
    (f"s2._domainkey.{DOMAIN}", "CNAME"): ["s2.domainkey.u123.wl1.sendgrid.net."],
    (f"_dmarc.{DOMAIN}", "TXT"): ["v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"],
    (f"mail._domainkey.{DOMAIN}", "TXT"): ["v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQ"],
}


def check(site: Site, records: dict[tuple[str, str], list[str]], transport: str) -> tuple[int, str]:
    """`check --dns` of a newsletter with nothing else to find."""
    setup_site(site, None, 3, extra='[smtp]\ndkim_selector = "mail"\n')
    text = site.config_path.read_text()
    text = text.replace('transport = "sendgrid"', f'transport = "{transport}"')
    text = text.replace("[newsletter]\n", '[newsletter]\npreheader = "Today: bridges"\n')
    site.config_path.write_text(text)
    with DnsServer(records) as dns:
        result = run(
            site.config_path, "check", "--date", DATE, "--dns", "--dns-server", dns.address
        )
    assert "Traceback" not in result.stderr
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("transport", ["sendgrid", "smtp"])
def test_a_well_set_up_domain_passes(site: Site, transport: str) -> None:
    code, said = check(site, GOOD, transport)
    assert code == 0, said
    assert "SPF: v=spf1 include:sendgrid.net ~all" in said
    assert "DMARC policy quarantine" in said
    if transport == "sendgrid":
        assert f"s1._domainkey.{DOMAIN} → s1.domainkey.u123.wl1.sendgrid.net" in said
    else:
        assert f"mail._domainkey.{DOMAIN} publishes a DKIM key" in said


BROKEN = [
    ("no MX", {(DOMAIN, "MX"): []}, f"{DOMAIN} has no MX or A record"),
    ("no SPF", {(DOMAIN, "TXT"): ["other"]}, f'TXT record at {DOMAIN}: "v=spf1 include:sendgrid.net ~all"'),
    ("two SPF", {(DOMAIN, "TXT"): ["v=spf1 -all", "v=spf1 mx -all"]}, "2 SPF records"),
    ("SPF without SendGrid", {(DOMAIN, "TXT"): ["v=spf1 mx ~all"]}, "add include:sendgrid.net"),
    ("SPF for anyone", {(DOMAIN, "TXT"): ["v=spf1 +all"]}, "anyone may send as it"),
    ("no DKIM", {(f"s2._domainkey.{DOMAIN}", "CNAME"): []}, f"s2._domainkey.{DOMAIN} is missing: add the CNAME record"),
    ("DKIM elsewhere", {(f"s1._domainkey.{DOMAIN}", "CNAME"): ["dkim.other.net."]}, "is not SendGrid"),
    ("no DMARC", {(f"_dmarc.{DOMAIN}", "TXT"): []}, f'TXT record at _dmarc.{DOMAIN}: "v=DMARC1; p=none'),
    ("bad DMARC", {(f"_dmarc.{DOMAIN}", "TXT"): ["v=DMARC1; p=maybe"]}, "no valid p= policy"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "says"), [(c, s) for _, c, s in BROKEN], ids=[n for n, _, _ in BROKEN]
)
def test_each_broken_record_is_named_with_the_fix(
    site: Site, change: dict[tuple[str, str], list[str]], says: str
) -> None:
    records = {**GOOD, **change}
    if (DOMAIN, "MX") in change:
        records = {k: v for k, v in records.items() if k != (DOMAIN, "MX")}
    code, said = check(site, records, "sendgrid")
    assert code == 1, said
    assert says in " ".join(said.split()), said


def test_a_policy_that_only_reports_is_a_warning_not_an_error(site: Site) -> None:
    relaxed = {**GOOD, (f"_dmarc.{DOMAIN}", "TXT"): ["v=DMARC1; p=none"]}
    code, said = check(site, relaxed, "sendgrid")
    assert code == 0, said
    assert "p=none only reports" in said


def test_smtp_without_its_dkim_key_is_an_error(site: Site) -> None:
    records = {k: v for k, v in GOOD.items() if k[0] != f"mail._domainkey.{DOMAIN}"}
    code, said = check(site, records, "smtp")
    assert code == 1
    assert f"mail._domainkey.{DOMAIN} has no DKIM key" in said


def test_an_unreachable_dns_server_is_one_line(site: Site) -> None:
    setup_site(site, None, 3)
    result = run(site.config_path, "check", "--dns", "--dns-server", "127.0.0.1:9")
    assert result.returncode == 1
    assert "no answer about" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "server", ["bad:port", "dns.example.com", "127.0.0.1:0", "127.0.0.1:99999"]
)
def test_a_dns_server_that_is_not_an_address_is_named(site: Site, server: str) -> None:
    setup_site(site, None, 3)
    result = run(site.config_path, "check", "--dns", "--dns-server", server)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"--dns-server {server!r}: give an IP address" in result.stderr
