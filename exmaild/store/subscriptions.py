"""IMAP subscriptions (RFC 3501 §6.3.6-7, RFC 5258): a set of names per
account, apart from the mailboxes. A subscribed name may have no mailbox
(never had, or deleted since); CREATE does not subscribe and DELETE does not
unsubscribe; RENAME takes the subscriptions of the renamed names along."""

from __future__ import annotations

import sqlalchemy as sa

from exmaild.store import model as m

SEP = "/"


def names(conn: sa.Connection, account_id: int) -> set[str]:
    s = m.subscriptions.c
    return set(conn.execute(sa.select(s.name).where(s.account_id == account_id)).scalars())


def subscribe(conn: sa.Connection, account_id: int, name: str, limit: int) -> bool:
    """Add ``name`` (already there is fine); False when the account has
    ``limit`` subscriptions already."""
    s = m.subscriptions.c
    exists = conn.execute(
        sa.select(s.id).where(s.account_id == account_id, s.name == name)
    ).first()
    if exists is not None:
        return True
    count = conn.execute(
        sa.select(sa.func.count()).select_from(m.subscriptions).where(s.account_id == account_id)
    ).scalar_one()
    if count >= limit:
        return False
    conn.execute(m.subscriptions.insert().values(account_id=account_id, name=name))
    return True


def unsubscribe(conn: sa.Connection, account_id: int, name: str) -> bool:
    """Remove ``name``; False when it was not subscribed."""
    s = m.subscriptions.c
    res = conn.execute(
        m.subscriptions.delete().where(s.account_id == account_id, s.name == name)
    )
    return bool(res.rowcount)


def rename(conn: sa.Connection, account_id: int, old: str, new: str) -> None:
    """Move the subscriptions of ``old`` and its children to ``new``."""
    s = m.subscriptions.c
    have = names(conn, account_id)
    prefix = old + SEP
    for name in sorted(n for n in have if n == old or n.startswith(prefix)):
        target = new + name[len(old) :]
        if target in have:
            conn.execute(
                m.subscriptions.delete().where(s.account_id == account_id, s.name == name)
            )
        else:
            conn.execute(
                m.subscriptions.update()
                .where(s.account_id == account_id, s.name == name)
                .values(name=target)
            )
