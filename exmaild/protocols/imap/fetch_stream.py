"""Building FETCH responses in chunks and streaming them with one producer.

A FETCH is cut into chunks (about 1 MB of output, or a few thousand small
responses). For each chunk one worker-thread call loads the rows it needs
(one query), reads the blobs — adjacent blobs in a segment with one large
pread — and renders the whole chunk into one buffer; ENVELOPE and
BODYSTRUCTURE are the exact bytes cached at ingest. One pull producer
writes a chunk when the socket has drained the previous one while the next
is already being built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

from exmaild.mailstore.mime_struct import parse_tree
from exmaild.store.blobs import BlobRef
from exmaild.store.dbblobs import DB_SEGMENT, Blobs
from exmaild.store.imapmessages import ALL_COLUMNS, FetchColumns, fetch_rows

from . import fetch_sections as fs
from .encode import format_internaldate
from .fetch import FetchItem

CHUNK_BYTES = 1 << 20
MAX_READ = 8 << 20  # one pread never covers more than this
READ_GAP = 16 << 10  # blobs this close together are read with one pread


class ConnectionGone(Exception):
    pass


@dataclass(slots=True)
class Meta:
    """What the index says about one message, snapshotted on the reactor."""

    seq: int
    uid: int
    flags: bytes | None  # rendered flag list, when FLAGS goes in the response
    modseq: int
    date: int
    size: int
    # (EMAILID, THREADID, save date) when the FETCH asks for one of them.
    ids: tuple[str, str | None, int] | None = None


@dataclass(frozen=True)
class Plan:
    items: tuple[FetchItem, ...]
    names: tuple[bytes, ...]  # response name of each item
    kinds: tuple[str | None, ...]  # fetch_sections.kind of each item
    columns: FetchColumns
    wants_flags: bool

    @property
    def needs_rows(self) -> bool:
        c = self.columns
        return c.envelope or c.bodystructure or c.body or c.blob

    @property
    def parsed(self) -> bool:
        return fs.PARSED in self.kinds


def make_plan(items: Sequence[FetchItem], *, uid: bool, modseq: bool) -> Plan:
    items = list(items)
    if uid and not any(i.name == "UID" for i in items):
        items.insert(0, FetchItem("UID"))
    if modseq and not any(i.name == "MODSEQ" for i in items):
        items.append(FetchItem("MODSEQ"))
    kinds = tuple(fs.kind(i) for i in items)
    names = tuple(i.response_name().encode("ascii") for i in items)
    plain = {i.name for i in items if i.section is None}
    columns = FetchColumns(
        envelope="ENVELOPE" in plain,
        bodystructure="BODYSTRUCTURE" in plain,
        body="BODY" in plain,
        blob=any(k is not None for k in kinds),
    )
    return Plan(tuple(items), names, kinds, columns, "FLAGS" in plain)


_DATES: dict[int, bytes] = {}


def internaldate(ts: int) -> bytes:
    out = _DATES.get(ts)
    if out is None:
        out = format_internaldate(datetime.fromtimestamp(ts, UTC))
        if len(_DATES) > 65536:
            _DATES.clear()
        _DATES[ts] = out
    return out


def render(
    out: list[Any], plan: Plan, meta: Meta, row: tuple[Any, ...] | None, bodies: list[Any] | None
) -> None:
    """Append one ``* n FETCH (...)`` response to ``out`` (pieces to join)."""
    out.append(b"* %d FETCH (" % meta.seq)
    sep = b""
    for n, item in enumerate(plan.items):
        out.append(sep)
        sep = b" "
        kind = plan.kinds[n]
        if kind is not None:
            data = bodies[n] if bodies is not None else None
            if data is None or data is fs.UNKNOWN_CTE:
                out.append(plan.names[n] + b" NIL")
            elif isinstance(data, int):  # BINARY.SIZE
                out.append(plan.names[n] + b" %d" % data)
            elif item.name == "BINARY" and b"\x00" in data:
                out.append(plan.names[n] + b" ~{%d}\r\n" % len(data))  # literal8
                out.append(data)
            else:
                out.append(plan.names[n] + b" {%d}\r\n" % len(data))
                out.append(data)
            continue
        name = item.name
        if name == "UID":
            out.append(b"UID %d" % meta.uid)
        elif name == "FLAGS":
            out.append(b"FLAGS " + (meta.flags or b"()"))
        elif name == "MODSEQ":
            out.append(b"MODSEQ (%d)" % meta.modseq)
        elif name == "RFC822.SIZE":
            out.append(b"RFC822.SIZE %d" % meta.size)
        elif name == "INTERNALDATE":
            out.append(b"INTERNALDATE " + internaldate(meta.date))
        elif name in ("EMAILID", "THREADID", "SAVEDATE"):
            out.append(_object_item(name, meta.ids))
        elif name == "ENVELOPE":
            assert row is not None
            out.append(b"ENVELOPE " + row[5])
        elif name == "BODYSTRUCTURE":
            assert row is not None
            out.append(b"BODYSTRUCTURE " + row[6])
        elif name == "BODY":
            assert row is not None
            out.append(b"BODY " + row[7])
    if meta.flags is not None and not plan.wants_flags:
        out.append(b" FLAGS " + meta.flags)  # \Seen was just set (RFC 3501 §6.4.5)
    out.append(b")\r\n")


def _object_item(name: str, ids: tuple[str, str | None, int] | None) -> bytes:
    """RFC 8474 EMAILID / THREADID, RFC 8514 SAVEDATE (NIL if unknown)."""
    value: bytes | None = None
    if ids is not None:
        if name == "SAVEDATE":
            value = internaldate(ids[2])
        else:
            oid = ids[0] if name == "EMAILID" else ids[1]
            value = None if oid is None else b"(" + oid.encode("ascii") + b")"
    return name.encode("ascii") + b" " + (value if value is not None else b"NIL")


# -- worker thread -----------------------------------------------------------------
def _read_spans(
    blobs: Blobs, wants: list[tuple[int, str, int, int]]
) -> dict[int, memoryview]:
    """wants: (key, segment, offset, length) -> {key: bytes}, merging reads of
    neighbouring blobs into one pread."""
    out: dict[int, memoryview] = {}
    # Contents held in the database: their chunks in a few queries.
    in_db = [w for w in wants if w[1] == DB_SEGMENT]
    if in_db:
        wants = [w for w in wants if w[1] != DB_SEGMENT]
        got = blobs.database.read_many([BlobRef(seg, o, n) for _, seg, o, n in in_db])
        for (key, _, _, _), data in zip(in_db, got, strict=True):
            out[key] = memoryview(data)
    order = sorted(wants, key=lambda w: (w[1], w[2]))
    i = 0
    while i < len(order):
        _, seg, start, length = order[i]
        end = start + length
        j = i + 1
        while j < len(order):
            _, s2, o2, l2 = order[j]
            if s2 != seg or o2 > end + READ_GAP or max(end, o2 + l2) - start > MAX_READ:
                break
            end = max(end, o2 + l2)
            j += 1
        data = memoryview(blobs.read(BlobRef(seg, start, end - start)))
        if len(data) != end - start:
            raise OSError(f"short read from segment {seg}")
        for key, _, o, n in order[i:j]:
            out[key] = data[o - start : o - start + n]
        i = j
    return out


def _bodies(
    blobs: Blobs, plan: Plan, metas: list[Meta], rows: dict[int, tuple[Any, ...]]
) -> dict[int, list[Any]]:
    """uid -> per-item data (None for non-body items and missing parts)."""
    body_items = [(n, item) for n, item in enumerate(plan.items) if plan.kinds[n] is not None]
    parsed = plan.parsed
    whole_range = fs.whole_range
    wants: list[tuple[int, str, int, int]] = []
    spans: dict[int, int] = {}
    for meta in metas:
        row = rows.get(meta.uid)
        if row is None:
            continue
        header_len, seg, offset, size = row[1], row[2], row[3], row[4]
        if parsed:
            lo, hi = 0, size
        elif len(body_items) == 1:
            rng = whole_range(body_items[0][1], header_len, size)
            lo, hi = rng.start, (rng.end if rng.end is not None else size)
        else:
            lo, hi = size, 0
            for _, item in body_items:
                rng = whole_range(item, header_len, size)
                lo, hi = min(lo, rng.start), max(hi, rng.end if rng.end is not None else size)
            hi = max(hi, lo)
        spans[meta.uid] = lo
        wants.append((meta.uid, seg, offset + lo, hi - lo))
    data = _read_spans(blobs, wants)
    out: dict[int, list[Any]] = {}
    blank = [None] * len(plan.items)
    if not parsed and len(body_items) == 1:
        n = body_items[0][0]
        for uid, buf in data.items():
            values = blank.copy()
            values[n] = buf
            out[uid] = values
        return out
    for uid, lo in spans.items():
        row = rows[uid]
        header_len, size = row[1], row[4]
        buf = data[uid]
        values = blank.copy()
        raw: bytes | None = None
        root = None
        for n, item in body_items:
            if plan.kinds[n] == fs.WHOLE:
                rng = whole_range(item, header_len, size)
                values[n] = buf[rng.start - lo : (rng.end if rng.end is not None else size) - lo]
                continue
            assert item.section is not None
            if raw is None:
                raw = bytes(buf)
                root = parse_tree(raw)
            assert root is not None
            if item.name == "BODY":
                got: Any = fs.section_bytes(raw, item.section, root)
            else:
                got = fs.binary_bytes(raw, item.section, root)
                if isinstance(got, bytes) and item.name == "BINARY.SIZE":
                    values[n] = len(got)
                    continue
            if isinstance(got, bytes):
                got = fs.apply_partial(got, item.partial)
            values[n] = got
        out[uid] = values
    return out


@dataclass
class Built:
    data: bytes
    missing: int  # messages skipped because they were expunged
    loaded: dict[int, tuple[Any, ...]]  # rows read from the database
    reloaded: bool  # cached rows were stale (a blob moved): replace them
    unknown_cte: int = 0  # BINARY of parts in an encoding we cannot undo


def build_chunk(
    conn: sa.Connection,
    blobs: Blobs,
    mailbox_id: int,
    plan: Plan,
    metas: list[Meta],
    cached: dict[int, tuple[Any, ...]],
) -> Built:
    """Render one chunk on a worker thread. Rows come from ``cached`` (the
    index's) or one query, which reads every column so later FETCHes of
    other items find them cached too."""
    reloaded = False
    for attempt in (0, 1):
        need = [m.uid for m in metas if m.uid not in cached]
        loaded = fetch_rows(conn, mailbox_id, need, ALL_COLUMNS) if need else {}
        rows = {**cached, **loaded}
        try:
            bodies = _bodies(blobs, plan, metas, rows) if plan.columns.blob else {}
            break
        except OSError:  # compaction moved a blob between the query and the read
            if attempt:
                raise
            cached, reloaded = {}, True
    out: list[Any] = []
    missing = unknown = 0
    for meta in metas:
        row = rows.get(meta.uid)
        if row is None:
            missing += 1
            continue
        values = bodies.get(meta.uid)
        if values is not None and any(v is fs.UNKNOWN_CTE for v in values):
            unknown += 1
        render(out, plan, meta, row, values)
    return Built(b"".join(out), missing, loaded, reloaded, unknown)


# -- the producer -------------------------------------------------------------------
Chunk = bytes | defer.Deferred
NextChunk = Callable[[], Chunk | None]


@implementer(IPullProducer)
class ChunkProducer:
    """Writes chunks from ``next_chunk`` (bytes, a Deferred of bytes, or None
    when done) as the transport drains; ``done`` fires at the end."""

    def __init__(self, transport: Any, next_chunk: NextChunk) -> None:
        self.transport = transport
        self.next_chunk = next_chunk
        self.done: defer.Deferred[None] = defer.Deferred()
        self._pending: defer.Deferred | None = None
        self._ready: bytes | None = None
        self._want = False
        self._exhausted = False
        self._finished = False
        self.written = 0

    def start(self) -> defer.Deferred[None]:
        self.transport.registerProducer(self, False)
        return self.done

    def _prefetch(self) -> None:
        while not (self._pending or self._ready is not None or self._exhausted):
            got = self.next_chunk()
            if got is None:
                self._exhausted = True
            elif isinstance(got, bytes):
                if got:
                    self._ready = got
            else:
                self._pending = got
                got.addCallbacks(self._built, self._failed)

    def _built(self, data: bytes) -> None:
        self._pending = None
        if self._finished:
            return
        if data:
            self._ready = data
        if self._want:
            self._want = False
            self.resumeProducing()

    def _failed(self, f: Any) -> None:
        self._pending = None
        self._finish(f)

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._prefetch()
        if self._ready is not None:
            data, self._ready = self._ready, None
            self.written += len(data)
            self.transport.write(data)
            self._prefetch()
            return
        if self._pending is not None:
            self._want = True
            return
        self._finish(None)

    def stopProducing(self) -> None:
        self._finish(ConnectionGone())

    def _finish(self, error: Any) -> None:
        if self._finished:
            return
        self._finished = True
        self.transport.unregisterProducer()
        if error is None:
            self.done.callback(None)
        else:
            self.done.errback(error)
