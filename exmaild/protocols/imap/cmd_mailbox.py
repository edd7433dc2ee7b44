"""LIST / LSUB / XLIST (with RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS,
RFC 6154 SPECIAL-USE), CREATE, DELETE, RENAME, SUBSCRIBE / UNSUBSCRIBE and
STATUS."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from exmaild.store import flags as fl
from exmaild.store import imapfolders, imapmessages, subscriptions
from exmaild.store.changes import MailboxChange
from exmaild.store.imapcache import index_cache
from exmaild.store.imapfolders import FolderExists, FolderMissing
from exmaild.store.records import Mailbox

from . import folders, namespace, notify, objectid
from . import responses as r
from .cmd_select import deselect
from .commands import Command, ListArgs, MailboxArgs, RenameArgs, StatusArgs
from .encode import encode_mailbox
from .session import SEEN_TABLE, fetch_cutoff

if TYPE_CHECKING:
    from exmaild.store.imapindex import MailboxIndex

    from .server import IMAPServer


# -- LIST ------------------------------------------------------------------------
def _ordered(boxes: list[Mailbox]) -> list[Mailbox]:
    return sorted(boxes, key=lambda b: (b.name != "INBOX", b.name))


async def list_(c: IMAPServer, cmd: Command) -> r.Result:
    a = cmd.args
    assert isinstance(a, ListArgs)
    kind = cmd.name
    if not a.extended and a.patterns == ("",):
        # The hierarchy delimiter and root of the reference (RFC 3501 §6.3.8).
        root = a.reference.split(folders.SEP)[0] + folders.SEP if folders.SEP in a.reference else ""
        c.send(r.list_line(kind, ["\\Noselect"], root, utf8=c.session.utf8))
        return r.ok(f"{kind} completed")
    aid = c.session.account_id
    boxes = await c.store.mailboxes.list(aid)
    by_name = {b.name: b for b in boxes}
    # The business mailboxes assigned to the member, under Shared/ (RFC 2342).
    shared = await namespace.shared_listing(c)
    by_name.update(shared)
    listed = [b.name for b in _ordered(boxes)] + [n for n, _ in shared]
    names = list(by_name)
    parents = folders.children_index(names)
    # A parent that does not exist (made by some other path) shows as \Noselect.
    missing = sorted(p for p in parents if p not in by_name)
    matchers = [folders.matcher(a.reference, p) for p in a.patterns]
    special_only = "SPECIAL-USE" in a.selection_options
    show_subscribed = "SUBSCRIBED" in a.selection_options or "SUBSCRIBED" in a.return_options
    subs: set[str] = set()
    if kind == "LSUB" or show_subscribed:
        subs = await c.store.pool.do(lambda conn: subscriptions.names(conn, aid))
    if kind == "LSUB":
        c.send_all(_lsub_lines(subs, matchers, utf8=c.session.utf8))
        return r.ok(f"{kind} completed")
    if "SUBSCRIBED" in a.selection_options:
        return await _list_subscribed(c, a, by_name, parents, subs, matchers)
    out: list[bytes] = []
    for name in listed + missing:
        if not any(mt(name) for mt in matchers):
            continue
        box = by_name.get(name)
        if box is None:
            if special_only:
                continue
            attrs = ["\\Noselect", "\\HasChildren"]
            out.append(r.list_line(kind, attrs, name, utf8=c.session.utf8))
            continue
        if special_only and not box.special_use:
            continue
        attrs = folders.attributes(name, name in parents, xlist=kind == "XLIST")
        if box.special_use and box.special_use not in attrs and kind != "XLIST":
            attrs.append(box.special_use)  # made by CREATE ... (USE (...))
        if show_subscribed and name in subs and kind == "LIST":
            attrs.append("\\Subscribed")
        out.append(r.list_line(kind, attrs, name, utf8=c.session.utf8))
        if a.status_items:
            c.send_all(out)
            out = []
            c.send(await _status_line(c, box, name, a.status_items))
    c.send_all(out)
    return r.ok(f"{kind} completed")


def _by_listing_order(names: set[str]) -> list[str]:
    return sorted(names, key=lambda n: (n != "INBOX", n))


def _lsub_lines(
    subs: set[str], matchers: list[Callable[[str], bool]], *, utf8: bool = False
) -> list[bytes]:
    """LSUB (RFC 3501 §6.3.9): the subscribed names that match, whether or not
    the mailbox exists; a name that is not subscribed but has subscribed
    children the pattern leaves out (``%``) comes as \\Noselect."""
    out = []
    hidden_parents: set[str] = set()
    for name in _by_listing_order(subs):
        if any(mt(name) for mt in matchers):
            out.append(r.list_line("LSUB", [], name, utf8=utf8))
        else:
            hidden_parents.update(imapfolders.parents_of(name))
    for name in _by_listing_order(hidden_parents - subs):
        if any(mt(name) for mt in matchers):
            out.append(r.list_line("LSUB", ["\\Noselect"], name, utf8=utf8))
    return out


CHILDINFO_SUBSCRIBED = b' ("CHILDINFO" ("SUBSCRIBED"))'


async def _list_subscribed(
    c: IMAPServer, a: ListArgs, by_name: dict[str, Mailbox], parents: set[str],
    subs: set[str], matchers: list[Callable[[str], bool]],
) -> r.Result:
    """LIST (SUBSCRIBED ...) (RFC 5258 §3): subscribed names, existing or not
    (\\NonExistent); with RECURSIVEMATCH also the names that match and have a
    subscribed descendant, marked CHILDINFO ("SUBSCRIBED")."""
    recursive = "RECURSIVEMATCH" in a.selection_options
    special_only = "SPECIAL-USE" in a.selection_options
    with_children: set[str] = set()
    if recursive:
        for name in subs:
            with_children.update(imapfolders.parents_of(name))
    for name in _by_listing_order(subs | with_children):
        if not any(mt(name) for mt in matchers):
            continue
        box = by_name.get(name)
        if special_only and (box is None or not box.special_use):
            continue
        if box is not None:
            attrs = folders.attributes(name, name in parents)
            if box.special_use and box.special_use not in attrs:
                attrs.append(box.special_use)
        elif name in parents:
            attrs = ["\\Noselect", "\\HasChildren"]
        else:
            attrs = ["\\NonExistent"]
        if name in subs:
            attrs.append("\\Subscribed")
        extra = CHILDINFO_SUBSCRIBED if name in with_children else b""
        c.send(r.list_line("LIST", attrs, name, extra, utf8=c.session.utf8))
        if a.status_items and box is not None:
            c.send(await _status_line(c, box, name, a.status_items))
    return r.ok("LIST completed")


# -- CREATE / DELETE / RENAME -----------------------------------------------------------
# The folders of business mailboxes are not created, deleted or renamed from a
# member's session (nor may a member's own folder take the Shared/ prefix).
SHARED_FIXED = r.no("Folders in the shared namespace cannot be created, deleted or renamed",
                    "NOPERM")


async def create(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, MailboxArgs)
    asked = cmd.args.mailbox.rstrip(folders.SEP) or cmd.args.mailbox
    name = folders.canonical(asked)
    if namespace.is_shared_name(asked):
        return SHARED_FIXED
    if folders.is_system(name):
        if name != asked:
            # A localised name for a system folder: that folder is the answer.
            return r.ok(f"Using the system folder {name}")
        return r.no("Mailbox already exists", "ALREADYEXISTS")
    problem = folders.check_new_name(name)
    if problem:
        return r.no(problem, "CANNOT")
    aid = c.session.account_id
    use = None
    if cmd.args.uses:
        use = objectid.creatable_use(cmd.args.uses)
        if use is None:
            return r.no("A new mailbox can only be given the special use \\Archive", "USEATTR")
    try:
        box = await c.store.pool.transaction(
            lambda conn: objectid.create_with_use(conn, aid, name, use)
        )
    except FolderExists:
        return r.no("Mailbox already exists", "ALREADYEXISTS")
    except objectid.UseTaken:
        return r.no(f"A mailbox already has the special use {use}", "USEATTR")
    notify.mailbox_event(c, "create", name)
    return r.ok("Create completed", f"MAILBOXID ({objectid.mailbox_id(box)})")


async def delete(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, MailboxArgs)
    name = folders.canonical(cmd.args.mailbox)
    if namespace.is_shared_name(cmd.args.mailbox):
        return SHARED_FIXED
    if folders.is_system(name):
        return r.no("System folders cannot be deleted", "CANNOT")
    aid = c.session.account_id
    boxes = await c.store.mailboxes.list(aid)
    box = next((b for b in boxes if b.name == name), None)
    if box is None:
        return r.NONEXISTENT
    if any(b.name.startswith(name + folders.SEP) for b in boxes):
        return r.no("Mailbox has subfolders; delete them first", "INUSE")
    sel = c.session.selected
    if sel is not None and sel.mailbox.id == box.id:
        deselect(c)
    await c.store.pool.transaction(lambda conn: imapfolders.delete(conn, box.id))
    c.store.notifier.publish(MailboxChange(box.id, "deleted", (), 0, c))
    notify.mailbox_event(c, "delete", name)
    return r.ok("Delete completed")


async def rename(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, RenameArgs)
    old = folders.canonical(cmd.args.old)
    new = folders.canonical(cmd.args.new.rstrip(folders.SEP) or cmd.args.new)
    if namespace.is_shared_name(cmd.args.old) or namespace.is_shared_name(cmd.args.new):
        return SHARED_FIXED
    if folders.is_system(old):
        return r.no("System folders cannot be renamed", "CANNOT")
    if folders.is_system(new):
        return r.no("Mailbox already exists", "ALREADYEXISTS")
    if new == old or new.startswith(old + folders.SEP):
        return r.no("Cannot rename a mailbox into itself", "CANNOT")
    problem = folders.check_new_name(new)
    aid = c.session.account_id
    boxes = await c.store.mailboxes.list(aid)
    deepest = max(
        (folders.depth(b.name) - folders.depth(old) for b in boxes
         if b.name.startswith(old + folders.SEP)),
        default=0,
    )
    if problem is None and folders.depth(new) + deepest > folders.MAX_LEVELS:
        problem = f"Folders nest at most {folders.MAX_LEVELS} levels deep"
    if problem:
        return r.no(problem, "CANNOT")

    def thd(conn: Connection) -> list[int]:
        ids = imapfolders.rename(conn, aid, old, new)
        subscriptions.rename(conn, aid, old, new)  # subscriptions follow the mailbox
        return ids

    try:
        ids = await c.store.pool.transaction(thd)
    except FolderMissing:
        return r.NONEXISTENT
    except FolderExists:
        return r.no("Mailbox already exists", "ALREADYEXISTS")
    sel = c.session.selected
    if sel is not None and sel.mailbox.id in ids:
        deselect(c)
    for mid in ids:  # other sessions with it selected are told it went away
        c.store.notifier.publish(MailboxChange(mid, "deleted", (), 0, c))
    notify.mailbox_event(c, "rename", new, old)
    return r.ok("Rename completed")


async def subscribe(c: IMAPServer, cmd: Command) -> r.Result:
    """SUBSCRIBE needs the mailbox to exist (RFC 3501 §6.3.6 allows checking);
    UNSUBSCRIBE takes any subscribed name, the mailbox gone or not (§6.3.7)."""
    assert isinstance(cmd.args, MailboxArgs)
    name = folders.canonical(cmd.args.mailbox)
    aid = c.session.account_id
    done = f"{cmd.name.capitalize()} completed"
    if cmd.name == "UNSUBSCRIBE":
        if await c.store.pool.transaction(lambda conn: subscriptions.unsubscribe(conn, aid, name)):
            notify.mailbox_event(c, "unsubscribe", name)
            return r.ok(done)
        if await c.store.mailboxes.get(aid, name) is None:
            return r.no("No such subscription", "NONEXISTENT")
        return r.ok(done)  # exists, was not subscribed: nothing to do
    if await namespace.get_mailbox(c, cmd.args.mailbox) is None:
        return r.NONEXISTENT
    limit = c.cfg.limits.imap_subscriptions
    added = await c.store.pool.transaction(
        lambda conn: subscriptions.subscribe(conn, aid, name, limit)
    )
    if not added:
        return r.no(f"At most {limit} subscriptions", "LIMIT")
    notify.mailbox_event(c, "subscribe", name)
    return r.ok(done)


# -- STATUS ------------------------------------------------------------------------------
async def status(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, StatusArgs)
    box = await namespace.get_mailbox(c, cmd.args.mailbox)
    if box is None:
        return r.NONEXISTENT
    c.send(await _status_line(c, box, cmd.args.mailbox, cmd.args.items))
    return r.ok("Status completed")


async def _status_line(c: IMAPServer, box: Mailbox, shown: str, items: tuple[str, ...]) -> bytes:
    assert c.session.account is not None
    cutoff = fetch_cutoff(c.session.account)
    idx = index_cache(c.store).peek(box.id)
    values: dict[str, int]
    if idx is not None and idx.loaded:
        await idx.refresh()  # may find the mailbox gone: then ask the database
    if idx is not None and idx.loaded and not idx.gone:
        if cutoff:
            keep = [i for i, d in enumerate(idx.dates) if d >= cutoff]
            flags = bytes(idx.flags[i] for i in keep)
            uids = [idx.uids[i] for i in keep]
        else:
            flags, uids = bytes(idx.flags), list(idx.uids)
        st = idx.state
        values = {
            "MESSAGES": len(uids),
            "UNSEEN": len(flags) - flags.translate(SEEN_TABLE).count(1),
            # Not claimed by any session yet: \Recent for the next to select.
            "RECENT": len(uids) - bisect_right(uids, idx.recent_mark),
            "UIDNEXT": st.uidnext,
            "UIDVALIDITY": st.uidvalidity,
            "HIGHESTMODSEQ": st.highestmodseq,
        }
    else:
        mid = box.id
        # One round trip: the counts and the mailbox row together.
        row = await c.store.pool.do(lambda conn: imapmessages.status_counts(conn, mid, cutoff))
        if row is None:  # deleted meanwhile: what the mailbox said last
            row = (0, 0, 0, box.uidvalidity, box.uidnext, box.highestmodseq)
        total, unseen, recent, uidvalidity, uidnext, highestmodseq = row
        values = {
            "MESSAGES": total,
            "UNSEEN": unseen,
            "RECENT": recent,
            "UIDNEXT": uidnext,
            "UIDVALIDITY": uidvalidity,
            "HIGHESTMODSEQ": highestmodseq,
        }
    if "SIZE" in items:  # RFC 8438: the RFC822.SIZE total
        if idx is not None and idx.loaded and not idx.gone:
            sizes = idx.sizes
            values["SIZE"] = sum(
                sizes[i] for i, d in enumerate(idx.dates) if d >= cutoff
            ) if cutoff else sum(sizes)
        else:
            mid = box.id
            values["SIZE"] = await c.store.pool.do(
                lambda conn: objectid.mailbox_size(conn, mid, cutoff)
            )
    if "DELETED" in items:
        values["DELETED"] = await _deleted(c, box, idx, cutoff)
    shown_values = {k: str(v) for k, v in values.items()}
    shown_values["MAILBOXID"] = f"({objectid.mailbox_id(box)})"
    body = " ".join(f"{item} {shown_values[item]}" for item in items)
    name = encode_mailbox(shown, utf8=c.session.utf8)
    return b"* STATUS " + name + b" (" + body.encode("ascii") + b")\r\n"


async def _deleted(c: IMAPServer, box: Mailbox, idx: MailboxIndex | None, cutoff: int) -> int:
    """STATUS DELETED (RFC 9051): from the shared index when loaded."""
    if idx is not None and idx.loaded and not idx.gone:
        return sum(
            1 for i, f in enumerate(idx.flags)
            if f & fl.DELETED and (not cutoff or idx.dates[i] >= cutoff)
        )
    mid = box.id
    return await c.store.pool.do(lambda conn: imapmessages.deleted_count(conn, mid, cutoff))
