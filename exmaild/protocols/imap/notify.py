"""NOTIFY (RFC 5465): what a session asked to hear of, and telling it.

``NOTIFY SET [STATUS] (filter events) ...`` replaces the session's spec;
``NOTIFY NONE`` drops it. Supported events: MessageNew (with fetch
attributes for the selected mailbox), MessageExpunge, FlagChange,
MailboxName and SubscriptionChange; the others get NO [BADEVENT].

- The selected mailbox (``selected`` / ``selected-delayed``): its changes are
  pushed as they happen, as during IDLE, whenever no command is running
  (``selected-delayed`` holds expunges back until a command allows them);
  MessageNew's fetch attributes come as a FETCH of each new message.
- Other mailboxes of the account (``inboxes``, ``personal``, ``subscribed``,
  ``subtree``, ``mailboxes``): a change to one gives ``* STATUS name
  (MESSAGES UIDNEXT UNSEEN [HIGHESTMODSEQ])``, coalesced per mailbox.
- MailboxName / SubscriptionChange: other sessions of the same account that
  CREATE, DELETE, RENAME, SUBSCRIBE or UNSUBSCRIBE give ``* LIST`` lines
  (``\\NonExistent`` for a deleted name, ``("OLDNAME" (old))`` for a rename).

Unsolicited responses are written only between commands (or during IDLE),
never inside another response. Only changes this process hears of are
reported (the in-process change notices), and only IMAP sessions announce
mailbox names; shared mailboxes are not watched.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from exmaild.store.changes import MailboxChange

from . import folders
from . import responses as r
from .commands import EventGroup, NotifyArgs
from .encode import encode_mailbox
from .errors import ParseError
from .fetch import FetchItem, parse_fetch_items
from .session import Selected
from .tokens import Reader, decode_mailbox

if TYPE_CHECKING:
    from .commands import Command
    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")

SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
KNOWN = {e.upper(): e for e in (*SUPPORTED, "AnnotationChange", "MailboxMetadataChange",
                                "ServerMetadataChange")}
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange"})
SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
OTHER_FILTERS = frozenset({"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"})


# -- parsing ------------------------------------------------------------------------
def parse(reader: Reader) -> NotifyArgs:
    reader.sp()
    word = reader.keyword("NOTIFY argument")
    if word == "NONE":
        return NotifyArgs(none=True)
    if word != "SET":
        raise ParseError("Expected NOTIFY SET or NOTIFY NONE")
    reader.sp()
    status = False
    if reader.peek() != 0x28:  # "("
        if reader.keyword("NOTIFY SET option") != "STATUS":
            raise ParseError("Expected STATUS or an event group")
        status = True
        reader.sp()
    groups = [_group(reader)]
    while reader.take(b" "):
        groups.append(_group(reader))
    _check(groups)
    return NotifyArgs(tuple(groups), status)


def _group(reader: Reader) -> EventGroup:
    reader.expect(b"(", "(")
    filt = reader.keyword("filter").upper()
    if filt not in SELECTED_FILTERS | OTHER_FILTERS:
        raise ParseError(f"Unknown NOTIFY filter {filt[:30]}")
    boxes: tuple[str, ...] = ()
    if filt in ("SUBTREE", "MAILBOXES"):
        reader.sp()
        if reader.peek() == 0x28:
            boxes = tuple(reader.paren_list(reader.mailbox, allow_empty=False))
        else:
            boxes = (decode_mailbox(reader.astring("mailbox name"), utf8=reader.utf8),)
    reader.sp()
    events: list[str] = []
    fetch: tuple[FetchItem, ...] = ()
    if reader.peek() != 0x28:
        if reader.keyword("events") != "NONE":
            raise ParseError("Expected an event list or NONE")
    else:
        reader.expect(b"(", "(")
        while True:
            name = reader.keyword("event")
            event = KNOWN.get(name.upper())
            if event is None:
                raise ParseError(f"Unknown NOTIFY event {name[:30]}")
            events.append(event)
            if event == "MessageNew" and reader.line[reader.pos : reader.pos + 2] == b" (":
                reader.sp()
                fetch = parse_fetch_items(reader)
            if reader.take(b")"):
                break
            reader.sp()
    reader.expect(b")", ")")
    return EventGroup(filt, boxes, tuple(dict.fromkeys(events)), fetch)


def _check(groups: list[EventGroup]) -> None:
    """RFC 5465 §5 rules that make a request BAD."""
    if sum(g.filter in SELECTED_FILTERS for g in groups) > 1:
        raise ParseError("At most one of selected and selected-delayed")
    for g in groups:
        ev = set(g.events)
        if ("MessageNew" in ev) != ("MessageExpunge" in ev):
            raise ParseError("MessageNew and MessageExpunge go together")
        if "FlagChange" in ev and "MessageNew" not in ev:
            raise ParseError("FlagChange needs MessageNew and MessageExpunge")
        if g.fetch and g.filter not in SELECTED_FILTERS:
            raise ParseError("Fetch attributes are for the selected mailbox only")


# -- the session's state --------------------------------------------------------------
@dataclass
class Watch:
    """A session's NOTIFY spec and what serves it."""

    args: NotifyArgs
    selected: EventGroup | None
    others: list[EventGroup]
    names: bool  # MailboxName wanted
    subscriptions: bool  # SubscriptionChange wanted
    unsubscribers: list[Callable[[], None]] = field(default_factory=list)
    watched: dict[int, str] = field(default_factory=dict)  # mailbox id -> name
    pending: set[int] = field(default_factory=set)  # mailboxes to send STATUS for
    lines: list[bytes] = field(default_factory=list)  # LIST lines to send
    index_push: Callable[[], None] | None = None
    index: Any = None  # the MailboxIndex index_push listens to
    pushing: bool = False


_sessions: dict[int, set[IMAPServer]] = defaultdict(set)  # account id -> sessions


async def notify(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, NotifyArgs)
    bad = [e for g in args.groups for e in g.events if e not in SUPPORTED]
    if bad:  # refused: what was set before stays
        return r.no(f"Unsupported event {bad[0]}", f"BADEVENT ({' '.join(SUPPORTED)})")
    forget(c)
    if args.none:
        return r.ok("NOTIFY completed")
    selected = next((g for g in args.groups if g.filter in SELECTED_FILTERS), None)
    others = [g for g in args.groups if g.filter in OTHER_FILTERS]
    every = {e for g in args.groups for e in g.events}
    w = Watch(args, selected if selected and selected.events else None,
              [g for g in others if MESSAGE_EVENTS & set(g.events)],
              "MailboxName" in every, "SubscriptionChange" in every)
    c.session.notify = w
    _sessions[c.session.account_id].add(c)
    await _rewatch(c, w)
    selection_changed(c)
    if args.status:
        sel = c.session.selected
        skip = sel.mailbox.id if sel is not None else None
        w.pending.update(mid for mid in w.watched if mid != skip)
        await _flush_status(c, w, in_command=True)
    return r.ok("NOTIFY completed")


def forget(c: IMAPServer) -> None:
    """Drop the session's NOTIFY (NOTIFY NONE, a new NOTIFY SET, logout)."""
    w = c.session.notify
    if w is None:
        return
    c.session.notify = None
    for unsub in w.unsubscribers:
        unsub()
    _unhook_index(c, w)
    if c.session.account is not None:
        peers = _sessions.get(c.session.account_id)
        if peers is not None:
            peers.discard(c)
            if not peers:
                del _sessions[c.session.account_id]


async def _rewatch(c: IMAPServer, w: Watch) -> None:
    """(Re)subscribe to the mailboxes the non-selected filters name."""
    if not w.others:
        return
    aid = c.session.account_id
    boxes = await c.store.mailboxes.list(aid)
    subs: set[str] = set()
    if any(g.filter == "SUBSCRIBED" for g in w.others):
        from exmaild.store import subscriptions

        subs = await c.store.pool.do(lambda conn: subscriptions.names(conn, aid))
    if c.session.notify is not w:
        return  # replaced meanwhile
    # Only now, after the awaits: two rewatches in a row must not both add.
    for unsub in w.unsubscribers:
        unsub()
    w.unsubscribers.clear()
    w.watched.clear()
    for box in boxes:
        if any(_covers(g, box.name, subs) for g in w.others):
            w.watched[box.id] = box.name
            w.unsubscribers.append(
                c.store.notifier.subscribe(box.id, lambda ch, c=c, w=w: _changed(c, w, ch))
            )


def _covers(g: EventGroup, name: str, subs: set[str]) -> bool:
    if g.filter == "PERSONAL":
        return True
    if g.filter == "INBOXES":
        return name == "INBOX"
    if g.filter == "SUBSCRIBED":
        return name in subs
    wanted = [folders.canonical(m) for m in g.mailboxes]
    if g.filter == "MAILBOXES":
        return name in wanted
    return any(name == m or name.startswith(m + folders.SEP) for m in wanted)


def _changed(c: IMAPServer, w: Watch, change: MailboxChange) -> None:
    mid = change.mailbox_id
    if c.closed or c.session.notify is not w or change.kind == "deleted":
        return
    sel = c.session.selected
    if sel is not None and sel.mailbox.id == mid:
        return  # never STATUS for the selected mailbox: its own rules apply
    w.pending.add(mid)
    c.reactor.callLater(0, kick, c)


def kick(c: IMAPServer) -> None:
    """Send what is pending if no command is running (also after each command)."""
    w = c.session.notify
    if w is None or c.closed or (c.busy and not c.idling):
        return
    if w.lines:
        lines, w.lines = w.lines, []
        c.send_all(lines)
    if w.pending and not w.pushing:
        defer.Deferred.fromCoroutine(_flush_status(c, w))


async def _flush_status(c: IMAPServer, w: Watch, *, in_command: bool = False) -> None:
    from .cmd_mailbox import _status_line  # noqa: PLC0415 (cmd_mailbox imports us)

    w.pushing = True
    try:
        while w.pending and c.session.notify is w and not c.closed:
            if c.busy and not c.idling and not in_command:
                return  # after the command (server calls kick)
            mid = w.pending.pop()
            name = w.watched.get(mid)
            box = await c.store.mailboxes.get_by_id(mid)
            if name is None or box is None:
                continue
            items = ("MESSAGES", "UIDNEXT", "UNSEEN")
            if c.session.condstore:
                items += ("HIGHESTMODSEQ",)
            line = await _status_line(c, box, name, items)
            if c.session.notify is not w or c.closed:
                return
            if c.busy and not c.idling and not in_command:
                w.pending.add(mid)  # a command started meanwhile: after it
                return
            c.send(line)
    except Exception:
        log.failure("imap NOTIFY: STATUS failed (user={user})", user=c.session.user)
    finally:
        w.pushing = False


# -- the selected mailbox ------------------------------------------------------------------
def selection_changed(c: IMAPServer) -> None:
    """After SELECT / EXAMINE / CLOSE...: push the selected mailbox's changes
    as they happen if NOTIFY asks for them."""
    w = c.session.notify
    if w is None:
        return
    _unhook_index(c, w)
    sel = c.session.selected
    if sel is None or w.selected is None:
        return
    index = sel.index

    def push() -> None:
        if c.session.selected is sel and not c.closed:
            c.reactor.callLater(0, _push_selected, c, sel)

    w.index_push, w.index = push, index
    index.listeners.add(push)


def _unhook_index(c: IMAPServer, w: Watch) -> None:
    if w.index_push is not None and w.index is not None:
        w.index.listeners.discard(w.index_push)
    w.index_push = w.index = None


def _push_selected(c: IMAPServer, sel: Selected) -> None:
    w = c.session.notify
    if w is None or w.selected is None or c.session.selected is not sel or c.closed:
        return
    if c.busy:
        return  # the command's own sync tells it (IDLE pushes by itself)
    defer.Deferred.fromCoroutine(_sync_selected(c, w))


async def _sync_selected(c: IMAPServer, w: Watch) -> None:
    from .cmd_select import claim_recent  # noqa: PLC0415

    sel = c.session.selected
    if sel is None or w.selected is None:
        return
    group = w.selected
    before = len(sel.view)
    await claim_recent(c)
    if c.busy or c.session.selected is not sel or c.closed:
        return
    c.sync(allow_expunge=group.filter == "SELECTED")
    if group.fetch and len(sel.view) > before:
        await new_message_fetch(c, sel, group.fetch, list(range(before, len(sel.view))))


async def new_message_fetch(
    c: IMAPServer, sel: Selected, items: tuple[FetchItem, ...], positions: list[int]
) -> None:
    """MessageNew's fetch attributes: ``* n FETCH (...)`` for new messages."""
    from .cmd_fetch import _metas  # noqa: PLC0415
    from .fetch_stream import build_chunk, make_plan, render

    view, idx = sel.view, sel.index
    plan = make_plan(items, uid=True, modseq=False)
    metas = _metas(view, idx, plan, positions, set(), [0])
    if not plan.needs_rows:
        out: list[bytes] = []
        for meta in metas:
            render(out, plan, meta, None, None)
        c.send(b"".join(out))
        return
    mid = sel.mailbox.id
    built = await c.store.pool.do(
        lambda conn: build_chunk(conn, c.store.blobs, mid, plan, metas, {})
    )
    if c.session.selected is sel and not c.closed:
        c.send(built.data)


# -- mailbox names and subscriptions -----------------------------------------------------
def mailbox_event(c: IMAPServer, kind: str, name: str, old: str | None = None) -> None:
    """CREATE / DELETE / RENAME / SUBSCRIBE / UNSUBSCRIBE done by ``c``: tell
    the account's other NOTIFY sessions that asked, and rewatch."""
    for other in list(_sessions.get(c.session.account_id, ())):
        w = other.session.notify
        if other is c or w is None or other.closed:
            continue
        utf8 = other.session.utf8
        line = b""
        if kind in ("create", "delete", "rename") and w.names:
            attrs = "(\\NonExistent)" if kind == "delete" else "()"
            extra = b""
            if old is not None:
                extra = b' ("OLDNAME" (' + encode_mailbox(old, utf8=utf8) + b"))"
            line = (b"* LIST " + attrs.encode() + b' "/" ' + encode_mailbox(name, utf8=utf8)
                    + extra + b"\r\n")
        elif kind in ("subscribe", "unsubscribe") and w.subscriptions:
            attrs = "(\\Subscribed)" if kind == "subscribe" else "()"
            shown = encode_mailbox(name, utf8=utf8)
            line = b"* LIST " + attrs.encode() + b' "/" ' + shown + b"\r\n"
        if line:
            w.lines.append(line)
        if w.others:
            defer.Deferred.fromCoroutine(_rewatch(other, w))
        other.reactor.callLater(0, kick, other)
