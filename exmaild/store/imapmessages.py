"""IMAP's message queries: FETCH batches, STORE, EXPUNGE, STATUS counts.

Each function takes a Connection and runs inside the caller's `pool.do` or
`pool.transaction`; none of them is called per message.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.store import flags as fl
from exmaild.store import model as m
from exmaild.store import vanished
from exmaild.store.contents import add_refs, chunked, release_messages
from exmaild.store.mailboxes import bump_modseq
from exmaild.store.rawsql import raw_exec, raw_rows

ADD, REMOVE, REPLACE = "add", "remove", "replace"


def _uid_filter(uids: Sequence[int]) -> list[Any]:
    """WHERE clauses selecting ``uids`` (ascending): one range when dense."""
    c = m.messages.c
    if not uids:
        return [sa.false()]
    lo, hi = uids[0], uids[-1]
    if hi - lo + 1 <= 2 * len(uids) + 64:
        return [c.uid.between(lo, hi)]
    return [c.uid.in_(part) for part in chunked(list(uids))]


def _raw_uid_filter(uids: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
    """``_uid_filter`` as SQL text with ``?`` placeholders, and its values."""
    if not uids:
        return []
    lo, hi = uids[0], uids[-1]
    if hi - lo + 1 <= 2 * len(uids) + 64:
        return [(" AND uid BETWEEN ? AND ?", (lo, hi))]
    return [(" AND uid IN (" + ",".join("?" * len(part)) + ")", tuple(part))
            for part in chunked(list(uids))]


_STORE_ROWS = "SELECT id, uid, flags, keywords, modseq FROM messages WHERE mailbox_id = ?"
_STORE_SET = "UPDATE messages SET flags = ?, keywords = ?, modseq = ? WHERE id IN ("


# -- FETCH -----------------------------------------------------------------------
@dataclass(frozen=True)
class FetchColumns:
    envelope: bool = False
    bodystructure: bool = False
    body: bool = False  # non-extensible BODY
    blob: bool = False  # segment, offset, size, header_len


ALL_COLUMNS = FetchColumns(True, True, True, True)


def fetch_rows(
    conn: sa.Connection, mailbox_id: int, uids: Sequence[int], want: FetchColumns
) -> dict[int, tuple[Any, ...]]:
    """uid -> (content_id, header_len, segment, offset, blob size, envelope,
    bodystructure, body); columns not wanted are None. ``uids`` ascending.

    One query per range (or per 500 scattered UIDs) on the driver's cursor:
    this is FETCH's hot path."""
    cols = ", ".join([
        "m.uid", "m.content_id",
        'c.header_len, c.segment, c."offset", c.size' if want.blob else "NULL, NULL, NULL, NULL",
        "c.envelope" if want.envelope else "NULL",
        "c.bodystructure" if want.bodystructure else "NULL",
        "c.body" if want.body else "NULL",
    ])
    base = (f"SELECT {cols} FROM messages m JOIN contents c ON c.id = m.content_id "
            "WHERE m.mailbox_id = ? AND ")
    wanted = set(uids)
    out: dict[int, tuple[Any, ...]] = {}
    if not uids:
        return out
    lo, hi = uids[0], uids[-1]
    if hi - lo + 1 <= 2 * len(uids) + 64:
        queries = [(base + "m.uid BETWEEN ? AND ?", (mailbox_id, lo, hi))]
    else:
        queries = [
            (base + f"m.uid IN ({', '.join('?' * len(part))})", (mailbox_id, *part))
            for part in chunked(list(uids))
        ]
    for sql, params in queries:
        for r in raw_rows(conn, sql, params):
            if r[0] in wanted:
                out[r[0]] = r[1:]
    return out


# -- STORE -----------------------------------------------------------------------
def _kw_list(text: str) -> list[str]:
    return text.split() if text else []


def _merge_keywords(old: str, mode: str, keywords: Sequence[str]) -> str:
    if mode == REPLACE:
        return " ".join(keywords)
    current = _kw_list(old)
    lower = {k.lower() for k in keywords}
    if mode == REMOVE:
        return " ".join(k for k in current if k.lower() not in lower)
    have = {k.lower() for k in current}
    return " ".join(current + [k for k in keywords if k.lower() not in have])


@dataclass(frozen=True)
class StoreResult:
    changed: list[tuple[int, int, str, int]]  # (uid, flags, keywords, modseq)
    modified: list[int]  # UNCHANGEDSINCE failures
    unchanged: list[tuple[int, int, str, int]]  # matched but already so
    modseq: int | None


def store_flags(
    conn: sa.Connection,
    mailbox_id: int,
    uids: Sequence[int],
    mode: str,
    mask: int,
    keywords: Sequence[str] = (),
    unchanged_since: int | None = None,
) -> StoreResult:
    """Set/add/remove flags on ``uids`` (ascending) in one transaction with
    one new modseq; rows are updated in groups of equal new values. Plain SQL
    on the driver's cursor: STORE is the commonest write of a busy session."""
    groups: dict[tuple[int, str], list[int]] = defaultdict(list)
    pending: list[tuple[int, int, str]] = []
    modified: list[int] = []
    unchanged: list[tuple[int, int, str, int]] = []
    wanted = set(uids)
    for where, params in _raw_uid_filter(uids):
        for mid, uid, old, kw, ms in raw_rows(conn, _STORE_ROWS + where, (mailbox_id, *params)):
            if uid not in wanted:
                continue
            if unchanged_since is not None and ms > unchanged_since:
                modified.append(uid)
                continue
            if mode == REPLACE:
                new = mask
            elif mode == ADD:
                new = old | mask
            else:
                new = old & ~mask
            new_kw = _merge_keywords(kw, mode, keywords) if (keywords or mode == REPLACE) else kw
            if new == old and new_kw == kw:
                unchanged.append((uid, old, kw, ms))
                continue
            groups[(new, new_kw)].append(mid)
            pending.append((uid, new, new_kw))
    if not pending:
        return StoreResult([], sorted(modified), unchanged, None)
    modseq = bump_modseq(conn, mailbox_id)
    for (new, new_kw), ids in groups.items():
        for part in chunked(ids):
            raw_exec(conn, _STORE_SET + ",".join("?" * len(part)) + ")",
                      (new, new_kw, modseq, *part))
    changed = sorted((uid, new, kw, modseq) for uid, new, kw in pending)
    return StoreResult(changed, sorted(modified), unchanged, modseq)


# -- EXPUNGE ---------------------------------------------------------------------
_DELETED = f"SELECT id, uid FROM messages WHERE mailbox_id = ? AND (flags & {fl.DELETED}) != 0"


def expunge_deleted(
    conn: sa.Connection, mailbox_id: int, allowed: Sequence[int] | None
) -> tuple[list[int], int | None]:
    """Remove the \\Deleted messages (only those among ``allowed``, ascending,
    when given); returns (expunged UIDs ascending, new modseq)."""
    rows = raw_rows(conn, _DELETED, (mailbox_id,))
    if allowed is not None:
        ok = set(allowed)
        rows = [r for r in rows if r[1] in ok]
    if not rows:
        return [], None
    release_messages(conn, [r[0] for r in rows])
    uids = sorted(r[1] for r in rows)
    modseq = bump_modseq(conn, mailbox_id)
    vanished.record(conn, mailbox_id, uids, modseq)
    return uids, modseq


def message_ids(conn: sa.Connection, mailbox_id: int, uids: Sequence[int]) -> list[int]:
    c = m.messages.c
    wanted = set(uids)
    out = []
    for clause in _uid_filter(uids):
        for mid, uid in conn.execute(
            sa.select(c.id, c.uid).where(c.mailbox_id == mailbox_id, clause)
        ):
            if uid in wanted:
                out.append(mid)
    return out


def total_size(conn: sa.Connection, mailbox_id: int, uids: Sequence[int]) -> int:
    c = m.messages.c
    wanted = set(uids)
    total = 0
    for clause in _uid_filter(uids):
        for uid, size in conn.execute(
            sa.select(c.uid, c.size).where(c.mailbox_id == mailbox_id, clause)
        ):
            if uid in wanted:
                total += size
    return total


# -- \Recent ---------------------------------------------------------------------
def claim_recent(conn: sa.Connection, mailbox_id: int, top: int) -> int:
    """Claim \\Recent for the UIDs up to ``top``: returns the mark before, so
    the caller's session alone has the UIDs in (mark, top] as \\Recent. A
    compare-and-set on the mailbox row, so two sessions, processes or nodes
    never both get a UID."""
    while True:
        rows = raw_rows(conn, "SELECT recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,))
        old = rows[0][0] if rows else None
        if old is None or old >= top:
            return top  # gone, or claimed by someone else already
        if raw_exec(conn, "UPDATE mailboxes SET recent_uid = ? WHERE id = ? AND recent_uid = ?",
                    (top, mailbox_id, old)) == 1:
            return int(old)


# -- STATUS ----------------------------------------------------------------------
_STATUS = (
    "SELECT count(m.uid), "
    f"coalesce(sum(CASE WHEN (m.flags & {fl.SEEN}) = 0 THEN 1 ELSE 0 END), 0), "
    "coalesce(sum(CASE WHEN m.uid > b.recent_uid THEN 1 ELSE 0 END), 0), "
    "b.uidvalidity, b.uidnext, b.highestmodseq "
    "FROM mailboxes b LEFT JOIN messages m ON m.mailbox_id = b.id AND m.internal_date >= ? "
    "WHERE b.id = ? GROUP BY b.uidvalidity, b.uidnext, b.highestmodseq"
)


def status_counts(
    conn: sa.Connection, mailbox_id: int, since: int = 0
) -> tuple[int, int, int, int, int, int] | None:
    """(messages, unseen, recent, uidvalidity, uidnext, highestmodseq) of a
    mailbox in one query, counting only internal dates >= since; recent: the
    UIDs no session has claimed as \\Recent yet. None: no such mailbox."""
    rows = raw_rows(conn, _STATUS, (since, mailbox_id))
    if not rows:
        return None
    return tuple(int(v) for v in rows[0])  # type: ignore[return-value]


def deleted_count(conn: sa.Connection, mailbox_id: int, since: int = 0) -> int:
    """Messages with \\Deleted (STATUS DELETED, RFC 9051 §6.3.11)."""
    c = m.messages.c
    q = sa.select(sa.func.count()).where(
        c.mailbox_id == mailbox_id, c.flags.op("&")(fl.DELETED) != 0
    )
    if since:
        q = q.where(c.internal_date >= since)
    return int(conn.execute(q).scalar_one())


def account_usage(conn: sa.Connection, account_id: int) -> tuple[int, int]:
    """(used bytes, quota bytes; 0 = unlimited)."""
    a = m.accounts.c
    r = conn.execute(sa.select(a.used_bytes, a.quota_bytes).where(a.id == account_id)).one()
    return int(r[0]), int(r[1])


# -- COPY / MOVE -----------------------------------------------------------------
@dataclass(frozen=True)
class CopyResult:
    pairs: list[tuple[int, int]]  # (source uid, destination uid), ascending
    uidvalidity: int  # of the destination
    dst_modseq: int | None
    src_modseq: int | None  # MOVE: the source's new modseq
    overquota: bool = False


def copy_messages(
    conn: sa.Connection,
    src: int,
    uids: Sequence[int],
    dst: int,
    *,
    move: bool,
    check_quota: bool,
) -> CopyResult:
    """COPY / MOVE in one transaction, with the destination quota check and
    the modseqs IMAP's change notices need. The body is shared, not
    duplicated: the copy adds a reference."""
    c, mb = m.messages.c, m.mailboxes.c
    wanted = set(uids)
    rows = []
    for clause in _uid_filter(uids):
        rows += [
            r
            for r in conn.execute(
                sa.select(
                    c.id, c.uid, c.content_id, c.size, c.flags, c.keywords, c.internal_date
                ).where(c.mailbox_id == src, clause)
            )
            if r.uid in wanted
        ]
    rows.sort(key=lambda r: r.uid)
    dst_row = conn.execute(
        sa.select(mb.uidvalidity, mb.account_id).where(mb.id == dst)
    ).one()
    if not rows:
        return CopyResult([], dst_row.uidvalidity, None, None)
    total = sum(r.size for r in rows)
    same_account = (
        conn.execute(sa.select(mb.account_id).where(mb.id == src)).scalar_one()
        == dst_row.account_id
    )
    if check_quota and not (move and same_account):
        a = m.accounts.c
        q = sa.select(a.used_bytes, a.quota_bytes).where(a.id == dst_row.account_id)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        used, quota = conn.execute(q).one()
        if quota and used + total > quota:
            return CopyResult([], dst_row.uidvalidity, None, None, overquota=True)
    n = len(rows)
    alloc = conn.execute(
        m.mailboxes.update()
        .where(mb.id == dst)
        .values(uidnext=mb.uidnext + n, highestmodseq=mb.highestmodseq + 1)
        .returning(mb.uidnext, mb.highestmodseq)
    ).one()
    first = alloc.uidnext - n
    now = int(time.time())
    conn.execute(
        m.messages.insert(),
        [
            {
                "mailbox_id": dst,
                "uid": first + i,
                "content_id": r.content_id,
                "size": r.size,
                "flags": r.flags,
                "keywords": r.keywords,
                "internal_date": r.internal_date,
                "added": now,
                "modseq": alloc.highestmodseq,
            }
            for i, r in enumerate(rows)
        ],
    )
    refs: dict[int, int] = defaultdict(int)
    for r in rows:
        refs[r.content_id] += 1
    for cid, k in refs.items():
        add_refs(conn, cid, k)
    conn.execute(
        m.accounts.update()
        .where(m.accounts.c.id == dst_row.account_id)
        .values(
            used_bytes=m.accounts.c.used_bytes + total,
            message_count=m.accounts.c.message_count + n,
        )
    )
    src_modseq = None
    if move:
        release_messages(conn, [r.id for r in rows])
        src_modseq = bump_modseq(conn, src)
        vanished.record(conn, src, [r.uid for r in rows], src_modseq)
    pairs = [(r.uid, first + i) for i, r in enumerate(rows)]
    return CopyResult(pairs, dst_row.uidvalidity, alloc.highestmodseq, src_modseq)
