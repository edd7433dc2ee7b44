"""SELECT / EXAMINE, CHECK, CLOSE, UNSELECT (RFC 3691), EXPUNGE and UID
EXPUNGE (RFC 4315)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from exmaild.store import imapmessages
from exmaild.store.changes import MailboxChange
from exmaild.store.imapcache import index_cache

from . import notify, qresync, rev2
from . import responses as r
from .commands import Command, SelectArgs, SequenceArgs
from .namespace import get_mailbox
from .objectid import mailbox_id
from .session import Selected, State, View, fetch_cutoff

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")


def deselect(c: IMAPServer) -> None:
    s = c.session
    sel, s.selected = s.selected, None
    if sel is not None:
        index_cache(c.store).release(sel.index)
    if s.state is State.SELECTED:
        s.state = State.AUTHENTICATED
    if s.notify is not None:
        notify.selection_changed(c)


async def claim_recent(c: IMAPServer) -> None:
    """Before a sync: claim \\Recent for messages new to the selected mailbox
    (RFC 3501 §2.3.2), in the database, so that one session only, of any
    process, and also after a restart, sees each as \\Recent. A database round
    trip only when there are UIDs above what anyone claimed."""
    sel = c.session.selected
    if sel is None:
        return
    top = sel.view.claim_wanted()
    if not top:
        return
    mid = sel.mailbox.id
    try:
        # Not synced on its own (SQLite): a claim lost at power loss only
        # makes those messages \Recent once more (no mail is lost); a daemon
        # crash or restart keeps it.
        mark = await c.store.pool.transaction(
            lambda conn: imapmessages.claim_recent(conn, mid, top), durable=False
        )
    except Exception:
        # Not worth failing the command for: these are just not \Recent here
        # (and stay unclaimed for the next session).
        log.failure("imap: claiming \\Recent failed (mailbox {mailbox_id})", mailbox_id=mid)
        sel.view.claimed_top = max(sel.view.claimed_top, top)
        return
    if c.session.selected is sel:
        sel.view.claimed(mark, top)


async def select(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, SelectArgs)
    s = c.session
    if cmd.args.qresync is not None and not s.qresync:
        return r.bad("QRESYNC parameter without ENABLE QRESYNC")
    if s.selected is not None:
        # RFC 7162 §3.2.11: the boundary between the two mailboxes' responses.
        c.send(r.untagged_ok("Previous mailbox closed", "CLOSED"))
    deselect(c)  # even a failed SELECT leaves no mailbox selected (RFC 3501 §6.3.1)
    box = await get_mailbox(c, cmd.args.mailbox)
    if box is None:
        return r.NONEXISTENT
    cache = index_cache(c.store)
    idx = cache.acquire(box.id)
    try:
        await idx.refresh()
    except BaseException:
        cache.release(idx)
        raise
    if idx.gone or c.closed:
        cache.release(idx)
        return r.NONEXISTENT
    readonly = cmd.name == "EXAMINE"
    if cmd.args.condstore:
        s.condstore = True
    assert s.account is not None
    view = View(idx, cutoff=fetch_cutoff(s.account), claim_recent=not readonly, rev2=s.rev2)
    view.qresync = s.qresync
    sel = s.selected = Selected(box, idx, view, readonly)
    s.state = State.SELECTED
    st = idx.state  # what the view was made from
    if s.notify is not None:
        notify.selection_changed(c)
    await claim_recent(c)
    out = [*view.announce_flags(), r.exists(len(view))]
    if not s.rev2:  # RFC 9051 has neither RECENT nor [UNSEEN n]
        out.append(r.recent(len(view.recent)))
        unseen = view.first_unseen()
        if unseen:
            out.append(r.untagged_ok(f"First unseen: {unseen}", f"UNSEEN {unseen}"))
    out += [
        r.untagged_ok("UIDs valid", f"UIDVALIDITY {st.uidvalidity}"),
        r.untagged_ok("Predicted next UID", f"UIDNEXT {st.uidnext}"),
        r.untagged_ok("Highest", f"HIGHESTMODSEQ {st.highestmodseq}"),
        r.untagged_ok("Ok", f"MAILBOXID ({mailbox_id(box)})"),  # RFC 8474
    ]
    if s.rev2:
        out.append(await rev2.select_list_line(c, cmd.args.mailbox, box))
        if c.session.selected is not sel:
            return r.NO_MAILBOX_SELECTED
    c.send_all(out)
    if cmd.args.qresync is not None:
        await qresync.resync(c, sel, cmd.args.qresync, st.uidnext)
    verb = "Examine" if readonly else "Select"
    return r.ok(f"{verb} completed", "READ-ONLY" if readonly else "READ-WRITE")


async def check(c: IMAPServer, cmd: Command) -> r.Result:
    sel = c.session.selected
    assert sel is not None
    await sel.index.refresh()
    return r.ok("Check completed")


async def close(c: IMAPServer, cmd: Command) -> r.Result:
    sel = c.session.selected
    assert sel is not None
    modseq = 0
    if not sel.readonly:
        # CLOSE expunges silently (RFC 3501 §6.4.2): no EXPUNGE responses.
        modseq = await _expunge(c, sel, list(sel.view.uids), announce=False)
    deselect(c)
    if c.session.qresync:
        # The client's cache needs the modseq its own silent expunge made
        # (RFC 7162 §3.2.8).
        return r.ok("Close completed", f"HIGHESTMODSEQ {modseq or sel.index.state.highestmodseq}")
    return r.ok("Close completed")


async def unselect(c: IMAPServer, cmd: Command) -> r.Result:
    deselect(c)
    return r.ok("Unselect completed")


async def expunge(c: IMAPServer, cmd: Command) -> r.Result:
    sel = c.session.selected
    assert sel is not None
    if sel.readonly:
        return r.READ_ONLY
    view = sel.view
    if cmd.uid:
        assert isinstance(cmd.args, SequenceArgs)
        positions = view.resolve(cmd.args.sequence_set, True) or []
        allowed = [view.uids[p] for p in positions]
    else:
        allowed = list(view.uids)
    modseq = await _expunge(c, sel, allowed, announce=True)
    if c.session.condstore and modseq:
        return r.ok("Expunge completed", f"HIGHESTMODSEQ {modseq}")
    return r.ok("Expunge completed")


async def _expunge(c: IMAPServer, sel: Selected, allowed: list[int], *, announce: bool) -> int:
    mid = sel.mailbox.id
    uids, modseq = await c.store.pool.transaction(
        lambda conn: imapmessages.expunge_deleted(conn, mid, allowed)
    )
    if not uids or modseq is None:
        return 0
    c.store.notifier.publish(MailboxChange(mid, "expunge", tuple(uids), modseq, c))
    out = sel.view.expunge(uids)
    if announce:
        c.send_all(out)
    return modseq
