"""Cluster-wide locks in the shared database (store/leases.py): the semantics
on SQLite and PostgreSQL with two stores standing for two processes, one
maintenance job run per period across two processes, and the POP3 maildrop
lock across two real daemons on one database, taken over after `kill -9`."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from exmaild.mailstore.service import MailStore
from exmaild.maintenance import Maintenance
from exmaild.store import leases as L

from .clusterutil import two_nodes
from .conftest import PG_URL, _wipe_pg
from .daemon import Daemon

USER, PASSWORD = "pat@example.test", "Secret9Pass"


def _sleep(seconds: float) -> object:
    return task.deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_lease_semantics(cfg) -> None:  # type: ignore[no-untyped-def]
    a, b = MailStore(cfg, reactor), MailStore(cfg, reactor)
    a.open()
    b.open(create_schema=False)
    a.startService()
    b.startService()
    try:
        assert a.leases.holder != b.leases.holder
        assert await a.leases.acquire("pop3:1")
        assert not await b.leases.acquire("pop3:1")
        assert await a.leases.acquire("pop3:1")  # the holder may take it again
        assert await b.leases.acquire("pop3:2")  # other names are free
        # Another's release does not free it; the holder's does.
        await b.leases.release("pop3:1")
        assert not await b.leases.acquire("pop3:1")
        await a.leases.release("pop3:1")
        assert await b.leases.acquire("pop3:1")
        # A lapsed lease (its holder stopped renewing: dead) is free.
        assert await a.leases.acquire("job", ttl=1)
        assert not await b.leases.acquire("job", ttl=1)
        await _sleep(2.2)
        assert await b.leases.acquire("job", ttl=1)

        def holder(name: str) -> str | None:
            with a.engine.connect() as c:
                return L.holder_of(c, name, int(time.time()))

        assert holder("job") == b.leases.holder
        # release_soon, then acquire at once: the pending delete does not
        # remove the row the new acquire took.
        assert await a.leases.acquire("pop3:9")
        a.leases.release_soon("pop3:9")
        assert await a.leases.acquire("pop3:9")
        await _sleep(0.3)
        assert holder("pop3:9") == a.leases.holder
    finally:
        b.stopService()
        a.stopService()
    # A clean stop releases what was held.
    with a.engine.connect() as c:
        assert L.holder_of(c, "pop3:9", int(time.time())) is None


@pytest_twisted.ensureDeferred
async def test_maintenance_job_runs_once_per_period_across_processes(cfg) -> None:  # type: ignore[no-untyped-def]
    a, b = MailStore(cfg, reactor), MailStore(cfg, reactor)
    a.open()
    b.open(create_schema=False)
    a.startService()
    b.startService()
    runs: list[str] = []

    def job(who: str):  # type: ignore[no-untyped-def]
        async def run() -> str:
            runs.append(who)
            return "ok"
        return run

    try:
        ma, mb = Maintenance(a, reactor), Maintenance(b, reactor)
        # A period of 2 s: the lock is held 1 s (9/10, rounded down).
        assert await ma.run_job(2, job("a"), "test job", "test")
        assert not await mb.run_job(2, job("b"), "test job", "test")
        assert runs == ["a"]
        # "a" died: once its lock lapsed, "b" takes the job over.
        await _sleep(2.2)
        assert await mb.run_job(2, job("b"), "test job", "test")
        assert not await ma.run_job(2, job("a"), "test job", "test")
        assert runs == ["a", "b"]
    finally:
        b.stopService()
        a.stopService()


def _pop(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    assert s.recv(512).startswith(b"+OK")
    return s


def _cmd(s: socket.socket, line: str) -> bytes:
    s.sendall(line.encode() + b"\r\n")
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(512)
        if not chunk:
            break
        data += chunk
    return data


def _login(port: int) -> tuple[socket.socket, bytes]:
    s = _pop(port)
    assert _cmd(s, f"USER {USER}").startswith(b"+OK")
    return s, _cmd(s, f"PASS {PASSWORD}")


@pytest.fixture(params=["sqlite", "postgresql"])
def two_daemons(request: pytest.FixtureRequest,
                tmp_path: Path) -> Iterator[tuple[Daemon, Daemon]]:
    db_url = ""
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("EXMAILD_TEST_DATABASE_URL is not set")
        db_url = request.getfixturevalue("pg_database")
        _wipe_pg(db_url)
    else:
        db_url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    daemons = two_nodes(tmp_path, db_url, USER, PASSWORD, server={"lock_lease": 5})
    yield daemons[0], daemons[1]
    for d in daemons:
        d.kill()


def test_pop3_maildrop_lock_spans_daemons(two_daemons: tuple[Daemon, Daemon]) -> None:
    a, b = two_daemons
    sa_, reply = _login(a.ports["pop3"])
    assert reply.startswith(b"+OK"), reply
    sb, reply = _login(b.ports["pop3"])
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    sb.close()
    assert _cmd(sa_, "QUIT").startswith(b"+OK")
    sa_.close()
    # The release is a database write after the session ends: allow it a moment.
    deadline = time.monotonic() + 20
    while True:
        sb, reply = _login(b.ports["pop3"])
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            break
        sb.close()
        time.sleep(0.1)
    assert reply.startswith(b"+OK"), reply
    # Now b holds it; a is refused.
    s2, reply = _login(a.ports["pop3"])
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    s2.close()
    # b dies with the lock held: a is refused until the lease (5 s) lapses.
    b.kill()
    sb.close()
    s3, reply = _login(a.ports["pop3"])
    s3.close()
    assert reply.startswith(b"-ERR [IN-USE]"), reply
    deadline = time.monotonic() + 30
    while True:
        s4, reply = _login(a.ports["pop3"])
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            break
        s4.close()
        time.sleep(0.5)
    assert reply.startswith(b"+OK"), reply
    assert _cmd(s4, "QUIT").startswith(b"+OK")
    s4.close()
