"""Store side of OBJECTID (RFC 8474), SAVEDATE (RFC 8514), STATUS=SIZE
(RFC 8438) and CREATE-SPECIAL-USE (RFC 6154).

Object ids are derived from what never repeats: a mailbox's row id (never
reused: AUTOINCREMENT on SQLite since migration 0004, a sequence on
PostgreSQL), a content's SHA-256 digest (the same message copied or moved
keeps its EMAILID; identical bytes share one), and for THREADID the first
id of the References: chain (the thread's root), or the message's own
Message-ID, or failing both its digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.imapfolders import create
from exmaild.store.records import Mailbox

M = m.messages.c
C = m.contents.c
S = m.content_sort.c
MB = m.mailboxes.c


class UseTaken(Exception):
    """Another mailbox of the account already has that special use."""


def create_with_use(conn: sa.Connection, account_id: int, name: str, use: str | None) -> Mailbox:
    """CREATE, with the special use set in the same transaction."""
    if use is not None:
        taken = conn.execute(
            sa.select(MB.id).where(MB.account_id == account_id, MB.special_use == use)
        ).first()
        if taken is not None:
            raise UseTaken(use)
    box = create(conn, account_id, name)
    if use is not None:
        conn.execute(m.mailboxes.update().where(MB.id == box.id).values(special_use=use))
    return box


def mailbox_size(conn: sa.Connection, mailbox_id: int, since: int = 0) -> int:
    q = sa.select(sa.func.coalesce(sa.func.sum(M.size), 0)).where(M.mailbox_id == mailbox_id)
    if since:
        q = q.where(M.internal_date >= since)
    return int(conn.execute(q).scalar_one())


def email_id(digest: str) -> str:
    return "M" + digest[:24]


def thread_id(msgid: str, refs: str, digest: str) -> str:
    root = refs.split(" ", 1)[0] if refs else msgid
    if not root:
        return "T" + digest[:24]
    return "T" + hashlib.sha256(root.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def message_ids(
    conn: sa.Connection, mailbox_id: int, uids: Sequence[int], *, threads: bool
) -> dict[int, tuple[str, str | None, int]]:
    """uid -> (EMAILID, THREADID or None, save date) for ``uids`` (ascending);
    ``threads`` needs the mailbox's sort keys (sortkeys.make_missing)."""
    out: dict[int, tuple[str, str | None, int]] = {}
    if not uids:
        return out
    cols: list[Any] = [M.uid, C.digest, M.added]
    source: Any = m.messages.join(m.contents, C.id == M.content_id)
    if threads:
        cols += [S.msgid, S.refs]
        source = source.outerjoin(m.content_sort, S.content_id == M.content_id)
    q = sa.select(*cols).select_from(source).where(
        M.mailbox_id == mailbox_id, M.uid.between(uids[0], uids[-1])
    )
    wanted = set(uids)
    for row in conn.execute(q):
        if row[0] not in wanted:
            continue
        tid = thread_id(row[3] or "", row[4] or "", row[1]) if threads else None
        out[row[0]] = (email_id(row[1]), tid, int(row[2]))
    return out

