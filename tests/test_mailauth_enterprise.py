"""Per-enterprise mail-authentication policy: two enterprises with different
[mailauth] overrides receive the same forged mail over real SMTP (real
store, DNS from a server on 127.0.0.1); the recipient's enterprise decides.
Also the settings through `exmailctl enterprise settings`."""

from __future__ import annotations

import dataclasses
import smtplib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from exmaild.config import Config, MailAuthConfig, QueueConfig
from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid
from exmaild.directory.service import DirectoryService
from exmaild.store.connector import Store

from .daemon import exmailctl, write_config
from .queuelab import FakeDNS
from .smtputil import SmtpLab, blocking, start_lab, with_cfg

ACTOR = Actor("test", ip="local")


@pytest.fixture
def fake_dns() -> Iterator[FakeDNS]:
    d = FakeDNS()
    port = d.listen()
    yield d
    port.stopListening()


@pytest_twisted.async_yield_fixture
async def lab(store: Store, cfg: Config, fake_dns: FakeDNS) -> AsyncIterator[SmtpLab]:
    c = dataclasses.replace(with_cfg(cfg), mailauth=MailAuthConfig(enabled=True),
                            queue=QueueConfig(dns_servers=(fake_dns.server,), dns_timeout=1.0))
    lab = await start_lab(store, c)
    # example.test is the first enterprise's (server defaults); beta.test another's.
    svc = DirectoryService(store, c.directory)
    await svc.add_enterprise(ACTOR, "Beta")
    await svc.add_domain(ACTOR, "beta.test", "Beta")
    await lab.add_user("dan@beta.test")
    lab.svc = svc  # type: ignore[attr-defined]
    # The forged sender's domain: SPF -all without us, DMARC p=reject.
    fake_dns.add("forged.test", "TXT", '"v=spf1 ip4:192.0.2.1 -all"')
    fake_dns.add("_dmarc.forged.test", "TXT", '"v=DMARC1; p=reject"')
    fake_dns.add("quar.test", "TXT", '"v=spf1 ip4:192.0.2.1 ~all"')
    fake_dns.add("_dmarc.quar.test", "TXT", '"v=DMARC1; p=quarantine"')
    yield lab
    for p in lab._ports:  # type: ignore[attr-defined]
        await p.stopListening()


def forged(domain: str) -> bytes:
    return (f"From: <pay@{domain}>\r\nTo: <x@example.test>\r\nSubject: invoice\r\n"
            f"Message-ID: <f@{domain}>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n"
            "\r\nPay now.\r\n").encode()


def send(port: int, sender: str, rcpts: list[str], message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net") as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        return s.data(message)


async def mx(lab: SmtpLab, domain: str, *rcpts: str) -> tuple[int, bytes]:
    return await blocking(send, lab.mx, f"pay@{domain}", list(rcpts), forged(domain))


async def boxes(lab: SmtpLab, address: str) -> tuple[int, int]:
    return (len(await blocking(lab.entries, address)),
            len(await blocking(lab.entries, address, "Junk")))


@pytest_twisted.ensureDeferred
async def test_recipients_enterprise_decides_dmarc_reject(lab: SmtpLab) -> None:
    svc: Any = lab.svc  # type: ignore[attr-defined]
    await svc.update_enterprise_settings(ACTOR, {"dmarc_reject_action": "junk"}, "Beta")
    # The server's policy (reject) for example.test's member.
    code, text = await mx(lab, "forged.test", "bob@example.test")
    assert code == 550 and text.startswith(b"5.7.1")
    assert await boxes(lab, "bob@example.test") == (0, 0)
    # Beta files the same mail in Junk.
    code, _ = await mx(lab, "forged.test", "dan@beta.test")
    assert code == 250
    assert await boxes(lab, "dan@beta.test") == (0, 1)
    # Both at once: SMTP cannot refuse for bob alone, so bob gets it in Junk too.
    code, _ = await mx(lab, "forged.test", "bob@example.test", "dan@beta.test")
    assert code == 250
    assert await boxes(lab, "bob@example.test") == (0, 1)
    assert await boxes(lab, "dan@beta.test") == (0, 2)
    # Back to the server's value.
    await svc.update_enterprise_settings(ACTOR, {"dmarc_reject_action": None}, "Beta")
    code, _ = await mx(lab, "forged.test", "dan@beta.test")
    assert code == 550


@pytest_twisted.ensureDeferred
async def test_mixed_quarantine_each_recipient_its_own(lab: SmtpLab) -> None:
    svc: Any = lab.svc  # type: ignore[attr-defined]
    await svc.update_enterprise_settings(ACTOR, {"dmarc_quarantine_action": "inbox"}, "Beta")
    code, _ = await mx(lab, "quar.test", "bob@example.test", "dan@beta.test")
    assert code == 250
    assert await boxes(lab, "bob@example.test") == (0, 1)  # server default: Junk
    assert await boxes(lab, "dan@beta.test") == (1, 0)  # Beta: Inbox


@pytest_twisted.ensureDeferred
async def test_invalid_policy_setting(lab: SmtpLab) -> None:
    svc: Any = lab.svc  # type: ignore[attr-defined]
    with pytest.raises(Invalid):
        await svc.update_enterprise_settings(ACTOR, {"spf_fail_action": "bounce"}, "Beta")


def test_cli_enterprise_policy(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path)
    assert exmailctl(config, "db", "upgrade").returncode == 0
    assert exmailctl(config, "enterprise", "add", "Acme").returncode == 0
    r = exmailctl(config, "enterprise", "settings", "--spf-fail-action", "reject",
                  "--impersonation-action", "mark")
    assert r.returncode == 0, r.stderr
    lines = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert lines["spf_fail_action"] == "reject"
    assert lines["impersonation_action"] == "mark"
    assert lines["dmarc_reject_action"] == "(server default)"
    r = exmailctl(config, "enterprise", "settings", "--spf-fail-action", "default")
    assert dict(line.split("\t", 1) for line in r.stdout.splitlines())[
        "spf_fail_action"] == "(server default)"
