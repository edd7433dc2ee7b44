"""Cluster-wide locks as rows of the shared database.

Every process that shares the database (several twistd daemons, nodes on one
PostgreSQL) sees the same `leases` table, so a lock held here is held for all
of them; nothing else needs to be set up. A lock is a named row with its
holder and an expiry: the holder renews its locks while it lives, and when a
process dies without releasing them (kill -9, power loss) they lapse after
`[server] lock_lease` seconds and another process takes over. Used for the
POP3 maildrop lock (one session per account, RFC 1939) and for leadership of
the periodic maintenance jobs.

Acquire is one conditional UPDATE, then an INSERT that does nothing on
conflict: atomic on SQLite (one writer) and on PostgreSQL (the row lock the
UPDATE takes, the primary key for the INSERT) without advisory locks, which
would tie a lock to one database connection of the pool.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from twisted.internet import defer, task
from twisted.logger import Logger

from exmaild.store import model as m

log = Logger(namespace="exmaild.leases")


def holder_name(node_id: str) -> str:
    """This process's name in the table: node, host, pid and a random part
    (a pid reused after a restart is a different holder)."""
    return f"{node_id}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:200]


def try_acquire(conn: sa.Connection, name: str, holder: str, now: int, ttl: int) -> bool:
    """Take `name` (or renew it, if `holder` has it); False when another live holder has it."""
    t = m.leases
    taken = conn.execute(
        t.update()
        .where(t.c.name == name, sa.or_(t.c.holder == holder, t.c.expires < now))
        .values(holder=holder, expires=now + ttl)
    ).rowcount
    if taken:
        return True
    ins: Any = (sqlite_dialect.insert(t) if conn.dialect.name == "sqlite"
                else postgresql.insert(t))
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT.
    return conn.execute(
        ins.values(name=name, holder=holder, expires=now + ttl)
        .on_conflict_do_nothing(index_elements=["name"]).returning(t.c.name)
    ).first() is not None


def renew_all(conn: sa.Connection, holder: str, now: int, ttl: int) -> int:
    t = m.leases
    return conn.execute(t.update().where(t.c.holder == holder)
                        .values(expires=now + ttl)).rowcount


def release(conn: sa.Connection, name: str, holder: str) -> None:
    t = m.leases
    conn.execute(t.delete().where(t.c.name == name, t.c.holder == holder))


def holder_of(conn: sa.Connection, name: str, now: int) -> str | None:
    t = m.leases
    row = conn.execute(sa.select(t.c.holder).where(t.c.name == name, t.c.expires >= now)).first()
    return row.holder if row else None


class Leases:
    """This process's locks: acquire, release, and a renewal every third of
    the lease while any is held."""

    def __init__(self, store: Any, ttl: int) -> None:
        self.store = store
        self.ttl = ttl
        self.holder = holder_name(store.cfg.server.node_id)
        self.held: set[str] = set()
        self._releasing: dict[str, defer.Deferred[None]] = {}
        self._loop: task.LoopingCall | None = None

    def _now(self) -> int:
        return int(time.time())

    async def acquire(self, name: str, ttl: int | None = None) -> bool:
        """Flag-change durability: a lost lock row after power loss only ends
        the lock early, as its expiry would."""
        pending = self._releasing.get(name)
        if pending is not None:  # our own release must not delete what we take now
            waiter: defer.Deferred[None] = defer.Deferred()
            pending.addBoth(lambda _: waiter.callback(None))
            await waiter
        now, lease = self._now(), ttl or self.ttl
        got = await self.store.pool.transaction(
            lambda c: try_acquire(c, name, self.holder, now, lease), durable=False)
        if got and ttl is None:  # renewed while held; a job's own ttl runs out by itself
            self.held.add(name)
            self._start_renewal()
        return got

    async def release(self, name: str) -> None:
        self.held.discard(name)
        try:
            await self.store.pool.transaction(
                lambda c: release(c, name, self.holder), durable=False)
        except Exception:  # it lapses by itself
            log.failure("cannot release lock {name}; it lapses in {ttl} s", name=name,
                        ttl=self.ttl)
        if not self.held:
            self._stop_renewal()

    def release_all_sync(self) -> None:
        """At shutdown, on the calling thread, while the pool still runs."""
        self._stop_renewal()
        held, self.held = self.held, set()
        if not held:
            return
        try:
            self.store.pool.transaction_sync(
                lambda c: [release(c, name, self.holder) for name in held])
        except Exception:
            log.failure("cannot release {n} cluster lock(s) at shutdown", n=len(held))

    def release_soon(self, name: str) -> None:
        """For synchronous callers (a connection's end)."""
        d = defer.Deferred.fromCoroutine(self.release(name))
        if d.called:
            return
        self._releasing[name] = d

        def done(_: object) -> None:
            if self._releasing.get(name) is d:
                del self._releasing[name]

        d.addBoth(done)

    async def _renew(self) -> None:
        if not self.held:
            return
        now = self._now()
        try:
            await self.store.pool.transaction(
                lambda c: renew_all(c, self.holder, now, self.ttl), durable=False)
        except Exception:
            log.failure("cannot renew {n} cluster lock(s); they lapse unless the next "
                        "renewal succeeds", n=len(self.held))

    def _start_renewal(self) -> None:
        if self._loop is not None:
            return
        self._loop = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(self._renew()))
        self._loop.clock = self.store.reactor
        self._loop.start(max(1, self.ttl // 3), now=False)

    def _stop_renewal(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
