"""FETCH and UID FETCH (RFC 3501 §6.4.5, RFC 7162 CHANGEDSINCE / MODSEQ).

Items the shared index knows (UID, FLAGS, MODSEQ, INTERNALDATE,
RFC822.SIZE) are rendered on the reactor without touching the database;
anything else goes through ``fetch_stream.build_chunk`` on a worker thread.
Non-PEEK body items set \\Seen first, in one STORE for the whole set, and the
new FLAGS ride along in the FETCH responses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from exmaild.store import flags as fl
from exmaild.store import imapmessages, objectids, sortkeys
from exmaild.store.changes import MailboxChange
from exmaild.store.imapindex import MailboxIndex

from . import qresync
from . import responses as r
from .cmd_select import claim_recent
from .commands import Command, FetchArgs
from .fetch_stream import (
    CHUNK_BYTES,
    ChunkProducer,
    ConnectionGone,
    Meta,
    Plan,
    build_chunk,
    make_plan,
    render,
)
from .session import Selected, View

if TYPE_CHECKING:
    from .server import IMAPServer

META_ONLY_CHUNK = 4000  # responses per chunk when no row is needed
ROW_CHUNK = 1000  # messages per chunk (one query) when rows are needed
# The first chunks are small and each is twice the last, up to the limits
# above: the client starts reading (imaplib parses ~40 µs per line) while the
# rest is built, instead of waiting for a whole 1,000-message chunk.
FIRST_CHUNK = 64
_INDEX_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ", "RFC822.SIZE", "INTERNALDATE"})
_OBJECT_ITEMS = frozenset({"EMAILID", "THREADID", "SAVEDATE"})
IdMap = dict[int, tuple[str, str | None, int]] | None


async def fetch(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, FetchArgs)
    s = c.session
    sel = s.selected
    assert sel is not None
    if args.changed_since is not None or any(i.name == "MODSEQ" for i in args.items):
        s.condstore = True
    await sel.index.refresh()
    await claim_recent(c)
    c.sync(allow_expunge=False)  # new messages and others' flag changes first
    if c.closed or s.selected is not sel:
        return r.NO_MAILBOX_SELECTED
    view = sel.view
    positions = view.resolve(args.sequence_set, cmd.uid)
    if positions is None:
        return r.INVALID_SET
    if args.changed_since is not None:
        since = args.changed_since
        positions = [p for p in positions if view.modseq_of(view.uids[p]) > since]
    if args.vanished:
        if not s.qresync:
            return r.bad("VANISHED without ENABLE QRESYNC")
        top = max(view.uids[-1] if view.uids else 0, sel.index.state.uidnext - 1)
        line = await qresync.vanished_earlier(
            c, sel, args.changed_since or 0, args.sequence_set.intervals(top)
        )
        if c.closed or s.selected is not sel:
            return r.NO_MAILBOX_SELECTED
        c.send(line)
    plan = make_plan(args.items, uid=cmd.uid, modseq=args.changed_since is not None)
    seen_now = await _set_seen(c, sel, plan, positions)
    if not positions:
        return r.ok("Fetch completed")
    ids = await _object_ids(c, sel, plan, positions)
    missing = [0, 0]  # expunged meanwhile, BINARY of an unknown encoding
    producer = ChunkProducer(
        c.transport, _chunker(c, sel, plan, positions, seen_now, missing, ids)
    )
    c.gate.detach()  # the FETCH's own producer paces the transport meanwhile
    try:
        await producer.start()
    except ConnectionGone:
        c.closed = True
        return r.SENT
    finally:
        c.stats["out"] += producer.written
        if not c.closed:
            c.gate.attach(c.transport)
    if missing[1]:
        return r.no("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE")
    if missing[0]:
        return r.ok("Some messages were expunged meanwhile", "EXPUNGEISSUED")
    return r.ok("Fetch completed")


async def _set_seen(c: IMAPServer, sel: Selected, plan: Plan, positions: list[int]) -> set[int]:
    """Set \\Seen where a non-PEEK body item asks for it; the UIDs changed."""
    if sel.readonly or not any(i.sets_seen for i in plan.items):
        return set()
    view = sel.view
    need = [view.uids[p] for p in positions if not view.flags_of(p)[0] & fl.SEEN]
    if not need:
        return set()
    mid = sel.mailbox.id
    res = await c.store.pool.transaction(
        lambda conn: imapmessages.store_flags(conn, mid, need, imapmessages.ADD, fl.SEEN),
        durable=False,  # a flag change, as STORE's
    )
    if res.modseq is None:
        return set()
    sel.index.apply_flags(res.changed)
    uids = tuple(u for u, *_ in res.changed)
    c.store.notifier.publish(MailboxChange(mid, "flags", uids, res.modseq, c))
    return set(uids)


async def _object_ids(c: IMAPServer, sel: Selected, plan: Plan, positions: list[int]) -> IdMap:
    """EMAILID / THREADID (RFC 8474) and SAVEDATE (RFC 8514) of the messages,
    in one query, when the FETCH asks for any of them."""
    names = {i.name for i in plan.items}
    if not names & _OBJECT_ITEMS:
        return None
    mid = sel.mailbox.id
    threads = "THREADID" in names
    if threads:
        await sortkeys.make_missing(c.store, mid, sel.index)
    uids = [sel.view.uids[p] for p in positions]
    return await c.store.pool.do(
        lambda conn: objectids.message_ids(conn, mid, uids, threads=threads)
    )


def _chunker(
    c: IMAPServer,
    sel: Selected,
    plan: Plan,
    positions: list[int],
    seen_now: set[int],
    missing: list[int],
    ids: IdMap = None,
) -> Callable[[], Any]:
    """The producer's chunk source over ``positions``."""
    view, idx = sel.view, sel.index
    meta_only = all(i.name in _INDEX_ITEMS and i.section is None for i in plan.items)
    if meta_only and [i.name for i in plan.items] in (["UID", "FLAGS"], ["FLAGS", "UID"]):
        return _flags_chunker(c, view, idx, positions, plan.items[0].name == "UID", missing)
    state = {"next": 0, "chunks": 0}
    mailbox_id = sel.mailbox.id
    sizes = idx.sizes

    def next_chunk() -> Any:
        start = state["next"]
        if start >= len(positions) or c.closed:
            return None
        end, budget = start, 0
        growth = 1 << min(state["chunks"], 16)
        state["chunks"] += 1
        limit = min(META_ONLY_CHUNK if meta_only else ROW_CHUNK, FIRST_CHUNK * growth)
        byte_limit = min(CHUNK_BYTES, (CHUNK_BYTES >> 4) * growth)
        while end < len(positions) and end - start < limit and budget < byte_limit:
            i = idx.position(view.uids[positions[end]])
            budget += (sizes[i] if plan.columns.blob and i >= 0 else 0) + 200
            end += 1
        state["next"] = end
        metas = _metas(view, idx, plan, positions[start:end], seen_now, missing)
        if ids is not None:
            for meta in metas:
                meta.ids = ids.get(meta.uid)
        # A keyword another session added meanwhile is announced first.
        announce = view.new_keywords()
        if meta_only:
            out: list[Any] = [*announce]
            for meta in metas:
                render(out, plan, meta, None, None)
            return b"".join(out)
        rows = idx.rows
        cached = {m.uid: rows[m.uid] for m in metas if m.uid in rows}
        if len(cached) == len(metas) and not plan.columns.blob:
            out = [*announce]  # ENVELOPE, BODYSTRUCTURE... all cached: no thread, no query
            for meta in metas:
                render(out, plan, meta, cached[meta.uid], None)
            return b"".join(out)
        d = c.store.pool.do(
            lambda conn: build_chunk(conn, c.store.blobs, mailbox_id, plan, metas, cached)
        )

        async def finish() -> bytes:
            built = await d
            missing[0] += built.missing
            missing[1] += built.unknown_cte
            if built.reloaded:
                idx.drop_rows(built.loaded)
            idx.add_rows(built.loaded)
            return b"".join(announce) + built.data if announce else built.data

        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(finish())

    return next_chunk


def _metas(
    view: View,
    idx: MailboxIndex,
    plan: Plan,
    chunk: list[int],
    seen_now: set[int],
    missing: list[int],
) -> list[Meta]:
    out = []
    for p in chunk:
        uid = view.uids[p]
        i = idx.position(uid)
        if i < 0:
            missing[0] += 1  # expunged by someone else, not announced yet
            continue
        mask, kw = idx.flags[i], idx.keywords.get(uid, "")
        flags = None
        if plan.wants_flags or uid in seen_now:
            flags = r.format_flags(mask, kw, uid in view.recent)
            if view.flags[p] != mask or view.keywords.get(uid, "") != kw:
                view.remember(p, mask, kw)
        out.append(Meta(p + 1, uid, flags, idx.modseqs[i], idx.dates[i], idx.sizes[i]))
    return out


LINES_CHUNK = 20000  # cached response lines joined per chunk


def _flags_chunker(
    c: IMAPServer, view: View, idx: MailboxIndex, positions: list[int], uid_first: bool,
    missing: list[int],
) -> Callable[[], bytes | None]:
    """``(UID FLAGS)`` — the resync Foxmail, Outlook, Thunderbird and mbsync
    send on every check. When this session's view is the index (no fetch
    window, nothing pending), the lines come from the index's cache of
    rendered lines, shared by every session of the mailbox."""
    state = {"next": 0}

    def next_chunk() -> bytes | None:
        start = state["next"]
        if start >= len(positions) or c.closed:
            return None
        end = min(len(positions), start + LINES_CHUNK)
        state["next"] = end
        chunk = positions[start:end]
        announce = b"".join(view.new_keywords())  # a keyword new since the sync
        if uid_first and len(view.uids) == len(idx.uids) and view.uids == idx.uids:
            return announce + _cached_lines(view, idx, chunk)
        return announce + _lines_one_by_one(view, idx, chunk, uid_first, missing)

    return next_chunk


_LINE = b"* %d FETCH (UID %d FLAGS %b)\r\n"


def _render_lines(idx: MailboxIndex, lo: int, hi: int) -> list[bytes]:
    fmt, uids, flags, kws = r.format_flags, idx.uids, idx.flags, idx.keywords
    plain = [fmt(m) for m in range(256)]  # no keywords: one lookup
    if not kws:
        return [_LINE % (p + 1, uids[p], plain[flags[p]]) for p in range(lo, hi)]
    return [
        _LINE % (p + 1, uids[p], fmt(flags[p], kws[uids[p]]) if uids[p] in kws
                 else plain[flags[p]])
        for p in range(lo, hi)
    ]


def _cached_lines(view: View, idx: MailboxIndex, chunk: list[int]) -> bytes:
    lines = idx.lines
    top = chunk[-1] + 1
    if len(lines) < top:
        lines.extend(_render_lines(idx, len(lines), top))
    lo = chunk[0]
    contiguous = top - lo == len(chunk)
    picked = lines[lo:top] if contiguous else [lines[p] for p in chunk]
    if b"" in picked:  # stale after a flag change: render those again
        for n, p in enumerate(chunk):
            if not picked[n]:
                lines[p] = picked[n] = _render_lines(idx, p, p + 1)[0]
    recent = view.recent
    if recent:
        # Shared lines carry no \Recent: this session's own are redone. The
        # first SELECT of a filled mailbox makes all of them recent, so walk
        # whichever of the chunk and the recent set is smaller.
        if len(recent) < len(chunk):
            at = {p: n for n, p in enumerate(chunk)}
            hits = [(at[p], p) for p in map(view.position, recent) if p in at]
        else:
            uids = view.uids
            hits = [(n, p) for n, p in enumerate(chunk) if uids[p] in recent]
        for i, p in hits:
            uid = view.uids[p]
            mask, kw = idx.flags[p], idx.keywords.get(uid, "")
            picked[i] = _LINE % (p + 1, uid, r.format_flags(mask, kw, True))
    # The client now knows these flags.
    if contiguous:
        view.flags[lo:top] = idx.flags[lo:top]
    else:
        for p in chunk:
            view.flags[p] = idx.flags[p]
    if idx.keywords or view.keywords:
        first, last = view.uids[lo], view.uids[top - 1]
        for uid in set(idx.keywords) | set(view.keywords):
            if first <= uid <= last:
                kw = idx.keywords.get(uid)
                if kw:
                    view.keywords[uid] = kw
                else:
                    view.keywords.pop(uid, None)
    return b"".join(picked)


def _lines_one_by_one(
    view: View, idx: MailboxIndex, chunk: list[int], uid_first: bool, missing: list[int]
) -> bytes:
    fmt = r.format_flags
    line = _LINE if uid_first else b"* %d FETCH (FLAGS %b UID %d)\r\n"
    vu, vf, vk, recent = view.uids, view.flags, view.keywords, view.recent
    ifl, ik = idx.flags, idx.keywords
    out = []
    for p in chunk:
        uid = vu[p]
        i = idx.position(uid)
        if i < 0:
            missing[0] += 1
            continue
        mask = ifl[i]
        kw = ik.get(uid, "") if ik else ""
        if vf[p] != mask or (vk.get(uid, "") != kw):
            view.remember(p, mask, kw)
        flags = fmt(mask, kw, uid in recent)
        out.append(line % ((p + 1, uid, flags) if uid_first else (p + 1, flags, uid)))
    return b"".join(out)
