"""Queue rows in the database. `enqueue` runs inside the ingest transaction
(through IngestRequest.extra), so a message is never acknowledged unless it is
both in every local mailbox and in the queue for everyone else."""

from __future__ import annotations

import time
from collections.abc import Sequence

import sqlalchemy as sa

from exmaild.queue.records import (
    DELIVERED,
    FINAL,
    QueuedRecipient,
    QueueEntry,
    RecipientStatus,
)
from exmaild.store import model as m
from exmaild.store.contents import add_refs, drop_refs


def enqueue(
    conn: sa.Connection,
    *,
    queue_id: str,
    content_id: int,
    sender: str,
    recipients: Sequence[QueuedRecipient],
    envid: str | None = None,
    ret: str | None = None,
    account_id: int | None = None,
    body_offset: int = 0,
    now: int | None = None,
    trace: str | None = None,
) -> int:
    """Queue a stored content for `recipients`; returns the queue row id.

    Recipients with status DELIVERED are recorded for status display only.
    The queue row holds one reference on the content until every recipient
    is final (see `finish_if_done`). The caller kicks its node's runner
    after the commit; that runner tells the other nodes when it has no room.
    """
    now = int(time.time()) if now is None else now
    # Invariant: body_offset >= 0 exactly while the row holds a reference. A
    # row with nothing left to deliver (local status only) never takes one.
    holds = any(r.status not in FINAL for r in recipients)
    mid = conn.execute(
        m.queue_messages.insert().values(
            queue_id=queue_id,
            content_id=content_id if holds else None,
            body_offset=body_offset if holds else -1,
            sender=sender,
            envid=envid,
            ret=ret,
            account_id=account_id,
            created=now,
            trace=trace,
        )
    ).inserted_primary_key[0]
    conn.execute(
        m.queue_recipients.insert(),
        [
            {
                "message_id": mid,
                "recipient": r.address,
                "domain": r.address.rpartition("@")[2].lower(),
                "orcpt": r.orcpt,
                "notify": r.notify,
                "status": r.status,
                "next_attempt": now,
                "updated": now,
                "last_attempt": now if r.status == DELIVERED else None,
            }
            for r in recipients
        ],
    )
    if holds:
        add_refs(conn, content_id, 1)
    return mid


def finish_if_done(conn: sa.Connection, message_id: int) -> bool:
    """Release the content reference once no recipient is left to try."""
    r = m.queue_recipients.c
    pending = conn.execute(
        sa.select(sa.func.count()).where(r.message_id == message_id, r.status.not_in(FINAL))
    ).scalar_one()
    if pending:
        return False
    row = conn.execute(
        sa.select(m.queue_messages.c.content_id, m.queue_messages.c.body_offset).where(
            m.queue_messages.c.id == message_id
        )
    ).first()
    if row is None or row.body_offset < 0:
        return True
    # body_offset -1 marks "reference already released"; rows stay for status
    # display. content_id goes too: the content row may be deleted just below.
    conn.execute(
        m.queue_messages.update()
        .where(m.queue_messages.c.id == message_id)
        .values(body_offset=-1, content_id=None)
    )
    drop_refs(conn, {row.content_id: 1})
    return True


def load_entries(conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[QueueEntry]:
    q = m.queue_messages.c
    r = m.queue_recipients.c
    msgs = conn.execute(sa.select(m.queue_messages).where(where).order_by(q.id)).all()
    if not msgs:
        return []
    rcpts: dict[int, list[RecipientStatus]] = {}
    for row in conn.execute(
        sa.select(m.queue_recipients)
        .where(r.message_id.in_([x.id for x in msgs]))
        .order_by(r.id)
    ):
        rcpts.setdefault(row.message_id, []).append(
            RecipientStatus(
                row.id, row.recipient, row.status, row.attempts, row.next_attempt,
                row.last_attempt, row.last_reply, row.relay,
            )
        )
    return [
        QueueEntry(
            x.id, x.queue_id, x.content_id, x.body_offset, x.sender, x.envid, x.ret,
            x.account_id, x.created, tuple(rcpts.get(x.id, ())),
        )
        for x in msgs
    ]
