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
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from twisted.internet import defer, threads
from twisted.logger import Logger

from exmaild.mailstore.notify import ChangeNotifier, MailboxChange
from exmaild.mailstore.parse import ParsedMessage, parse_message
from exmaild.store import model as m
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.contents import purge_unreferenced
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

# The hot statements are built once: on these machines constructing a Core
# statement costs ~1 ms of CPU (cache key, coercions), running a prebuilt one
# ~0.1 ms, and a batch runs about ten of them.
_c, _mb, _a, _s = m.contents.c, m.mailboxes.c, m.accounts.c, m.segments.c
_CONTENT_IDS = sa.select(_c.digest, _c.id).where(_c.digest.in_(sa.bindparam("d", expanding=True)))
_INSERT_CONTENTS = m.contents.insert()
_INSERT_MESSAGES = m.messages.insert()
_ADD_REFS = (
    m.contents.update()
    .where(_c.id == sa.bindparam("cid"))
    .values(refcount=_c.refcount + sa.bindparam("n"))
)
_RESERVE_UIDS = (
    m.mailboxes.update()
    .where(_mb.id == sa.bindparam("mid"))
    .values(uidnext=_mb.uidnext + sa.bindparam("n"), highestmodseq=_mb.highestmodseq + 1)
    .returning(_mb.uidnext, _mb.highestmodseq)
)
_ADD_USAGE = (
    m.accounts.update()
    .where(_a.id == sa.bindparam("aid"))
    .values(
        used_bytes=_a.used_bytes + sa.bindparam("size"),
        message_count=_a.message_count + sa.bindparam("count"),
    )
)
_USAGE = sa.select(_a.id, _a.used_bytes, _a.quota_bytes).where(
    _a.id.in_(sa.bindparam("ids", expanding=True))
)
_USAGE_LOCKED = _USAGE.with_for_update()
_SEGMENT_ADD = (
    m.segments.update()
    .where(_s.name == sa.bindparam("seg"))
    .values(size=_s.size + sa.bindparam("size"), dead_bytes=_s.dead_bytes + sa.bindparam("dead"))
)
_SEGMENT_NEW = m.segments.insert()
_pg_segment = pg_insert(m.segments)
_SEGMENT_UPSERT_PG = _pg_segment.on_conflict_do_update(
    index_elements=[_s.name],
    set_={
        "size": _s.size + _pg_segment.excluded.size,
        "dead_bytes": _s.dead_bytes + _pg_segment.excluded.dead_bytes,
    },
)
_MAILBOX = sa.select(_mb.id, _mb.uidvalidity).where(_mb.account_id == sa.bindparam("aid"))
_MAILBOX_BY = {
    "id": _MAILBOX.where(_mb.id == sa.bindparam("key")).limit(1),
    "special_use": _MAILBOX.where(_mb.special_use == sa.bindparam("key")).limit(1),
    "name": _MAILBOX.where(_mb.name == sa.bindparam("key")).limit(1),
}


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
    raw: bytes
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
    ) -> None:
        self.pool = pool
        self.segments = segments
        self.notifier = notifier
        self._pending: list[tuple[IngestRequest, defer.Deferred[IngestResult]]] = []
        self._inflight = 0
        self.batches = 0

    async def ingest(self, req: IngestRequest) -> IngestResult:
        """Durably store one message for its targets; raises on storage trouble."""
        d: defer.Deferred[IngestResult] = defer.Deferred()
        self._pending.append((req, d))
        self._kick()
        return await d

    def _kick(self) -> None:
        if self._inflight >= MAX_INFLIGHT or not self._pending:
            return
        if self._inflight and len(self._pending) < SECOND_BATCH_MIN:
            return
        batch, size = [], 0
        while self._pending and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            item = self._pending.pop(0)
            batch.append(item)
            size += len(item[0].raw)
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
        if not isinstance(outcome, list):  # a Failure: nothing was committed
            outcome = [outcome] * len(batch)
        for (req, d), res in zip(batch, outcome, strict=True):
            if isinstance(res, IngestResult):
                self._publish(req, res)
            d.callback(res) if isinstance(res, IngestResult) else d.errback(res)
        self._kick()

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
    def _commit_batch(self, reqs: list[IngestRequest]) -> list[Any]:
        parsed = [parse_message(r.raw) for r in reqs]
        digests = [hashlib.sha256(r.raw).hexdigest() for r in reqs]
        unique: dict[str, bytes] = {}
        for r, dg in zip(reqs, digests, strict=True):
            unique.setdefault(dg, r.raw)
        refs = dict(zip(unique, self.segments.append(list(unique.values())), strict=True))
        try:
            return self.pool._run_transaction(
                lambda conn: _store_all(conn, reqs, parsed, digests, refs)
            )
        except Exception:
            if len(reqs) == 1:
                raise
            log.failure("batch commit failed; committing its {n} messages one by one", n=len(reqs))
        out: list[Any] = []
        for r, p, dg in zip(reqs, parsed, digests, strict=True):
            try:
                out.append(
                    self.pool._run_transaction(
                        lambda conn, r=r, p=p, dg=dg: _store_all(conn, [r], [p], [dg], refs)
                    )[0]
                )
            except Exception as e:
                out.append(e)
        return out


def _store_all(
    conn: sa.Connection,
    reqs: list[IngestRequest],
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
) -> list[IngestResult]:
    now = int(time.time())
    content_ids = _contents_for(conn, parsed, digests, refs)
    mbox_cache: dict[tuple[int, str | int], Any] = {}
    usage = _usage(conn, {t.account_id for r in reqs for t in r.targets if r.check_quota})
    results: list[IngestResult] = []
    placed: list[tuple[IngestResult, Target, Any, IngestRequest]] = []
    per_mailbox: dict[int, int] = defaultdict(int)
    added: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    skipped: set[int] = set()
    for i, (req, p, dg) in enumerate(zip(reqs, parsed, digests, strict=True)):
        res = IngestResult(content_ids[dg], dg, p.size, p)
        results.append(res)
        ok: list[tuple[Target, Any]] = []
        pending: dict[int, tuple[int, int]] = {}  # quota use, applied only if placed
        for t in req.targets:
            mb = _mailbox(conn, mbox_cache, t)
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
            per_mailbox[mb.id] += 1
            added[t.account_id][0] += p.size
            added[t.account_id][1] += 1
            placed.append((res, t, mb, req))
    # One UPDATE per mailbox reserves the UIDs and one modseq for the batch.
    alloc: dict[int, list[int]] = {}
    for mbox_id, n in sorted(per_mailbox.items()):  # one lock order: no deadlocks
        row = conn.execute(_RESERVE_UIDS, {"mid": mbox_id, "n": n}).one()
        alloc[mbox_id] = [row.uidnext - n, row.highestmodseq]
    rows = []
    refcounts: dict[int, int] = defaultdict(int)
    for res, t, mb, req in placed:
        uid, modseq = alloc[mb.id]
        alloc[mb.id][0] += 1
        rows.append(
            {
                "mailbox_id": mb.id,
                "uid": uid,
                "content_id": res.content_id,
                "size": res.size,
                "flags": t.flags,
                "keywords": " ".join(t.keywords),
                "internal_date": req.internal_date or now,
                "added": now,
                "modseq": modseq,
            }
        )
        refcounts[res.content_id] += 1
        res.delivered.append(Delivered(t, t.account_id, mb.id, uid, mb.uidvalidity, modseq))
    if rows:
        conn.execute(_INSERT_MESSAGES, rows)
    if refcounts:
        conn.execute(_ADD_REFS, [{"cid": cid, "n": n} for cid, n in refcounts.items()])
    if added:
        conn.execute(
            _ADD_USAGE,
            [{"aid": aid, "size": sz, "count": n} for aid, (sz, n) in sorted(added.items())],
        )
    for i, (req, res) in enumerate(zip(reqs, results, strict=True)):
        if req.extra is not None and i not in skipped:
            res.extra = req.extra(conn, res.content_id)
    # Contents nobody ended up referencing (every target refused) go again;
    # one that got an entry here cannot be among them.
    unplaced = set(content_ids.values()) - set(refcounts)
    if unplaced:
        purge_unreferenced(conn, list(unplaced))
    return results


def _contents_for(
    conn: sa.Connection,
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
) -> dict[str, int]:
    """Content id per digest: an existing row, or a new one with refcount 0."""
    wanted = list(dict.fromkeys(digests))
    existing = dict(conn.execute(_CONTENT_IDS, {"d": wanted}).all())
    seg_bytes: dict[str, int] = defaultdict(int)
    dead: dict[str, int] = defaultdict(int)
    out: dict[str, int] = {}
    new_rows: list[dict[str, Any]] = []
    for dg, p in zip(digests, parsed, strict=True):
        if dg in out:
            continue
        ref = refs[dg]
        seg_bytes[ref.segment] += ref.size
        if dg in existing:
            # Already stored: the copy just appended is dead space.
            dead[ref.segment] += ref.size
            out[dg] = existing[dg]
            continue
        out[dg] = -1  # filled in below
        new_rows.append(
            {
                "digest": dg,
                "segment": ref.segment,
                "offset": ref.offset,
                "size": ref.size,
                "refcount": 0,
                "header_len": p.header_len,
                "envelope": p.envelope,
                "bodystructure": p.bodystructure,
                "body": p.body,
                "sent_date": int(p.sent_date.timestamp()) if p.sent_date else None,
                "subject": p.subject,
                "from_addr": p.from_,
                "to_addr": p.to,
                "cc_addr": p.cc,
                "bcc_addr": p.bcc,
                "message_id": p.message_id,
                "headers_text": p.headers_text,
                "attachment_names": "\n".join(p.attachment_names),
                "excerpt": p.excerpt,
            }
        )
    if new_rows:
        # executemany with one constant statement, then the ids in one SELECT.
        conn.execute(_INSERT_CONTENTS, new_rows)
        new = [r["digest"] for r in new_rows]
        out.update(conn.execute(_CONTENT_IDS, {"d": new}).all())
    for seg, size in seg_bytes.items():
        _account_segment(conn, seg, size, dead.get(seg, 0))
    return out


def _account_segment(conn: sa.Connection, name: str, size: int, dead: int) -> None:
    if conn.dialect.name == "postgresql":
        # Two batches in flight may both be first to write to a new segment.
        conn.execute(_SEGMENT_UPSERT_PG, {"name": name, "size": size, "dead_bytes": dead})
        return
    res = conn.execute(_SEGMENT_ADD, {"seg": name, "size": size, "dead": dead})
    if res.rowcount == 0:
        conn.execute(_SEGMENT_NEW, {"name": name, "size": size, "dead_bytes": dead})


def _usage(conn: sa.Connection, account_ids: set[int]) -> dict[int, tuple[int, int]]:
    if not account_ids:
        return {}
    q = _USAGE_LOCKED if conn.dialect.name == "postgresql" else _USAGE
    ids = sorted(account_ids)
    return {r.id: (r.used_bytes, r.quota_bytes) for r in conn.execute(q, {"ids": ids})}


def _mailbox(conn: sa.Connection, cache: dict[tuple[int, str | int], Any], t: Target) -> Any:
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
        cache[key] = conn.execute(_MAILBOX_BY[by], {"aid": t.account_id, "key": value}).first()
    return cache[key]
