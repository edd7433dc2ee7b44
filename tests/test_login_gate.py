"""The login gate on the real store (SQLite and PostgreSQL): throttling state
shared by two gates as by two nodes, a known address let through, the login
log and its sweep after [auth] login_log_days."""

from __future__ import annotations

import dataclasses
import time

import pytest_twisted
import sqlalchemy as sa

from exmaild.auth import loginlog
from exmaild.auth.checker import AccountAuthenticator
from exmaild.auth.passwords import hash_password
from exmaild.auth.policy import LoginGate
from exmaild.maintenance import sweep_logins
from exmaild.store import model as m
from exmaild.store.connector import Store

PW = "Secret123x"


def gate(store: Store) -> LoginGate:
    cfg = dataclasses.replace(store.cfg.auth, throttle_account_failures=2,
                              throttle_ip_failures=4, throttle_delay=0.0, throttle_exempt=())
    return LoginGate(store, AccountAuthenticator(store), cfg)


@pytest_twisted.ensureDeferred
async def test_throttle_state_is_shared_through_the_store(store: Store) -> None:
    await store.directory.add_domain("example.test")
    await store.directory.add_account("kim@example.test", hash_password(PW))
    node1, node2 = gate(store), gate(store)
    assert (await node1.login("kim@example.test", PW, protocol="imap", ip="10.0.0.9")).ok
    # Two failures on node 1 ...
    for _ in range(2):
        d = await node1.login("kim@example.test", "nope", protocol="imap", ip="10.0.0.1")
        assert d.kind == "bad"
    # ... and node 2 refuses the third try, even with the right password.
    d = await node2.login("kim@example.test", PW, protocol="pop3", ip="10.0.0.1")
    assert d.kind == "throttled"
    assert (await node2.login("kim@example.test", PW, protocol="pop3", ip="10.0.0.2")).ok
    # The IP limit: many names from one address (IPv4-mapped counts as IPv4).
    for n in range(4):
        await node1.login(f"x{n}@example.test", "nope", protocol="smtp",
                          ip="::ffff:10.0.0.9")
    assert (await node2.login("nobody@example.test", "x", protocol="smtp",
                              ip="10.0.0.9")).kind == "throttled"
    # kim logged in from 10.0.0.9 before: its right password still works there.
    assert (await node2.login("kim@example.test", PW, protocol="imap", ip="10.0.0.9")).ok
    rows = await store.pool.do(lambda c: loginlog.query(c, account="kim@example.test"))
    assert [(r["ip"], r["protocol"], r["result"]) for r in reversed(rows[1])] == [
        ("10.0.0.9", "imap", "ok"), ("10.0.0.1", "imap", "fail"),
        ("10.0.0.1", "imap", "fail"), ("10.0.0.1", "pop3", "fail"),
        ("10.0.0.2", "pop3", "ok"), ("10.0.0.9", "imap", "ok")]


@pytest_twisted.ensureDeferred
async def test_sweep_removes_old_logins_and_stale_counts(store: Store) -> None:
    now = int(time.time())
    days = store.cfg.auth.login_log_days

    def fill(conn: sa.Connection) -> None:
        for age in (days + 1, days - 1, 0):
            loginlog.record(conn, created=now - age * 86400, enterprise_id=None,
                            account_id=None, account=f"a{age}@x.test", ip="10.1.1.1",
                            protocol="imap", method="password", client="", result="fail",
                            reason="wrong password")
        conn.execute(m.auth_throttle.insert(), [
            {"key": "i:10.1.1.1", "failures": 3, "updated": now - 86400},
            {"key": "i:10.1.1.2", "failures": 3, "updated": now}])

    await store.pool.transaction(fill)
    said = await sweep_logins(store, now)
    assert said == "1 login(s) and 1 throttle count(s) removed"
    left = await store.pool.do(lambda c: c.execute(
        sa.select(m.login_log.c.account).order_by(m.login_log.c.id)).scalars().all())
    assert left == [f"a{days - 1}@x.test", "a0@x.test"]
