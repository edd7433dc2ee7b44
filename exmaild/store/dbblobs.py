"""Message contents kept in the database, and the one reader for both kinds.

With `[blobs] backend = "postgresql"` a new content's bytes go into
`blob_chunks` rows, inserted in the transaction that inserts its `contents`
row: the commit is the durability point (no file, no fsync of our own), and
every node that reaches the database reaches the bytes.

Addressing: such a content's row says `segment = "@db"` and
`offset = content_id << 32`, i.e. the database is one more address space
next to the segment files, with a 4 GiB window per content. So every
`BlobRef(segment, offset + start, length)` that callers derive from a row
(partial FETCH, POP3 chunks, merged reads) means the same thing on both
backends and they need not know which one holds the bytes.

Chunks are CHUNK bytes, all full but the last, numbered from 0: a read of
[start, end) touches only the chunks it covers. CHUNK is part of the stored
format; changing it needs a rewrite of every stored chunk.

A chunk that is missing when read (the content was moved by `exmailctl blobs
migrate` or deleted after its row was read) raises FileNotFoundError, as a
segment removed by compaction does, so callers' retry-with-a-fresh-row paths
cover both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m
from exmaild.store.blobs import READ_CHUNK, BlobRef, SegmentStore

DB_SEGMENT = "@db"
CHUNK = 256 * 1024
_POS_BITS = 32
MAX_SIZE = 1 << _POS_BITS
MANY_CHUNKS = 64  # chunks per query of read_many (at most 16 MiB)

INSERT_CHUNK = "INSERT INTO blob_chunks (content_id, seq, data) VALUES (?, ?, ?)"
SET_ADDRESS = 'UPDATE contents SET segment = ?, "offset" = ? WHERE id = ?'


def address(content_id: int) -> int:
    """The `offset` of a content held in the database."""
    return content_id << _POS_BITS


def split(offset: int) -> tuple[int, int]:
    """(content id, position) of an address in the database's space."""
    return offset >> _POS_BITS, offset & (MAX_SIZE - 1)


def chunks_of(pieces: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """(seq, buffer) of CHUNK bytes (the last shorter) over the pieces as one
    byte string; only a chunk that straddles two pieces is copied."""
    seq = 0
    carry = bytearray()
    for piece in pieces:
        view = memoryview(piece).cast("B")
        pos = 0
        if carry:
            take = min(CHUNK - len(carry), view.nbytes)
            carry += view[:take]
            pos = take
            if len(carry) < CHUNK:
                continue
            yield seq, bytes(carry)
            seq += 1
            carry = bytearray()
        while view.nbytes - pos >= CHUNK:
            yield seq, view[pos : pos + CHUNK]
            seq += 1
            pos += CHUNK
        carry += view[pos:]
    if carry or seq == 0:
        yield seq, bytes(carry)


def write_chunks(cursor: Any, sql_of: Any, content_id: int, pieces: Sequence[Any]) -> int:
    """Insert a content's chunks and point its row at them, on a DBAPI cursor
    inside the caller's transaction (`sql_of` adapts the placeholders).
    Returns the size written. One statement per chunk keeps what is in
    flight to one chunk, whatever the message size."""
    size = sum(memoryview(p).nbytes for p in pieces)
    if size >= MAX_SIZE:
        raise ValueError(f"a content of {size} bytes does not fit the database's 4 GiB window")
    ins = sql_of(INSERT_CHUNK)
    for seq, data in chunks_of(pieces):
        cursor.execute(ins, (content_id, seq, data))
    cursor.execute(sql_of(SET_ADDRESS), (DB_SEGMENT, address(content_id), content_id))
    return size


def store_content(conn: sa.Connection, content_id: int, pieces: Sequence[Any]) -> int:
    """write_chunks on a SQLAlchemy connection (migration, tests)."""
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    postgresql = conn.dialect.name == "postgresql"
    try:
        return write_chunks(cur, (lambda s: s.replace("?", "%s")) if postgresql else str,
                            content_id, pieces)
    finally:
        cur.close()


class DatabaseBlobs:
    """Reads of contents held in `blob_chunks` (blocking: worker threads)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def read(self, ref: BlobRef, start: int = 0, length: int | None = None) -> bytes:
        end = ref.size if length is None else min(ref.size, start + length)
        if start >= end:
            return b""
        cid, base = split(ref.offset)
        lo, hi = base + start, base + end
        first, last = lo // CHUNK, (hi - 1) // CHUNK
        c = m.blob_chunks.c
        out = bytearray()
        with self.engine.connect() as conn:
            # A few chunks per query: a long read never has more than that
            # in flight besides what it has gathered.
            for a in range(first, last + 1, MANY_CHUNKS // 4):
                b = min(last, a + MANY_CHUNKS // 4 - 1)
                rows = conn.execute(
                    sa.select(c.seq, c.data)
                    .where(c.content_id == cid, c.seq >= a, c.seq <= b)
                    .order_by(c.seq)
                ).all()
                if [r.seq for r in rows] != list(range(a, b + 1)):
                    raise FileNotFoundError(f"content {cid} is no longer held in the database")
                if first == last:
                    data = rows[0].data
                    return bytes(data[lo - first * CHUNK : hi - first * CHUNK])
                for r in rows:
                    cs = r.seq * CHUNK
                    out += memoryview(r.data)[max(lo, cs) - cs : min(hi, cs + len(r.data)) - cs]
                del rows
        if len(out) != hi - lo:
            raise OSError(f"content {cid}: {len(out)} bytes in the database where "
                          f"{hi - lo} were expected")
        return bytes(out)

    def read_many(self, refs: Sequence[BlobRef]) -> list[bytes]:
        """Each ref's bytes, with one query per MANY_CHUNKS chunks (FETCH of
        many small messages); a missing chunk raises as in read()."""
        want: list[tuple[int, int, int, int, int]] = []  # cid, lo, hi, first, last
        for ref in refs:
            cid, base = split(ref.offset)
            lo, hi = base, base + ref.size
            want.append((cid, lo, hi, lo // CHUNK, max(lo, hi - 1) // CHUNK))
        keys = sorted({(cid, seq) for cid, lo, hi, a, b in want if hi > lo
                       for seq in range(a, b + 1)})
        got: dict[tuple[int, int], bytes] = {}
        c = m.blob_chunks.c
        with self.engine.connect() as conn:
            for i in range(0, len(keys), MANY_CHUNKS):
                part = keys[i : i + MANY_CHUNKS]
                for r in conn.execute(sa.select(c.content_id, c.seq, c.data).where(
                        sa.tuple_(c.content_id, c.seq).in_(part))):
                    got[(r.content_id, r.seq)] = r.data
        out = []
        for cid, lo, hi, first, last in want:
            if hi <= lo:
                out.append(b"")
                continue
            pieces = []
            for seq in range(first, last + 1):
                data = got.get((cid, seq))
                if data is None:
                    raise FileNotFoundError(f"content {cid} is no longer held in the database")
                cs = seq * CHUNK
                pieces.append(memoryview(data)[max(lo, cs) - cs : min(hi, cs + len(data)) - cs])
            one = b"".join(pieces)
            if len(one) != hi - lo:
                raise OSError(f"content {cid}: {len(one)} bytes in the database where "
                              f"{hi - lo} were expected")
            out.append(one)
        return out

    def iter_chunks(self, ref: BlobRef, chunk: int = CHUNK) -> Iterator[bytes]:
        """One query per chunk: nothing holds a connection between them."""
        done = 0
        while done < ref.size:
            data = self.read(ref, done, chunk)
            yield data
            done += len(data)


class Blobs:
    """Where callers read contents: a ref says which store holds its bytes."""

    def __init__(self, segments: SegmentStore, database: DatabaseBlobs) -> None:
        self.segments = segments
        self.database = database

    def read(self, ref: BlobRef, start: int = 0, length: int | None = None) -> bytes:
        if ref.segment == DB_SEGMENT:
            return self.database.read(ref, start, length)
        return self.segments.read(ref, start, length)

    def iter_chunks(self, ref: BlobRef, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        if ref.segment == DB_SEGMENT:
            return self.database.iter_chunks(ref, chunk)
        return self.segments.iter_chunks(ref, chunk)
