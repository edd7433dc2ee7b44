"""Spam checks through the real SMTP server (in-process listeners, real store,
smtplib over loopback): rspamd from Debian started by the test (reject, add
header, greylist, no action, stopped mid-run, too slow) and the DNSBL check
against a DNS server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import smtplib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from exmaild.config import Config, MailAuthConfig, QueueConfig
from exmaild.spam.config import SpamConfig
from exmaild.spam.dnsbl import query_name
from exmaild.store.connector import Store

from .queuelab import FakeDNS
from .rspamdlab import RSPAMD, SKIP_REASON, Rspamd
from .smtputil import PASSWORD, SmtpLab, blocking, start_lab, with_cfg

needs_rspamd = pytest.mark.skipif(not RSPAMD, reason=SKIP_REASON)


def msg(subject: str, extra: str = "") -> bytes:
    return (f"From: <carol@remote.test>\r\nTo: <bob@example.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n"
            f"{extra}\r\nHello.\r\n").encode()


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rspamd]:
    if not RSPAMD:
        pytest.skip(SKIP_REASON)
    r = Rspamd(tmp_path_factory.mktemp("rspamd"))
    r.start()
    yield r
    r.stop()


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
        if event.get("log_namespace") in ("exmaild.maillog", "exmaild.spam"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


async def make_lab(store: Store, cfg: Config, dns: FakeDNS, spam: SpamConfig,
                   mailauth: bool = False) -> SmtpLab:
    c = dataclasses.replace(
        with_cfg(cfg), spam=spam, mailauth=MailAuthConfig(enabled=mailauth),
        queue=QueueConfig(dns_servers=(dns.server,), dns_timeout=1.0))
    return await start_lab(store, c)


async def stop_lab(lab: SmtpLab) -> None:
    for p in lab._ports:  # type: ignore[attr-defined]
        await p.stopListening()


@pytest_twisted.async_yield_fixture
async def lab(store: Store, cfg: Config, fake_dns: FakeDNS, rspamd: Rspamd
              ) -> AsyncIterator[SmtpLab]:
    lab = await make_lab(store, cfg, fake_dns, SpamConfig(url=rspamd.url, timeout=30.0))
    yield lab
    await stop_lab(lab)


def send(port: int, message: bytes, rcpt: str = "bob@example.test",
         login: str | None = None, sender: str = "carol@remote.test") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net") as s:
        s.ehlo()
        if login:
            s.login(login, PASSWORD)
        assert s.mail(sender)[0] == 250
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        return s.data(message)


async def mx(lab: SmtpLab, message: bytes, **kw: Any) -> tuple[int, bytes]:
    return await blocking(lambda: send(lab.mx, message, **kw))


def header_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[0].decode()


# -- rspamd ----------------------------------------------------------------------------
@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_rspamd_reject(lab: SmtpLab, maillines: list[str]) -> None:
    code, text = await mx(lab, msg("SPAM-REJECT offer"))
    assert code == 550 and text.startswith(b"5.7.1")
    assert await blocking(lab.entries, "bob@example.test") == []
    assert await blocking(lab.entries, "bob@example.test", "Junk") == []
    assert any("spam=reject" in line and "spam_score=20.00" in line for line in maillines)
    assert any("reject: END-OF-MESSAGE" in line for line in maillines)


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_rspamd_add_header_files_to_junk(lab: SmtpLab, maillines: list[str]) -> None:
    # A forged X-Spam-Score from outside is removed; ours is added.
    code, _ = await mx(lab, msg("SPAM-HEADER offer", extra="X-Spam-Score: -100\r\n"))
    assert code == 250
    assert await blocking(lab.entries, "bob@example.test") == []
    [raw] = await blocking(lab.entries, "bob@example.test", "Junk")
    head = header_of(raw)
    assert "X-Spam: Yes" in head
    assert "X-Spam-Score: 8.00 / 15.00" in head
    assert "X-Spam-Action: add header" in head
    assert "-100" not in head
    assert any("spam=add_header" in line and "action=junk" in line for line in maillines)
    assert await log_statuses(lab) == [("bob@example.test", "junk")]  # the mail log's row


async def log_statuses(lab: SmtpLab) -> list[tuple[str, str]]:
    """(recipient, status) of the mail log's rows, once its buffer is written."""
    import sqlalchemy as sa

    from exmaild.store import model as m

    def rows() -> list[tuple[str, str]]:
        with lab.store.engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.select(
                m.mail_log.c.recipient, m.mail_log.c.status).order_by(m.mail_log.c.id))]

    deadline = time.monotonic() + 60  # generous: written within a second or so
    while not (found := await blocking(rows)) and time.monotonic() < deadline:
        await blocking(time.sleep, 0.1)
    return found


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_rspamd_greylist_is_temporary(lab: SmtpLab) -> None:
    code, text = await mx(lab, msg("SPAM-GREY offer"))
    assert code == 451 and text.startswith(b"4.7.1")
    assert await blocking(lab.entries, "bob@example.test") == []


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_rspamd_no_action_inbox(lab: SmtpLab, maillines: list[str]) -> None:
    code, _ = await mx(lab, msg("lunch on friday", extra="X-Spam: Yes\r\n"))
    assert code == 250
    [raw] = await blocking(lab.entries, "bob@example.test")
    assert "X-Spam" not in header_of(raw)  # the sender's own claim is dropped
    assert any("spam=no_action" in line and "action=inbox" in line for line in maillines)
    assert await log_statuses(lab) == [("bob@example.test", "delivered")]


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_submission_is_not_checked(lab: SmtpLab, maillines: list[str]) -> None:
    code, _ = await blocking(lambda: send(lab.submission, msg("SPAM-REJECT mine"),
                                          login="alice@example.test",
                                          sender="alice@example.test"))
    assert code == 250
    assert [raw for raw in await blocking(lab.entries, "bob@example.test")]
    assert not any("spam=" in line for line in maillines)


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_rspamd_stopped_mid_run(store: Store, cfg: Config, fake_dns: FakeDNS,
                                      tmp_path: Path, maillines: list[str]) -> None:
    own = Rspamd(tmp_path / "rspamd")
    await blocking(own.start)
    lab = await make_lab(store, cfg, fake_dns, SpamConfig(url=own.url, timeout=30.0))
    try:
        assert (await mx(lab, msg("first")))[0] == 250
        assert any("spam=no_action" in line for line in maillines)
        await blocking(own.stop)
        code, _ = await mx(lab, msg("SPAM-REJECT but nobody checks"))
        assert code == 250  # accepted unchecked, never lost
        assert len(await blocking(lab.entries, "bob@example.test")) == 2
        assert any("spam=unchecked" in line for line in maillines)
        assert any("rspamd at" in line and "no verdict" in line for line in maillines)
    finally:
        await blocking(own.stop)
        await stop_lab(lab)


@pytest_twisted.ensureDeferred
async def test_rspamd_too_slow_accepts(store: Store, cfg: Config, fake_dns: FakeDNS,
                                       maillines: list[str]) -> None:
    # A server that takes the connection and never answers (needs no rspamd).
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    lab = await make_lab(store, cfg, fake_dns, SpamConfig(url=url, timeout=1.0))
    try:
        code, _ = await mx(lab, msg("SPAM-REJECT slow"))
        assert code == 250
        assert len(await blocking(lab.entries, "bob@example.test")) == 1
        assert any("spam=unchecked" in line for line in maillines)
    finally:
        silent.close()
        await stop_lab(lab)


# -- DNSBL -----------------------------------------------------------------------------
ZONE = "bl.example.net"


def test_query_names() -> None:
    assert query_name("192.0.2.99", "zen.spamhaus.org") == "99.2.0.192.zen.spamhaus.org"
    assert query_name("::ffff:127.0.0.1", "z.test.") == "1.0.0.127.z.test"
    assert query_name("2001:db8::1", "z.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.z.test")


@pytest_twisted.ensureDeferred
async def test_dnsbl_listed_refused_at_rcpt(store: Store, cfg: Config, fake_dns: FakeDNS,
                                            maillines: list[str]) -> None:
    fake_dns.add(f"1.0.0.127.{ZONE}", "A", "127.0.0.2")
    lab = await make_lab(store, cfg, fake_dns, SpamConfig(dnsbl_zones=("clean.test", ZONE)))
    try:
        code, text = await mx(lab, msg("hello"))
        assert code == 554
        assert text == (b"5.7.1 Service unavailable; client [127.0.0.1] blocked using "
                        + ZONE.encode())
        assert await blocking(lab.entries, "bob@example.test") == []
        assert any("reject: RCPT" in line and ZONE in line for line in maillines)
        # Authenticated submission from the same address is not refused.
        code, _ = await blocking(lambda: send(lab.submission, msg("mine"),
                                              login="alice@example.test",
                                              sender="alice@example.test"))
        assert code == 250
    finally:
        await stop_lab(lab)


@pytest_twisted.ensureDeferred
async def test_dnsbl_junk_action(store: Store, cfg: Config, fake_dns: FakeDNS,
                                 maillines: list[str]) -> None:
    fake_dns.add(f"1.0.0.127.{ZONE}", "A", "127.0.0.4")
    lab = await make_lab(store, cfg, fake_dns,
                         SpamConfig(dnsbl_zones=(ZONE,), dnsbl_action="junk"), mailauth=True)
    try:
        code, _ = await mx(lab, msg("hello"))
        assert code == 250
        [raw] = await blocking(lab.entries, "bob@example.test", "Junk")
        assert "X-Spam: Yes" in header_of(raw)
        assert "Authentication-Results:" in header_of(raw)
        assert any(f"dnsbl=listed({ZONE})" in line and "action=junk" in line
                   and "spf=" in line for line in maillines)
    finally:
        await stop_lab(lab)


@pytest_twisted.ensureDeferred
async def test_dnsbl_clean_and_dns_errors_never_refuse(store: Store, cfg: Config,
                                                       fake_dns: FakeDNS,
                                                       maillines: list[str]) -> None:
    fake_dns.servfail.add(f"1.0.0.127.{ZONE}")
    # 127.255.255.254: the list refuses to answer this resolver; not a listing.
    fake_dns.add("1.0.0.127.refusing.test", "A", "127.255.255.254")
    lab = await make_lab(store, cfg, fake_dns,
                         SpamConfig(dnsbl_zones=(ZONE, "refusing.test", "clean.test")))
    try:
        code, _ = await mx(lab, msg("hello"))
        assert code == 250
        assert len(await blocking(lab.entries, "bob@example.test")) == 1
        assert any("dnsbl=temperror" in line for line in maillines)
    finally:
        await stop_lab(lab)


@needs_rspamd
@pytest_twisted.ensureDeferred
async def test_learn_against_the_controller(rspamd: Rspamd) -> None:
    from twisted.internet import reactor

    from exmaild.spam.rspamd import Rspamd as Client

    good = Client(reactor, SpamConfig(url=rspamd.url, controller_url=rspamd.controller_url,
                                      password="secret", learn=True))
    bad = Client(reactor, SpamConfig(url=rspamd.url, controller_url=rspamd.controller_url,
                                     password="wrong", learn=True))
    try:
        assert await good.learn("spam", msg("SPAM-HEADER learn me")) is True
        assert await bad.learn("ham", msg("hello")) is False  # 401: logged, not raised
    finally:
        await good.close()
        await bad.close()


def test_action_mapping() -> None:
    from exmaild.spam.rspamd import parse_reply

    def ours(action: str) -> str:
        body = {"action": action, "score": 1.5, "required_score": 15, "symbols": {}}
        return parse_reply(json.dumps(body).encode()).ours

    assert [ours(a) for a in ("reject", "soft reject", "greylist", "add header",
                              "rewrite subject", "no action")] == [
        "reject", "tempfail", "tempfail", "junk", "junk", "inbox"]
    with pytest.raises(ValueError):
        parse_reply(b'{"error": "bad"}')
