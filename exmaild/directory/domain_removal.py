"""Removing a domain (manual §1.3, §4.5.2): its accounts go to the recycle bin.

A member or business mailbox of the removed domain is handled as `user
remove` handles one: no login, no mail, its mail and aliases in other domains
kept, restorable until the recycle-bin sweep purges it (accounts already in
the bin keep their date). The domain row itself goes, so such an account has
no `domain_id`; `orphan_enterprise_id` remembers its enterprise. Restoring it
needs its domain back in the same enterprise (`domain add` again, then
`recycle restore`); its mail can also be reassigned to another member or
exported, as for any recycled account. Mail groups hold no mail and have no
recycle bin: they are deleted, with their nesting in other groups.
Aliases in the removed domain are deleted (the addresses stop receiving).
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Conflict, NotFound
from exmaild.store import model as m
from exmaild.store.directory import _delete_account

A = m.accounts.c
D = m.domains.c
G = m.group_members.c


def account_enterprise() -> sa.ColumnElement[Any]:
    """An account's enterprise, through its domain or, once that is removed,
    its own column; use with `accounts_and_domains()`."""
    return sa.func.coalesce(D.enterprise_id, A.orphan_enterprise_id)


def accounts_and_domains() -> sa.FromClause:
    return m.accounts.outerjoin(m.domains, D.id == A.domain_id)


def orphan_enterprise(conn: sa.Connection, address: str) -> int | None:
    """The enterprise of a recycled account whose domain is gone, by address
    or alias (the CLI names accounts by address)."""
    addr = address.strip().lower()
    aid = conn.execute(sa.select(m.aliases.c.account_id).where(
        m.aliases.c.address == addr)).scalar()
    where = A.address == addr if aid is None else A.id == aid
    return conn.execute(sa.select(A.orphan_enterprise_id).where(
        where, A.domain_id.is_(None))).scalar()


def domain_back(conn: sa.Connection, ent_id: int, row: Any) -> int:
    """The domain id a recycled account of a removed domain returns to, when
    its domain has been added again to the same enterprise."""
    domain = row.address.rpartition("@")[2]
    did = conn.execute(sa.select(D.id).where(
        D.name == domain, D.enterprise_id == ent_id)).scalar()
    if did is None:
        raise Conflict(f"the domain {domain} of {row.address} was removed: add it again "
                       f"(exmailctl domain add {domain}) before restoring")
    return int(did)


class DomainRemoval:
    """Mixed into DirectoryService: uses its checks (`_enterprise`, `_log` ...)."""

    pool: Any

    async def remove_domain(self, actor: Actor, name: str, *, confirm: bool,
                            enterprise: str | None = None) -> int:
        """Remove a domain; its members and business mailboxes go to the
        recycle bin, its groups are deleted, so the caller must confirm when
        it has any account. Returns how many of its accounts are now in the
        bin (those just moved and those already there)."""
        self._need(actor, "domains")  # type: ignore[attr-defined]
        name = name.strip().lower().rstrip(".")

        def thd(conn: sa.Connection) -> int:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            row = conn.execute(sa.select(m.domains).where(
                D.name == name, D.enterprise_id == ent.id)).first()
            if row is None:
                raise NotFound(f"unknown domain {name}")
            accts = conn.execute(sa.select(A.id, A.address, A.kind, A.deleted_at).where(
                A.domain_id == row.id).order_by(A.address)).all()
            live = [a for a in accts if a.deleted_at is None and a.kind != "group"]
            groups = [a for a in accts if a.kind == "group"]
            binned = len(accts) - len(live) - len(groups)
            if accts and not confirm:
                raise Conflict(
                    f"domain {name} still has {len(live)} account(s) and {len(groups)} "
                    f"group(s)" + (f", and {binned} in the recycle bin" if binned else "")
                    + "; confirm moving the accounts to the recycle bin and deleting the "
                    "groups with the domain")
            conn.execute(m.aliases.delete().where(m.aliases.c.address.like(f"%@{name}")))
            for g in groups:
                # Explicit, as delete_group: SQLite cascades only with its pragma on.
                conn.execute(m.group_members.delete().where(
                    sa.or_(G.group_id == g.id, G.account_id == g.id)))
                conn.execute(m.mail_groups.delete().where(m.mail_groups.c.account_id == g.id))
                _delete_account(conn, g.id)
            now = int(time.time())
            ids = [a.id for a in accts if a.kind != "group"]
            if ids:
                conn.execute(m.accounts.update().where(A.id.in_(ids)).values(
                    deleted_at=sa.func.coalesce(A.deleted_at, now), domain_id=None,
                    orphan_enterprise_id=ent.id))
                conn.execute(m.api_tokens.update().where(
                    m.api_tokens.c.account_id.in_(ids)).values(revoked=True))
            conn.execute(m.domains.delete().where(D.id == row.id))
            if row.is_primary:
                nxt = conn.execute(sa.select(D.id).where(D.enterprise_id == ent.id)
                                   .order_by(D.created, D.id).limit(1)).scalar()
                if nxt is not None:
                    conn.execute(m.domains.update().where(D.id == nxt).values(is_primary=True))
            self._log(conn, actor, ent.id, "domain.remove", name,  # type: ignore[attr-defined]
                      after={"recycled": [a.address for a in live],
                             "groups_deleted": [g.address for g in groups]})
            return len(ids)

        return await self.pool.transaction(thd)
