"""`exmailctl blobs migrate --to postgresql|segments`: move stored contents
between the segment files and the database (store/dbblobs.py).

One content at a time (a batch of small ones for segments), each in a
transaction of its own that first locks the content's row and re-reads where
it is: a content deleted, or moved by compaction, meanwhile is skipped or
moved from where it now is. So the command is safe beside running daemons
(which read both kinds of location whatever their `[blobs] backend`), may be
interrupted at any point, and resumes where it stopped when run again (it
picks the contents not yet where they should go).

To the database: the bytes are streamed from the segment chunk by chunk into
`blob_chunks`, hashed on the way and compared with the content's digest
(a mismatch is reported and that content left where it is); the commit
points the row at the chunks and counts the old bytes dead in their segment,
for `exmailctl blobs compact` to reclaim.

To segments: the bytes are read from the database and checked, appended
and fdatasync'd to a segment of this process, then one transaction per batch
points the rows there and deletes their chunks.

Mail the daemons receive meanwhile goes where their `[blobs] backend` says:
switch it (on every node) before the last run.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.store import model as m
from exmaild.store.blobs import BlobRef
from exmaild.store.compaction import count_written
from exmaild.store.connector import Store
from exmaild.store.dbblobs import CHUNK, DB_SEGMENT, INSERT_CHUNK, address

log = Logger()

TARGETS = ("postgresql", "segments")
_BATCH_ROWS = 200
_SEGMENT_BATCH = 16 * 1024 * 1024
Say = Callable[[str], None]


class MigrateError(Exception):
    pass


@dataclass
class MigrateStats:
    moved: int = 0
    bytes: int = 0
    skipped: int = 0  # deleted or already moved meanwhile
    # digests whose bytes did not match; content-<id> for bytes not found
    bad: list[str] = field(default_factory=list)


def pending(store: Store, to: str) -> tuple[int, int]:
    """(contents, bytes) not yet where `to` keeps them; blocking."""
    c = m.contents.c
    where = c.segment != DB_SEGMENT if to == "postgresql" else c.segment == DB_SEGMENT
    with store.engine.connect() as conn:
        n, size = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(c.size), 0)).where(where)
        ).one()
    return int(n), int(size)


def migrate(store: Store, to: str, say: Say, *, every: float = 5.0) -> MigrateStats:
    """Blocking: run on a worker thread."""
    if to not in TARGETS:
        raise MigrateError(f"--to must be one of {', '.join(TARGETS)}")
    if to == "postgresql" and store.engine.dialect.name != "postgresql":
        raise MigrateError("contents can only be moved into a PostgreSQL database; "
                           "[database] url is not one")
    total, total_bytes = pending(store, to)
    say(f"{total} content(s), {total_bytes} bytes to move to {to}")
    stats = MigrateStats()
    last_said = time.monotonic()
    after = 0
    step = _to_database if to == "postgresql" else _to_segments
    while True:
        ids = _next_ids(store, to, after)
        if not ids:
            break
        after = ids[-1]
        step(store, ids, stats)
        now = time.monotonic()
        if now - last_said >= every:
            last_said = now
            say(f"moved {stats.moved} of {total} content(s), {stats.bytes} bytes")
    say(f"moved {stats.moved} content(s), {stats.bytes} bytes to {to}; "
        f"{stats.skipped} deleted or moved meanwhile; {len(stats.bad)} damaged")
    return stats


def _next_ids(store: Store, to: str, after: int) -> list[int]:
    c = m.contents.c
    where = c.segment != DB_SEGMENT if to == "postgresql" else c.segment == DB_SEGMENT
    with store.engine.connect() as conn:
        return list(conn.execute(
            sa.select(c.id).where(where, c.id > after).order_by(c.id).limit(_BATCH_ROWS)
        ).scalars())


def _locked(conn: sa.Connection, cid: int) -> sa.Row | None:
    c = m.contents.c
    q = sa.select(c.id, c.digest, c.segment, c.offset, c.size).where(c.id == cid)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return conn.execute(q).one_or_none()


def _to_database(store: Store, ids: list[int], stats: MigrateStats) -> None:
    sql = INSERT_CHUNK.replace("?", "%s")
    for cid in ids:
        def thd(conn: sa.Connection, cid: int = cid) -> int | None:
            row = _locked(conn, cid)
            if row is None or row.segment == DB_SEGMENT:
                return None
            ref = BlobRef(row.segment, row.offset, row.size)
            h = hashlib.sha256()
            cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                seq = 0
                for data in store.segments.iter_chunks(ref, CHUNK):
                    h.update(data)
                    cur.execute(sql, (cid, seq, data))
                    seq += 1
                if seq == 0:  # an empty content still has its one (empty) chunk
                    cur.execute(sql, (cid, 0, b""))
            finally:
                cur.close()
            if h.hexdigest() != row.digest:
                raise _Damaged(row.digest)
            conn.execute(m.contents.update().where(m.contents.c.id == cid)
                         .values(segment=DB_SEGMENT, offset=address(cid)))
            s = m.segments.c
            conn.execute(m.segments.update().where(s.name == row.segment)
                         .values(dead_bytes=s.dead_bytes + row.size))
            return int(row.size)

        try:
            size = store.pool.transaction_sync(thd)
        except _Damaged as e:
            log.error("content {digest}: its bytes do not match its digest; left where it is",
                      digest=e.digest)
            stats.bad.append(e.digest)
            continue
        except FileNotFoundError as e:
            # Under the row lock compaction cannot have removed it: it is lost.
            log.error("content {id}: its segment is missing ({error}); left where it is",
                      id=cid, error=str(e))
            stats.bad.append(f"content-{cid}")
            continue
        if size is None:
            stats.skipped += 1
        else:
            stats.moved += 1
            stats.bytes += size


class _Damaged(Exception):
    def __init__(self, digest: str) -> None:
        super().__init__(digest)
        self.digest = digest


def _to_segments(store: Store, ids: list[int], stats: MigrateStats) -> None:
    batch: list[tuple[int, bytes]] = []
    size = 0
    c = m.contents.c
    for cid in ids:
        with store.engine.connect() as conn:
            row = conn.execute(
                sa.select(c.digest, c.segment, c.offset, c.size).where(c.id == cid)
            ).one_or_none()
        if row is None or row.segment != DB_SEGMENT:
            stats.skipped += 1
            continue
        try:
            data = store.blobs.read(BlobRef(row.segment, row.offset, row.size))
        except FileNotFoundError:
            stats.skipped += 1
            continue
        if hashlib.sha256(data).hexdigest() != row.digest:
            log.error("content {digest}: its bytes do not match its digest; left where it is",
                      digest=row.digest)
            stats.bad.append(row.digest)
            continue
        batch.append((cid, data))
        size += len(data)
        if size >= _SEGMENT_BATCH:
            _flush_to_segment(store, batch, stats)
            batch, size = [], 0
    if batch:
        _flush_to_segment(store, batch, stats)


def _flush_to_segment(store: Store, batch: list[tuple[int, bytes]],
                      stats: MigrateStats) -> None:
    refs = store.segments.append([data for _, data in batch])  # durable on return

    def thd(conn: sa.Connection) -> list[int]:
        moved: list[int] = []
        dead = 0
        for (cid, _), ref in zip(batch, refs, strict=True):
            row = _locked(conn, cid)
            if row is None or row.segment != DB_SEGMENT:
                dead += ref.size  # deleted or moved meanwhile: this copy is dead
                continue
            conn.execute(m.contents.update().where(m.contents.c.id == cid)
                         .values(segment=ref.segment, offset=ref.offset))
            conn.execute(m.blob_chunks.delete().where(m.blob_chunks.c.content_id == cid))
            moved.append(ref.size)
        count_written(conn, refs, dead)
        return moved

    moved = store.pool.transaction_sync(thd)
    stats.moved += len(moved)
    stats.bytes += sum(moved)
    stats.skipped += len(batch) - len(moved)
