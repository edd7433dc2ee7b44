"""Content rows: stored bodies, their cached parse, and their reference counts.

These run inside the caller's transaction (they take a Connection), so a
message row and the reference it holds always change together.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.blobs import BlobRef
from exmaild.store.dbblobs import DB_SEGMENT

_CHUNK = 500


def chunked(ids: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


def add_refs(conn: sa.Connection, content_id: int, n: int = 1) -> None:
    conn.execute(
        m.contents.update()
        .where(m.contents.c.id == content_id)
        .values(refcount=m.contents.c.refcount + n)
    )


def drop_refs(conn: sa.Connection, counts: dict[int, int]) -> None:
    """Drop references; contents that reach zero are deleted and their bytes
    counted as dead in their segment, for compaction to reclaim."""
    for cid, n in counts.items():
        conn.execute(
            m.contents.update()
            .where(m.contents.c.id == cid)
            .values(refcount=m.contents.c.refcount - n)
        )
    purge_unreferenced(conn, list(counts))


def purge_unreferenced(conn: sa.Connection, ids: Sequence[int]) -> None:
    """Delete those of `ids` with no references left (and their search text),
    counting their bytes dead in their segment or deleting their chunks."""
    for part in chunked(ids):
        dead = conn.execute(
            sa.select(m.contents.c.id, m.contents.c.segment, m.contents.c.size).where(
                m.contents.c.id.in_(part), m.contents.c.refcount <= 0
            )
        ).all()
        if not dead:
            continue
        per_segment: dict[str, int] = defaultdict(int)
        for r in dead:
            if r.segment != DB_SEGMENT:
                per_segment[r.segment] += r.size
        gone = [r.id for r in dead]
        if any(r.segment == DB_SEGMENT for r in dead):
            conn.execute(m.blob_chunks.delete().where(m.blob_chunks.c.content_id.in_(gone)))
        # The search text first (its index entries go by trigger / with the
        # GIN index); ON DELETE CASCADE would do it too, but not unnoticed.
        conn.execute(m.content_text.delete().where(m.content_text.c.content_id.in_(gone)))
        conn.execute(m.content_sort.delete().where(m.content_sort.c.content_id.in_(gone)))
        conn.execute(m.contents.delete().where(m.contents.c.id.in_(gone)))
        for seg, size in per_segment.items():
            conn.execute(
                m.segments.update()
                .where(m.segments.c.name == seg)
                .values(dead_bytes=m.segments.c.dead_bytes + size)
            )


def release_messages(conn: sa.Connection, message_ids: Sequence[int]) -> int:
    """Delete message rows, fixing quota counters and content references.

    Returns the number of rows deleted. The caller bumps mailbox modseqs.
    """
    deleted = 0
    for part in chunked(list(message_ids)):
        rows = conn.execute(
            sa.select(
                m.messages.c.id,
                m.messages.c.content_id,
                m.messages.c.size,
                m.mailboxes.c.account_id,
            )
            .join(m.mailboxes, m.mailboxes.c.id == m.messages.c.mailbox_id)
            .where(m.messages.c.id.in_(part))
        ).all()
        if not rows:
            continue
        refs: dict[int, int] = defaultdict(int)
        usage: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for r in rows:
            refs[r.content_id] += 1
            usage[r.account_id][0] += r.size
            usage[r.account_id][1] += 1
        conn.execute(m.messages.delete().where(m.messages.c.id.in_([r.id for r in rows])))
        for aid, (size, count) in usage.items():
            conn.execute(
                m.accounts.update()
                .where(m.accounts.c.id == aid)
                .values(
                    used_bytes=m.accounts.c.used_bytes - size,
                    message_count=m.accounts.c.message_count - count,
                )
            )
        drop_refs(conn, refs)
        deleted += len(rows)
    return deleted


def blob_refs(conn: sa.Connection, content_ids: Iterable[int]) -> dict[int, BlobRef]:
    c = m.contents.c
    out: dict[int, BlobRef] = {}
    for part in chunked(list(set(content_ids))):
        for r in conn.execute(
            sa.select(c.id, c.segment, c.offset, c.size).where(c.id.in_(part))
        ):
            out[r.id] = BlobRef(r.segment, r.offset, r.size)
    return out
