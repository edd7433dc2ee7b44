"""QRESYNC (RFC 7162 §3.2): what SELECT / EXAMINE ``(QRESYNC ...)`` and
``UID FETCH ... (CHANGEDSINCE m VANISHED)`` add to a command's answer.

Expunged UIDs and their modseq come from ``store/vanished.py`` (ranges that
may also cover present UIDs: those are subtracted here). Once QRESYNC is
enabled the view reports expunges as ``* VANISHED`` (session.View.expunge).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exmaild.store import vanished

from .commands import QresyncParams
from .session import Selected

if TYPE_CHECKING:
    from .server import IMAPServer

Ranges = list[tuple[int, int]]


def merge(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def intersect(a: Ranges, b: Ranges) -> Ranges:
    """Both merged and sorted."""
    out: Ranges = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(ranges: Ranges, present: Sequence[int]) -> Ranges:
    """``ranges`` without the (sorted) UIDs in ``present``."""
    out: Ranges = []
    for lo, hi in ranges:
        start = lo
        for k in range(bisect_left(present, lo), bisect_right(present, hi)):
            uid = present[k]
            if uid > start:
                out.append((start, uid - 1))
            start = uid + 1
        if start <= hi:
            out.append((start, hi))
    return out


def format_ranges(ranges: Ranges) -> bytes:
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in ranges)


async def vanished_earlier(
    c: IMAPServer, sel: Selected, modseq: int, within: Ranges
) -> bytes:
    """``* VANISHED (EARLIER) ...`` for UIDs in ``within`` expunged after
    ``modseq`` and unknown to both the index and this session's view (a UID
    the view still shows gets its own VANISHED when the view drops it); b""
    when there are none."""
    if not within:
        return b""
    mid = sel.mailbox.id
    gone = await c.store.pool.do(lambda conn: vanished.since(conn, mid, modseq))
    ranges = intersect(merge(gone), within)
    ranges = subtract(subtract(ranges, sel.index.uids), sel.view.uids)
    if not ranges:
        return b""
    return b"* VANISHED (EARLIER) " + format_ranges(ranges) + b"\r\n"


async def resync(c: IMAPServer, sel: Selected, params: QresyncParams, uidnext: int) -> None:
    """After SELECT's usual answer: what changed since the client's modseq,
    if the UIDVALIDITY it knows is still the mailbox's (RFC 7162 §3.2.5.2).

    The known-UIDs limit VANISHED; the sequence match data only helps a
    server that forgot expunges, which this one does not, so it is not used."""
    if params.uidvalidity != sel.index.state.uidvalidity:
        return
    top = uidnext - 1
    within = params.known_uids.intervals(top) if params.known_uids else [(1, top)] if top else []
    out = []
    line = await vanished_earlier(c, sel, params.modseq, within)
    if line:
        out.append(line)
    view, idx = sel.view, sel.index
    for pos, uid in enumerate(view.uids):
        i = idx.position(uid)
        if i >= 0 and idx.modseqs[i] > params.modseq:
            mask, kw = view.flags_of(pos)
            out.append(view.flag_fetch(pos, mask, kw, True, idx.modseqs[i]))
    c.send_all(out)
