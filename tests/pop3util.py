"""Shared helpers for the POP3 tests: an in-process listener on a real store,
mail made through the one ingest path, and blocking clients run off the reactor."""

from __future__ import annotations

import dataclasses
import poplib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet import reactor, threads

from exmaild.app import App
from exmaild.config import AuthConfig, Config, LimitsConfig
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.protocols.pop3.server import POP3Factory
from exmaild.service import endpoint
from exmaild.store.connector import Store

T = TypeVar("T")
PASSWORD = "Secr3tPass"
# A cheap argon2 hash: verification takes ~2 ms instead of ~0.7 s.
_FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def mail(n: int, body: str = "Hello.\r\n", subject: str | None = None) -> bytes:
    return (
        f"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
        f"Subject: {subject or f'message {n}'}\r\nMessage-ID: <m{n}.{id(body)}@example.test>\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0800\r\n\r\n{body}"
    ).encode()


@dataclasses.dataclass
class PopLab:
    store: Store
    app: App
    port: int
    tls_port: int
    account_id: int
    address: str = "bob@example.test"

    async def deliver(self, raw: bytes, mailbox: str | int = "INBOX", *,
                      internal_date: int | None = None, address: str | None = None,
                      flags: int = 0) -> int:
        """Store one message; returns its UID."""
        aid = self.account_id
        if address is not None:
            acct = await self.store.directory.get_account(address)
            assert acct is not None
            aid = acct.id
        res = await self.store.ingestor.ingest(
            IngestRequest(raw, [Target(aid, mailbox, flags=flags)], internal_date=internal_date)
        )
        assert res.delivered, res.refused
        return res.delivered[0].uid

    async def settings(self, **values: Any) -> None:
        await self.store.directory.update_settings(self.address, **values)

    async def add_user(self, address: str, password: str = PASSWORD) -> int:
        acct = await self.store.directory.add_account(address, _FAST.hash(password))
        return acct.id

    def client(self, *, login: bool = True, timeout: float = 10) -> poplib.POP3:
        c = poplib.POP3("127.0.0.1", self.port, timeout=timeout)
        if login:
            c.user(self.address)
            c.pass_(PASSWORD)
        return c

    def raw(self, timeout: float = 10) -> RawClient:
        return RawClient(self.port, timeout)


class RawClient:
    """A socket that sends exact bytes and reads replies line by line."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        return self.file.readline()

    def cmd(self, text: str | bytes) -> bytes:
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            if line in (b".\r\n", b""):
                return lines
            lines.append(line)

    def login(self, address: str = "bob@example.test", password: str = PASSWORD) -> None:
        assert self.cmd(f"USER {address}").startswith(b"+OK")
        reply = self.cmd(f"PASS {password}")
        assert reply.startswith(b"+OK"), reply

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def limits(cfg: Config, **values: Any) -> Config:
    return dataclasses.replace(cfg, limits=dataclasses.replace(cfg.limits, **values))


async def start_lab(store: Store, cfg: Config, **limit_values: Any) -> PopLab:
    cfg = dataclasses.replace(
        cfg,
        limits=dataclasses.replace(LimitsConfig(), **limit_values),
        auth=AuthConfig(allow_plaintext_loopback=True),
        server=dataclasses.replace(cfg.server, hostname="pop.example.test"),
    )
    app = App(cfg, store, reactor)
    if await store.directory.get_domain("example.test") is None:
        await store.directory.add_domain("example.test")
    acct = await store.directory.add_account("bob@example.test", _FAST.hash(PASSWORD))
    plain = await endpoint(app, "pop3", "127.0.0.1", 0).listen(
        POP3Factory(app, implicit_tls=False))
    tls = await endpoint(app, "pop3s", "127.0.0.1", 0).listen(POP3Factory(app, implicit_tls=True))
    lab = PopLab(store, app, plain.getHost().port, tls.getHost().port, acct.id)
    lab._ports = (plain, tls)  # type: ignore[attr-defined]
    return lab


async def stop_lab(lab: PopLab) -> None:
    for p in lab._ports:  # type: ignore[attr-defined]
        await p.stopListening()


def lab_fixture(**limit_values: Any) -> Any:
    @pytest_twisted.async_yield_fixture
    async def fixture(store: Store, cfg: Config) -> AsyncIterator[PopLab]:
        lab = await start_lab(store, cfg, **limit_values)
        yield lab
        await stop_lab(lab)

    return fixture


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking client off the reactor thread."""
    return await threads.deferToThread(fn, *args)
