"""The catch-all for unknown addresses (manual §4.4.4.3 邮件转移): per domain,
an administrator names a member or business mailbox of the enterprise; mail
to an address of that domain that reaches nobody is accepted at RCPT and
filed into that mailbox's folder "邮件转移" (made when missing), with an
`X-Original-To:` field naming the address it was written to.

Only addresses that reach nobody are caught: a disabled member, a group and
an address in the recycle bin keep their own answers (the recycle bin keeps
refusing, so a restored member's mail was never handed to someone else).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid, NotFound
from exmaild.store import imapfolders
from exmaild.store import model as m
from exmaild.store.records import Account

FOLDER = "邮件转移"  # the IMAP name is its modified UTF-7: &kK5O9o9sefs-
T = m.domain_catchall
KINDS = ("member", "shared")  # who may receive it: not a group
MISS = object()
MAX_CACHED = 20_000


class CatchAllCache:
    """domain -> catch-all account id, and address -> (in the recycle bin),
    each kept `ttl` seconds like the SMTP directory cache beside it."""

    def __init__(self, store: Any, clock: Callable[[], float], ttl: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._domains: dict[str, tuple[float, int | None]] = {}
        self._answers: dict[str, tuple[float, Account | None]] = {}

    def forget(self) -> None:
        self._domains.clear()
        self._answers.clear()

    def peek(self, address: str) -> Any:
        """The account catching `address` (None: nobody) from the cache, or MISS."""
        now = self.clock()
        dom = self._domains.get(address.rpartition("@")[2])
        if dom is not None and now < dom[0] and dom[1] is None:
            return None
        hit = self._answers.get(address)
        if hit is not None and now < hit[0]:
            return hit[1]
        return MISS

    async def lookup(self, address: str) -> Account | None:
        """The live account catching mail to the unknown `address`, or None."""
        got = self.peek(address)
        if got is not MISS:
            return got  # type: ignore[no-any-return]
        domain = address.rpartition("@")[2]

        def thd(conn: sa.Connection) -> tuple[int | None, bool]:
            aid = conn.execute(sa.select(T.c.account_id)
                               .join(m.domains, m.domains.c.id == T.c.domain_id)
                               .where(m.domains.c.name == domain)).scalar()
            if aid is None:
                return None, False
            binned = conn.execute(sa.select(m.accounts.c.id).where(
                m.accounts.c.address == address, m.accounts.c.deleted_at.is_not(None))
                .limit(1)).first() is not None
            return aid, binned

        aid, binned = await self.store.pool.do(thd)
        acct = None
        if aid is not None and not binned:
            acct = await self.store.directory.get_account_by_id(aid)
            if acct is not None and (acct.kind not in KINDS or not acct.enabled):
                acct = None
        if self.ttl > 0:
            now = self.clock()
            if len(self._answers) >= MAX_CACHED:
                self._answers.clear()
            self._domains[domain] = (now + self.ttl, aid)
            self._answers[address] = (now + self.ttl, acct)
        return acct


def trace_prefix(recipients: list[Any]) -> bytes:
    """X-Original-To: fields for the caught recipients of a transaction. They
    go in front of Return-Path, inside the part the queue does not relay."""
    out = "".join(f"X-Original-To: {r.address}\r\n" for r in recipients
                  if getattr(r, "catchall", False))
    return out.encode("utf-8", "replace")


def caught_accounts(recipients: list[Any]) -> list[int]:
    return sorted({r.account_id for r in recipients
                   if getattr(r, "catchall", False) and r.account_id is not None})


async def ensure_folder(store: Any, account_id: int, name: str) -> None:
    """Make the account's folder `name` (and parents) unless it exists."""
    if await store.mailboxes.get(account_id, name) is not None:
        return

    def create(conn: sa.Connection) -> None:
        try:
            imapfolders.create(conn, account_id, name)
        except imapfolders.FolderExists:
            pass  # made meanwhile

    await store.pool.transaction(create)


class CatchAll:
    """Setting and listing the catch-all: full administrators only."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    async def list(self, actor: Actor, enterprise: str | None = None) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            d, a = m.domains, m.accounts
            rows = conn.execute(sa.select(d.c.name, a.c.address).select_from(
                T.join(d, d.c.id == T.c.domain_id).join(a, a.c.id == T.c.account_id))
                .where(d.c.enterprise_id == ent.id).order_by(d.c.name))
            return [{"domain": r[0], "address": r[1], "folder": FOLDER} for r in rows]

        return await self.svc.pool.do(thd)

    async def set(self, actor: Actor, domain: str, address: str | None) -> dict[str, Any]:
        """Catch the domain's unknown addresses into `address`; None: stop."""
        domain = domain.strip().lower().rstrip(".")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self.svc._ent_for(conn, actor, domain)
            self.svc._need(actor, "admins")
            d, a = m.domains.c, m.accounts.c
            did = conn.execute(sa.select(d.id).where(d.name == domain,
                                                     d.enterprise_id == ent.id)).scalar()
            if did is None:
                raise NotFound(f"unknown domain {domain}")
            if address is None:
                if not conn.execute(T.delete().where(T.c.domain_id == did)).rowcount:
                    raise NotFound(f"no catch-all for {domain}")
                self.svc._log(conn, actor, ent.id, "catchall.off", domain)
                return {"domain": domain, "address": None, "folder": FOLDER}
            who = address.strip().lower()
            row = conn.execute(sa.select(a.id, a.kind, a.enabled).join(
                m.domains, m.domains.c.id == a.domain_id).where(
                a.address == who, a.deleted_at.is_(None), d.enterprise_id == ent.id)).first()
            if row is None:
                raise NotFound(f"no member or business mailbox {who} in this enterprise")
            if row.kind not in KINDS:
                raise Invalid(f"{who} is a {row.kind}: the catch-all is a member's or a "
                              "business mailbox")
            if not row.enabled:
                raise Invalid(f"{who} is disabled")
            if not conn.execute(T.update().where(T.c.domain_id == did)
                                .values(account_id=row.id)).rowcount:
                conn.execute(T.insert().values(domain_id=did, account_id=row.id,
                                               created=int(time.time())))
            self.svc._log(conn, actor, ent.id, "catchall.set", domain, after={"address": who})
            return {"domain": domain, "address": who, "folder": FOLDER}

        return await self.svc.pool.transaction(thd)
