"""Who may read which part of the mail log: administrators their enterprise
(a graded one its departments' members), a member its own sent mail. Used by
/api/v1 (admin/api_maillog.py) and `exmailctl log mail`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.auth.service import LoginSecurity
from exmaild.directory.actor import Actor
from exmaild.directory.service import DirectoryService
from exmaild.mailstore import mail_log
from exmaild.store import model as m


class MailLogService:
    def __init__(self, svc: DirectoryService) -> None:
        self.svc = svc
        self.sec = LoginSecurity(svc)

    async def query(self, actor: Actor, *, enterprise: str | None = None,
                    limit: int = 100, offset: int = 0, **filters: Any) -> dict[str, Any]:
        """A page of the log; `filters` as mail_log.query takes them."""
        self.svc._need(actor, "log")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent_id = None
            if actor.enterprise_id is not None or enterprise:
                ent_id = self.svc._enterprise(conn, actor, enterprise).id
            addresses = None
            if ent_id is not None:
                ids = self.sec._members_in_scope(conn, actor, ent_id)
                if ids is not None:
                    addresses = list(conn.execute(sa.select(m.accounts.c.address).where(
                        m.accounts.c.id.in_(ids))).scalars())
            total, items = mail_log.query(conn, enterprise_id=ent_id, addresses=addresses,
                                          limit=limit, offset=offset, **filters)
            return _page(items, total, limit, offset)

        return await self.svc.pool.do(thd)

    async def mine(self, actor: Actor, *, since: int | None = None,
                   until: int | None = None, limit: int = 100, offset: int = 0
                   ) -> dict[str, Any]:
        """The member's own sent mail, each recipient with its status."""
        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self.sec._own(conn, actor)
            total, items = mail_log.query(conn, sender=me.address, since=since, until=until,
                                          limit=limit, offset=offset)
            return _page(items, total, limit, offset)

        return await self.svc.pool.do(thd)


def _page(items: list[dict[str, Any]], total: int, limit: int, offset: int) -> dict[str, Any]:
    nxt = offset + len(items) if offset + len(items) < total else None
    return {"items": items, "total": total, "limit": limit, "offset": offset,
            "next_offset": nxt}
