"""STORE and UID STORE, with .SILENT and RFC 7162 UNCHANGEDSINCE.

One transaction and one new modseq for the whole set; keywords are the
member's tags (manual §5.5.1). Other sessions hear of it through the
notifier and see FETCH FLAGS at their next sync (IDLE: at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exmaild.store import flags as fl
from exmaild.store import imapmessages
from exmaild.store.changes import MailboxChange

from . import responses as r
from .cmd_select import claim_recent
from .commands import Command, StoreArgs, StoreMode
from .encode import compress_sequence_set

if TYPE_CHECKING:
    from .server import IMAPServer

MAX_KEYWORDS = 64  # per message
_MODES = {
    StoreMode.ADD: imapmessages.ADD,
    StoreMode.REMOVE: imapmessages.REMOVE,
    StoreMode.REPLACE: imapmessages.REPLACE,
}


async def store(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, StoreArgs)
    s = c.session
    sel = s.selected
    assert sel is not None
    if sel.readonly:
        return r.READ_ONLY
    if args.unchanged_since is not None:
        s.condstore = True
    mask, keywords = fl.from_names(list(args.flags))
    if len(keywords) > MAX_KEYWORDS:
        return r.no("Too many keywords", "LIMIT")
    await sel.index.refresh()
    await claim_recent(c)
    c.sync(allow_expunge=False)
    if c.closed or s.selected is not sel:
        return r.NO_MAILBOX_SELECTED
    view = sel.view
    positions = view.resolve(args.sequence_set, cmd.uid)
    if positions is None:
        return r.INVALID_SET
    uids = [view.uids[p] for p in positions if sel.index.position(view.uids[p]) >= 0]
    mid = sel.mailbox.id
    mode = _MODES[args.mode]
    since = args.unchanged_since
    # A flag change lost at power loss loses no mail: no fsync of its own
    # (message data and APPEND stay durable; see docs/performance.md).
    res = await c.store.pool.transaction(
        lambda conn: imapmessages.store_flags(conn, mid, uids, mode, mask, keywords, since),
        durable=False,
    )
    if res.modseq is not None:
        sel.index.apply_flags(res.changed)
        changed_uids = tuple(u for u, *_ in res.changed)
        c.store.notifier.publish(MailboxChange(mid, "flags", changed_uids, res.modseq, c))
    if c.closed or s.selected is not sel:
        return r.ok("Store completed")
    out: list[bytes] = view.new_keywords()
    # RFC 7162: with UNCHANGEDSINCE, report every message it left as is too.
    report = res.changed + (res.unchanged if since is not None else [])
    for uid, mask_new, kw, ms in sorted(report):
        pos = view.position(uid)
        if pos < 0:
            continue
        view.remember(pos, mask_new, kw)
        if args.silent and not s.condstore:
            continue
        if args.silent:
            # .SILENT still reports the new MODSEQ under CONDSTORE (RFC 7162 §3.2).
            out.append(b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (pos + 1, uid, ms))
        else:
            out.append(view.flag_fetch(pos, mask_new, kw, s.condstore, ms))
    c.send_all(out)
    if res.modified:
        if cmd.uid:
            modified = compress_sequence_set(res.modified).decode()
        else:
            modified = compress_sequence_set(view.position(u) + 1 for u in res.modified).decode()
        return r.ok("Conditional store failed for some messages", f"MODIFIED {modified}")
    return r.ok("Store completed")
