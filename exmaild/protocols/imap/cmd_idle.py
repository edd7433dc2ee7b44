"""IDLE (RFC 2177).

Only ``DONE`` ends it; any other line gets ``* BAD`` and idling goes on.
While idling, deliveries and other sessions' changes are pushed at once:
the shared index hears the change notice, refreshes itself once for all its
sessions, and each idling session syncs its view. One reactor-wide timer
sends ``* OK Still here`` to every idling session now and then, so NAT boxes
keep the connection, and re-reads each idled mailbox once (changes made by
another node sharing the database reach idlers at the latest then); the
autologout timer was re-armed when IDLE began.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from . import responses as r
from .cmd_select import claim_recent
from .commands import Command
from .framing import FramingError, RawLine

if TYPE_CHECKING:
    from .server import IMAPServer

KEEPALIVE = 120.0  # seconds between "* OK Still here"

_idlers: set[IMAPServer] = set()
_keepalive: task.LoopingCall | None = None


def _still_here() -> None:
    line = r.untagged_ok("Still here")
    indexes = {}
    for c in list(_idlers):
        c.send(line)
        sel = c.session.selected
        if sel is not None:
            indexes[id(sel.index)] = sel.index
    # A safety net for changes no notice told us about (another node sharing
    # the database): one refresh per idled mailbox per interval, not per session.
    for idx in indexes.values():
        defer.Deferred.fromCoroutine(idx.refresh_and_notify())


def _start_keepalive(reactor: Any) -> None:
    global _keepalive
    if _keepalive is None or not _keepalive.running:
        _keepalive = task.LoopingCall(_still_here)
        _keepalive.clock = reactor
        _keepalive.start(KEEPALIVE, now=False)


def _stop_keepalive() -> None:
    global _keepalive
    if _keepalive is not None and _keepalive.running and not _idlers:
        _keepalive.stop()
        _keepalive = None


def forget(c: IMAPServer) -> None:
    """Connection gone: stop pushing to it."""
    _idlers.discard(c)
    if not _idlers:
        _stop_keepalive()


async def idle(c: IMAPServer, cmd: Command) -> r.Result:
    sel = c.session.selected
    c.send(r.continuation("idling"))
    c.reset_timeout()

    pushing = {"running": False, "again": False}

    def push() -> None:
        # \Recent is claimed (a database round trip) before each sync; one
        # push at a time, and a notice that comes meanwhile is one more turn.
        if not c.idling:
            return
        if pushing["running"]:
            pushing["again"] = True
            return
        pushing["running"] = True
        defer.Deferred.fromCoroutine(push_turns())

    async def push_turns() -> None:
        try:
            while c.idling:
                pushing["again"] = False
                await claim_recent(c)
                if c.idling:
                    c.sync(allow_expunge=True)
                if not pushing["again"]:
                    break
        finally:
            pushing["running"] = False

    if sel is not None:
        sel.index.listeners.add(push)
    c.idling = True
    _idlers.add(c)
    _start_keepalive(c.reactor)
    try:
        if sel is not None:
            await sel.index.refresh()
            push()
        while not c.closed:
            event = await c.wait_raw_line()
            if isinstance(event, RawLine) and event.is_done:
                break
            if isinstance(event, FramingError):
                return r.bad("Expected DONE")
            c.send(r.untagged_bad("Expected DONE to end IDLE"))
    finally:
        c.idling = False
        if sel is not None:
            sel.index.listeners.discard(push)
        forget(c)
    return r.ok("Idle completed")
