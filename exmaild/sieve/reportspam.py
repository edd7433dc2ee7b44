"""Report spam over IMAP (manual §5.5.6, §5.6.1): a member who moves (MOVE,
or COPY then expunge) messages into Junk reports them, and their senders (the
From: address) go on the member's block list (action `junk`); moving them
out of Junk (not to the Deleted folder) says "not spam": the sender's own
block entry is removed, and when a domain entry still blocks it an allow
entry for the address is added. The member's setting `report_spam_blocks`
(on by default, as the manual's report button also blocks) turns this off.

Runs after the copy is committed; a failure is logged and never fails the
IMAP command.
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.sieve import senders
from exmaild.store import model as m
from exmaild.store.records import Account, Mailbox

log = Logger(namespace="exmaild.sieve")
JUNK, TRASH = "\\Junk", "\\Trash"
MAX_SENDERS = 100  # per command: a bulk move does not grow the list without end


def _senders(conn: sa.Connection, mailbox_id: int, uids: list[int]) -> list[str]:
    msg, c = m.messages.c, m.contents.c
    out: dict[str, None] = {}
    for i in range(0, len(uids), 500):
        rows = conn.execute(sa.select(c.from_addr).select_from(
            m.messages.join(m.contents, c.id == msg.content_id))
            .where(msg.mailbox_id == mailbox_id, msg.uid.in_(uids[i:i + 500])))
        for (text,) in rows:
            for _name, addr in getaddresses([text or ""]):
                if "@" in addr:
                    out[addr.strip().lower()] = None
                    break
    return list(out)[:MAX_SENDERS]


def _report(conn: sa.Connection, account: Account, addrs: list[str], spam: bool) -> list[str]:
    done: list[str] = []
    aid = account.id
    for addr in addrs:
        if addr == account.address:
            continue
        try:
            p = senders.normalise(addr)
        except senders.FilterError:
            continue
        entries = senders.entries(conn, aid)
        if spam:
            if any(e.list == "allow" and e.pattern == p for e in entries):
                senders.remove(conn, aid, "allow", p)
            if not any(e.list == "block" and senders.matches(e.pattern, p) for e in entries):
                senders.add(conn, aid, "block", p, "junk")
                done.append(f"block {p}")
            continue
        if any(e.list == "block" and e.pattern == p for e in entries):
            senders.remove(conn, aid, "block", p)
            done.append(f"unblock {p}")
            entries = senders.entries(conn, aid)
        if senders.decide(entries, [p]) in ("junk", "refuse"):
            senders.add(conn, aid, "allow", p, "junk")
            done.append(f"allow {p}")
    return done


async def on_copy(app: Any, account: Account, src: Mailbox, dst: Mailbox,
                  dst_uids: list[int]) -> None:
    """Called after COPY/MOVE of `dst_uids` (their UIDs in `dst`)."""
    if dst.account_id != account.id or src.account_id != account.id:
        return  # a business mailbox's folders: not the member's own lists
    into = dst.special_use == JUNK and src.special_use != JUNK
    out_of = src.special_use == JUNK and dst.special_use not in (JUNK, TRASH)
    if not (into or out_of) or not dst_uids:
        return
    store = app.store
    fresh = await store.directory.get_account_by_id(account.id)
    if fresh is None or not fresh.setting("report_spam_blocks"):
        return

    def thd(conn: sa.Connection) -> list[str]:
        return _report(conn, fresh, _senders(conn, dst.id, dst_uids), spam=into)

    done = await store.pool.transaction(thd)
    if done:
        from exmaild.sieve.delivery import scripts_of

        scripts_of(app).invalidate(account.id)  # the next delivery reads the lists
        log.info("<{account}> {what} over IMAP: {done}", account=account.address,
                 what="reported spam" if into else "marked not spam", done=", ".join(done))
