"""Who may forward outside the enterprise (manual §4.4.2.4): the enterprise
setting `forward_outside`, and a per-member override kept in the account's
settings as `forward_outside` (true, false, or absent: the enterprise's).

Redirects and rule forwards consult `may_forward_outside` at delivery;
vacation replies are answers to the sender, not forwards, and are not
affected. Changing the override is an administrator's act (function
"members", within a graded admin's departments), logged as
`member.forwarding`; members cannot change it (their own settings API
accepts only client settings).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid
from exmaild.directory.settings import enterprise_settings
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

KEY = "forward_outside"


def may_forward_outside(conn: sa.Connection, account_id: int) -> bool:
    """The member's override when set, else its enterprise's setting."""
    a, d = m.accounts, m.domains
    row = conn.execute(sa.select(a.c.settings, d.c.enterprise_id).select_from(
        a.outerjoin(d, d.c.id == a.c.domain_id)).where(a.c.id == account_id)).first()
    if row is None:
        return True
    own = (row[0] or {}).get(KEY)
    if isinstance(own, bool):
        return own
    return row[1] is None or bool(enterprise_settings(conn, row[1])[KEY])


def _out(row: Any, conn: sa.Connection, ent_id: int) -> dict[str, Any]:
    own = (row.settings or {}).get(KEY)
    return {"address": row.address, "forward_outside": own if isinstance(own, bool) else None,
            "effective": own if isinstance(own, bool)
            else bool(enterprise_settings(conn, ent_id)[KEY])}


class MemberForwarding:
    """Reading and setting the override, for exmailctl and the admin API."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    async def get(self, actor: Actor, address: str) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent, row = self._member(conn, actor, address)
            return _out(row, conn, ent.id)

        return await self.svc.pool.do(thd)

    async def set(self, actor: Actor, address: str, value: bool | None) -> dict[str, Any]:
        """value: True/False override, None: follow the enterprise again."""
        if value is not None and not isinstance(value, bool):
            raise Invalid("forward_outside is true, false or null (the enterprise's)")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent, row = self._member(conn, actor, address)
            before = dict(row.settings or {})
            after = {k: v for k, v in before.items() if k != KEY}
            if value is not None:
                after[KEY] = value
            if after != before:
                conn.execute(m.accounts.update().where(m.accounts.c.id == row.id)
                             .values(settings=after))
                self.svc._log(conn, actor, ent.id, "member.forwarding", row.address,
                              before={KEY: before.get(KEY)}, after={KEY: value})
            row = conn.execute(sa.select(m.accounts).where(m.accounts.c.id == row.id)).one()
            return _out(row, conn, ent.id)

        return await self.svc.pool.transaction(thd)

    def _member(self, conn: sa.Connection, actor: Actor, address: str) -> tuple[Any, Any]:
        self.svc._need(actor, "members")
        ent = self.svc._ent_for(conn, actor, address)
        row = self.svc._member_row(conn, ent.id, address)
        self.svc._member_in_scope(conn, actor, DeptTree.load(conn, ent.id), row.id)
        return ent, row
