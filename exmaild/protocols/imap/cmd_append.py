"""APPEND (RFC 3501 §6.3.11) with APPENDUID (RFC 4315; MULTIAPPEND is in
cmd_multiappend.py), through the one
ingest path: OK only once the message is durable (blob fsync'd, rows
committed); over quota it is ``NO [OVERQUOTA]``, a full disk or other storage
trouble ``NO [UNAVAILABLE]`` / ``NO [SERVERBUG]`` — never a silent loss.

The continuation (``+``) for a synchronising literal is sent only when every
command before it has been answered, so an APPEND that cannot succeed (not
logged in, over quota) is refused before the client uploads the message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.spool import SpooledMessage
from exmaild.store import flags as fl
from exmaild.store import imapmessages
from exmaild.store.errors import storage_full

from . import cmd_catenate, cmd_multiappend
from . import responses as r
from .commands import AppendArgs, Command
from .framing import ContinuationRequest
from .namespace import resolve
from .session import State

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger()


async def continuation(c: IMAPServer, cont: ContinuationRequest) -> None:
    """Answer a synchronising literal announcement: ``+`` or a refusal."""
    refusal = None
    if cont.name == "APPEND" and cont.tag is not None:
        s = c.session
        if s.state not in (State.AUTHENTICATED, State.SELECTED):
            refusal = r.NOT_AUTHENTICATED
        elif s.account is not None and s.account.quota_bytes:
            # Only accounts with a quota (as of login) are worth a look before
            # the upload; the ingest transaction checks the quota anyway.
            aid = s.account_id
            used, quota = await c.store.pool.do(lambda conn: imapmessages.account_usage(conn, aid))
            if quota and used + cont.size > quota:
                refusal = r.OVERQUOTA
    if refusal is not None and c.framer.reject_literal():
        assert cont.tag is not None
        c.send(refusal.line(cont.tag))
        c.refeed()
        return
    c.send(r.continuation())


async def append(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, AppendArgs)
    if args.catenate or any(m.catenate for m in args.more):
        built = await cmd_catenate.build(c, args)
        if isinstance(built, r.Result):
            return built
        args = built
    if args.more:
        return await cmd_multiappend.multiappend(c, args)
    s = c.session
    if not args.message:
        return r.no("Cannot store an empty message", "CANNOT")
    if isinstance(args.message, SpooledMessage) and args.message.failed is not None:
        return r.no("Cannot store the message now (no space to receive it); try again",
                    "UNAVAILABLE")
    mask, keywords = fl.from_names(list(args.flags))
    when = int(args.internal_date.timestamp()) if args.internal_date is not None else None
    where = await resolve(c, args.mailbox)
    if where is None:
        return r.NONEXISTENT
    name = where.name
    if name.startswith("\\"):
        return r.TRYCREATE  # ingest would take it for a SPECIAL-USE attribute
    req = IngestRequest(
        args.message,
        # By name: the ingest transaction resolves it, one round trip in all.
        [Target(where.account_id, name, mask, keywords)],
        internal_date=when,
        check_quota=True,
        origin=c,
    )
    try:
        res = await c.store.ingestor.ingest(req)
    except Exception as e:
        if not storage_full(e):
            raise
        log.error("imap APPEND: no room to store the message (user={user}): {error}",
                  user=s.user, error=str(e))
        return r.STORAGE_FULL
    if res.refused:
        return r.OVERQUOTA if res.refused[0].reason == "overquota" else r.TRYCREATE
    done = res.delivered[0]
    sel = s.selected
    if sel is not None and sel.mailbox.id == done.mailbox_id:
        await sel.index.refresh()  # EXISTS before the tagged OK (RFC 3501 §6.3.11)
    return r.ok("Append completed", f"APPENDUID {done.uidvalidity} {done.uid}")
