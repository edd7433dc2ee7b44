"""Expunged UIDs and the modseq of their expunge (QRESYNC, RFC 7162).

Every path that expunges messages from a live mailbox records them here in
the same transaction (``record``), as runs of consecutive UIDs. ``since``
answers "what was expunged after modseq m" for VANISHED (EARLIER). Rows may
name UIDs that are present (the upgrade's catch-all row): callers subtract
the mailbox's UIDs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.rawsql import raw_many


def runs(uids: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted UIDs as (first, last) runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    for uid in sorted(uids):
        if out and uid == out[-1][1] + 1:
            out[-1] = (out[-1][0], uid)
        else:
            out.append((uid, uid))
    return out


def record(conn: sa.Connection, mailbox_id: int, uids: Sequence[int], modseq: int) -> None:
    raw_many(conn, "INSERT INTO expunged_uids (mailbox_id, first_uid, last_uid, modseq) "
             "VALUES (?, ?, ?, ?)", [(mailbox_id, a, b, modseq) for a, b in runs(uids)])


def since(conn: sa.Connection, mailbox_id: int, modseq: int) -> list[tuple[int, int]]:
    """(first, last) UID runs expunged at a modseq above ``modseq``."""
    e = m.expunged_uids.c
    rows = conn.execute(
        sa.select(e.first_uid, e.last_uid).where(e.mailbox_id == mailbox_id, e.modseq > modseq)
    )
    return [(int(a), int(b)) for a, b in rows]
