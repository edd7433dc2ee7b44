"""COPY / MOVE and their UID forms (RFC 3501, RFC 6851 MOVE, RFC 4315 COPYUID)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from exmaild.store import imapmessages
from exmaild.store.changes import MailboxChange

from . import responses as r
from .commands import Command, CopyArgs
from .copyhooks import after_copy
from .encode import compress_sequence_set
from .namespace import get_mailbox

if TYPE_CHECKING:
    from .server import IMAPServer


async def copy(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, CopyArgs)
    sel = c.session.selected
    assert sel is not None
    move = cmd.name == "MOVE"
    verb = "Move" if move else "Copy"
    if move and sel.readonly:
        return r.READ_ONLY
    view = sel.view
    positions = view.resolve(args.sequence_set, cmd.uid)
    if positions is None:
        return r.INVALID_SET
    dst = await get_mailbox(c, args.mailbox)
    if dst is None:
        return r.TRYCREATE
    uids = [view.uids[p] for p in positions]
    if not uids:
        return r.ok(f"{verb} completed (no messages)")
    src_id = sel.mailbox.id
    res = await c.store.pool.transaction(
        lambda conn: imapmessages.copy_messages(
            conn, src_id, uids, dst.id, move=move, check_quota=True
        )
    )
    if res.overquota:
        return r.OVERQUOTA
    if not res.pairs:
        return r.no("The messages were expunged meanwhile", "EXPUNGEISSUED")
    src_uids = [a for a, _ in res.pairs]
    dst_uids = [b for _, b in res.pairs]
    notify = c.store.notifier.publish
    assert res.dst_modseq is not None
    notify(MailboxChange(dst.id, "exists", tuple(dst_uids), res.dst_modseq, c))
    src_set = compress_sequence_set(src_uids, sort=False).decode()
    dst_set = compress_sequence_set(dst_uids, sort=False).decode()
    code = f"COPYUID {res.uidvalidity} {src_set} {dst_set}"
    if move:
        assert res.src_modseq is not None
        notify(MailboxChange(src_id, "expunge", tuple(src_uids), res.src_modseq, c))
        out = [r.untagged_ok("Moved", code)]
        if c.session.selected is sel:
            out += sel.view.expunge(src_uids)
        c.send_all(out)
    # report spam, rspamd training
    await after_copy(c.app, c.session.account, sel.mailbox, dst, dst_uids)
    if dst.id == src_id and c.session.selected is sel:
        await sel.index.refresh()  # show the copies in this session at once
    return r.ok(f"{verb} completed", None if move else code)
