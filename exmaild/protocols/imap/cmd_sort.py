"""SORT / UID SORT (RFC 5256, RFC 5957, ESORT of RFC 5267) and THREAD /
UID THREAD (RFC 5256): the database orders or selects the messages
(store/sortkeys.py); only THREAD builds its trees here, from the few key
columns of the matching messages."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exmaild.store import sortkeys
from exmaild.store.search import uses_modseq

from . import responses as r
from . import thread as th
from .cmd_select import claim_recent
from .commands import Command
from .sort import SortArgs, ThreadArgs

if TYPE_CHECKING:
    from .server import IMAPServer
    from .session import Selected


async def _prepare(c: IMAPServer) -> Selected | None:
    """Bring the view up to date (as SEARCH does: no EXPUNGE responses) and
    make sure the mailbox's sort keys exist; None if the mailbox went away."""
    s = c.session
    sel = s.selected
    assert sel is not None
    await sel.index.refresh()
    await claim_recent(c)
    c.sync(allow_expunge=False)
    if c.closed or s.selected is not sel:
        return None
    await sortkeys.make_missing(c.store, sel.mailbox.id, sel.index)
    return sel if s.selected is sel else None


def _numbers(cmd: Command, sel: Selected, uids: list[int]) -> list[int]:
    if cmd.uid:
        return uids
    view = sel.view
    return [p + 1 for p in map(view.position, uids) if p >= 0]


async def sort(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, SortArgs)
    sel = await _prepare(c)
    if sel is None:
        return r.NO_MAILBOX_SELECTED
    view = sel.view
    view_uids, recent = list(view.uids), frozenset(view.recent)
    mid, crit, key = sel.mailbox.id, args.sort, args.key
    uids = await c.store.pool.do(
        lambda conn: sortkeys.sorted_uids(conn, mid, crit, key, view_uids, recent)
    )
    numbers = _numbers(cmd, sel, uids)
    # RFC 7162 §3.1.5 (as for SEARCH): a MODSEQ key adds the highest
    # mod-sequence of the messages returned.
    modseq = b""
    if numbers and uses_modseq(key):
        c.session.condstore = True
        modseq = b" (MODSEQ %d)" % max(map(sel.view.modseq_of, uids))
    if args.returns is not None:
        c.send(_esort(cmd, args.returns, numbers, modseq))
    else:
        c.send(b"* SORT" + b"".join(b" %d" % n for n in numbers) + modseq + b"\r\n")
    return r.ok("Sort completed")


def _esort(cmd: Command, returns: tuple[str, ...], numbers: list[int], modseq: bytes) -> bytes:
    """RFC 5267 §3.2: MIN / MAX are the first and last in sort order, ALL
    lists every match in sort order (so no ranges are folded)."""
    out = b'* ESEARCH (TAG "' + cmd.tag.encode("ascii") + b'")'
    if cmd.uid:
        out += b" UID"
    if numbers and "MIN" in returns:
        out += b" MIN %d" % numbers[0]
    if numbers and "MAX" in returns:
        out += b" MAX %d" % numbers[-1]
    if "COUNT" in returns:
        out += b" COUNT %d" % len(numbers)
    if numbers and "ALL" in returns:
        out += b" ALL " + b",".join(b"%d" % n for n in numbers)
    if modseq:
        out += b" MODSEQ " + modseq[9:-1]  # the number of " (MODSEQ n)"
    return out + b"\r\n"


async def thread(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, ThreadArgs)
    sel = await _prepare(c)
    if sel is None:
        return r.NO_MAILBOX_SELECTED
    view = sel.view
    view_uids, recent = list(view.uids), frozenset(view.recent)
    mid, key = sel.mailbox.id, args.key
    rows = await c.store.pool.do(
        lambda conn: sortkeys.thread_rows(conn, mid, key, view_uids, recent)
    )
    roots = th.ordered_subject(rows) if args.algorithm == "ORDEREDSUBJECT" else th.references(rows)
    if cmd.uid:
        c.send(th.render(roots, lambda uid: uid))
    else:
        position = sel.view.position
        c.send(th.render(roots, lambda uid: position(uid) + 1))
    return r.ok("Thread completed")

