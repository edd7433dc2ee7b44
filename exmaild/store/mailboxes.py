"""Folders and the messages in them: listing, flags, expunge (COPY and MOVE
are store/imapmessages.py's copy_messages).

Shared by IMAP and POP3 (Stalwart's split: protocol code parses and formats;
the mail logic lives here once).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store import vanished
from exmaild.store.contents import chunked, release_messages
from exmaild.store.pool import DBThreadPool
from exmaild.store.rawsql import raw_rows
from exmaild.store.records import Mailbox, MessageEntry


class MailboxError(Exception):
    """A refused folder operation; the message is for the client."""


def mailbox_from_row(r: Any) -> Mailbox:
    return Mailbox(
        id=r.id,
        account_id=r.account_id,
        name=r.name,
        special_use=r.special_use,
        uidvalidity=r.uidvalidity,
        uidnext=r.uidnext,
        highestmodseq=r.highestmodseq,
    )


_ENTRY_COLS = (
    m.messages.c.id,
    m.messages.c.mailbox_id,
    m.messages.c.uid,
    m.messages.c.content_id,
    m.messages.c.size,
    m.messages.c.flags,
    m.messages.c.keywords,
    m.messages.c.internal_date,
    m.messages.c.modseq,
    m.messages.c.pop_hidden,
)


def entry_from_row(r: Any) -> MessageEntry:
    return MessageEntry(
        r.id, r.mailbox_id, r.uid, r.content_id, r.size, r.flags, r.keywords,
        r.internal_date, r.modseq, bool(r.pop_hidden),
    )


def bump_modseq(conn: sa.Connection, mailbox_id: int) -> int:
    return int(raw_rows(
        conn, "UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id = ? "
        "RETURNING highestmodseq", (mailbox_id,))[0][0])


def allocate_uidvalidity(conn: sa.Connection, account_id: int, n: int = 1) -> int:
    """The first of `n` consecutive UIDVALIDITY values never given out in the
    account before (RFC 3501 §2.3.1.1), however mailboxes come and go.

    A counter on the account row, kept at or above the clock so a re-created
    account (same address) does not restart low. The UPDATE locks the row, so
    concurrent sessions (PostgreSQL) get disjoint ranges.
    """
    now = int(time.time())
    nxt = m.accounts.c.next_uidvalidity
    top = conn.execute(
        m.accounts.update()
        .where(m.accounts.c.id == account_id)
        .values(next_uidvalidity=sa.case((nxt > now, nxt), else_=now) + n)
        .returning(nxt)
    ).scalar_one()
    return int(top) - n


def expunge_rows(conn: sa.Connection, message_ids: Sequence[int]) -> dict[int, list[int]]:
    """Delete messages by row id; {mailbox_id: [uids]} of those that were there."""
    gone: dict[int, list[int]] = {}
    for part in chunked(list(message_ids)):
        for r in conn.execute(
            sa.select(m.messages.c.mailbox_id, m.messages.c.uid).where(m.messages.c.id.in_(part))
        ):
            gone.setdefault(r.mailbox_id, []).append(r.uid)
    release_messages(conn, list(message_ids))
    for mbox, uids in gone.items():
        vanished.record(conn, mbox, uids, bump_modseq(conn, mbox))
    return gone


class Mailboxes:
    def __init__(self, pool: DBThreadPool) -> None:
        self.pool = pool

    # -- folders ---------------------------------------------------------
    async def list(self, account_id: int) -> list[Mailbox]:
        def thd(conn: sa.Connection) -> list[Mailbox]:
            rows = conn.execute(
                sa.select(m.mailboxes)
                .where(m.mailboxes.c.account_id == account_id)
                .order_by(m.mailboxes.c.name)
            )
            return [mailbox_from_row(r) for r in rows]

        return await self.pool.do(thd)

    async def get(self, account_id: int, name: str) -> Mailbox | None:
        if name.upper() == "INBOX":
            name = "INBOX"

        def thd(conn: sa.Connection) -> Mailbox | None:
            r = conn.execute(
                sa.select(m.mailboxes).where(
                    m.mailboxes.c.account_id == account_id, m.mailboxes.c.name == name
                )
            ).first()
            return mailbox_from_row(r) if r else None

        return await self.pool.do(thd)

    async def get_by_id(self, mailbox_id: int) -> Mailbox | None:
        def thd(conn: sa.Connection) -> Mailbox | None:
            r = conn.execute(
                sa.select(m.mailboxes).where(m.mailboxes.c.id == mailbox_id)
            ).first()
            return mailbox_from_row(r) if r else None

        return await self.pool.do(thd)

    async def set_subscribed(self, mailbox_id: int, subscribed: bool) -> None:
        await self.pool.transaction(
            lambda conn: conn.execute(
                m.mailboxes.update()
                .where(m.mailboxes.c.id == mailbox_id)
                .values(subscribed=subscribed)
            )
        )

    # -- messages --------------------------------------------------------
    async def messages(
        self, mailbox_ids: Sequence[int], *, since: int = 0, include_pop_hidden: bool = True
    ) -> list[MessageEntry]:
        """Entries of the mailboxes in UID order; `since` limits by internal date."""

        def thd(conn: sa.Connection) -> list[MessageEntry]:
            q = sa.select(*_ENTRY_COLS).where(m.messages.c.mailbox_id.in_(mailbox_ids))
            if since:
                q = q.where(m.messages.c.internal_date >= since)
            if not include_pop_hidden:
                q = q.where(m.messages.c.pop_hidden == sa.false())
            q = q.order_by(m.messages.c.mailbox_id, m.messages.c.uid)
            return [entry_from_row(r) for r in conn.execute(q)]

        return await self.pool.do(thd)

    async def set_flags(
        self, mailbox_id: int, uids: Sequence[int], add: int = 0, remove: int = 0
    ) -> list[MessageEntry]:
        """Add/remove system flag bits; returns the entries that changed."""

        def thd(conn: sa.Connection) -> list[MessageEntry]:
            c = m.messages.c
            changed: list[MessageEntry] = []
            modseq = None
            for part in chunked(list(uids)):
                rows = conn.execute(
                    sa.select(*_ENTRY_COLS).where(c.mailbox_id == mailbox_id, c.uid.in_(part))
                ).all()
                for r in rows:
                    new = (r.flags | add) & ~remove
                    if new == r.flags:
                        continue
                    if modseq is None:
                        modseq = bump_modseq(conn, mailbox_id)
                    conn.execute(
                        m.messages.update().where(c.id == r.id).values(flags=new, modseq=modseq)
                    )
                    changed.append(
                        MessageEntry(
                            r.id, r.mailbox_id, r.uid, r.content_id, r.size, new,
                            r.keywords, r.internal_date, modseq, bool(r.pop_hidden),
                        )
                    )
            return changed

        return await self.pool.transaction(thd)

    async def hide_from_pop(self, message_ids: Sequence[int]) -> None:
        def thd(conn: sa.Connection) -> None:
            for part in chunked(list(message_ids)):
                conn.execute(
                    m.messages.update().where(m.messages.c.id.in_(part)).values(pop_hidden=True)
                )

        await self.pool.transaction(thd)

    async def expunge_ids(self, message_ids: Sequence[int]) -> dict[int, list[int]]:
        """Delete messages by row id in one transaction; {mailbox_id: [uids]}."""
        return await self.pool.transaction(lambda conn: expunge_rows(conn, message_ids))
