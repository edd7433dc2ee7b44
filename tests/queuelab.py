"""Test doubles for outbound delivery, all on 127.0.0.1: a DNS server whose
answers the test sets, a scriptable SMTP server (STARTTLS, AUTH, per-RCPT
replies, connection counting), and Postfix's smtp-sink as a real MTA."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import sqlalchemy as sa
from twisted.internet import defer, protocol, reactor, task
from twisted.protocols.basic import LineReceiver

from exmaild.mailstore.ingest import IngestRequest
from exmaild.queue import records
from exmaild.queue.store import enqueue
from exmaild.store import model as m
from exmaild.store.connector import Store

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


# -- DNS ---------------------------------------------------------------------------------------
class FakeDNS(protocol.DatagramProtocol):
    """Answers from `records[name][type]`; a name in `servfail`/`drop` gets
    SERVFAIL/no answer at all; any other unknown name is NXDOMAIN."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[str]]] = {}
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.port = 0

    def add(self, name: str, rdtype: str, *values: str) -> None:
        self.records.setdefault(name.lower().rstrip("."), {}).setdefault(rdtype, []).extend(values)

    def mx(self, domain: str, *pairs: tuple[int, str], a: dict[str, str] | None = None) -> None:
        for pref, host in pairs:
            self.add(domain, "MX", f"{pref} {host}.")
        for host, addr in (a or {}).items():
            self.add(host, "A", addr)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        q = dns.message.from_wire(data)
        question = q.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.drop:
            return
        resp = dns.message.make_response(q)
        resp.flags |= dns.flags.RA
        if name in self.servfail:
            resp.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            resp.set_rcode(dns.rcode.NXDOMAIN)
        elif self.records[name].get(rdtype):
            resp.answer.append(
                dns.rrset.from_text_list(question.name, 0, "IN", rdtype, self.records[name][rdtype])
            )
        self.transport.write(resp.to_wire(), addr)

    def listen(self) -> Any:
        port = reactor.listenUDP(0, self, interface="127.0.0.1")
        self.port = port.getHost().port
        return port

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- a scriptable SMTP server -------------------------------------------------------------------
@dataclass
class Txn:
    helo: str
    mail: str
    rcpts: list[str]
    data: bytes
    tls: bool
    auth: str | None
    connection: int


@dataclass
class Behaviour:
    hostname: str = "mx.remote.test"
    esmtp: bool = True
    extensions: list[str] = field(
        default_factory=lambda: ["PIPELINING", "SIZE 10240000", "8BITMIME", "DSN",
                                 "ENHANCEDSTATUSCODES"]
    )
    tls: Any = None  # server TLS options: STARTTLS offered when set
    users: dict[str, str] | None = None  # AUTH offered when set
    auth_mechs: str = "PLAIN LOGIN"
    greeting: str = "220 mx.remote.test ESMTP test"  # "": never greet
    rcpt: Callable[[str], str] = lambda _addr: "250 2.1.5 Ok"
    data_reply: str = "250 2.0.0 Ok: queued as TEST"  # "": hang up instead
    broken_tls: bool = False  # answer STARTTLS with 220, then send garbage


class _Session(LineReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 1 << 20

    def connectionMade(self) -> None:
        f: FakeSMTP = self.factory
        f.connections += 1
        f.sessions.append(self)
        self.number = f.connections
        self.helo = ""
        self.tls = False
        self.user: str | None = None
        self.mail: str | None = None
        self.rcpts: list[str] = []
        self.data: list[bytes] | None = None
        self.pending_auth: str | None = None
        if f.b.greeting:
            self.say(f.b.greeting)

    def say(self, text: str) -> None:
        self.sendLine(text.encode())

    def lineReceived(self, line: bytes) -> None:
        f: FakeSMTP = self.factory
        if self.data is not None:
            if line == b".":
                f.txns.append(Txn(self.helo, self.mail or "", self.rcpts,
                                  b"".join(self.data), self.tls, self.user, self.number))
                self.data, self.mail, self.rcpts = None, None, []
                if not f.b.data_reply:
                    self.transport.loseConnection()
                    return
                self.say(f.b.data_reply)
            else:
                self.data.append((line[1:] if line.startswith(b".") else line) + b"\r\n")
            return
        text = line.decode("utf-8", "replace")
        f.commands.append(text)
        if self.pending_auth is not None:
            return self._auth_step(text)
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb == "EHLO":
            if not f.b.esmtp:
                return self.say("502 5.5.1 Error: command not implemented")
            self.helo = arg
            ext = list(f.b.extensions)
            if (f.b.tls is not None or f.b.broken_tls) and not self.tls:
                ext.append("STARTTLS")
            if f.b.users is not None:
                ext.append(f"AUTH {f.b.auth_mechs}")
            lines = [f.b.hostname, *ext]
            for i, item in enumerate(lines):
                self.say(f"250{'-' if i < len(lines) - 1 else ' '}{item}")
        elif verb == "HELO":
            self.helo = arg
            self.say(f"250 {f.b.hostname}")
        elif verb == "STARTTLS" and f.b.broken_tls:
            self.say("220 2.0.0 Ready to start TLS")
            self.say("this is not a TLS handshake")
            self.transport.loseConnection()
        elif verb == "STARTTLS" and f.b.tls is not None and not self.tls:
            self.say("220 2.0.0 Ready to start TLS")
            self.transport.startTLS(f.b.tls)
            self.tls, self.helo = True, ""
        elif verb == "AUTH" and f.b.users is not None:
            mech, _, initial = arg.partition(" ")
            self.pending_auth = mech.upper()
            if self.pending_auth == "PLAIN" and initial:
                self._auth_step(initial)
            elif self.pending_auth == "PLAIN":
                self.say("334 ")
            else:
                self.auth_login: list[str] = []
                self.say("334 VXNlcm5hbWU6")
        elif verb == "MAIL":
            self.mail, self.rcpts = arg[5:], []
            self.say("250 2.1.0 Ok")
        elif verb == "RCPT":
            reply = f.b.rcpt(arg[3:].split(">")[0].lstrip("<"))
            if reply.startswith("2"):
                self.rcpts.append(arg[3:])
            self.say(reply)
        elif verb == "DATA":
            if not self.rcpts:
                return self.say("554 5.5.1 Error: no valid recipients")
            self.data = []
            self.say("354 End data with <CR><LF>.<CR><LF>")
        elif verb == "RSET":
            self.mail, self.rcpts = None, []
            self.say("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.say("221 2.0.0 Bye")
            self.transport.loseConnection()
        else:
            self.say("502 5.5.2 Error: command not recognized")

    def _auth_step(self, text: str) -> None:
        f: FakeSMTP = self.factory
        users = f.b.users or {}
        if self.pending_auth == "PLAIN":
            _, user, password = base64.b64decode(text).decode().split("\0")
        else:
            self.auth_login.append(base64.b64decode(text).decode())
            if len(self.auth_login) < 2:
                return self.say("334 UGFzc3dvcmQ6")
            user, password = self.auth_login
        self.pending_auth = None
        if users.get(user) == password:
            self.user = user
            self.say("235 2.7.0 Authentication successful")
        else:
            self.say("535 5.7.8 Error: authentication failed")


class FakeSMTP(protocol.ServerFactory):
    protocol = _Session

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.b = behaviour or Behaviour()
        self.connections = 0
        self.txns: list[Txn] = []
        self.commands: list[str] = []
        self.sessions: list[_Session] = []  # every connection, for drop_all
        self.port = 0

    def drop_all(self) -> None:
        """Cut every connection from the server side."""
        for p in self.sessions:
            if p.transport is not None and p.transport.connected:
                p.transport.abortConnection()

    def listen(self) -> Any:
        port = reactor.listenTCP(0, self, interface="127.0.0.1")
        self.port = port.getHost().port
        return port


# -- smtp-sink -----------------------------------------------------------------------------------
class Sink:
    """Postfix's smtp-sink on 127.0.0.1:port, dumping each message to `dir`."""

    def __init__(self, directory: Path, port: int) -> None:
        self.dir = directory
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *options: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "root", "-d", f"{self.dir}/%M.", "-h", "sink.test", *options,
             f"127.0.0.1:{self.port}", "100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def messages(self) -> list[str]:
        """Dumps of messages that got as far as DATA. smtp-sink opens a dump
        file at MAIL FROM, so a session whose recipients were all refused can
        leave an envelope-only file behind; that is not a delivery."""
        dumps = (p.read_text(errors="replace") for p in sorted(self.dir.glob("*.*")))
        return [d for d in dumps if "\nSubject:" in d or d.startswith("Subject:")]


# -- queue helpers -------------------------------------------------------------------------------
def message(subject: str = "hello", body: str = "Hi there.\r\n", size: int = 0) -> bytes:
    text = (f"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@example.test>\r\n"
            f"Date: Fri, 27 Nov 2026 10:00:00 +0800\r\n\r\n{body}")
    if size > len(text):
        line = "x" * 76 + "\r\n"
        text += line * ((size - len(text)) // len(line))
    return text.encode()


async def queue_mail(
    store: Store, sender: str, rcpts: list[str], raw: bytes | None = None, *,
    notify: str | None = None, orcpt: bool = False, ret: str | None = None,
    envid: str | None = None, created: int | None = None,
) -> str:
    """Queue `raw` as the inbound server does, with a Return-Path header in
    front of the stored copy (skipped through body_offset)."""
    qid = records.new_queue_id()
    prefix = f"Return-Path: <{sender}>\r\n".encode()
    rs = [records.QueuedRecipient(r, notify=notify, orcpt=f"rfc822;{r}" if orcpt else None)
          for r in rcpts]

    def extra(conn: sa.Connection, content_id: int) -> int:
        return enqueue(conn, queue_id=qid, content_id=content_id, sender=sender, recipients=rs,
                       envid=envid, ret=ret, body_offset=len(prefix), now=created)

    await store.ingestor.ingest(IngestRequest(prefix + (raw or message()), [], extra=extra))
    return qid


def statuses(store: Store, qid: str) -> dict[str, tuple[str, str | None]]:
    with store.engine.connect() as c:
        rows = c.execute(
            sa.select(m.queue_recipients.c.recipient, m.queue_recipients.c.status,
                      m.queue_recipients.c.last_reply)
            .join(m.queue_messages, m.queue_messages.c.id == m.queue_recipients.c.message_id)
            .where(m.queue_messages.c.queue_id == qid)
        ).all()
    return {r.recipient: (r.status, r.last_reply) for r in rows}


def queue_row(store: Store, qid: str) -> Any:
    with store.engine.connect() as c:
        return c.execute(
            sa.select(m.queue_messages).where(m.queue_messages.c.queue_id == qid)
        ).first()


async def inbox(store: Store, account_id: int) -> list[bytes]:
    with store.engine.connect() as c:
        cids = c.execute(
            sa.select(m.messages.c.content_id)
            .join(m.mailboxes, m.mailboxes.c.id == m.messages.c.mailbox_id)
            .where(m.mailboxes.c.account_id == account_id, m.mailboxes.c.name == "INBOX")
            .order_by(m.messages.c.uid)
        ).scalars().all()
    return [await store.read_message(cid) for cid in cids]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(reactor, 0.05, lambda: None)


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)
