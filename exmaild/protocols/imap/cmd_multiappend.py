"""MULTIAPPEND (RFC 3502): several messages in one APPEND, stored all or
nothing through the one ingest path (``Ingestor.ingest_group``: one
transaction; a refusal or a storage error places none). The answer names
the new UIDs in one APPENDUID uid-set (RFC 4315)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.logger import Logger

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.spool import SpooledMessage
from exmaild.store import flags as fl
from exmaild.store.errors import storage_full

from . import responses as r
from .commands import AppendArgs, AppendMessage
from .encode import compress_sequence_set
from .namespace import resolve

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger()


def unusable(msg: AppendMessage) -> r.Result | None:
    """Why one message of an APPEND cannot be stored at all, or None."""
    if not msg.message:
        return r.no("Cannot store an empty message", "CANNOT")
    if isinstance(msg.message, SpooledMessage) and msg.message.failed is not None:
        return r.no("Cannot store the message now (no space to receive it); try again",
                    "UNAVAILABLE")
    return None


async def multiappend(c: IMAPServer, args: AppendArgs) -> r.Result:
    messages = [AppendMessage(args.flags, args.internal_date, args.message), *args.more]
    for msg in messages:
        refusal = unusable(msg)
        if refusal is not None:
            return refusal
    where = await resolve(c, args.mailbox)
    if where is None:
        return r.NONEXISTENT
    if where.name.startswith("\\"):
        return r.TRYCREATE
    reqs = []
    for msg in messages:
        mask, keywords = fl.from_names(list(msg.flags))
        when = int(msg.internal_date.timestamp()) if msg.internal_date is not None else None
        target = Target(where.account_id, where.name, mask, keywords)
        reqs.append(IngestRequest(msg.message, [target], internal_date=when, check_quota=True,
                                  origin=c))
    try:
        results = await c.store.ingestor.ingest_group(reqs)
    except Exception as e:
        if not storage_full(e):
            raise
        log.error("imap MULTIAPPEND: no room to store {n} messages (user={user}): {error}",
                  n=len(reqs), user=c.session.user, error=str(e))
        return r.STORAGE_FULL
    refused = [x for res in results for x in res.refused]
    if refused:
        return r.OVERQUOTA if refused[0].reason == "overquota" else r.TRYCREATE
    done = [res.delivered[0] for res in results]
    sel = c.session.selected
    if sel is not None and sel.mailbox.id == done[0].mailbox_id:
        await sel.index.refresh()  # EXISTS before the tagged OK
    uids = compress_sequence_set([d.uid for d in done], sort=False).decode()
    return r.ok("Append completed", f"APPENDUID {done[0].uidvalidity} {uids}")
