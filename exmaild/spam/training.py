"""rspamd training from IMAP (`[spam] learn`): a member moving or copying
mail into Junk teaches rspamd it is spam (learn_spam), out of Junk into any
folder but Deleted that it is not (learn_ham). Runs after the command has
answered: the messages are read on a thread, sent to the controller, and a
failure is only logged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer, threads
from twisted.logger import Logger

from exmaild.store import model as m
from exmaild.store.contents import blob_refs

log = Logger(namespace="exmaild.spam")

JUNK, TRASH = "\\Junk", "\\Trash"
MAX_PER_COMMAND = 100  # messages learnt from one COPY/MOVE (a mass clean-up is not training)


def direction(src_use: str | None, dst_use: str | None) -> str | None:
    """"spam", "ham" or None (nothing to learn)."""
    if dst_use == JUNK and src_use != JUNK:
        return "spam"
    if src_use == JUNK and dst_use not in (JUNK, TRASH):
        return "ham"
    return None


def after_copy(app: Any, src: Any, dst: Any, dst_uids: Sequence[int]) -> None:
    """Called by COPY/MOVE once the messages are in `dst`."""
    cfg = app.cfg.spam
    if not (cfg.learn and cfg.rspamd) or not dst_uids:
        return
    kind = direction(src.special_use, dst.special_use)
    if kind is None:
        return
    d = defer.Deferred.fromCoroutine(learn(app, kind, dst.id, list(dst_uids)[:MAX_PER_COMMAND]))
    d.addErrback(lambda f: log.failure("rspamd training failed", f))


async def learn(app: Any, kind: str, mailbox_id: int, uids: list[int]) -> int:
    """Send the messages to rspamd's controller; how many it took."""
    from exmaild.spam.smtp import context_for

    rspamd = context_for(app).rspamd
    if rspamd is None:
        return 0
    c = m.messages.c

    def refs(conn: sa.Connection) -> list[Any]:
        ids = conn.execute(sa.select(c.content_id).where(
            c.mailbox_id == mailbox_id, c.uid.in_(uids))).scalars().all()
        found = blob_refs(conn, ids)
        return [found[i] for i in ids if i in found]

    store = app.store
    done = 0
    for ref in await store.pool.do(refs):
        raw = await threads.deferToThreadPool(app.reactor, app.reactor.getThreadPool(),
                                              store.blobs.read, ref)
        done += await rspamd.learn(kind, raw)
    log.info("rspamd learn_{kind}: {done} of {n} message(s)", kind=kind, done=done,
             n=len(uids))
    return done
