"""Mail authentication pieces against a DNS server on 127.0.0.1 (tests/queuelab.py
FakeDNS): DKIM signing and verification (dkimpy), SPF (pyspf), DMARC, iprev,
the Authentication-Results field and forged-field removal."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
import pytest_twisted
from twisted.internet import reactor

from exmaild.config import ConfigError, load_config
from exmaild.mailauth import authresults, checks, dmarc
from exmaild.mailauth import keys as K
from exmaild.mailauth.checks import DKIMResult, SPFResult
from exmaild.mailauth.dkimsign import sign_message, signing_domain
from exmaild.mailauth.resolver import AuthResolver

from .queuelab import FakeDNS

MSG = (b"From: Alice <alice@example.org>\r\nTo: bob@remote.test\r\nSubject: hi\r\n"
       b"Date: Fri, 27 Nov 2026 10:00:00 +0800\r\nMessage-ID: <1@example.org>\r\n\r\n"
       b"Hello.\r\n.dot line\r\n")


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    d = FakeDNS()
    port = d.listen()
    yield d
    port.stopListening()


@pytest.fixture
def resolver(fake_dns: FakeDNS) -> Iterator[AuthResolver]:
    # Generous bounds: only a hang would reach them (a loaded CI machine must
    # not turn a slow answer into a temperror); the timeout test makes its own.
    r = AuthResolver(reactor, (fake_dns.server,), timeout=5.0, threads=2, check_timeout=15.0)
    yield r
    r.stop()


def publish(fake_dns: FakeDNS, key: K.DKIMKey) -> None:
    value = key.record_value
    parts = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    fake_dns.add(key.record_name.rstrip("."), "TXT", parts)


def txt(fake_dns: FakeDNS, name: str, value: str) -> None:
    fake_dns.add(name, "TXT", f'"{value}"')


# -- keys and the record to publish ------------------------------------------------------
def test_dns_line_splits_long_values() -> None:
    key = K.new_key("example.org", "s1", "rsa")
    line = key.dns_line
    assert line.startswith('s1._domainkey.example.org. IN TXT "v=DKIM1; k=rsa; p=MII')
    strings = line.split(" IN TXT ", 1)[1].split('" "')
    assert len(strings) >= 2 and all(len(s.strip('"')) <= 255 for s in strings)
    assert "".join(s.strip('"') for s in strings) == key.record_value
    ed = K.new_key("example.org", "ed1", "ed25519")
    assert ed.dns_line.startswith('ed1._domainkey.example.org. IN TXT "v=DKIM1; k=ed25519; p=')


def test_signing_domain_prefers_from() -> None:
    assert signing_domain(MSG, "alice@example.org") == ["example.org"]
    assert signing_domain(MSG, "bounces@lists.example.org") == ["example.org",
                                                               "lists.example.org"]
    # A From: of another (hosted) domain than the sender's: never its key.
    assert signing_domain(MSG, "mallory@other.test") == ["other.test"]
    assert signing_domain(b"Subject: x\r\n\r\nbody", "a@other.test") == ["other.test"]
    # Our own reports (null sender) from MAILER-DAEMON@<hostname's domain>.
    dsn = b"From: Mail Delivery System <MAILER-DAEMON@example.org>\r\n\r\nx"
    assert signing_domain(dsn, "", "mx.example.org") == ["example.org"]
    assert signing_domain(dsn, "", "mx.other.test") == []


# -- DKIM verification -------------------------------------------------------------------
def _verify(resolver: AuthResolver, message: bytes) -> list[DKIMResult]:
    return checks.verify_dkim(message, resolver, 1.0)


@pytest_twisted.ensureDeferred
async def test_signature_verifies_rsa_and_ed25519(fake_dns: FakeDNS,
                                                  resolver: AuthResolver) -> None:
    rsa_key, ed_key = K.new_key("example.org", "s1", "rsa"), K.new_key("example.org", "ed1",
                                                                       "ed25519")
    publish(fake_dns, rsa_key)
    publish(fake_dns, ed_key)
    signed = sign_message(MSG, [rsa_key, ed_key], "example.org") + MSG
    results = await resolver.run(_verify, resolver, signed)
    assert [(r.result, r.domain, r.algorithm) for r in results] == [
        ("pass", "example.org", "rsa-sha256"), ("pass", "example.org", "ed25519-sha256")]
    # dkimpy's own verifier, with its own parsing of the message, agrees.
    assert await resolver.run(lambda: dkim.verify(
        signed, dnsfunc=lambda name, timeout=5: resolver.dkim_txt(name)))


@pytest_twisted.ensureDeferred
async def test_broken_body_forged_signature_missing_key_and_dns_failure(
        fake_dns: FakeDNS, resolver: AuthResolver) -> None:
    key = K.new_key("example.org", "s1", "rsa")
    publish(fake_dns, key)
    signed = sign_message(MSG, [key], "example.org") + MSG
    tampered = signed.replace(b"Hello.", b"Hullo.")
    assert [r.result for r in await resolver.run(_verify, resolver, tampered)] == ["fail"]
    # Signed with a key that is not the published one (a forger's).
    forger = K.new_key("example.org", "s1", "rsa")
    forged = sign_message(MSG, [forger], "example.org") + MSG
    assert [r.result for r in await resolver.run(_verify, resolver, forged)] == ["fail"]
    # A selector nobody published.
    other = K.new_key("example.org", "nokey", "rsa")
    unpublished = sign_message(MSG, [other], "example.org") + MSG
    res = await resolver.run(_verify, resolver, unpublished)
    assert [r.result for r in res] == ["permerror"]
    fake_dns.servfail.add("s1._domainkey.example.org")
    resolver._res.cache.flush()
    assert [r.result for r in await resolver.run(_verify, resolver, signed)] == ["temperror"]
    assert await resolver.run(_verify, resolver, MSG) == []


# -- SPF ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("record, expected", [
    ("v=spf1 ip4:127.0.0.1 -all", "pass"),
    ("v=spf1 ip4:192.0.2.1 -all", "fail"),
    ("v=spf1 ip4:192.0.2.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    ("v=spf1 include:spf.example.net -all", "pass"),
    (None, "none"),
    ("servfail", "temperror"),
])
async def test_spf(fake_dns: FakeDNS, resolver: AuthResolver, record: str | None,
                   expected: str) -> None:
    fake_dns.add("spf.example.net", "TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')
    if record == "servfail":
        fake_dns.servfail.add("example.org")
    elif record is not None:
        txt(fake_dns, "example.org", record)
    else:
        fake_dns.add("example.org", "A", "192.0.2.7")
    mailfrom, helo = await resolver.run(checks.check_spf, "127.0.0.1", "alice@example.org",
                                        "client.example.net", 1.0)
    assert (mailfrom.result, mailfrom.domain, mailfrom.identity) == (
        expected, "example.org", "mailfrom")
    assert helo.identity == "helo" and helo.subject == "client.example.net"


@pytest_twisted.ensureDeferred
async def test_spf_null_sender_uses_helo(fake_dns: FakeDNS, resolver: AuthResolver) -> None:
    txt(fake_dns, "client.example.net", "v=spf1 ip4:127.0.0.1 -all")
    mailfrom, helo = await resolver.run(checks.check_spf, "127.0.0.1", "", "client.example.net",
                                        1.0)
    assert helo.result == "pass"
    assert (mailfrom.result, mailfrom.subject) == ("pass", "postmaster@client.example.net")


# -- DMARC -------------------------------------------------------------------------------
def _spf(result: str, domain: str) -> SPFResult:
    return SPFResult(result, "mailfrom", domain, f"x@{domain}")


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("policy, spf, dkims, result, applied", [
    ("reject", _spf("pass", "example.org"), [], "pass", "none"),
    ("reject", _spf("pass", "bounces.example.org"), [], "pass", "none"),  # relaxed alignment
    ("reject", _spf("pass", "other.test"), [], "fail", "reject"),  # SPF passes, not aligned
    ("reject", _spf("fail", "example.org"),
     [DKIMResult("pass", "mail.example.org", "s", "rsa-sha256")], "pass", "none"),
    ("reject", _spf("none", "other.test"),
     [DKIMResult("pass", "other.test", "s", "rsa-sha256")], "fail", "reject"),
    ("quarantine", _spf("fail", "example.org"), [], "fail", "quarantine"),
    ("none", _spf("fail", "example.org"), [], "fail", "none"),
    ("reject; adkim=s", _spf("none", "x.test"),
     [DKIMResult("pass", "mail.example.org", "s", "rsa-sha256")], "fail", "reject"),
])
async def test_dmarc(fake_dns: FakeDNS, resolver: AuthResolver, policy: str, spf: SPFResult,
                     dkims: list[DKIMResult], result: str, applied: str) -> None:
    txt(fake_dns, "_dmarc.example.org", f"v=DMARC1; p={policy}")
    r = await resolver.run(dmarc.evaluate, resolver, "example.org", spf, dkims)
    assert (r.result, r.policy) == (result, applied)


@pytest_twisted.ensureDeferred
async def test_dmarc_organizational_domain_and_sp(fake_dns: FakeDNS,
                                                  resolver: AuthResolver) -> None:
    txt(fake_dns, "_dmarc.example.co.uk", "v=DMARC1; p=none; sp=reject")
    fail = _spf("fail", "news.example.co.uk")
    r = await resolver.run(dmarc.evaluate, resolver, "news.example.co.uk", fail, [])
    assert (r.result, r.policy, r.published) == ("fail", "reject", "reject")
    r = await resolver.run(dmarc.evaluate, resolver, "example.co.uk", fail, [])
    assert (r.result, r.policy) == ("fail", "none")
    r = await resolver.run(dmarc.evaluate, resolver, "nodmarc.test", fail, [])
    assert r.result == "none"
    assert dmarc.org_domain("a.b.example.co.uk") == "example.co.uk"


def test_dmarc_pct_samples() -> None:
    rec = dmarc.parse_record("v=DMARC1; p=reject; pct=0", "example.org")
    assert rec is not None and rec.pct == 0
    assert dmarc.parse_record("v=DMARC1; p=bogus", "example.org") is None
    assert dmarc.parse_record("v=spf1 -all", "example.org") is None


@pytest_twisted.ensureDeferred
async def test_dmarc_pct_zero_downgrades(fake_dns: FakeDNS, resolver: AuthResolver) -> None:
    txt(fake_dns, "_dmarc.example.org", "v=DMARC1; p=reject; pct=0")
    r = await resolver.run(dmarc.evaluate, resolver, "example.org", _spf("fail", "example.org"),
                           [], random.Random(1))
    assert (r.result, r.policy) == ("fail", "quarantine")


# -- iprev -------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_iprev(fake_dns: FakeDNS, resolver: AuthResolver) -> None:
    assert (await resolver.run(checks.check_iprev, "127.0.0.1", resolver)).result == "fail"
    fake_dns.add("1.0.0.127.in-addr.arpa", "PTR", "client.example.net.")
    resolver._res.cache.flush()
    assert (await resolver.run(checks.check_iprev, "127.0.0.1", resolver)).result == "fail"
    fake_dns.add("client.example.net", "A", "127.0.0.1")
    resolver._res.cache.flush()
    r = await resolver.run(checks.check_iprev, "127.0.0.1", resolver)
    assert (r.result, r.name) == ("pass", "client.example.net")


# -- Authentication-Results --------------------------------------------------------------
def test_forged_authentication_results_removed() -> None:
    header = (b"Authentication-Results: mx.example.test; dkim=pass header.d=bank.test\r\n"
              b"Authentication-Results: (sneaky)\r\n MX.Example.Test 1;\r\n spf=pass\r\n"
              b"Authentication-Results: other.example; spf=fail\r\n"
              b"X-Exmaild-Impersonation: nothing\r\n"
              b"Subject: hi\r\n")
    kept, n = authresults.strip_forged(header, "mx.example.test",
                                       (b"X-Exmaild-Impersonation",))
    assert n == 3
    assert kept == b"Authentication-Results: other.example; spf=fail\r\nSubject: hi\r\n"


def test_authentication_results_field() -> None:
    field = authresults.build(
        "mx.example.test", spf=_spf("pass", "example.org"),
        helo=SPFResult("none", "helo", "", "client.test"),
        dkims=[DKIMResult("pass", "example.org", "s1", "rsa-sha256")],
        dmarc=dmarc.DMARCResult("pass", "example.org", "none", "reject"),
        iprev=checks.IPRevResult("pass", "127.0.0.1", "client.test"))
    text = field.decode()
    assert text.startswith("Authentication-Results: mx.example.test;\r\n\t")
    assert "spf=pass smtp.mailfrom=x@example.org" in text
    assert "dkim=pass header.d=example.org header.a=rsa-sha256 header.s=s1" in text
    assert "dmarc=pass header.from=example.org policy.dmarc=reject" in text
    assert "iprev=pass (client.test) policy.iprev=127.0.0.1" in text
    assert text.endswith("\r\n") and all(len(line) < 200 for line in text.split("\r\n"))
    import authres

    parsed = authres.AuthenticationResultsHeader.parse(text.replace("\r\n", ""))
    assert parsed.authserv_id == "mx.example.test"
    assert len(parsed.results) == 5



def test_mailauth_config_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mailauth]\nenabled = true\ndmarc_reject_action = "junk"\n'
                    'trusted_relays = ["192.0.2.0/24", "2001:db8::1"]\n')
    cfg = load_config(str(path))
    assert cfg.mailauth.enabled and cfg.mailauth.dmarc_reject_action == "junk"
    assert cfg.mailauth.trusted_relays == ("192.0.2.0/24", "2001:db8::1")
    path.write_text('[mailauth]\ndmarc_reject_action = "drop"\nspf_fail_action = "x"\n'
                    'trusted_relays = ["not-an-ip"]\ncheck_timeout = 0\nbogus = 1\n')
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    text = str(e.value)
    for key in ("dmarc_reject_action", "spf_fail_action", "trusted_relays", "check_timeout",
                "mailauth.bogus: unknown key"):
        assert key in text


@pytest_twisted.ensureDeferred
async def test_arc_verification(fake_dns: FakeDNS, resolver: AuthResolver) -> None:
    sealer = K.new_key("forwarder.test", "arc", "rsa")
    publish(fake_dns, sealer)
    with_ar = b"Authentication-Results: forwarder.test; spf=pass smtp.mailfrom=a@example.org\r\n"
    sealed = b"".join(dkim.arc_sign(with_ar + MSG, b"arc", b"forwarder.test",
                                    sealer.private_key.encode(), b"forwarder.test")) + with_ar + MSG
    r = await resolver.run(checks.verify_arc, sealed, resolver, 1.0)
    assert (r.result, r.instances, r.sealer) == ("pass", 1, "forwarder.test")
    assert (await resolver.run(checks.verify_arc, MSG, resolver, 1.0)).result == "none"
    # Changed after sealing: the newest ARC-Message-Signature fails.
    broken = sealed.replace(b"Hello.", b"Hullo.")
    assert (await resolver.run(checks.verify_arc, broken, resolver, 1.0)).result == "fail"


@pytest_twisted.ensureDeferred
async def test_checks_are_bounded_in_time_and_number(fake_dns: FakeDNS) -> None:
    from exmaild.mailauth.resolver import DNSTemporaryError

    fake_dns.drop.add("slow.test")  # never answered
    r = AuthResolver(reactor, (fake_dns.server,), timeout=2.0, threads=1, check_timeout=0.3)
    try:
        with pytest.raises(DNSTemporaryError, match="longer than"):
            await r.run(r.txt, "slow.test")
        assert r.pending == 1  # the stuck query still holds its place
        r.max_pending = 1
        with pytest.raises(DNSTemporaryError, match="already waiting"):
            await r.run(r.txt, "example.org")
    finally:
        r.stop()
