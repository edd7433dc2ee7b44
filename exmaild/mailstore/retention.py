"""Deleted and Junk keep mail for 30 days (manual §5.5.5, §5.5.6).

Age counts from when the message entered the folder (`messages.added`), not
from its internal date: a two-year-old mail deleted today stays 30 days.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.changes import MailboxChange
from exmaild.store.connector import Store
from exmaild.store.mailboxes import expunge_rows

SWEPT_FOLDERS = ("\\Trash", "\\Junk")
RETENTION_DAYS = 30


async def sweep(
    store: Store, days: int = RETENTION_DAYS, now: float | None = None, batch: int | None = None
) -> int:
    """Expunge expired mail from every account's Deleted and Junk; returns the count.

    At most `batch` messages ([database] maintenance_batch) go per transaction,
    and the writer is released between batches, so a large sweep never holds
    up SMTP and IMAP writes for long.
    """
    cutoff = int((now if now is not None else time.time()) - days * 86400)
    limit = batch or store.cfg.database.maintenance_batch

    def one_batch(conn: sa.Connection) -> tuple[int, dict[int, list[int]], dict[int, int]]:
        ids = list(conn.execute(
            sa.select(m.messages.c.id)
            .join(m.mailboxes, m.mailboxes.c.id == m.messages.c.mailbox_id)
            .where(m.mailboxes.c.special_use.in_(SWEPT_FOLDERS), m.messages.c.added < cutoff)
            .order_by(m.messages.c.id)
            .limit(limit)
        ).scalars())
        if not ids:
            return 0, {}, {}
        gone = expunge_rows(conn, ids)
        modseqs = dict(conn.execute(
            sa.select(m.mailboxes.c.id, m.mailboxes.c.highestmodseq)
            .where(m.mailboxes.c.id.in_(list(gone)))
        ).all())
        return len(ids), gone, modseqs

    total = 0
    while True:
        n, gone, modseqs = await store.pool.transaction(one_batch)
        total += n
        for mailbox_id, uids in gone.items():
            store.notifier.publish(MailboxChange(
                mailbox_id, "expunge", tuple(sorted(uids)), modseqs.get(mailbox_id, 0)))
        if n < limit:
            return total
