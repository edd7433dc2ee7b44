"""The one ingest path: SMTP delivery, IMAP APPEND and imports all come here.

A request is parsed once, its body appended to a blob segment, and its
content row, mailbox entries, UIDs, modseqs and quota counters committed in
one transaction, after which listeners hear of the new messages.

Group commit: requests that arrive while a batch is being committed wait and
form the next batch, which costs one fdatasync and one database commit in
all. Under light load a batch is a single request, so latency stays low;
under heavy load the batch grows and the per-message fsync cost falls.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer, threads
from twisted.logger import Logger

from exmaild.mailstore.mime_struct import parse_tree
from exmaild.mailstore.parse import ParsedMessage, parse_message
from exmaild.mailstore.searchtext import message_text
from exmaild.mailstore.spool import Buffer, SpooledMessage, Spooler
from exmaild.metrics import Metrics
from exmaild.store.blobs import BlobRef, PendingSync, SegmentStore
from exmaild.store.changes import ChangeNotifier, MailboxChange
from exmaild.store.contents import purge_unreferenced
from exmaild.store.dbblobs import DB_SEGMENT
from exmaild.store.ingestsql import IngestCursor
from exmaild.store.pool import DBThreadPool

log = Logger()

MAX_BATCH = 256
MAX_BATCH_BYTES = 64 * 1024 * 1024
# Batches in flight at once. Each is parse + blob fdatasync, then its database
# transaction (+ commit fsync). A second batch starts only when at least
# SECOND_BATCH_MIN requests wait: then its blob sync overlaps the first one's
# commit (SQLite still commits one at a time). With fewer waiting it pays to
# let them gather into the next batch instead: each batch costs about ten
# statements of Python work, and measured with SMTP from ten sessions, where
# CPU is the limit, one batch at a time was 5-15% faster than two; with ten
# bare ingest callers (fsync the limit) two in flight were ~1.7x faster.
MAX_INFLIGHT = 2
SECOND_BATCH_MIN = 16
# Characters of decoded text kept per message for SEARCH BODY/TEXT
# ([search] max_text_chars); 0 stores only the old 16,384-character excerpt.
TEXT_CHARS = 1 << 20


@dataclass(frozen=True)
class Target:
    """Where one copy goes: an account's mailbox by name, id, or SPECIAL-USE
    attribute (e.g. "\\Sent")."""

    account_id: int
    mailbox: str | int = "INBOX"
    flags: int = 0
    keywords: tuple[str, ...] = ()
    # Not counted by IngestRequest.all_or_nothing (e.g. the sender's Sent copy).
    optional: bool = False


@dataclass(frozen=True)
class Delivered:
    target: Target
    account_id: int
    mailbox_id: int
    uid: int
    uidvalidity: int
    modseq: int


@dataclass(frozen=True)
class Refused:
    target: Target
    reason: str  # "overquota" | "nomailbox"


@dataclass
class IngestRequest:
    # The message: bytes, or a spool (mailstore/spool.py) that the caller
    # closes once ingest() has returned. What is stored is head + raw[start:]:
    # `head` holds header lines put in front of the message as received
    # (Received:, ...), so that a spooled message is never copied to join them.
    raw: bytes | SpooledMessage
    targets: Sequence[Target]
    internal_date: int | None = None
    check_quota: bool = True
    # Runs inside the same transaction with the content id, e.g. to queue the
    # message for remote recipients; it must add_refs() for what it keeps.
    extra: Callable[[sa.Connection, int], Any] | None = None
    origin: object | None = None
    # If any target that is not `optional` is refused, place none at all and
    # skip `extra`: `delivered` stays empty and `refused` says why (SMTP uses
    # this so that a message is either in every recipient's mailbox or in none).
    all_or_nothing: bool = False
    head: bytes = b""
    start: int = 0

    @property
    def size(self) -> int:
        return len(self.head) + len(self.raw) - self.start

    def buffers(self) -> list[Buffer]:
        """The blob as buffers to write (no copy of a spooled message)."""
        raw = self.raw
        data = raw.buffer() if isinstance(raw, SpooledMessage) else raw
        body: Buffer = memoryview(data)[self.start :] if self.start else data
        return [self.head, body] if self.head else [body]

    def pieces(self) -> tuple[list[Buffer], str]:
        """buffers() and the blob's SHA-256, from the spool when it hashed
        the same octets."""
        raw = self.raw
        out = self.buffers()
        if isinstance(raw, SpooledMessage) and raw.hashed_head == self.head and not self.start:
            return out, raw.digest
        h = hashlib.sha256()
        for piece in out:
            h.update(piece)
        return out, h.hexdigest()

    def parse(self, excerpt_chars: int = 16384) -> ParsedMessage:
        raw = self.raw
        data = raw.buffer() if isinstance(raw, SpooledMessage) else raw
        return parse_message(data, excerpt_chars=excerpt_chars, head=self.head, start=self.start)

    def text(self, limit: int) -> str:
        """The decoded text for SEARCH BODY/TEXT, read from the spool's mmap
        (the trace fields in `head` hold no text)."""
        raw = self.raw
        data = raw.buffer() if isinstance(raw, SpooledMessage) else raw
        return message_text(data, limit, parse_tree(data, start=self.start))


@dataclass
class IngestResult:
    content_id: int
    digest: str
    size: int
    parsed: ParsedMessage
    delivered: list[Delivered] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    extra: Any = None


class Ingestor:
    def __init__(
        self,
        pool: DBThreadPool,
        segments: SegmentStore,
        notifier: ChangeNotifier,
        spooler: Spooler,
        *,
        text_chars: int = TEXT_CHARS,
        metrics: Metrics | None = None,
        in_database: bool = False,
    ) -> None:
        self.pool = pool
        self.metrics = metrics if metrics is not None else Metrics()
        # Where protocols put messages while they arrive (see spool.py).
        self.spooler = spooler
        self.text_chars = text_chars
        self.segments = segments
        # [blobs] backend = "postgresql": new contents go into the database,
        # in the transaction that inserts their rows (store/dbblobs.py).
        self.in_database = in_database
        self.notifier = notifier
        self._pending: list[tuple[IngestRequest, defer.Deferred[IngestResult]]] = []
        self._inflight = 0
        self.batches = 0
        self._syncer = ThreadPoolExecutor(MAX_INFLIGHT, thread_name_prefix="exmaild-blobsync")

    async def ingest(self, req: IngestRequest) -> IngestResult:
        """Durably store one message for its targets; raises on storage trouble."""
        d: defer.Deferred[IngestResult] = defer.Deferred()
        self._pending.append((req, d))
        started = time.monotonic()
        self._kick()
        res = await d
        self.metrics.ingest_latency.observe(time.monotonic() - started)
        return res

    async def ingest_group(self, reqs: list[IngestRequest]) -> list[IngestResult]:
        """Store several messages all or nothing (IMAP MULTIAPPEND): one
        batch of their own, one transaction. If any target of any of them
        is refused, none is placed (every `delivered` empty, `refused` says
        why); storage trouble raises and nothing is committed."""
        results: list[IngestResult] = await threads.deferToThreadPool(
            self.pool.reactor, self.pool._pool, self._commit_group, reqs
        )
        for req, res in zip(reqs, results, strict=True):
            self._publish(req, res)
        return results

    def _commit_group(self, reqs: list[IngestRequest]) -> list[IngestResult]:
        excerpt_chars = 0 if self.text_chars else 16384
        parsed = [r.parse(excerpt_chars) for r in reqs]
        return self._commit_parsed(reqs, parsed, group=True)

    def _kick(self) -> None:
        if self._inflight >= MAX_INFLIGHT or not self._pending:
            return
        if self._inflight and len(self._pending) < SECOND_BATCH_MIN:
            return
        batch, size = [], 0
        while self._pending and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            item = self._pending.pop(0)
            batch.append(item)
            size += item[0].size
        self._inflight += 1
        reqs = [r for r, _ in batch]
        d = threads.deferToThreadPool(
            self.pool.reactor, self.pool._pool, self._commit_batch, reqs
        )
        d.addBoth(self._finished, batch)

    def _finished(
        self, outcome: Any, batch: list[tuple[IngestRequest, defer.Deferred[IngestResult]]]
    ) -> None:
        self._inflight -= 1
        self.batches += 1
        self.metrics.ingest_batch.observe(len(batch))
        if not isinstance(outcome, list):  # a Failure: nothing was committed
            outcome = [outcome] * len(batch)
        # The next batch first: the requests that gathered meanwhile should not
        # also wait for this batch's replies to be written and logged.
        self._kick()
        for (req, d), res in zip(batch, outcome, strict=True):
            if isinstance(res, IngestResult):
                self._publish(req, res)
            d.callback(res) if isinstance(res, IngestResult) else d.errback(res)

    def _publish(self, req: IngestRequest, res: IngestResult) -> None:
        by_box: dict[int, list[Delivered]] = defaultdict(list)
        for dlv in res.delivered:
            by_box[dlv.mailbox_id].append(dlv)
        for mbox, dlvs in by_box.items():
            self.notifier.publish(
                MailboxChange(
                    mbox, "exists", tuple(d.uid for d in dlvs), max(d.modseq for d in dlvs),
                    req.origin,
                )
            )

    # -- worker thread ---------------------------------------------------
    def _write_blobs(
        self, reqs: list[IngestRequest]
    ) -> tuple[list[str], dict[str, BlobRef], PendingSync]:
        """Append each distinct blob once; (digest per request, ref per
        digest, the sync that makes them durable). The views of spooled
        messages made here are gone when it returns: their spools may close."""
        if self.in_database:
            # Hashed only; the bytes are written by the transaction, for
            # contents it inserts (a digest already stored costs nothing).
            digests = [r.pieces()[1] for r in reqs]
            refs = {dg: BlobRef(DB_SEGMENT, 0, r.size) for r, dg in zip(reqs, digests, strict=True)}
            return digests, refs, _NO_SYNC
        blobs = [r.pieces() for r in reqs]
        digests = [dg for _, dg in blobs]
        unique: dict[str, list[Buffer]] = {}
        for pieces, dg in blobs:
            unique.setdefault(dg, pieces)
        counts = [len(ps) for ps in unique.values()]
        written, pending = self.segments.write([p for ps in unique.values() for p in ps])
        return digests, dict(zip(unique, _spans(written, counts), strict=True)), pending

    def _commit_batch(self, reqs: list[IngestRequest]) -> list[Any]:
        # A message that cannot even be read (its spool could not be mapped)
        # fails alone, not the batch it came in.
        limit = self.text_chars
        # With the whole text stored in content_text the excerpt is not needed.
        excerpt_chars = 0 if limit else 16384
        parsed: list[ParsedMessage] = []
        good: list[IngestRequest] = []
        bad: dict[int, Exception] = {}
        for i, r in enumerate(reqs):
            try:
                parsed.append(r.parse(excerpt_chars))
                good.append(r)
            except Exception as e:
                log.failure("cannot read a message to ingest")
                bad[i] = e
        if not bad:
            return self._commit_parsed(reqs, parsed)
        try:
            done = iter(self._commit_parsed(good, parsed) if good else [])
        except Exception as e:
            done = iter([e] * len(good))
        return [bad[i] if i in bad else next(done) for i in range(len(reqs))]

    def _commit_parsed(
        self, reqs: list[IngestRequest], parsed: list[ParsedMessage], *, group: bool = False
    ) -> list[Any]:
        digests, refs, pending = self._write_blobs(reqs)
        limit = self.text_chars
        texts: dict[str, str] = {}
        if limit:
            for r, dg in zip(reqs, digests, strict=True):
                if dg not in texts:
                    texts[dg] = r.text(limit)
        # The blob's fdatasync runs beside the batch's statements; the rows
        # commit only after it is done (a crash in between leaves dead bytes
        # in the segment, never a row pointing at bytes that were not durable).
        syncing = self._syncer.submit(pending.sync)

        def place(conn: sa.Connection, rs: list[IngestRequest], ps: list[ParsedMessage],
                  ds: list[str]) -> list[IngestResult]:
            out = _store_all(conn, rs, ps, ds, refs, group=group)
            if limit:
                _store_texts(conn, out, texts)
            syncing.result()
            return out

        try:
            return self.pool._run_transaction(lambda conn: place(conn, reqs, parsed, digests))
        except Exception:
            if len(reqs) == 1 or group:
                raise
            log.failure("batch commit failed; committing its {n} messages one by one", n=len(reqs))
        out: list[Any] = []
        for r, p, dg in zip(reqs, parsed, digests, strict=True):
            try:
                out.append(
                    self.pool._run_transaction(
                        lambda conn, r=r, p=p, dg=dg: place(conn, [r], [p], [dg])
                    )[0]
                )
            except Exception as e:
                out.append(e)
        return out


class _NoSync:
    """Contents in the database: the transaction's commit makes them durable."""

    def sync(self) -> None:
        pass


_NO_SYNC: Any = _NoSync()


def _spans(written: list[BlobRef], counts: list[int]) -> list[BlobRef]:
    """One ref per blob from the refs of its pieces, written one after the
    other in one call: they must be adjacent in one segment."""
    out: list[BlobRef] = []
    i = 0
    for n in counts:
        first = end = written[i]
        for ref in written[i + 1 : i + n]:
            if ref.segment != first.segment or ref.offset != end.offset + end.size:
                raise RuntimeError(f"blob pieces not adjacent: {first} .. {ref}")
            end = ref
        out.append(BlobRef(first.segment, first.offset, end.offset + end.size - first.offset))
        i += n
    return out


def _store_all(
    conn: sa.Connection,
    reqs: list[IngestRequest],
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
    *,
    group: bool = False,
) -> list[IngestResult]:
    cur = IngestCursor(conn)
    try:
        return _place_all(conn, cur, reqs, parsed, digests, refs, group)
    finally:
        cur.close()


def _place_all(
    conn: sa.Connection,
    cur: IngestCursor,
    reqs: list[IngestRequest],
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
    group: bool = False,
) -> list[IngestResult]:
    now = int(time.time())
    content_ids = _contents_for(cur, reqs, parsed, digests, refs)
    mbox_cache: dict[tuple[int, str | int], tuple[int, int] | None] = {}
    usage = cur.usage({t.account_id for r in reqs for t in r.targets if r.check_quota})
    results: list[IngestResult] = []
    placed: list[tuple[IngestResult, Target, tuple[int, int], IngestRequest]] = []
    per_mailbox: dict[int, int] = defaultdict(int)
    added: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    skipped: set[int] = set()
    for i, (req, p, dg) in enumerate(zip(reqs, parsed, digests, strict=True)):
        res = IngestResult(content_ids[dg], dg, p.size, p)
        results.append(res)
        ok: list[tuple[Target, tuple[int, int]]] = []
        pending: dict[int, tuple[int, int]] = {}  # quota use, applied only if placed
        for t in req.targets:
            mb = _mailbox(cur, mbox_cache, t)
            if mb is None:
                res.refused.append(Refused(t, "nomailbox"))
                continue
            if req.check_quota and t.account_id in usage:
                used, quota = pending.get(t.account_id, usage[t.account_id])
                if quota and used + p.size > quota:
                    res.refused.append(Refused(t, "overquota"))
                    continue
                pending[t.account_id] = (used + p.size, quota)
            ok.append((t, mb))
        if req.all_or_nothing and any(not r.target.optional for r in res.refused):
            skipped.add(i)
            continue
        usage.update(pending)
        for t, mb in ok:
            per_mailbox[mb[0]] += 1
            added[t.account_id][0] += p.size
            added[t.account_id][1] += 1
            placed.append((res, t, mb, req))
    if group and any(res.refused for res in results):
        # All or nothing: one refusal and no message of the group is placed.
        placed.clear()
        per_mailbox.clear()
        added.clear()
        skipped.update(range(len(reqs)))
    # One UPDATE per mailbox reserves the UIDs and one modseq for the batch.
    alloc: dict[int, list[int]] = {}
    for mbox_id, n in sorted(per_mailbox.items()):  # one lock order: no deadlocks
        alloc[mbox_id] = list(cur.reserve_uids(mbox_id, n))
    rows = []
    refcounts: dict[int, int] = defaultdict(int)
    for res, t, (mbox_id, uidvalidity), req in placed:
        uid, modseq = alloc[mbox_id]
        alloc[mbox_id][0] += 1
        rows.append(
            (mbox_id, uid, res.content_id, res.size, t.flags, " ".join(t.keywords),
             req.internal_date or now, now, modseq)
        )
        refcounts[res.content_id] += 1
        res.delivered.append(Delivered(t, t.account_id, mbox_id, uid, uidvalidity, modseq))
    cur.insert_messages(rows)
    cur.add_refs(refcounts)
    cur.add_usage(added)
    for i, (req, res) in enumerate(zip(reqs, results, strict=True)):
        if req.extra is not None and i not in skipped:
            res.extra = req.extra(conn, res.content_id)
    # Contents nobody ended up referencing (every target refused) go again;
    # one that got an entry here cannot be among them.
    unplaced = set(content_ids.values()) - set(refcounts)
    if unplaced:
        purge_unreferenced(conn, list(unplaced))
    return results


def _store_texts(conn: sa.Connection, results: list[IngestResult], texts: dict[str, str]) -> None:
    """Search text of the placed contents, in the ingest transaction. A content
    already stored keeps its row (ON CONFLICT); one purged meanwhile (every
    target refused) has no entry in `delivered` and gets none."""
    rows = {r.content_id: texts[r.digest] for r in results if r.delivered}
    cur = IngestCursor(conn)
    try:
        cur.insert_texts(sorted(rows.items()))
    finally:
        cur.close()


def _contents_for(
    cur: IngestCursor,
    reqs: list[IngestRequest],
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
) -> dict[str, int]:
    """Content id per digest: an existing row, or a new one with refcount 0."""
    existing = cur.content_ids(list(dict.fromkeys(digests)))
    seg_bytes: dict[str, int] = defaultdict(int)
    dead: dict[str, int] = defaultdict(int)
    out: dict[str, int] = {}
    for req, dg, p in zip(reqs, digests, parsed, strict=True):
        if dg in out:
            continue
        ref = refs[dg]
        in_db = ref.segment == DB_SEGMENT
        if not in_db:
            seg_bytes[ref.segment] += ref.size
        cid = existing.get(dg)
        if cid is None:
            cid = cur.insert_content(
                (
                    dg, ref.segment, ref.offset, ref.size, 0, p.header_len, p.envelope,
                    p.bodystructure, p.body,
                    int(p.sent_date.timestamp()) if p.sent_date else None,
                    p.subject, p.from_, p.to, p.cc, p.bcc, p.message_id, p.headers_text,
                    "\n".join(p.attachment_names), p.excerpt, p.sent_day,
                )
            )
            if cid is None:  # committed meanwhile by another transaction
                cid = cur.content_ids([dg])[dg]
            else:
                if in_db:
                    cur.store_chunks(cid, req.buffers())
                out[dg] = cid
                continue
        # Already stored: the copy just appended is dead space.
        if not in_db:
            dead[ref.segment] += ref.size
        out[dg] = cid
    for seg, size in seg_bytes.items():
        cur.account_segment(seg, size, dead.get(seg, 0))
    return out


def _mailbox(
    cur: IngestCursor, cache: dict[tuple[int, str | int], tuple[int, int] | None], t: Target
) -> tuple[int, int] | None:
    """(id, uidvalidity) of the target's mailbox, or None."""
    key = (t.account_id, t.mailbox)
    if key not in cache:
        if isinstance(t.mailbox, int):
            by, value = "id", t.mailbox
        elif t.mailbox.startswith("\\"):
            by, value = "special_use", t.mailbox
        elif t.mailbox.upper() == "INBOX":
            by, value = "name", "INBOX"
        else:
            by, value = "name", t.mailbox
        cache[key] = cur.mailbox(t.account_id, by, value)
    return cache[key]
