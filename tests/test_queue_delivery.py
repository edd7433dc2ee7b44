"""The queue runner end to end: real store (SQLite, and PostgreSQL when
configured), MX answers from a DNS server on 127.0.0.1, delivery to Postfix's
smtp-sink or a scriptable SMTP server, DSNs into the sender's INBOX."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer, reactor, threads
from twisted.logger import formatEvent, globalLogPublisher

from exmaild.config import Config, QueueConfig, ServerConfig
from exmaild.mailstore.service import MailStore
from exmaild.queue import admin, work
from exmaild.queue.runner import QueueRunner
from exmaild.store import model as m
from exmaild.store.connector import Store

from .conftest import free_port
from .queuelab import (
    SMTP_SINK,
    Behaviour,
    FakeDNS,
    FakeSMTP,
    Sink,
    inbox,
    message,
    queue_mail,
    queue_row,
    statuses,
    wait_for,
)
from .test_store import user

needs_sink = pytest.mark.skipif(not Path(SMTP_SINK).exists(), reason="postfix smtp-sink missing")


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.dns = FakeDNS()
        self.ports: list[Any] = [self.dns.listen()]
        self.sinks: list[Sink] = []
        self.dns.mx("remote.test", (10, "mx.remote.test"), a={"mx.remote.test": "127.0.0.1"})

    def smtp(self, behaviour: Behaviour | None = None, port: int = 0) -> FakeSMTP:
        f = FakeSMTP(behaviour)
        p = reactor.listenTCP(port, f, interface="127.0.0.1")
        f.port = p.getHost().port
        self.ports.append(p)
        return f

    def sink(self, *options: str, port: int | None = None) -> Sink:
        s = Sink(self.tmp / f"sink{len(self.sinks)}", port or free_port())
        s.start(*options)
        self.sinks.append(s)
        return s

    def close(self) -> None:
        for s in self.sinks:
            s.stop()
        for p in self.ports:
            p.stopListening()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    yield lab
    lab.close()


@pytest.fixture
def maillines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "exmaild.maillog":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def runner_factory(store: Store, cfg: Config, lab: Lab) -> AsyncIterator[Any]:
    made: list[QueueRunner] = []

    async def make(port: int = 25, node: str = "node1", on: Store | None = None,
                   **kw: Any) -> QueueRunner:
        q = QueueConfig(**{
            "retry_schedule": (300,), "scan_interval": 3600.0, "connect_timeout": 2.0,
            "command_timeout": 5.0, "dns_servers": (lab.dns.server,), "dns_timeout": 1.0,
            "helo_name": "client.example.test", "remote_port": port, **kw,
        })
        c = dataclasses.replace(cfg, queue=q, server=ServerConfig("mx.example.test", node))
        r = QueueRunner(c, on or store, reactor)
        r.startService()
        made.append(r)
        await r.run_once()  # the start-up scan is over before the test queues mail
        return r

    yield make
    for r in made:
        if r.running:
            r.stopService()


def report_of(raw: bytes) -> tuple[email.message.EmailMessage, list[Any]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    parts = msg.get_payload()
    assert [p.get_content_type() for p in parts[:2]] == ["text/plain", "message/delivery-status"]
    return msg, parts


def count(store: Store, table: sa.Table) -> int:
    with store.engine.connect() as c:
        return c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


# -- delivery -----------------------------------------------------------------------------------
@needs_sink
@pytest_twisted.ensureDeferred
async def test_delivery_to_smtp_sink_through_mx(
    store: Store, lab: Lab, runner_factory: Any, maillines: list[str]
) -> None:
    sink = lab.sink()
    runner = await runner_factory(sink.port)
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test", "carol@remote.test"],
                           message("to sink", "line\r\n.dot line\r\n"), notify="SUCCESS,FAILURE",
                           orcpt=True, envid="E1", ret="HDRS")
    await runner.run_once()
    assert statuses(store, qid) == {
        "bob@remote.test": ("sent", "250 2.0.0 Ok"), "carol@remote.test": ("sent", "250 2.0.0 Ok")}
    [dump] = sink.messages()  # both recipients in one transaction
    assert "X-Mail-Args: <alice@example.test> RET=HDRS ENVID=E1" in dump
    assert "X-Rcpt-Args: <bob@remote.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@remote.test" \
        in dump
    assert "X-Helo-Args: client.example.test" in dump
    assert "Return-Path" not in dump  # body_offset skipped the local header
    assert "Subject: to sink" in dump and "\n.dot line\n" in dump
    # Done: the queue's content reference is released (nothing else held it).
    assert queue_row(store, qid).body_offset == -1
    assert count(store, m.contents) == 0
    relay = f"relay=mx.remote.test[127.0.0.1]:{sink.port}"
    assert f"{qid}: from=<alice@example.test>, size=" in maillines[0]
    assert "nrcpt=2 (queue active)" in maillines[0]
    sent = [x for x in maillines if "to=<bob@remote.test>" in x]
    assert len(sent) == 1 and relay in sent[0]
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok)" in sent[0]
    assert maillines[-1] == f"{qid}: removed"
    # The sink takes NOTIFY (it offers DSN): no "relayed" report from us.
    assert count(store, m.queue_messages) == 1


@needs_sink
@pytest_twisted.ensureDeferred
async def test_temporary_failure_is_retried_on_schedule(
    store: Store, lab: Lab, runner_factory: Any, maillines: list[str]
) -> None:
    sink = lab.sink("-r", "RCPT")  # 450 to every RCPT
    await runner_factory(sink.port, retry_schedule=[1], scan_interval=0.2)
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
    await wait_for(lambda: statuses(store, qid)["bob@remote.test"][0] == "deferred")
    reply = statuses(store, qid)["bob@remote.test"][1]
    assert reply == ("host mx.remote.test[127.0.0.1] said: 450 4.3.0 Error: command failed "
                     "(in reply to RCPT TO command)")
    await wait_for(lambda: any(
        f"{qid}: to=<bob@remote.test>" in x and "dsn=4.3.0, status=deferred (host" in x
        for x in maillines))
    with store.engine.connect() as c:
        row = c.execute(sa.select(m.queue_recipients)).one()
    assert row.next_attempt == row.last_attempt + 1 and row.locked_until == 0
    sink.stop()
    sink.start()  # now it accepts
    await wait_for(lambda: statuses(store, qid)["bob@remote.test"][0] == "sent", timeout=5)
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.queue_recipients.c.attempts)).scalar_one() == 2
    assert len(sink.messages()) == 1


@pytest_twisted.ensureDeferred
async def test_unreachable_server_defers_and_retry_delivers(
    store: Store, lab: Lab, runner_factory: Any
) -> None:
    port = free_port()
    runner = await runner_factory(port)
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"],
                           message("utf8", "Grüße\r\n"))
    t0 = int(time.time())
    await runner.run_once()
    status, reply = statuses(store, qid)["bob@remote.test"]
    assert status == "deferred"
    assert reply == f"connect to mx.remote.test[127.0.0.1]:{port}: Connection refused"
    with store.engine.connect() as c:
        nxt = c.execute(sa.select(m.queue_recipients.c.next_attempt)).scalar_one()
    assert t0 + 300 <= nxt <= int(time.time()) + 300
    await runner.run_once()  # not due: nothing happens
    srv = lab.smtp(port=port)
    assert srv.connections == 0
    assert await admin.retry(store, qid.lower()) == 1
    await runner.run_once()
    assert statuses(store, qid)["bob@remote.test"][0] == "sent"
    [txn] = srv.txns
    assert "BODY=8BITMIME" in txn.mail and "Grüße".encode() in txn.data


# -- reports ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_rejection_bounces_with_a_report_in_the_local_senders_inbox(
    store: Store, lab: Lab, runner_factory: Any, maillines: list[str]
) -> None:
    alice = await user(store, "alice@example.test")
    srv = lab.smtp(Behaviour(rcpt=lambda a: "550 5.1.1 <gone@remote.test>: User unknown"
                             if a.startswith("gone") else "250 2.1.5 Ok"))
    runner = await runner_factory(srv.port)
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test", "gone@remote.test"],
                           message("Budget"), envid="ENV-7", orcpt=True)
    await runner.run_once()
    st = statuses(store, qid)
    assert st["bob@remote.test"][0] == "sent"
    assert st["gone@remote.test"] == ("bounced", "host mx.remote.test[127.0.0.1] said: 550 5.1.1 "
                                      "<gone@remote.test>: User unknown (in reply to RCPT TO "
                                      "command)")
    [raw] = await inbox(store, alice)
    assert raw.startswith(b"Return-Path: <>\r\n")
    msg, (human, status, returned) = report_of(raw)
    assert msg["Subject"] == "Undelivered mail: Budget"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert "<gone@remote.test>: host mx.remote.test[127.0.0.1] said: 550" in human.get_content()
    per_msg, gone = status.get_payload()  # only the failed recipient is reported
    assert per_msg["Original-Envelope-Id"] == "ENV-7"
    assert per_msg["X-Exmaild-Queue-ID"] == qid
    assert gone["Final-Recipient"] == "rfc822; gone@remote.test"
    assert gone["Original-Recipient"] == "rfc822;gone@remote.test"
    assert (gone["Action"], gone["Status"]) == ("failed", "5.1.1")
    assert gone["Remote-MTA"] == "dns; mx.remote.test"
    assert gone["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <gone@remote.test>")
    assert returned.get_content_type() == "message/rfc822"  # no RET: small, so all of it
    inner = returned.get_payload()[0].as_bytes()
    assert inner.startswith(b"From: Alice") and b"Hi there." in inner
    note = [x for x in maillines if "sender non-delivery notification:" in x]
    assert len(note) == 1 and note[0].startswith(f"{qid}: ")
    assert maillines[-1] == f"{qid}: removed"
    assert queue_row(store, qid).body_offset == -1


@pytest_twisted.ensureDeferred
async def test_expiry_and_delay_reports(store: Store, lab: Lab, runner_factory: Any) -> None:
    alice = await user(store, "alice@example.test")
    runner = await runner_factory(free_port(), lifetime=3600, delay_warning=60)
    now = int(time.time())
    old = await queue_mail(store, "alice@example.test", ["bob@remote.test"], message("Old"),
                           created=now - 4000)
    slow = await queue_mail(store, "alice@example.test", ["carol@remote.test"],
                            message("Slow"), created=now - 100)
    quiet = await queue_mail(store, "alice@example.test", ["dave@remote.test"],
                             message("Quiet"), created=now - 100, notify="FAILURE")
    await runner.run_once()
    assert statuses(store, old)["bob@remote.test"][0] == "expired"
    assert statuses(store, slow)["carol@remote.test"][0] == "deferred"
    assert statuses(store, quiet)["dave@remote.test"][0] == "deferred"
    reports = {report_of(raw)[0]["Subject"]: report_of(raw)[1] for raw in await inbox(store, alice)}
    assert set(reports) == {"Undelivered mail: Old", "Delayed mail (still trying): Slow"}
    _, status, returned = reports["Undelivered mail: Old"]
    rcpt = status.get_payload()[1]
    assert (rcpt["Action"], rcpt["Status"]) == ("failed", "4.4.1")
    assert "Connection refused" in rcpt["Diagnostic-Code"]
    assert returned.get_content_type() == "message/rfc822"
    human, status, returned = reports["Delayed mail (still trying): Slow"]
    rcpt = status.get_payload()[1]
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.4.1")
    assert rcpt["Will-Retry-Until"]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert "retried until" in human.get_content()
    # One delay notice only.
    await admin.retry(store, None)
    await runner.run_once()
    assert len(await inbox(store, alice)) == 2
    with store.engine.connect() as c:
        flags = dict(c.execute(sa.select(m.queue_recipients.c.recipient,
                                         m.queue_recipients.c.delay_notified)).all())
    assert flags["carol@remote.test"] and not flags["dave@remote.test"]


@pytest_twisted.ensureDeferred
async def test_no_report_for_notify_never_or_null_sender(
    store: Store, lab: Lab, runner_factory: Any
) -> None:
    alice = await user(store, "alice@example.test")
    srv = lab.smtp(Behaviour(rcpt=lambda a: "554 5.7.1 Rejected"))
    runner = await runner_factory(srv.port)
    never = await queue_mail(store, "alice@example.test", ["bob@remote.test"], notify="NEVER")
    bounce = await queue_mail(store, "", ["carol@remote.test"])
    await runner.run_once()
    assert statuses(store, never)["bob@remote.test"][0] == "bounced"
    assert statuses(store, bounce)["carol@remote.test"][0] == "bounced"
    assert await inbox(store, alice) == []
    assert count(store, m.queue_messages) == 2  # no report was queued either
    assert srv.txns == []


@pytest_twisted.ensureDeferred
async def test_null_mx_and_unknown_domain_bounce(
    store: Store, lab: Lab, runner_factory: Any
) -> None:
    alice = await user(store, "alice@example.test")
    lab.dns.add("nullmx.test", "MX", "0 .")
    runner = await runner_factory(free_port())
    qid = await queue_mail(store, "alice@example.test", ["x@nullmx.test", "y@nowhere.test"])
    await runner.run_once()
    st = statuses(store, qid)
    assert st["x@nullmx.test"] == ("bounced", "Domain nullmx.test does not accept mail (nullMX)")
    assert st["y@nowhere.test"][0] == "bounced"
    assert "name=nowhere.test type=MX: Host not found" in st["y@nowhere.test"][1]
    codes = set()
    for raw in await inbox(store, alice):
        for rcpt in report_of(raw)[1][1].get_payload()[1:]:
            codes.add((rcpt["Final-Recipient"], rcpt["Status"]))
    assert codes == {("rfc822; x@nullmx.test", "5.1.10"), ("rfc822; y@nowhere.test", "5.4.4")}


@pytest_twisted.ensureDeferred
async def test_report_for_a_remote_sender_goes_through_the_queue(
    store: Store, lab: Lab, runner_factory: Any, maillines: list[str]
) -> None:
    srv = lab.smtp(Behaviour(rcpt=lambda a: "550 5.1.1 no" if a.startswith("gone") else "250 Ok"))
    lab.dns.mx("elsewhere.test", (5, "mx.remote.test"))
    runner = await runner_factory(srv.port)
    qid = await queue_mail(store, "carol@elsewhere.test", ["gone@remote.test"], message("Hi"))
    await runner.run_once()
    assert statuses(store, qid)["gone@remote.test"][0] == "bounced"
    [txn] = srv.txns
    assert txn.mail.startswith("<>") and txn.rcpts == ["<carol@elsewhere.test>"]
    msg, parts = report_of(txn.data)
    assert msg["To"] == "carol@elsewhere.test"
    with store.engine.connect() as c:
        rows = c.execute(sa.select(m.queue_messages.c.queue_id, m.queue_messages.c.sender)).all()
    [(dsn_id, sender)] = [r for r in rows if r.queue_id != qid]
    assert sender == ""
    assert statuses(store, dsn_id) == {
        "carol@elsewhere.test": ("sent", "250 2.0.0 Ok: queued as TEST")}
    assert f"{qid}: sender non-delivery notification: {dsn_id}" in maillines


# -- connections --------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_one_connection_is_reused_for_a_destination(
    store: Store, lab: Lab, runner_factory: Any
) -> None:
    srv = lab.smtp()
    runner = await runner_factory(srv.port, max_connections=1)
    ids = [await queue_mail(store, "alice@example.test", [f"r{i}@remote.test"],
                            message(f"m{i}")) for i in range(6)]
    await runner.run_once()
    assert all(statuses(store, q)[f"r{i}@remote.test"][0] == "sent" for i, q in enumerate(ids))
    assert srv.connections == 1 and len(srv.txns) == 6, srv.commands
    assert srv.commands.count("RSET") == 5 and srv.commands.count("QUIT") == 1
    # A handful of messages shares one connection even when more are allowed;
    # a longer backlog opens more, up to max_connections.
    srv2 = lab.smtp()
    runner.stopService()
    runner = await runner_factory(srv2.port, max_connections=2)
    for i in range(3):
        await queue_mail(store, "alice@example.test", [f"s{i}@remote.test"], message(f"s{i}"))
    await runner.run_once()
    assert srv2.connections == 1
    for i in range(12):
        await queue_mail(store, "alice@example.test", [f"t{i}@remote.test"], message(f"t{i}"))
    await runner.run_once()
    assert srv2.connections == 1 + 2 and len(srv2.txns) == 15


@pytest_twisted.ensureDeferred
async def test_smarthost_with_auth_over_starttls(
    store: Store, lab: Lab, runner_factory: Any, tmp_path: Path
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet import ssl

    from exmaild.tls import make_self_signed

    cert, key = tmp_path / "relay.crt", tmp_path / "relay.key"
    make_self_signed(cert, key, "relay.test")
    tls = ssl.CertificateOptions(privateKey=load_pem_private_key(key.read_bytes(), None),
                                 certificate=x509.load_pem_x509_certificate(cert.read_bytes()))
    srv = lab.smtp(Behaviour(tls=tls, users={"relayuser": "Relay-Pa55"}))
    runner = await runner_factory(relayhost=f"[127.0.0.1]:{srv.port}", relayhost_tls="starttls",
                                  relayhost_user="relayuser", relayhost_password="Relay-Pa55")
    q1 = await queue_mail(store, "alice@example.test", ["a@one.test", "b@two.test"])
    q2 = await queue_mail(store, "alice@example.test", ["c@three.test"])
    await runner.run_once()
    assert {s for q in (q1, q2) for s, _ in statuses(store, q).values()} == {"sent"}
    assert srv.connections == 1  # one route: the relay host, whatever the domains
    assert all(t.tls and t.auth == "relayuser" for t in srv.txns)
    assert sorted(r for t in srv.txns for r in t.rcpts) == [
        "<a@one.test>", "<b@two.test>", "<c@three.test>"]
    assert lab.dns.queries == []  # [host] means no DNS at all
    with store.engine.connect() as c:
        relays = set(c.execute(sa.select(m.queue_recipients.c.relay)).scalars())
    assert relays == {f"127.0.0.1[127.0.0.1]:{srv.port}"}


# -- restarts and several nodes -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_leftovers_are_delivered_after_a_restart(
    store: Store, cfg: Config, lab: Lab, runner_factory: Any
) -> None:
    srv = lab.smtp()
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
    # node1 claimed it, then died mid-delivery.
    now = int(time.time())
    claimed = await store.pool.transaction(
        lambda c: work.claim(c, now=now, node="node1", lease=600, limit=10))
    assert len(claimed) == 1
    # Another node leaves it alone while node1's lease lasts.
    other = await runner_factory(srv.port, node="node2")
    await other.run_once()
    assert statuses(store, qid)["bob@remote.test"][0] == "queued" and srv.connections == 0
    other.stopService()
    store.stopService()
    # node1 comes back on a freshly opened store: it frees its old claims and delivers.
    store2 = MailStore(cfg, reactor)
    store2.open()
    store2.startService()
    try:
        runner = await runner_factory(srv.port, node="node1", on=store2)
        await runner.run_once()
        assert statuses(store2, qid)["bob@remote.test"][0] == "sent"
        assert len(srv.txns) == 1
        runner.stopService()
    finally:
        store2.stopService()


@pytest_twisted.ensureDeferred
async def test_concurrent_claims_never_share_a_recipient(store: Store) -> None:
    for i in range(8):
        await queue_mail(store, "alice@example.test", [f"r{i}.{j}@remote.test" for j in range(5)])
    now = int(time.time())

    def claim(node: str) -> list[int]:
        got = store.pool.transaction_sync(
            lambda c: work.claim(c, now=now, node=node, lease=600, limit=25))
        return [r.id for cl in got for r in cl.batch.rcpts]

    results = await defer.gatherResults(
        [threads.deferToThread(claim, f"node{i}") for i in range(3)])
    ids = [x for r in results for x in r]
    assert len(ids) == len(set(ids)) == 40
    # Renewal extends only the renewing node's own claims.
    later = now + 5000
    assert store.pool.transaction_sync(
        lambda c: work.renew(c, "node1", results[1] + results[2], later)) == len(results[1])
    with store.engine.connect() as c:
        renewed = set(c.execute(sa.select(m.queue_recipients.c.id)
                                .where(m.queue_recipients.c.locked_until == later)).scalars())
    assert renewed == set(results[1])
    # Expired leases are claimable again; live ones are not.
    with store.engine.begin() as c:
        c.execute(m.queue_recipients.update().where(m.queue_recipients.c.id.in_(results[0]))
                  .values(locked_until=now - 1))
    again = store.pool.transaction_sync(
        lambda c: work.claim(c, now=now, node="node9", lease=600, limit=100))
    assert sorted(r.id for cl in again for r in cl.batch.rcpts) == sorted(results[0])
