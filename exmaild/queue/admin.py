"""What `exmailctl queue ...` does: list, show, retry, delete, flush.

These only touch the database. `retry`/`flush` set `next_attempt` to now. On
PostgreSQL the same transaction notifies every node's queue runner, which
scans at once (store/pgnotify.py); on SQLite the daemon finds the recipients
at its next scan (`[queue] scan_interval`). No signal or socket to a daemon.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from exmaild.queue.records import DEFERRED, FINAL, QUEUED, QueueEntry
from exmaild.queue.store import load_entries
from exmaild.store import model as m
from exmaild.store.connector import Store
from exmaild.store.contents import drop_refs
from exmaild.store.pgnotify import kick_queue

PENDING = (QUEUED, DEFERRED)


@dataclass(frozen=True)
class Listed:
    entry: QueueEntry
    size: int | None  # None once the content is released
    active: frozenset[int]  # recipient ids a node is working on now


def _size_and_locks(conn: sa.Connection, entries: list[QueueEntry], now: int) -> list[Listed]:
    if not entries:
        return []
    c = m.contents.c
    sizes = dict(conn.execute(
        sa.select(c.id, c.size).where(
            c.id.in_({e.content_id for e in entries if e.content_id is not None})
        )
    ).all())
    r = m.queue_recipients.c
    locked = set(conn.execute(
        sa.select(r.id).where(r.message_id.in_([e.id for e in entries]), r.locked_until >= now)
    ).scalars())
    out = []
    for e in entries:
        size = sizes.get(e.content_id) if e.body_offset >= 0 else None
        out.append(Listed(
            e, None if size is None else size - e.body_offset,
            frozenset(x.id for x in e.recipients if x.id in locked),
        ))
    return out


async def list_queue(store: Store, include_finished: bool = False) -> list[Listed]:
    now = int(time.time())

    def thd(conn: sa.Connection) -> list[Listed]:
        q = m.queue_messages.c
        if include_finished:
            where: sa.ColumnElement[bool] = sa.true()
        else:
            r = m.queue_recipients.c
            where = q.id.in_(
                sa.select(r.message_id).where(r.status.in_(PENDING)).scalar_subquery()
            )
        return _size_and_locks(conn, load_entries(conn, where), now)

    return await store.pool.do(thd)


async def show(store: Store, queue_id: str) -> tuple[Listed, bytes | None] | None:
    """The entry and its header section (None once the content is released)."""
    now = int(time.time())

    def thd(conn: sa.Connection) -> tuple[Listed, int] | None:
        entries = load_entries(conn, m.queue_messages.c.queue_id == queue_id.upper())
        if not entries:
            return None
        header_len = conn.execute(
            sa.select(m.contents.c.header_len).where(m.contents.c.id == entries[0].content_id)
        ).scalar()
        return _size_and_locks(conn, entries, now)[0], header_len or 0

    found = await store.pool.do(thd)
    if found is None:
        return None
    listed, header_len = found
    e = listed.entry
    if e.body_offset < 0 or listed.size is None:
        return listed, None
    ref = (await store.blob_refs([e.content_id])).get(e.content_id) if e.content_id else None
    if ref is None:
        return listed, None
    length = max(0, header_len - e.body_offset)
    return listed, await store.pool.call(store.blobs.read, ref, e.body_offset, length)


async def retry(store: Store, queue_id: str | None) -> int | None:
    """Make pending recipients due now (one message, or all with None).

    Returns how many recipients were rescheduled; None for an unknown queue id.
    """
    now = int(time.time())

    def thd(conn: sa.Connection) -> int | None:
        r = m.queue_recipients.c
        where = r.status.in_(PENDING)
        if queue_id is not None:
            mid = conn.execute(
                sa.select(m.queue_messages.c.id)
                .where(m.queue_messages.c.queue_id == queue_id.upper())
            ).scalar()
            if mid is None:
                return None
            where = sa.and_(where, r.message_id == mid)
        n = conn.execute(
            m.queue_recipients.update().where(where).values(next_attempt=now, updated=now)
        ).rowcount
        if n:
            kick_queue(conn)
        return n

    return await store.pool.transaction(thd)


async def delete(store: Store, queue_id: str) -> bool:
    """Remove a message from the queue without a DSN (Postfix `postsuper -d`)."""

    def thd(conn: sa.Connection) -> bool:
        q = m.queue_messages.c
        row = conn.execute(
            sa.select(q.id, q.content_id, q.body_offset).where(q.queue_id == queue_id.upper())
        ).first()
        if row is None:
            return False
        conn.execute(
            m.queue_recipients.delete().where(m.queue_recipients.c.message_id == row.id)
        )
        conn.execute(m.queue_messages.delete().where(q.id == row.id))
        if row.body_offset >= 0 and row.content_id is not None:
            drop_refs(conn, {row.content_id: 1})
        return True

    return await store.pool.transaction(thd)


# -- formatting -----------------------------------------------------------------------
def _when(ts: int | None) -> str:
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(ts)) if ts else "-"


def format_list(rows: list[Listed]) -> list[str]:
    """A mailq-like table: one block per message, its recipients beneath."""
    if not rows:
        return ["Mail queue is empty"]
    out = ["-Queue ID-    --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for row in rows:
        e = row.entry
        mark = "*" if row.active else " "
        size = "-" if row.size is None else str(row.size)
        total += row.size or 0
        out.append(f"{e.queue_id + mark:<13} {size:>8} {_when(e.created):<20} "
                   f"{e.sender or 'MAILER-DAEMON'}")
        for r in e.recipients:
            if r.status not in FINAL:
                when = f", next try {_when(r.next_attempt)}"
                if r.id in row.active:
                    when = ", being delivered"
                out.append(f"{'':44}{r.recipient}  [{r.status}, {r.attempts} attempt(s){when}]")
            else:
                out.append(f"{'':44}{r.recipient}  [{r.status}]")
            if r.last_reply and r.status != "delivered":
                out.append(f"{'':46}({r.last_reply})")
        out.append("")
    n = len(rows)
    out.append(f"-- {max(1, total // 1024) if total else 0} Kbytes in {n} "
               f"Request{'s' if n != 1 else ''}.")
    return out


def format_show(listed: Listed, headers: bytes | None) -> list[str]:
    e = listed.entry
    out = [
        f"queue id:     {e.queue_id}",
        f"arrival:      {_when(e.created)}",
        f"sender:       <{e.sender}>",
        f"size:         {'-' if listed.size is None else listed.size}",
    ]
    if e.envid:
        out.append(f"envid:        {e.envid}")
    if e.ret:
        out.append(f"ret:          {e.ret}")
    if e.account_id is not None:
        out.append(f"account id:   {e.account_id}")
    out.append("recipients:")
    for r in e.recipients:
        active = " (being delivered)" if r.id in listed.active else ""
        out.append(f"  <{r.recipient}>: {r.status}{active}, {r.attempts} attempt(s)")
        if r.status not in FINAL:
            out.append(f"      next attempt: {_when(r.next_attempt)}")
        if r.last_attempt:
            out.append(f"      last attempt: {_when(r.last_attempt)}")
        if r.relay:
            out.append(f"      relay:        {r.relay}")
        if r.last_reply:
            out.append(f"      reply:        {r.last_reply}")
    out.append("headers:")
    if headers is None:
        out.append("  (message content released: every recipient is done)")
    else:
        text = headers.decode("utf-8", "replace").replace("\r\n", "\n").rstrip("\n")
        out += [f"  {line}" for line in text.split("\n")]
    return out
