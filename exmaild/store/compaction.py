"""Reclaim segment space left by deleted mail (the job Dovecot's mdbox purge does).

Live blobs of a mostly-dead segment are appended to the active segment and
fdatasync'd, then their rows are repointed in one transaction, then the old
file is removed. A crash before the commit leaves the old rows valid (the new
copies are dead space); a crash after it leaves an unreferenced file, which
the next run removes.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.pool import DBThreadPool

_COPY_BATCH = 16 * 1024 * 1024


@dataclass
class CompactionStats:
    segments_removed: int = 0
    blobs_moved: int = 0
    bytes_reclaimed: int = 0


def _live(conn: sa.Connection) -> dict[str, int]:
    c = m.contents.c
    rows = conn.execute(sa.select(c.segment, sa.func.sum(c.size)).group_by(c.segment))
    return {seg: int(total or 0) for seg, total in rows}


def compact(pool: DBThreadPool, segments: SegmentStore, ratio: float) -> CompactionStats:
    """Blocking: run on a worker thread or from the CLI."""
    stats = CompactionStats()
    live = pool.do_sync(_live)
    for name in segments.segment_names():
        if name == segments.active_segment:
            continue
        size = segments.file_size(name)
        used = live.get(name, 0)
        if size and used >= ratio * size:
            continue
        if used:
            stats.blobs_moved += _move_out(pool, segments, name)
        pool.transaction_sync(
            lambda conn, name=name: conn.execute(
                m.segments.delete().where(m.segments.c.name == name)
            )
        )
        segments.remove(name)
        stats.segments_removed += 1
        stats.bytes_reclaimed += size - used
    return stats


def _move_out(pool: DBThreadPool, segments: SegmentStore, name: str) -> int:
    c = m.contents.c
    rows = pool.do_sync(
        lambda conn: conn.execute(
            sa.select(c.id, c.offset, c.size).where(c.segment == name).order_by(c.offset)
        ).all()
    )
    moved = 0
    batch: list[tuple[int, bytes]] = []
    size = 0
    for r in rows:
        batch.append((r.id, segments.read(BlobRef(name, r.offset, r.size))))
        size += r.size
        if size >= _COPY_BATCH:
            moved += _flush(pool, segments, name, batch)
            batch, size = [], 0
    if batch:
        moved += _flush(pool, segments, name, batch)
    return moved


def _flush(
    pool: DBThreadPool, segments: SegmentStore, old: str, batch: list[tuple[int, bytes]]
) -> int:
    refs = segments.append([body for _, body in batch])

    def thd(conn: sa.Connection) -> None:
        for (cid, _), ref in zip(batch, refs, strict=True):
            conn.execute(
                m.contents.update()
                .where(m.contents.c.id == cid, m.contents.c.segment == old)
                .values(segment=ref.segment, offset=ref.offset)
            )
        total = sum(ref.size for ref in refs)
        s = m.segments.c
        if conn.execute(
            m.segments.update().where(s.name == refs[0].segment).values(size=s.size + total)
        ).rowcount == 0:
            conn.execute(m.segments.insert().values(name=refs[0].segment, size=total))

    pool.transaction_sync(thd)
    return len(batch)
