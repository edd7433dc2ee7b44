"""SEARCH and UID SEARCH (RFC 3501 §6.4.4, RFC 7162 MODSEQ).

The key tree comes from search_parser.py with its strings already decoded
from the command's CHARSET (an unknown one was answered NO [BADCHARSET]
there); every key is evaluated in the database by
``exmaild.store.search.search_uids`` over this session's view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from . import responses as r
from .cmd_select import claim_recent
from .commands import Command
from .search_parser import SearchArgs

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")


async def search(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, SearchArgs)
    s = c.session
    sel = s.selected
    assert sel is not None
    if args.uses_modseq:
        s.condstore = True
    try:
        from exmaild.store.search import search_uids
    except ImportError:
        log.error("imap SEARCH: exmaild.store.search is not installed")
        return r.no("Search is temporarily unavailable", "UNAVAILABLE")
    await sel.index.refresh()
    await claim_recent(c)
    c.sync(allow_expunge=False)
    if c.closed or s.selected is not sel:
        return r.NO_MAILBOX_SELECTED
    view = sel.view
    result = await search_uids(
        c.store, sel.mailbox.id, args.key,
        view_uids=list(view.uids), recent=frozenset(view.recent),
    )
    if cmd.uid:
        numbers = result.uids
    else:
        numbers = [p + 1 for p in map(view.position, result.uids) if p >= 0]
    line = b"* SEARCH"
    if numbers:
        line += b" " + " ".join(map(str, numbers)).encode("ascii")
        if args.uses_modseq and result.highest_modseq is not None:
            line += b" (MODSEQ %d)" % result.highest_modseq
    c.send(line + b"\r\n")
    return r.ok("Search completed")
