"""Deleted and Junk keep mail for 30 days (manual §5.5.5, §5.5.6).

Age counts from when the message entered the folder (`messages.added`), not
from its internal date: a two-year-old mail deleted today stays 30 days.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from exmaild.mailstore.notify import MailboxChange
from exmaild.store import model as m
from exmaild.store.connector import Store

SWEPT_FOLDERS = ("\\Trash", "\\Junk")
RETENTION_DAYS = 30


async def sweep(store: Store, days: int = RETENTION_DAYS, now: float | None = None) -> int:
    """Expunge expired mail from every account's Deleted and Junk; returns the count."""
    cutoff = int((now if now is not None else time.time()) - days * 86400)

    def expired(conn: sa.Connection) -> list[int]:
        q = (
            sa.select(m.messages.c.id)
            .join(m.mailboxes, m.mailboxes.c.id == m.messages.c.mailbox_id)
            .where(m.mailboxes.c.special_use.in_(SWEPT_FOLDERS), m.messages.c.added < cutoff)
        )
        return list(conn.execute(q).scalars())

    ids = await store.pool.do(expired)
    if not ids:
        return 0
    gone = await store.mailboxes.expunge_ids(ids)
    for mailbox_id, uids in gone.items():
        box = await store.mailboxes.get_by_id(mailbox_id)
        store.notifier.publish(
            MailboxChange(mailbox_id, "expunge", tuple(sorted(uids)),
                          box.highestmodseq if box else 0)
        )
    return len(ids)
