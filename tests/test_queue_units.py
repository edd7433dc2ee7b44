"""Outbound delivery parts without a database: MX resolution against a DNS
server on 127.0.0.1, DSN composition, and SMTP sessions against test servers."""

from __future__ import annotations

import dataclasses
import email
import email.policy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from exmaild.config import ConfigError, QueueConfig, load_config
from exmaild.netutil import parse_hostport
from exmaild.queue import dsn
from exmaild.queue.client import SMTPClientError
from exmaild.queue.delivery import (
    BOUNCE,
    DEFER,
    SENT,
    Batch,
    Connector,
    DestinationError,
    Rcpt,
    route_for,
)
from exmaild.queue.resolver import MXResolver, ResolveError, order_mx
from exmaild.tls import make_self_signed

from .conftest import free_port
from .queuelab import Behaviour, FakeDNS, FakeSMTP, message


@pytest.fixture
def fake_dns():  # type: ignore[no-untyped-def]
    d = FakeDNS()
    port = d.listen()
    yield d
    port.stopListening()


@pytest.fixture
def resolver(fake_dns: FakeDNS):  # type: ignore[no-untyped-def]
    r = MXResolver(reactor, [fake_dns.server], timeout=1.0)
    r.start()
    yield r
    r.stop()


# -- resolver -------------------------------------------------------------------------------------
def test_order_mx_sorts_by_preference_and_shuffles_equals() -> None:
    records = [(20, "c"), (10, "b"), (10, "a"), (30, "d"), (10, "a")]
    assert order_mx(records, shuffle=lambda xs: xs.reverse()) == ["a", "b", "c", "d"]
    seen = {tuple(order_mx(records)[:2]) for _ in range(200)}
    assert seen == {("a", "b"), ("b", "a")}


def test_parse_hostport() -> None:
    assert parse_hostport("smtp.example.com", 25) == ("smtp.example.com", 25, False)
    assert parse_hostport("[smtp.example.com]:587", 25) == ("smtp.example.com", 587, True)
    assert parse_hostport("[2001:db8::1]:26", 25) == ("2001:db8::1", 26, True)
    assert parse_hostport("127.0.0.1:5353", 53) == ("127.0.0.1", 5353, False)
    for bad in ("", "[x", "host:99999", "host:abc"):
        with pytest.raises(ValueError):
            parse_hostport(bad, 25)


@pytest_twisted.ensureDeferred
async def test_mx_lookup_orders_hosts_and_falls_back_to_a(
    fake_dns: FakeDNS, resolver: MXResolver
) -> None:
    fake_dns.mx("remote.test", (20, "mx2.remote.test"), (10, "mx1.remote.test"),
                a={"mx1.remote.test": "127.0.0.11", "mx2.remote.test": "127.0.0.12"})
    fake_dns.add("mx1.remote.test", "AAAA", "::1")
    targets = await resolver.for_domain("remote.test", 2525)
    assert [(t.host, t.address, t.port) for t in targets] == [
        ("mx1.remote.test", "127.0.0.11", 2525), ("mx1.remote.test", "::1", 2525),
        ("mx2.remote.test", "127.0.0.12", 2525),
    ]
    assert targets[0].label == "mx1.remote.test[127.0.0.11]:2525"
    # No MX at all: the domain's own address (RFC 5321 §5.1 implicit MX).
    fake_dns.add("plain.test", "A", "127.0.0.13")
    [t] = await resolver.for_domain("plain.test", 25)
    assert (t.host, t.address) == ("plain.test", "127.0.0.13")
    # Address literals need no DNS.
    [t] = await resolver.for_domain("[127.0.0.14]", 25)
    assert t.address == "127.0.0.14"


@pytest.mark.parametrize(
    "setup, permanent, status, text",
    [
        (lambda d: d.add("nullmx.test", "MX", "0 ."), True, "5.1.10", "does not accept mail"),
        (lambda d: None, True, "5.4.4", "type=MX: Host not found"),
        (lambda d: d.servfail.add("x.test"), False, "4.4.3", "Host not found, try again"),
        (lambda d: d.drop.add("x.test"), False, "4.4.3", "try again"),
        (lambda d: d.mx("x.test", (10, "gone.x.test")), True, "5.4.4", "name=gone.x.test type=A"),
        (lambda d: (d.mx("x.test", (10, "mx.x.test")), d.servfail.add("mx.x.test")),
         False, "4.4.3", "try again"),
    ],
    ids=["null-mx", "nxdomain", "servfail", "timeout", "mx-host-nxdomain", "mx-host-servfail"],
)
@pytest_twisted.ensureDeferred
async def test_resolution_failures(
    fake_dns: FakeDNS, resolver: MXResolver, setup: Any, permanent: bool, status: str, text: str
) -> None:
    setup(fake_dns)
    domain = "nullmx.test" if status == "5.1.10" else "x.test"
    with pytest.raises(ResolveError) as e:
        await resolver.for_domain(domain, 25)
    assert (e.value.permanent, e.value.status) == (permanent, status)
    assert text in e.value.text


# -- DSN ------------------------------------------------------------------------------------------
def test_notify_rules() -> None:
    allows = dsn.notify_allows
    assert allows("a@x", None, dsn.FAILED) and allows("a@x", None, dsn.DELAYED)
    assert not allows("a@x", None, dsn.RELAYED)
    assert not allows("", None, dsn.FAILED)  # bounces never bounce
    assert not allows("a@x", "NEVER", dsn.FAILED)
    assert allows("a@x", "SUCCESS,DELAY", dsn.RELAYED)
    assert not allows("a@x", "SUCCESS,DELAY", dsn.FAILED)


def _report(headers_only: bool, original: bytes) -> email.message.EmailMessage:
    raw = dsn.build_dsn(
        hostname="mx.example.test", queue_id="ABCDEF012345", sender="alice@example.test",
        envid="env-1", arrival=1_800_000_000, original=original, headers_only=headers_only,
        recipients=[
            dsn.ReportedRecipient("bob@remote.test", "rfc822;Bob@Remote.test", dsn.FAILED,
                                  "5.1.1", "host mx said: 550 5.1.1 no such user (in reply to "
                                  "RCPT TO command)", "mx.remote.test", "smtp; 550 5.1.1 "
                                  "no such user " + "very long text " * 8, 1_800_000_100),
            dsn.ReportedRecipient("carol@slow.test", None, dsn.DELAYED, "4.4.1",
                                  "connect to mx.slow.test[192.0.2.1]:25: Connection refused",
                                  last_attempt=1_800_000_100, retry_until=1_800_432_000),
        ],
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF throughout
    assert max(len(x) for x in raw.split(b"\r\n")) <= 998
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_dsn_is_a_multipart_report_with_the_original() -> None:
    original = message("Quarterly report", "Body line\r\n.dot line\r\n")
    msg = _report(False, original)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert msg["To"] == "alice@example.test"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered mail: Quarterly report"
    human, status, returned = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert "<bob@remote.test>: host mx said: 550 5.1.1" in human.get_content()
    assert "retried until" in human.get_content()
    assert status.get_content_type() == "message/delivery-status"
    per_msg, bob, carol = status.get_payload()
    assert per_msg["Reporting-MTA"] == "dns; mx.example.test"
    assert per_msg["Original-Envelope-Id"] == "env-1"
    assert per_msg["Arrival-Date"]
    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert bob["Original-Recipient"] == "rfc822;Bob@Remote.test"
    assert (bob["Action"], bob["Status"]) == ("failed", "5.1.1")
    assert bob["Remote-MTA"] == "dns; mx.remote.test"
    assert " ".join(bob["Diagnostic-Code"].split()).startswith("smtp; 550 5.1.1 no such user")
    assert (carol["Action"], carol["Status"]) == ("delayed", "4.4.1")
    assert carol["Will-Retry-Until"]
    assert carol["Diagnostic-Code"].startswith("X-Exmaild; connect to")
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "Quarterly report"
    assert b".dot line" in inner.as_bytes()


def test_dsn_with_headers_only() -> None:
    msg = _report(True, message("Big one", "x" * 100 + "\r\n"))
    returned = msg.get_payload()[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    text = returned.get_payload(decode=True) or returned.as_bytes()
    assert b"Subject: Big one" in text and b"x" * 100 not in text


# -- sessions against test servers -----------------------------------------------------------------
def batch(*rcpts: str, size: int = 100, notify: str | None = None, ret: str | None = None,
          sender: str = "alice@example.test") -> Batch:
    return Batch(1, "QID", 1, 0, size, sender, "env+1", ret, 0, None,
                 [Rcpt(i, r, f"rfc822;{r}", notify, 0, False) for i, r in enumerate(rcpts)])


def chunks(*parts: bytes) -> Any:
    async def body(_b: Batch) -> AsyncIterator[bytes]:
        for p in parts:
            yield p

    return body


async def no_8bit(_b: Batch) -> bool:
    return False


@pytest.fixture
def servers():  # type: ignore[no-untyped-def]
    made: list[Any] = []

    def make(behaviour: Behaviour | None = None, interface: str = "127.0.0.1",
             port: int = 0, implicit_tls: Any = None) -> FakeSMTP:
        f = FakeSMTP(behaviour)
        if implicit_tls is not None:
            p = reactor.listenSSL(port, f, implicit_tls, interface=interface)
        else:
            p = reactor.listenTCP(port, f, interface=interface)
        f.port = p.getHost().port
        made.append(p)
        return f

    yield make
    for p in made:
        p.stopListening()


def qconf(port: int, **kw: Any) -> QueueConfig:
    return QueueConfig(remote_port=port, connect_timeout=2, command_timeout=2, **kw)


_resolvers: list[MXResolver] = []


def connector(q: QueueConfig, dns_server: FakeDNS) -> Connector:
    r = MXResolver(reactor, [dns_server.server], 1.0)
    _resolvers.append(r)
    return Connector(q, "client.example.test", r, reactor)


@pytest.fixture(autouse=True)
def _stop_resolvers():  # type: ignore[no-untyped-def]
    yield
    while _resolvers:
        _resolvers.pop().stop()


@pytest_twisted.ensureDeferred
async def test_pipelined_transaction_with_dsn_parameters_and_per_recipient_replies(
    fake_dns: FakeDNS, servers: Any
) -> None:
    srv = servers(Behaviour(rcpt=lambda a: {"gone@remote.test": "550 5.1.1 <gone@remote.test>: "
                                            "User unknown", "full@remote.test": "452 4.2.2 Mailbox "
                                            "full"}.get(a, "250 2.1.5 Ok")))
    fake_dns.mx("remote.test", (10, "mx.remote.test"), a={"mx.remote.test": "127.0.0.1"})
    c = connector(qconf(srv.port), fake_dns)
    session = await c.open(route_for("remote.test", c.q))
    b = batch("bob@remote.test", "gone@remote.test", "full@remote.test", ret="HDRS",
              notify="SUCCESS,FAILURE")
    body = chunks(b"Subject: x\r\n\r\n.one\r", b"\n.two\r\n", b"..three\nlast")
    outcomes = await session.deliver(b, body, no_8bit)
    assert [(o.action, o.status) for o in outcomes] == [
        (SENT, "2.0.0"), (BOUNCE, "5.1.1"), (DEFER, "4.2.2")]
    assert outcomes[0].text == "250 2.0.0 Ok: queued as TEST"
    assert outcomes[0].relay == f"mx.remote.test[127.0.0.1]:{srv.port}" and outcomes[0].remote_dsn
    assert outcomes[1].text == (
        "host mx.remote.test[127.0.0.1] said: 550 5.1.1 <gone@remote.test>: User unknown "
        "(in reply to RCPT TO command)")
    [txn] = srv.txns
    assert txn.mail == "<alice@example.test> SIZE=100 RET=HDRS ENVID=env+2B1"
    assert txn.rcpts[0] == "<bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@remote.test"
    assert txn.data == b"Subject: x\r\n\r\n.one\r\n.two\r\n..three\r\nlast\r\n"
    assert txn.helo == "client.example.test"
    # The connection is reused after RSET.
    assert await session.reset()
    await session.deliver(batch("x@remote.test"), chunks(b"Subject: y\r\n\r\nbody\r\n"), no_8bit)
    await session.close()
    assert srv.connections == 1 and len(srv.txns) == 2
    assert srv.commands.count("RSET") == 1 and srv.commands[-1] == "QUIT"


@pytest_twisted.ensureDeferred
async def test_helo_fallback_without_pipelining_sends_no_extensions(
    fake_dns: FakeDNS, servers: Any
) -> None:
    srv = servers(Behaviour(esmtp=False, rcpt=lambda a: "550 5.1.1 no" if "bad" in a
                            else "250 Ok"))
    c = connector(qconf(srv.port), fake_dns)
    session = await c.open(route_for("[127.0.0.1]", c.q))
    outcomes = await session.deliver(batch("bad@x.test", "good@x.test", notify="NEVER"),
                                     chunks(b"Subject: z\r\n\r\nhi\r\n"), no_8bit)
    await session.close()
    assert [o.action for o in outcomes] == [BOUNCE, SENT]
    assert not outcomes[1].remote_dsn
    assert srv.commands[:2] == ["EHLO client.example.test", "HELO client.example.test"]
    assert srv.txns[0].mail == "<alice@example.test>"
    # Sequential: DATA only after the RCPT replies; no RCPT at all after a refused MAIL.
    assert srv.commands.index("DATA") > srv.commands.index("RCPT TO:<good@x.test>")


@pytest_twisted.ensureDeferred
async def test_size_limit_and_next_mx_after_a_refusing_greeting(
    fake_dns: FakeDNS, servers: Any
) -> None:
    good = servers(Behaviour(extensions=["SIZE 1000"]))
    # The better MX greets with 554: skipped, as Postfix does; the second takes it.
    servers(Behaviour(greeting="554 5.7.1 go away"), interface="127.0.0.2", port=good.port)
    fake_dns.mx("remote.test", (10, "mx1.remote.test"), (20, "mx2.remote.test"),
                a={"mx1.remote.test": "127.0.0.2", "mx2.remote.test": "127.0.0.1"})
    c = connector(qconf(good.port), fake_dns)
    session = await c.open(route_for("remote.test", c.q))
    assert session.target.host == "mx2.remote.test"
    [o] = await session.deliver(batch("bob@remote.test", size=2000), chunks(b""), no_8bit)
    assert (o.action, o.status) == (BOUNCE, "5.3.4")
    assert "message size 2000 exceeds size limit 1000" in o.text
    await session.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_and_silent_servers_defer(fake_dns: FakeDNS, servers: Any) -> None:
    port = free_port()
    c = connector(qconf(port), fake_dns)
    with pytest.raises(DestinationError) as e:
        await c.open(route_for("[127.0.0.1]", c.q))
    assert not e.value.permanent and e.value.status == "4.4.1"
    assert e.value.text == f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    # A server that accepts but never greets: the command timeout.
    silent = servers(Behaviour(greeting=""))
    c = connector(dataclasses.replace(qconf(silent.port), command_timeout=0.3), fake_dns)
    with pytest.raises(DestinationError) as e:
        await c.open(route_for("[127.0.0.1]", c.q))
    assert e.value.status == "4.4.2"


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Any, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet import ssl

    cert, key = tmp_path / "mx.crt", tmp_path / "mx.key"
    make_self_signed(cert, key, "mx.remote.test")
    opts = ssl.CertificateOptions(
        privateKey=load_pem_private_key(key.read_bytes(), None),
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()),
    )
    return opts, cert


@pytest_twisted.ensureDeferred
async def test_opportunistic_starttls_and_verified_tls(
    fake_dns: FakeDNS, servers: Any, tls_files: tuple[Any, Path]
) -> None:
    opts, cert = tls_files
    srv = servers(Behaviour(tls=opts))
    fake_dns.mx("remote.test", (10, "mx.remote.test"), a={"mx.remote.test": "127.0.0.1"})
    body = chunks(b"Subject: tls\r\n\r\nsecret\r\n")
    # Opportunistic (Postfix `may`): a self-signed certificate is fine.
    c = connector(qconf(srv.port), fake_dns)
    session = await c.open(route_for("remote.test", c.q))
    assert session.client.tls and "TLSv1" in session.client.tls_description()
    await session.deliver(batch("bob@remote.test"), body, no_8bit)
    await session.close()
    assert srv.txns[-1].tls and srv.txns[-1].helo == "client.example.test"
    # tls_verify: the certificate must verify for the MX host name...
    c = connector(qconf(srv.port, tls_verify=True, tls_ca_file=str(cert)), fake_dns)
    session = await c.open(route_for("remote.test", c.q))
    assert session.client.tls
    await session.close()
    # ...so without the CA it is a temporary failure, and no plaintext fallback.
    c = connector(qconf(srv.port, tls_verify=True), fake_dns)
    with pytest.raises(DestinationError) as e:
        await c.open(route_for("remote.test", c.q))
    assert e.value.status == "4.7.5" and "TLS handshake" in e.value.text
    # A server without STARTTLS: required TLS defers, opportunistic goes plaintext.
    plain = servers(Behaviour())
    c = connector(qconf(plain.port, tls_verify=True, tls_ca_file=str(cert)), fake_dns)
    with pytest.raises(DestinationError) as e:
        await c.open(route_for("remote.test", c.q))
    assert e.value.status == "4.7.4" and "TLS is required" in e.value.text
    # A smarthost with implicit TLS (port 465 style).
    implicit = servers(Behaviour(users={"u": "p"}), implicit_tls=opts)
    q = qconf(25, relayhost=f"[127.0.0.1]:{implicit.port}", relayhost_tls="tls",
              relayhost_user="u", relayhost_password="p")
    session = await connector(q, fake_dns).open(route_for("any.test", q))
    await session.deliver(batch("bob@any.test"), body, no_8bit)
    await session.close()
    assert implicit.txns[0].auth == "u"


@pytest_twisted.ensureDeferred
async def test_failed_opportunistic_handshake_falls_back_to_plaintext(
    fake_dns: FakeDNS, servers: Any
) -> None:
    srv = servers(Behaviour(broken_tls=True))
    c = connector(qconf(srv.port), fake_dns)
    session = await c.open(route_for("[127.0.0.1]", c.q))
    assert not session.client.tls and srv.connections == 2
    [o] = await session.deliver(batch("bob@x.test"), chunks(b"S: 1\r\n\r\nx\r\n"), no_8bit)
    await session.close()
    assert o.action == SENT and not srv.txns[0].tls
    assert srv.commands.count("STARTTLS") == 1


@pytest_twisted.ensureDeferred
async def test_connection_lost_after_the_data(fake_dns: FakeDNS, servers: Any) -> None:
    srv = servers(Behaviour(data_reply=""))
    c = connector(qconf(srv.port), fake_dns)
    session = await c.open(route_for("[127.0.0.1]", c.q))
    with pytest.raises(SMTPClientError) as e:
        await session.deliver(batch("bob@x.test"), chunks(b"S: 1\r\n\r\nx\r\n"), no_8bit)
    assert str(e.value) == ("lost connection with 127.0.0.1[127.0.0.1] while sending end of "
                            "data -- message may be sent more than once")
    assert not session.usable and not await session.reset()


@pytest_twisted.ensureDeferred
async def test_smarthost_auth_plain_login_and_failure(fake_dns: FakeDNS, servers: Any) -> None:
    srv = servers(Behaviour(users={"relay": "s3cret"}))
    for mechs in ("PLAIN LOGIN", "LOGIN"):
        srv.b.auth_mechs = mechs
        q = qconf(25, relayhost=f"[127.0.0.1]:{srv.port}", relayhost_user="relay",
                  relayhost_password="s3cret")
        c = connector(q, fake_dns)
        session = await c.open(route_for("anywhere.test", q))
        await session.deliver(batch("bob@anywhere.test"), chunks(b"S: 1\r\n\r\nx\r\n"), no_8bit)
        await session.close()
        assert srv.txns[-1].auth == "relay"
        assert any(c.startswith("AUTH " + mechs.split()[0]) for c in srv.commands)
    q = qconf(25, relayhost=f"[127.0.0.1]:{srv.port}", relayhost_user="relay",
              relayhost_password="wrong")
    with pytest.raises(DestinationError) as e:
        await connector(q, fake_dns).open(route_for("anywhere.test", q))
    assert e.value.status == "4.7.0" and "SASL authentication failed" in e.value.text
    assert "535 5.7.8" in e.value.text


def test_queue_config_validation(tmp_path: Path) -> None:
    cfg_file = tmp_path / "x.toml"
    cfg_file.write_text(
        '[queue]\nretry_schedule = [60, 0]\nrelayhost_tls = "maybe"\nrelayhost = "[x"\n'
        'relayhost_user = "u"\ndns_servers = ["127.0.0.1:99999"]\nbogus = 1\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(str(cfg_file))
    text = "\n".join(e.value.errors)
    for expected in ("queue.retry_schedule", "queue.relayhost_tls", "queue.relayhost:",
                     "relayhost_password", "queue.dns_servers", "queue.bogus: unknown key"):
        assert expected in text
    cfg_file.write_text('[queue]\nretry_schedule = [1, 2]\ndns_servers = ["127.0.0.1:5353"]\n')
    q = load_config(str(cfg_file)).queue
    assert q.retry_schedule == (1, 2) and q.dns_servers == ("127.0.0.1:5353",)
