"""Reclaim segment space left by deleted mail (the job Dovecot's mdbox purge does).

Live blobs of a mostly-dead segment are appended to the active segment and
fdatasync'd, then their rows are repointed in one transaction, then the old
file is removed. A crash before the commit leaves the old rows valid (the new
copies are dead space); a crash after it leaves an unreferenced file, which
the next run removes.

Only sealed segments are touched (see store/segmentlease.py): one that a
live process may still append to is skipped, whichever process or node
holds it; one whose writer's lease ran out is sealed here first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.store import model as m
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.pool import DBThreadPool
from exmaild.store.segmentlease import SegmentLeases

log = Logger()

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
    leases = SegmentLeases(pool)
    # Files first, rows after: a writer claims its row before it creates the
    # file, so every file listed here has its row (if any) in `states`. A
    # file without a row was written before ownership existed, or lost its
    # row to a compaction that crashed before removing the file.
    names = segments.segment_names()
    states = leases.states()
    live = pool.do_sync(_live)
    for name in names:
        if name == segments.active_segment:
            continue
        sealed, lease_until = states.get(name, (True, 0))
        if not sealed:
            if lease_until >= time.time() or not leases.seal_expired(name):
                continue  # a live writer's
            log.info("blob segment {segment}: its writer's lease ran out; sealed it",
                     segment=name)
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
    segments.drop_unlinked()
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


def count_written(conn: sa.Connection, refs: Sequence[BlobRef], dead: int) -> None:
    """Add bytes rewritten into one segment (`refs`, all in it) to its row;
    `dead` of them were stale before their rows pointed at them."""
    total = sum(ref.size for ref in refs)
    s = m.segments.c
    if conn.execute(
        m.segments.update().where(s.name == refs[0].segment)
        .values(size=s.size + total, dead_bytes=s.dead_bytes + dead)
    ).rowcount == 0:
        conn.execute(m.segments.insert().values(name=refs[0].segment, size=total,
                                                dead_bytes=dead))


def _flush(
    pool: DBThreadPool, segments: SegmentStore, old: str, batch: list[tuple[int, bytes]]
) -> int:
    refs = segments.append([body for _, body in batch])

    def thd(conn: sa.Connection) -> None:
        dead = 0
        for (cid, _), ref in zip(batch, refs, strict=True):
            if not conn.execute(
                m.contents.update()
                .where(m.contents.c.id == cid, m.contents.c.segment == old)
                .values(segment=ref.segment, offset=ref.offset)
            ).rowcount:
                dead += ref.size  # moved meanwhile by another compaction, or gone
        count_written(conn, refs, dead)

    pool.transaction_sync(thd)
    return len(batch)
