"""Folder operations IMAP needs beyond store/mailboxes.py: create with missing
parents, rename with children, delete, all with UIDVALIDITY values that never
repeat within an account (RFC 3501 §2.3.1.1: a name that comes back must not
get an old UIDVALIDITY, even within the same second)."""

from __future__ import annotations

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.contents import release_messages
from exmaild.store.mailboxes import MailboxError, allocate_uidvalidity, mailbox_from_row
from exmaild.store.records import Mailbox

SEP = "/"


class FolderExists(MailboxError):
    pass


class FolderMissing(MailboxError):
    pass


def parents_of(name: str) -> list[str]:
    """``a/b/c`` -> [``a``, ``a/b``]."""
    parts = name.split(SEP)
    return [SEP.join(parts[:i]) for i in range(1, len(parts))]


def _names(conn: sa.Connection, account_id: int) -> dict[str, int]:
    mb = m.mailboxes.c
    return dict(conn.execute(sa.select(mb.name, mb.id).where(mb.account_id == account_id)).all())


def create(conn: sa.Connection, account_id: int, name: str) -> Mailbox:
    """Create ``name`` and any missing parents; FolderExists if it exists."""
    existing = _names(conn, account_id)
    if name in existing:
        raise FolderExists(f"Mailbox {name} already exists")
    new = [n for n in [*parents_of(name), name] if n not in existing]
    uidvalidity = allocate_uidvalidity(conn, account_id, len(new))
    new_id = None
    for n in new:
        new_id = conn.execute(
            m.mailboxes.insert().values(account_id=account_id, name=n, uidvalidity=uidvalidity)
        ).inserted_primary_key[0]
        uidvalidity += 1
    r = conn.execute(sa.select(m.mailboxes).where(m.mailboxes.c.id == new_id)).one()
    return mailbox_from_row(r)


def rename(conn: sa.Connection, account_id: int, old: str, new: str) -> list[int]:
    """Rename ``old`` and its children to ``new``; creates missing parents of
    ``new``. Renamed mailboxes get fresh UIDVALIDITY values. Returns their ids."""
    existing = _names(conn, account_id)
    if old not in existing:
        raise FolderMissing(f"Mailbox {old} does not exist")
    if new in existing:
        raise FolderExists(f"Mailbox {new} already exists")
    prefix = old + SEP
    moving = sorted(n for n in existing if n == old or n.startswith(prefix))
    targets = {n: new + n[len(old) :] for n in moving}
    clash = [t for t in targets.values() if t in existing and t not in targets]
    if clash:
        raise FolderExists(f"Mailbox {clash[0]} already exists")
    after = (set(existing) - set(moving)) | set(targets.values())
    parents = [p for p in parents_of(new) if p not in after]
    uidvalidity = allocate_uidvalidity(conn, account_id, len(moving) + len(parents))
    mb = m.mailboxes.c
    # Two steps so a child renamed onto a sibling's old name never collides
    # (DEL cannot be in a client's mailbox name; PostgreSQL refuses NUL).
    for n in moving:
        temp = f"\x7frenaming-{existing[n]}"
        conn.execute(m.mailboxes.update().where(mb.id == existing[n]).values(name=temp))
    for n in moving:
        conn.execute(
            m.mailboxes.update()
            .where(mb.id == existing[n])
            .values(name=targets[n], uidvalidity=uidvalidity)
        )
        uidvalidity += 1
    for p in parents:
        conn.execute(
            m.mailboxes.insert().values(account_id=account_id, name=p, uidvalidity=uidvalidity)
        )
        uidvalidity += 1
    return [existing[n] for n in moving]


def delete(conn: sa.Connection, mailbox_id: int) -> None:
    """Delete one mailbox and release its messages (children are the caller's
    business)."""
    ids = conn.execute(
        sa.select(m.messages.c.id).where(m.messages.c.mailbox_id == mailbox_id)
    ).scalars().all()
    release_messages(conn, ids)
    conn.execute(m.mailboxes.delete().where(m.mailboxes.c.id == mailbox_id))
