"""Running one structured rule on mail already stored in a folder (manual
§5.3.8 "run this rule on an existing folder now").

Each message is read from its blob and the rule's Sieve evaluated with the
member as envelope recipient; then, in one transaction per kind: flags and
tags are added, `copy` copies, `move` moves, `delete` moves to the Deleted
folder (\\Trash). Forwarding and replies are not sent for old mail.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import sqlalchemy as sa

from exmaild.sieve.errors import SieveError
from exmaild.sieve.interp import Limits, evaluate
from exmaild.sieve.message import MessageContext
from exmaild.sieve.parser import parse
from exmaild.sieve.rules import REQUIRE, RuleError, compile_rule
from exmaild.store import flags as F
from exmaild.store import imapmessages
from exmaild.store import model as m
from exmaild.store.blobs import BlobRef
from exmaild.store.changes import MailboxChange


@dataclass
class Applied:
    examined: int = 0
    matched: int = 0
    moved: int = 0
    copied: int = 0
    flagged: int = 0
    deleted: int = 0
    failed: int = 0


async def apply_rule(store: Any, account: Any, rule: dict[str, Any], folder: str,
                     limits: Limits | None = None, zone: tzinfo | None = None) -> Applied:
    data = dict(rule, enabled=True, stop=False)
    script = parse(REQUIRE + compile_rule(data, account.address))
    src = await store.mailboxes.get(account.id, folder)
    if src is None:
        raise RuleError(f"no folder {folder!r}")
    entries = await store.mailboxes.messages([src.id])
    out = Applied(examined=len(entries))
    moves: dict[str, list[int]] = defaultdict(list)
    copies: dict[str, list[int]] = defaultdict(list)
    tags: dict[tuple[int, tuple[str, ...]], list[int]] = defaultdict(list)
    for e in entries:
        try:
            raw = await store.pool.call(_read, store, e.content_id)
            ctx = MessageContext.from_bytes(
                raw, envelope_from=_return_path(raw), envelope_to=account.address)
            # Date conditions mean the day it was received, not today.
            result = evaluate(script, ctx, limits, zone=zone,
                              now=datetime.fromtimestamp(e.internal_date, UTC))
        except SieveError:
            out.failed += 1
            continue
        if not result.actions and result.implicit_keep and not result.flags:
            continue
        out.matched += 1
        moved = False
        all_flags: list[str] = list(result.flags)
        for a in result.actions:
            all_flags += a.flags
            if a.kind == "fileinto" and a.target != folder:
                if a.copy:
                    copies[a.target].append(e.uid)
                elif not moved:
                    moves[a.target].append(e.uid)
                    moved = True
        if not result.implicit_keep and not moved and not any(
                a.kind in ("keep", "fileinto") for a in result.actions):
            moves["\\Trash"].append(e.uid)  # discard: to Deleted, not gone
        if all_flags:
            tags[F.from_names(list(dict.fromkeys(all_flags)))].append(e.uid)
    for (mask, keywords), uids in tags.items():
        res = await store.pool.transaction(lambda c, u=uids, k=keywords, f=mask: (
            imapmessages.store_flags(c, src.id, u, imapmessages.ADD, f, k)))
        if res.modseq is not None:
            store.notifier.publish(MailboxChange(src.id, "flags", tuple(
                uid for uid, *_ in res.changed), res.modseq, None))
        out.flagged += len(res.changed)
    for kind, table in (("copy", copies), ("move", moves)):
        for name, uids in table.items():
            dst = await _mailbox(store, account.id, name)
            if dst is None:
                out.failed += len(uids)
                continue
            res = await store.pool.transaction(lambda c, u=uids, d=dst, mv=kind == "move": (
                imapmessages.copy_messages(c, src.id, u, d, move=mv, check_quota=True)))
            if res.overquota or not res.pairs:
                out.failed += len(uids)
                continue
            store.notifier.publish(MailboxChange(dst, "exists", tuple(b for _, b in res.pairs),
                                                 res.dst_modseq or 0, None))
            if kind == "move":
                store.notifier.publish(MailboxChange(src.id, "expunge", tuple(
                    a for a, _ in res.pairs), res.src_modseq or 0, None))
                if name == "\\Trash":
                    out.deleted += len(res.pairs)
                else:
                    out.moved += len(res.pairs)
            else:
                out.copied += len(res.pairs)
    return out


async def _mailbox(store: Any, account_id: int, name: str) -> int | None:
    if name.startswith("\\"):
        def thd(conn: sa.Connection) -> int | None:
            return conn.execute(sa.select(m.mailboxes.c.id).where(
                m.mailboxes.c.account_id == account_id,
                m.mailboxes.c.special_use == name)).scalar()

        return await store.pool.do(thd)
    box = await store.mailboxes.get(account_id, name)
    return None if box is None else box.id


def _read(store: Any, content_id: int) -> bytes:
    with store.engine.connect() as c:
        r = c.execute(sa.select(m.contents.c.segment, m.contents.c.offset, m.contents.c.size)
                      .where(m.contents.c.id == content_id)).one()
    return bytes(store.blobs.read(BlobRef(r.segment, r.offset, r.size)))


def _return_path(raw: bytes) -> str:
    head = raw[:2048]
    if head[:12].lower() == b"return-path:":
        line = head.split(b"\n", 1)[0][12:].strip().strip(b"<>")
        return line.decode("utf-8", "replace")
    return ""
