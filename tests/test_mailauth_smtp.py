"""Inbound checks through the real SMTP server (in-process listeners, real
store, smtplib over loopback) with DNS from a server on 127.0.0.1: the
fake-boss rule, DMARC and SPF policy, Authentication-Results, impersonation."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dkim
import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from exmaild.config import Config, MailAuthConfig, QueueConfig
from exmaild.mailauth import keys as K
from exmaild.mailauth.dkimsign import sign_message
from exmaild.store.connector import Store

from .queuelab import FakeDNS
from .smtputil import PASSWORD, SmtpLab, blocking, start_lab, with_cfg

HOST = "mx.example.test"


def msg(sender: str = "carol@remote.test", name: str = "", extra: str = "",
        body: str = "Hello.\r\n") -> bytes:
    who = f'"{name}" <{sender}>' if name else f"<{sender}>"
    return (f"From: {who}\r\nTo: <bob@example.test>\r\nSubject: test\r\n"
            f"Message-ID: <t@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n"
            f"{extra}\r\n{body}").encode()


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    d = FakeDNS()
    port = d.listen()
    yield d
    port.stopListening()


@pytest.fixture
def maillines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "exmaild.maillog":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def lab_with(**mailauth: Any) -> Any:
    @pytest_twisted.async_yield_fixture
    async def fixture(store: Store, cfg: Config, fake_dns: FakeDNS) -> AsyncIterator[SmtpLab]:
        c = dataclasses.replace(
            with_cfg(cfg),
            mailauth=MailAuthConfig(**{"enabled": True, **mailauth}),
            queue=QueueConfig(dns_servers=(fake_dns.server,), dns_timeout=1.0))
        lab = await start_lab(store, c)
        await lab.add_user("ceo@example.test", display_name="Carol Boss")
        yield lab
        for p in lab._ports:  # type: ignore[attr-defined]
            await p.stopListening()

    return fixture


lab = lab_with()
junk_lab = lab_with(dmarc_reject_action="junk", impersonation_action="mark")
relay_lab = lab_with(trusted_relays=["127.0.0.0/8"])
arc_lab = lab_with(arc_trusted_sealers=["Forwarder.test"])


def send(port: int, sender: str, message: bytes, rcpt: str = "bob@example.test",
         login: str | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net") as s:
        s.ehlo()
        if login:
            s.login(login, PASSWORD)
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        return s.data(message)


async def mx(lab: SmtpLab, sender: str, message: bytes) -> tuple[int, bytes]:
    return await blocking(send, lab.mx, sender, message)


def header_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


# -- the fake-boss rule ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_fake_boss_refused(lab: SmtpLab, maillines: list[str]) -> None:
    code, text = await mx(lab, "ceo@example.test", msg("ceo@example.test", "Carol Boss"))
    assert code == 550 and text.startswith(b"5.7.1") and b"example.test" in text
    # Only the From: header forged, the envelope from outside: refused too.
    code, _ = await mx(lab, "carol@remote.test", msg("ceo@example.test"))
    assert code == 550
    assert await blocking(lab.entries, "bob@example.test") == []
    assert await blocking(lab.entries, "bob@example.test", "Junk") == []
    assert any("reject: END-OF-MESSAGE" in line and "5.7.1" in line for line in maillines)


@pytest_twisted.ensureDeferred
async def test_own_domain_with_spf_pass_accepted(lab: SmtpLab, fake_dns: FakeDNS) -> None:
    fake_dns.add("example.test", "TXT", '"v=spf1 ip4:127.0.0.1 -all"')
    code, _ = await mx(lab, "ceo@example.test", msg("ceo@example.test"))
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test")
    assert "spf=pass smtp.mailfrom=ceo@example.test" in header_of(raw)


@pytest_twisted.ensureDeferred
async def test_own_domain_with_aligned_dkim_accepted(lab: SmtpLab, fake_dns: FakeDNS) -> None:
    key = K.new_key("example.test", "s1", "rsa")
    value = key.record_value
    fake_dns.add("s1._domainkey.example.test", "TXT",
                 " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255)))
    m = msg("ceo@example.test")
    code, _ = await mx(lab, "bounce@remote.test", sign_message(m, [key], "example.test") + m)
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test")
    assert "dkim=pass header.d=example.test" in header_of(raw)


@pytest_twisted.ensureDeferred
async def test_trusted_relay_may_send_as_our_domain(relay_lab: SmtpLab,
                                                    fake_dns: FakeDNS) -> None:
    # Even with our own DMARC p=reject and SPF -all not listing the relay.
    fake_dns.add("example.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    fake_dns.add("_dmarc.example.test", "TXT", '"v=DMARC1; p=reject"')
    code, _ = await mx(relay_lab, "ceo@example.test", msg("ceo@example.test"))
    assert code == 250
    [raw] = await blocking(relay_lab.entries, "bob@example.test")
    assert "spf=fail" in header_of(raw) and "dmarc=fail" in header_of(raw)


@pytest_twisted.ensureDeferred
async def test_submission_is_not_checked(lab: SmtpLab) -> None:
    code, _ = await blocking(send, lab.submission, "alice@example.test",
                             msg("alice@example.test"), "bob@example.test",
                             "alice@example.test")
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test")
    assert "Authentication-Results" not in header_of(raw)


# -- Authentication-Results ---------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_authentication_results_added_forged_removed(lab: SmtpLab, fake_dns: FakeDNS,
                                                           maillines: list[str]) -> None:
    fake_dns.add("1.0.0.127.in-addr.arpa", "PTR", "client.example.net.")
    fake_dns.add("client.example.net", "A", "127.0.0.1")
    forged = ("Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=x@bank.test\r\n"
              "Authentication-Results: elsewhere.test; spf=none\r\n"
              "X-Exmaild-Impersonation: forged too\r\n")
    code, _ = await mx(lab, "carol@remote.test", msg(extra=forged))
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test")
    header = header_of(raw)
    lines = header.split("\r\n")
    assert lines[0].startswith("Return-Path:") and lines[1].startswith("Received:")
    ours = [ln for ln in lines if ln.startswith("Authentication-Results: mx.example.test")]
    assert len(ours) == 1
    assert "bank.test" not in header and "X-Exmaild-Impersonation" not in header
    assert "Authentication-Results: elsewhere.test; spf=none" in header
    assert "iprev=pass (client.example.net) policy.iprev=127.0.0.1" in header
    assert "spf=none smtp.mailfrom=carol@remote.test" in header
    assert "dkim=none" in header and "dmarc=none header.from=remote.test" in header
    line = next(ln for ln in maillines if "from=<carol@remote.test>" in ln and "size=" in ln)
    for part in ("spf=none", "dkim=none", "dmarc=none", "iprev=pass", "action=inbox",
                 "removed=2"):
        assert part in line


# -- DMARC and SPF policy ------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_dmarc_reject_refused(lab: SmtpLab, fake_dns: FakeDNS,
                                    maillines: list[str]) -> None:
    fake_dns.add("remote.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    fake_dns.add("_dmarc.remote.test", "TXT", '"v=DMARC1; p=reject"')
    code, text = await mx(lab, "carol@remote.test", msg())
    assert code == 550 and text.startswith(b"5.7.1") and b"DMARC" in text
    assert await blocking(lab.entries, "bob@example.test") == []
    assert any("dmarc=fail" in ln and "action=reject" in ln for ln in maillines)


@pytest_twisted.ensureDeferred
async def test_dmarc_reject_filed_to_junk_when_configured(junk_lab: SmtpLab,
                                                          fake_dns: FakeDNS) -> None:
    fake_dns.add("remote.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    fake_dns.add("_dmarc.remote.test", "TXT", '"v=DMARC1; p=reject"')
    code, _ = await mx(junk_lab, "carol@remote.test", msg())
    assert code == 250
    assert await blocking(junk_lab.entries, "bob@example.test") == []
    [raw] = await blocking(junk_lab.entries, "bob@example.test", "Junk")
    assert "dmarc=fail header.from=remote.test policy.dmarc=reject" in header_of(raw)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("spf, dmarc, mailbox", [
    ("v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=quarantine", "Junk"),
    ("v=spf1 ip4:192.0.2.1 -all", "v=DMARC1; p=none", "Junk"),  # SPF -all fail: Junk
    ("v=spf1 ip4:192.0.2.1 ~all", "v=DMARC1; p=none", "INBOX"),  # softfail: Inbox
    ("v=spf1 ip4:127.0.0.1 -all", "v=DMARC1; p=reject", "INBOX"),  # aligned pass
    ("v=spf1 ip4:192.0.2.1 -all", None, "Junk"),
])
async def test_policy_mailbox(lab: SmtpLab, fake_dns: FakeDNS, spf: str, dmarc: str | None,
                              mailbox: str) -> None:
    fake_dns.add("remote.test", "TXT", f'"{spf}"')
    if dmarc:
        fake_dns.add("_dmarc.remote.test", "TXT", f'"{dmarc}"')
    code, _ = await mx(lab, "carol@remote.test", msg())
    assert code == 250
    other = "INBOX" if mailbox == "Junk" else "Junk"
    assert len(await blocking(lab.entries, "bob@example.test", mailbox)) == 1
    assert await blocking(lab.entries, "bob@example.test", other) == []
    # The mail log says where it went (docs/mail-log.md).
    from exmaild.mailstore import mail_log

    await mail_log.writer_of(lab.store).drain()
    _, rows = await lab.store.pool.do(lambda conn: mail_log.query(
        conn, recipient="bob@example.test"))
    assert [(r["sender"], r["status"]) for r in rows] == [
        ("carol@remote.test", "junk" if mailbox == "Junk" else "delivered")]


@pytest_twisted.ensureDeferred
async def test_dns_failure_is_temporary_for_our_domain(lab: SmtpLab, fake_dns: FakeDNS) -> None:
    fake_dns.servfail.add("example.test")
    code, text = await mx(lab, "ceo@example.test", msg("ceo@example.test"))
    assert code == 451 and text.startswith(b"4.7.1")


# -- impersonation -----------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_display_name_impersonation(lab: SmtpLab) -> None:
    code, _ = await mx(lab, "boss@evil.test", msg("boss@evil.test", "carol  BOSS"))
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test", "Junk")
    assert ('X-Exmaild-Impersonation: display name "carol  BOSS" of member '
            "<ceo@example.test> used by <boss@evil.test>") in header_of(raw)


@pytest_twisted.ensureDeferred
async def test_impersonation_only_marked_when_configured(junk_lab: SmtpLab) -> None:
    code, _ = await mx(junk_lab, "boss@evil.test", msg("boss@evil.test", "Carol Boss"))
    assert code == 250
    [raw] = await blocking(junk_lab.entries, "bob@example.test")
    assert "X-Exmaild-Impersonation:" in header_of(raw)


# -- ARC across a forward ----------------------------------------------------------------
def publish(fake_dns: FakeDNS, key: K.DKIMKey) -> None:
    value = key.record_value
    fake_dns.add(key.record_name.rstrip("."), "TXT",
                 " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255)))


def forwarded(fake_dns: FakeDNS) -> bytes:
    """alice@example.org (DKIM-signed, DMARC p=reject) through a list at
    forwarder.test that adds a footer (breaking DKIM) and seals ARC."""
    author, sealer = K.new_key("example.org", "s1", "rsa"), K.new_key("forwarder.test", "arc",
                                                                     "rsa")
    publish(fake_dns, author)
    publish(fake_dns, sealer)
    fake_dns.add("_dmarc.example.org", "TXT", '"v=DMARC1; p=reject"')
    original = msg("alice@example.org")
    signed = sign_message(original, [author], "example.org") + original
    changed = signed + b"--\r\nThe list footer.\r\n"
    changed = (b"Authentication-Results: forwarder.test; dkim=pass header.d=example.org; "
               b"dmarc=pass header.from=example.org\r\n" + changed)
    seal = dkim.arc_sign(changed, b"arc", b"forwarder.test", sealer.private_key.encode(),
                         b"forwarder.test")
    return b"".join(seal) + changed


@pytest_twisted.ensureDeferred
async def test_arc_chain_across_a_forward_trusted(arc_lab: SmtpLab, fake_dns: FakeDNS) -> None:
    code, _ = await mx(arc_lab, "list@forwarder.test", forwarded(fake_dns))
    assert code == 250
    [raw] = await blocking(arc_lab.entries, "bob@example.test")
    header = header_of(raw)
    assert "dkim=fail" in header and "header.d=example.org" in header
    assert "arc=pass" in header and "header.as-d=forwarder.test" in header
    assert "dmarc=fail" in header


@pytest_twisted.ensureDeferred
async def test_arc_chain_from_an_untrusted_forwarder(lab: SmtpLab, fake_dns: FakeDNS) -> None:
    code, text = await mx(lab, "list@forwarder.test", forwarded(fake_dns))
    assert code == 550 and b"DMARC" in text
