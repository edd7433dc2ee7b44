"""The runner's database work: claim due recipients, record outcomes.

Claims are leases: `locked_until` (renewed while a node works) and
`locked_by` (the node id). A node that dies leaves leases that simply run
out, so another node — or the same one after a restart, which frees its own
at once — retries them: a crash can deliver a message twice, never lose it.
On PostgreSQL the claim is `SELECT … FOR UPDATE SKIP LOCKED`, so nodes
claiming at the same moment each get different rows without waiting; SQLite
has one writer, and the UPDATE re-checks the lease anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from exmaild.queue.delivery import Batch, Rcpt
from exmaild.queue.records import DEFERRED, QUEUED
from exmaild.queue.store import finish_if_done
from exmaild.store import model as m
from exmaild.store.contents import chunked

PENDING = (QUEUED, DEFERRED)


@dataclass(frozen=True)
class Claimed:
    """A claimed message with its claimed recipients and their domains."""

    batch: Batch
    domains: dict[int, str]  # recipient id -> domain


@dataclass(frozen=True)
class Update:
    """What one delivery attempt did to one recipient."""

    rid: int
    status: str
    next_attempt: int | None  # None: unchanged
    reply: str
    relay: str | None
    delay_notified: bool = False


def release_node(conn: sa.Connection, node: str) -> int:
    """Free every claim `node` holds (at start-up: its previous life's)."""
    r = m.queue_recipients.c
    return conn.execute(
        m.queue_recipients.update()
        .where(r.locked_by == node)
        .values(locked_until=0, locked_by=None)
    ).rowcount


def renew(conn: sa.Connection, node: str, rids: Iterable[int], until: int) -> int:
    r = m.queue_recipients.c
    n = 0
    for part in chunked(list(rids)):
        n += conn.execute(
            m.queue_recipients.update()
            .where(r.id.in_(part), r.locked_by == node, r.status.in_(PENDING))
            .values(locked_until=until)
        ).rowcount
    return n


def claim(conn: sa.Connection, *, now: int, node: str, lease: int, limit: int) -> list[Claimed]:
    """Lease up to `limit` due recipients to `node`, grouped by message."""
    r = m.queue_recipients.c
    q = (
        sa.select(r.id)
        .where(r.status.in_(PENDING), r.next_attempt <= now, r.locked_until < now)
        .order_by(r.next_attempt, r.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    got: list[int] = []
    for part in chunked(ids):
        got += conn.execute(
            m.queue_recipients.update()
            .where(r.id.in_(part), r.locked_until < now, r.status.in_(PENDING))
            .values(locked_until=now + lease, locked_by=node)
            .returning(r.id)
        ).scalars().all()
    return _load(conn, got)


def _load(conn: sa.Connection, rids: Sequence[int]) -> list[Claimed]:
    r = m.queue_recipients.c
    q = m.queue_messages.c
    c = m.contents.c
    out: dict[int, Claimed] = {}
    for part in chunked(list(rids)):
        rows = conn.execute(
            sa.select(
                r.id, r.recipient, r.domain, r.orcpt, r.notify, r.attempts, r.delay_notified,
                q.id.label("mid"), q.queue_id, q.content_id, q.body_offset, q.sender, q.envid,
                q.ret, q.created, q.account_id, c.size, q.trace,
            )
            .join(m.queue_messages, q.id == r.message_id)
            .join(m.contents, c.id == q.content_id)
            .where(r.id.in_(part))
            .order_by(q.id, r.id)
        )
        for row in rows:
            cl = out.get(row.mid)
            if cl is None:
                batch = Batch(
                    row.mid, row.queue_id, row.content_id, row.body_offset,
                    row.size - row.body_offset, row.sender, row.envid, row.ret, row.created,
                    row.account_id, [],
                )
                if row.trace:
                    batch.trace = row.trace.encode("utf-8")
                cl = out[row.mid] = Claimed(batch, {})
            cl.batch.rcpts.append(
                Rcpt(row.id, row.recipient, row.orcpt, row.notify, row.attempts,
                     bool(row.delay_notified))
            )
            cl.domains[row.id] = row.domain
    return list(out.values())


def apply(conn: sa.Connection, *, node: str, now: int, message_id: int,
          updates: Sequence[Update]) -> bool:
    """Record outcomes and free their claims; True when this released the
    message (no recipient left to try, content reference dropped)."""
    r = m.queue_recipients.c
    for u in updates:
        values: dict[str, object] = {
            "status": u.status,
            "attempts": r.attempts + 1,
            "last_attempt": now,
            "last_reply": u.reply[:4000],
            "relay": u.relay[:300] if u.relay else u.relay,
            "locked_until": 0,
            "locked_by": None,
            "updated": now,
        }
        if u.next_attempt is not None:
            values["next_attempt"] = u.next_attempt
        if u.delay_notified:
            values["delay_notified"] = True
        conn.execute(
            m.queue_recipients.update()
            .where(r.id == u.rid, r.locked_by == node, r.status.in_(PENDING))
            .values(**values)
        )
    offset = conn.execute(
        sa.select(m.queue_messages.c.body_offset).where(m.queue_messages.c.id == message_id)
    ).scalar()
    if offset is None or offset < 0:
        return False
    return finish_if_done(conn, message_id)


def purge_finished(conn: sa.Connection, before: int, limit: int) -> int:
    """Forget up to `limit` finished messages that arrived before `before`
    (status display only); the caller repeats while it gets `limit`."""
    q = m.queue_messages.c
    ids = list(conn.execute(
        sa.select(q.id).where(q.body_offset < 0, q.created < before).limit(limit)
    ).scalars())
    for part in chunked(ids):
        conn.execute(m.queue_recipients.delete().where(m.queue_recipients.c.message_id.in_(part)))
        conn.execute(m.queue_messages.delete().where(q.id.in_(part)))
    return len(ids)
