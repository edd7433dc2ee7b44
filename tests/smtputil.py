"""Shared helpers for the SMTP tests: in-process MX and submission listeners on
a real store, and blocking clients (smtplib, raw sockets, swaks) run off the
reactor thread."""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest_twisted
import sqlalchemy as sa
from argon2 import PasswordHasher
from twisted.internet import reactor, threads

from exmaild.app import App
from exmaild.config import AuthConfig, Config, LimitsConfig, SMTPConfig
from exmaild.protocols.smtp.factory import make_factory, policy_for
from exmaild.service import endpoint
from exmaild.store import model as m
from exmaild.store.connector import Store

T = TypeVar("T")
PASSWORD = "Secr3tPass"
DOMAIN = "example.test"
HOSTNAME = "mx.example.test"
# A cheap argon2 hash: verification takes ~2 ms instead of ~0.7 s.
_FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def mail(n: int | str = 1, body: str = "Hello.\r\n", *, sender: str = "carol@remote.test",
         to: str = "bob@example.test", extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: message {n}\r\n"
        f"Message-ID: <m{n}@remote.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n"
        f"{extra}\r\n{body}"
    ).encode()


class FakeQueue:
    """Stands in for the queue runner: counts kicks."""

    def __init__(self) -> None:
        self.kicks = 0

    def kick(self) -> None:
        self.kicks += 1


@dataclasses.dataclass
class SmtpLab:
    store: Store
    app: App
    mx: int
    submission: int
    submissions: int
    bob: int  # account ids
    alice: int

    async def add_user(self, address: str, password: str = PASSWORD, **kw: Any) -> int:
        acct = await self.store.directory.add_account(address, _FAST.hash(password), **kw)
        policy_for(self.app).cache.forget()
        return acct.id

    def forget(self) -> None:
        policy_for(self.app).cache.forget()

    def entries(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Stored messages of a mailbox, in UID order (blocking: reads the DB and segments)."""
        with self.store.engine.connect() as c:
            rows = c.execute(
                sa.select(m.contents.c.segment, m.contents.c.offset, m.contents.c.size)
                .select_from(m.messages.join(m.mailboxes).join(m.accounts).join(m.contents))
                .where(m.accounts.c.address == address, m.mailboxes.c.name == mailbox)
                .order_by(m.messages.c.uid)
            ).all()
        from exmaild.store.blobs import BlobRef

        return [self.store.blobs.read(BlobRef(r.segment, r.offset, r.size)) for r in rows]

    def queue_rows(self) -> list[Any]:
        with self.store.engine.connect() as c:
            return c.execute(
                sa.select(m.queue_messages, m.queue_recipients.c.recipient,
                          m.queue_recipients.c.status, m.queue_recipients.c.notify,
                          m.queue_recipients.c.orcpt)
                .join(m.queue_recipients)
                .order_by(m.queue_recipients.c.id)
            ).all()

    def count(self, table: sa.Table) -> int:
        with self.store.engine.connect() as c:
            return c.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()

    def raw(self, port: int | None = None, timeout: float = 10) -> RawClient:
        return RawClient(port or self.mx, timeout)


class RawClient:
    """A socket that sends exact bytes and reads replies (multi-line aware)."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines), b"" at EOF."""
        out = b""
        while True:
            line = self.file.readline()
            out += line
            if len(line) < 4 or line[3:4] != b"-":
                return out

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.reply()

    def code(self, text: str | bytes) -> int:
        r = self.cmd(text)
        return int(r[:3]) if r[:3].isdigit() else 0

    def starttls(self) -> None:
        self.file.close()
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def with_cfg(cfg: Config, limits: dict[str, Any] | None = None,
             smtp: dict[str, Any] | None = None, **auth: Any) -> Config:
    return dataclasses.replace(
        cfg,
        limits=dataclasses.replace(LimitsConfig(), **(limits or {})),
        smtp=dataclasses.replace(SMTPConfig(), **(smtp or {})),
        auth=dataclasses.replace(AuthConfig(), **auth),
        server=dataclasses.replace(cfg.server, hostname=HOSTNAME),
    )


async def start_lab(store: Store, cfg: Config) -> SmtpLab:
    app = App(cfg, store, reactor)
    app.queue = FakeQueue()
    if await store.directory.get_domain(DOMAIN) is None:
        await store.directory.add_domain(DOMAIN)
    bob = await store.directory.add_account("bob@example.test", _FAST.hash(PASSWORD))
    alice = await store.directory.add_account("alice@example.test", _FAST.hash(PASSWORD))
    await store.directory.add_alias("sales@example.test", "alice@example.test")
    policy_for(app).cache.forget()
    ports = [  # the daemon's own listening ports (exmaild/eagertcp.py)
        await endpoint(app, svc, "127.0.0.1", 0).listen(make_factory(app, svc))
        for svc in ("smtp", "submission", "submissions")
    ]
    lab = SmtpLab(store, app, *(p.getHost().port for p in ports), bob.id, alice.id)
    lab._ports = ports  # type: ignore[attr-defined]
    return lab


def lab_fixture(limits: dict[str, Any] | None = None, smtp: dict[str, Any] | None = None,
                **auth: Any) -> Any:
    @pytest_twisted.async_yield_fixture
    async def fixture(store: Store, cfg: Config) -> AsyncIterator[SmtpLab]:
        lab = await start_lab(store, with_cfg(cfg, limits, smtp, **auth))
        yield lab
        for p in lab._ports:  # type: ignore[attr-defined]
            await p.stopListening()

    return fixture


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking client off the reactor thread."""
    return await threads.deferToThread(fn, *args)


class Sink:
    """A "remote" MX for the queue to deliver to: accepts everything, keeps
    (sender, recipients, message). Blocking threads; for daemon tests."""

    def __init__(self) -> None:
        import socketserver
        import threading

        self.received: list[tuple[str, list[str], bytes]] = []
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                out = self.wfile
                out.write(b"220 sink.remote.test ESMTP\r\n")
                sender, rcpts = "", []
                while line := self.rfile.readline():
                    verb = line[:4].upper()
                    if verb == b"EHLO":
                        out.write(b"250-sink.remote.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                  b"250 DSN\r\n")
                    elif verb == b"MAIL":
                        sender, rcpts = line.split(b"<", 1)[1].split(b">")[0].decode(), []
                        out.write(b"250 2.1.0 Ok\r\n")
                    elif verb == b"RCPT":
                        rcpts.append(line.split(b"<", 1)[1].split(b">")[0].decode())
                        out.write(b"250 2.1.5 Ok\r\n")
                    elif verb == b"DATA":
                        out.write(b"354 go ahead\r\n")
                        data = b""
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data += chunk[1:] if chunk.startswith(b"..") else chunk
                        with sink.lock:
                            sink.received.append((sender, rcpts, data))
                        out.write(b"250 2.0.0 Ok: queued\r\n")
                    elif verb == b"QUIT":
                        out.write(b"221 2.0.0 Bye\r\n")
                        return
                    else:  # HELO, RSET, NOOP
                        out.write(b"250 2.0.0 Ok\r\n")

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def messages(self) -> list[tuple[str, list[str], bytes]]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
