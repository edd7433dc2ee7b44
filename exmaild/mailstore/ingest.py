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
from twisted.internet import defer, threads
from twisted.logger import Logger

from exmaild.mailstore.notify import ChangeNotifier, MailboxChange
from exmaild.mailstore.parse import ParsedMessage, parse_message
from exmaild.store import model as m
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.contents import add_refs, purge_unreferenced
from exmaild.store.pool import DBThreadPool

log = Logger()

MAX_BATCH = 256
MAX_BATCH_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Target:
    """Where one copy goes: an account's mailbox by name, id, or SPECIAL-USE
    attribute (e.g. "\\Sent")."""

    account_id: int
    mailbox: str | int = "INBOX"
    flags: int = 0
    keywords: tuple[str, ...] = ()


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
        self._busy = False
        self.batches = 0

    async def ingest(self, req: IngestRequest) -> IngestResult:
        """Durably store one message for its targets; raises on storage trouble."""
        d: defer.Deferred[IngestResult] = defer.Deferred()
        self._pending.append((req, d))
        self._kick()
        return await d

    def _kick(self) -> None:
        if self._busy or not self._pending:
            return
        batch, size = [], 0
        while self._pending and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            item = self._pending.pop(0)
            batch.append(item)
            size += len(item[0].raw)
        self._busy = True
        reqs = [r for r, _ in batch]
        d = threads.deferToThreadPool(
            self.pool.reactor, self.pool._pool, self._commit_batch, reqs
        )
        d.addBoth(self._finished, batch)

    def _finished(
        self, outcome: Any, batch: list[tuple[IngestRequest, defer.Deferred[IngestResult]]]
    ) -> None:
        self._busy = False
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
    for req, p, dg in zip(reqs, parsed, digests, strict=True):
        res = IngestResult(content_ids[dg], dg, p.size, p)
        results.append(res)
        for t in req.targets:
            mb = _mailbox(conn, mbox_cache, t)
            if mb is None:
                res.refused.append(Refused(t, "nomailbox"))
                continue
            if req.check_quota and t.account_id in usage:
                used, quota = usage[t.account_id]
                if quota and used + p.size > quota:
                    res.refused.append(Refused(t, "overquota"))
                    continue
                usage[t.account_id] = (used + p.size, quota)
            per_mailbox[mb.id] += 1
            added[t.account_id][0] += p.size
            added[t.account_id][1] += 1
            placed.append((res, t, mb, req))
    # One UPDATE per mailbox reserves the UIDs and one modseq for the batch.
    alloc: dict[int, list[int]] = {}
    for mbox_id, n in per_mailbox.items():
        row = conn.execute(
            m.mailboxes.update()
            .where(m.mailboxes.c.id == mbox_id)
            .values(
                uidnext=m.mailboxes.c.uidnext + n,
                highestmodseq=m.mailboxes.c.highestmodseq + 1,
            )
            .returning(m.mailboxes.c.uidnext, m.mailboxes.c.highestmodseq)
        ).one()
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
        conn.execute(m.messages.insert(), rows)
    for cid, n in refcounts.items():
        add_refs(conn, cid, n)
    for aid, (size, count) in added.items():
        conn.execute(
            m.accounts.update()
            .where(m.accounts.c.id == aid)
            .values(
                used_bytes=m.accounts.c.used_bytes + size,
                message_count=m.accounts.c.message_count + count,
            )
        )
    for req, res in zip(reqs, results, strict=True):
        if req.extra is not None:
            res.extra = req.extra(conn, res.content_id)
    # Contents nobody ended up referencing (every target refused) go again.
    purge_unreferenced(conn, list(set(content_ids.values())))
    return results


def _contents_for(
    conn: sa.Connection,
    parsed: list[ParsedMessage],
    digests: list[str],
    refs: dict[str, BlobRef],
) -> dict[str, int]:
    """Content id per digest: an existing row, or a new one with refcount 0."""
    c = m.contents.c
    wanted = list(dict.fromkeys(digests))
    existing = dict(
        conn.execute(sa.select(c.digest, c.id).where(c.digest.in_(wanted))).all()
    )
    seg_bytes: dict[str, int] = defaultdict(int)
    dead: dict[str, int] = defaultdict(int)
    out: dict[str, int] = {}
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
        out[dg] = conn.execute(
            m.contents.insert().values(
                digest=dg,
                segment=ref.segment,
                offset=ref.offset,
                size=ref.size,
                refcount=0,
                header_len=p.header_len,
                envelope=p.envelope,
                bodystructure=p.bodystructure,
                body=p.body,
                sent_date=int(p.sent_date.timestamp()) if p.sent_date else None,
                subject=p.subject,
                from_addr=p.from_,
                to_addr=p.to,
                cc_addr=p.cc,
                bcc_addr=p.bcc,
                message_id=p.message_id,
                headers_text=p.headers_text,
                attachment_names="\n".join(p.attachment_names),
                excerpt=p.excerpt,
            )
        ).inserted_primary_key[0]
    for seg, size in seg_bytes.items():
        _account_segment(conn, seg, size, dead.get(seg, 0))
    return out


def _account_segment(conn: sa.Connection, name: str, size: int, dead: int) -> None:
    s = m.segments.c
    res = conn.execute(
        m.segments.update()
        .where(s.name == name)
        .values(size=s.size + size, dead_bytes=s.dead_bytes + dead)
    )
    if res.rowcount == 0:
        conn.execute(m.segments.insert().values(name=name, size=size, dead_bytes=dead))


def _usage(conn: sa.Connection, account_ids: set[int]) -> dict[int, tuple[int, int]]:
    if not account_ids:
        return {}
    a = m.accounts.c
    q = sa.select(a.id, a.used_bytes, a.quota_bytes).where(a.id.in_(account_ids))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return {r.id: (r.used_bytes, r.quota_bytes) for r in conn.execute(q)}


def _mailbox(conn: sa.Connection, cache: dict[tuple[int, str | int], Any], t: Target) -> Any:
    key = (t.account_id, t.mailbox)
    if key not in cache:
        mb = m.mailboxes.c
        q = sa.select(mb.id, mb.uidvalidity).where(mb.account_id == t.account_id)
        if isinstance(t.mailbox, int):
            q = q.where(mb.id == t.mailbox)
        elif t.mailbox.startswith("\\"):
            q = q.where(mb.special_use == t.mailbox)
        elif t.mailbox.upper() == "INBOX":
            q = q.where(mb.name == "INBOX")
        else:
            q = q.where(mb.name == t.mailbox)
        cache[key] = conn.execute(q.limit(1)).first()
    return cache[key]
