"""SEARCH and UID SEARCH (RFC 3501 §6.4.4, RFC 7162 MODSEQ, RFC 4731 ESEARCH).

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
from .encode import compress_sequence_set
from .search_parser import SearchArgs

if TYPE_CHECKING:
    from exmaild.store.imapindex import MailboxIndex

    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")


async def search(c: IMAPServer, cmd: Command) -> r.Result:
    args = cmd.args
    assert isinstance(args, SearchArgs)
    s = c.session
    sel = s.selected
    assert sel is not None
    if s.utf8_accept and args.charset is not None:
        # RFC 6855 §3: after ENABLE UTF8=ACCEPT everything is UTF-8.
        return r.bad("No CHARSET in SEARCH once UTF8=ACCEPT is enabled")
    if args.uses_modseq:
        s.condstore = True
    save = args.returns is not None and "SAVE" in args.returns
    if save:
        sel.saved = []  # RFC 5182 §2.1: a SEARCH that fails leaves $ empty
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
    returns = args.returns
    if returns is None and s.rev2:
        returns = ("ALL",)  # RFC 9051 §6.4.4: no SEARCH response, ESEARCH instead
    if returns is not None:
        if save:
            sel.saved = _saved(returns, result.uids)
            returns = tuple(o for o in returns if o != "SAVE")
            if not returns:  # SAVE alone: no ESEARCH response (RFC 5182 §2.4)
                return r.ok("Search completed, result saved")
        c.send(_esearch(cmd, returns, args.uses_modseq, numbers, result.uids, sel.index,
                        result.highest_modseq))
        return r.ok("Search completed")
    line = b"* SEARCH"
    if numbers:
        line += b" " + " ".join(map(str, numbers)).encode("ascii")
        if args.uses_modseq and result.highest_modseq is not None:
            line += b" (MODSEQ %d)" % result.highest_modseq
    c.send(line + b"\r\n")
    return r.ok("Search completed")


def _saved(returns: tuple[str, ...], uids: list[int]) -> list[int]:
    """What SAVE keeps: with MIN and/or MAX but neither ALL nor COUNT, only
    those messages (RFC 5182 §2.4); otherwise every match."""
    if not uids or "ALL" in returns or "COUNT" in returns:
        return list(uids)
    picked = [uids[0]] * ("MIN" in returns) + [uids[-1]] * ("MAX" in returns)
    return sorted(set(picked)) if picked else list(uids)


def _esearch(
    cmd: Command, returns: tuple[str, ...], uses_modseq: bool, numbers: list[int],
    uids: list[int], index: MailboxIndex, highest: int | None,
) -> bytes:
    """``* ESEARCH (TAG "t") [UID] [MIN n] [MAX n] [COUNT n] [ALL set] [MODSEQ n]``
    (RFC 4731 §3.1: MIN/MAX/ALL only when something matched; COUNT always)."""
    out = b'* ESEARCH (TAG "' + cmd.tag.encode("ascii") + b'")'
    if cmd.uid:
        out += b" UID"
    if numbers:
        if "MIN" in returns:
            out += b" MIN %d" % numbers[0]
        if "MAX" in returns:
            out += b" MAX %d" % numbers[-1]
    if "COUNT" in returns:
        out += b" COUNT %d" % len(numbers)
    if numbers and "ALL" in returns:
        out += b" ALL " + compress_sequence_set(numbers)
    if numbers and uses_modseq and highest is not None:
        if "ALL" not in returns and "COUNT" not in returns:
            # RFC 7162 §3.1.5: the highest of the messages returned (MIN, MAX).
            picked = [uids[0]] * ("MIN" in returns) + [uids[-1]] * ("MAX" in returns)
            found = [index.modseqs[i] for i in map(index.position, picked) if i >= 0]
            highest = max(found, default=highest)
        out += b" MODSEQ %d" % highest
    return out + b"\r\n"
