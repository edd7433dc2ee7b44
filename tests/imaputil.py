"""Helpers for the IMAP tests: an in-process listener on a real loopback
socket, accounts, mail, and running blocking clients off the reactor thread."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest_twisted
from argon2 import PasswordHasher
from imapclient import IMAPClient
from twisted.internet import defer, threads

from exmaild.app import App
from exmaild.config import Config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.protocols.imap.server import IMAPFactory
from exmaild.service import endpoint
from exmaild.store.connector import Store
from exmaild.store.records import Account

T = TypeVar("T")
PASSWORD = "Secret9Pass"
# A real argon2id hash with cheap parameters: every test logs in, and the
# daemon's own cost (64 MiB, 3 passes) would dominate the suite's run time.
_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


@dataclass
class Server:
    port: int
    store: Store
    app: App
    factory: IMAPFactory
    tls_port: int = 0

    async def account(self, address: str = "alice@example.test", **kw: Any) -> Account:
        domain = address.split("@")[1]
        if await self.store.directory.get_domain(domain) is None:
            await self.store.directory.add_domain(domain)
        acct = await self.store.directory.add_account(address, _HASH, **kw)
        return acct

    async def deliver(self, account_id: int, raw: bytes, mailbox: str | int = "INBOX",
                      flags: int = 0, keywords: tuple[str, ...] = (),
                      internal_date: int | None = None) -> int:
        res = await self.store.ingestor.ingest(IngestRequest(
            raw, [Target(account_id, mailbox, flags, keywords)], internal_date=internal_date))
        return res.delivered[0].uid

    async def fill(self, account_id: int, messages: list[bytes], mailbox: str | int = "INBOX",
                   flags: int = 0, base_date: int | None = None) -> None:
        """Ingest many at once (group commit keeps it fast); UIDs follow list order
        within a batch only, so callers needing order should not rely on it."""
        base = base_date or int(time.time()) - len(messages)
        pending = [
            defer.Deferred.fromCoroutine(self.store.ingestor.ingest(IngestRequest(
                raw, [Target(account_id, mailbox, flags)], internal_date=base + i)))
            for i, raw in enumerate(messages)
        ]
        await defer.gatherResults(pending, consumeErrors=True)


async def start_server(cfg: Config, store: Store, *, tls: bool = False) -> Server:
    from twisted.internet import reactor

    app = App(cfg, store, reactor)
    factory = IMAPFactory(app, implicit_tls=False)
    port = await endpoint(app, "imap", "127.0.0.1", 0).listen(factory)
    srv = Server(port.getHost().port, store, app, factory)
    srv._listeners = [port]  # type: ignore[attr-defined]
    if tls:
        tls_factory = IMAPFactory(app, implicit_tls=True)
        p2 = await endpoint(app, "imaps", "127.0.0.1", 0).listen(tls_factory)
        srv.tls_port = p2.getHost().port
        srv._listeners.append(p2)  # type: ignore[attr-defined]
    return srv


async def stop_server(srv: Server) -> None:
    for p in srv._listeners:  # type: ignore[attr-defined]
        await p.stopListening()


@pytest_twisted.async_yield_fixture(name="imap_server")
async def imap_server_fixture(cfg: Config, store: Store) -> AsyncIterator[Server]:
    srv = await start_server(cfg, store, tls=True)
    yield srv
    await stop_server(srv)


def blocking(fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    """Run a blocking client function on a thread (never on the reactor)."""
    return threads.deferToThread(fn, *args)


def mail(subject: str = "hello", body: str = "Hi there.\r\n", *, sender: str = "bob@example.test",
         to: str = "alice@example.test", extra: str = "", msgid: str | None = None) -> bytes:
    msgid = msgid or f"<{abs(hash((subject, body, extra, time.time_ns())))}@example.test>"
    return (
        f"From: Bob <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: {msgid}\r\nDate: Fri, 27 Nov 2026 10:00:00 +0800\r\n{extra}\r\n{body}"
    ).encode()


USER = "alice@example.test"


def client(srv: Server, *, login: bool = True) -> IMAPClient:
    c = IMAPClient("127.0.0.1", port=srv.port, ssl=False, timeout=20)
    if login:
        c.login(USER, PASSWORD)
    return c


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def on_reactor(coro_fn: Callable[..., Any], *args: Any) -> Any:
    """From a client thread: run a coroutine on the reactor and wait for it."""
    from twisted.internet import reactor

    return threads.blockingCallFromThread(
        reactor, lambda: defer.Deferred.fromCoroutine(coro_fn(*args)))


class Raw:
    """A line-level IMAP client for exact protocol checks (blocking)."""

    def __init__(self, port: int, *, tls: bool = False, timeout: float = 30.0) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.greeting = self.line()

    def starttls(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffer {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def response(self, tag: str) -> list[bytes]:
        """Lines (literals inlined) up to and including the tagged one."""
        out = []
        while True:
            line = self.line()
            while line.endswith(b"}") and b"{" in line:
                n = int(line[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
                line += b"\r\n" + self.read_exact(n) + self.line()
            out.append(line)
            if line.startswith(tag.encode() + b" "):
                return out

    def cmd(self, tag: str, text: str | bytes) -> list[bytes]:
        if isinstance(text, str):
            text = text.encode()
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.response(tag)

    def login(self, user: str = "alice@example.test", password: str = PASSWORD) -> None:
        out = self.cmd("L", f'LOGIN "{user}" "{password}"')
        assert out[-1].startswith(b"L OK"), out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
