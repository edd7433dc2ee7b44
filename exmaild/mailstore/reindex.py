"""Fill ``content_text`` for stored mail: ``exmailctl search reindex``.

Contents stored before the table existed have no text row; their BODY/TEXT
searches use the 16,384-character excerpt until this has run. It works in
batches of ids (bounded by count and by text size), each read from the blob
segments off the database and written in a short transaction of its own, so
the daemon keeps running beside it and an interrupted run resumes where it
stopped. ``rebuild`` redoes every content (after [search] max_text_chars
changed, or to take a new extraction rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.mailstore.searchtext import message_text
from exmaild.store import model as m
from exmaild.store import textindex
from exmaild.store.blobs import BlobRef

if TYPE_CHECKING:
    from collections.abc import Callable

    from exmaild.store.connector import Store

log = Logger()

BATCH = 200
BATCH_TEXT_CHARS = 32 * 1024 * 1024

C = m.contents.c
T = m.content_text.c


@dataclass
class ReindexStats:
    index: str = ""
    indexed: int = 0
    text_chars: int = 0
    unreadable: int = 0  # blob missing right now (moved by compaction): next run


async def reindex(
    store: Store,
    *,
    limit: int,
    rebuild: bool = False,
    batch: int = BATCH,
    progress: Callable[[ReindexStats], None] | None = None,
) -> ReindexStats:
    stats = ReindexStats()
    stats.index = await store.pool.transaction(textindex.ensure_index)
    textindex.forget(store.engine)
    last = 0
    while True:
        query = sa.select(C.id, C.segment, C.offset, C.size).where(C.id > last)
        if not rebuild:
            query = query.where(~sa.exists().where(T.content_id == C.id))
        rows = await store.pool.do(
            lambda conn, q=query.order_by(C.id).limit(batch): conn.execute(q).all()
        )
        if not rows:
            break
        last = rows[-1].id
        texts: dict[int, str] = {}
        size = 0
        for r in rows:
            ref = BlobRef(r.segment, r.offset, r.size)
            try:  # read and decode off the reactor thread
                text = await store.pool.call(_text_of, store, ref, limit)
            except FileNotFoundError:
                stats.unreadable += 1
                continue
            texts[r.id] = text
            size += len(text)
            if size >= BATCH_TEXT_CHARS:
                last = r.id
                break
        await store.pool.transaction(lambda conn, t=texts: _write(conn, t, rebuild))
        stats.indexed += len(texts)
        stats.text_chars += size
        if progress is not None:
            progress(stats)
    return stats


def _text_of(store: Store, ref: BlobRef, limit: int) -> str:
    return message_text(store.blobs.read(ref), limit)


def _write(conn: sa.Connection, texts: dict[int, str], rebuild: bool) -> None:
    ids = sorted(texts)
    if not ids:
        return
    present = sa.select(C.id).where(C.id.in_(ids))
    if conn.dialect.name == "postgresql":  # a purge waits for this batch
        present = present.with_for_update()
    alive = [i for (i,) in conn.execute(present)]
    if not alive:
        return
    if rebuild:
        conn.execute(m.content_text.delete().where(T.content_id.in_(alive)))
    _insert_missing(conn, alive, texts)
    # The excerpt is only the fallback of contents without a text row.
    conn.execute(m.contents.update().where(C.id.in_(alive)).values(excerpt=""))


def _insert_missing(conn: sa.Connection, ids: list[int], texts: dict[int, str]) -> None:
    """Rows for ids that still have none (ingest may have added one meanwhile)."""
    have = set(conn.execute(sa.select(T.content_id).where(T.content_id.in_(ids))).scalars())
    rows = [{"content_id": i, "text": texts[i]} for i in ids if i not in have]
    if rows:
        conn.execute(m.content_text.insert(), rows)
