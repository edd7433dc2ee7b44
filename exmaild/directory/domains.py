"""Choosing an enterprise's primary domain (manual §1.3, §4.5.2), the part of
DirectoryService beyond adding, checking and removing domains.

Exactly one domain of an enterprise is primary: the first one added is, and
when it is removed the oldest remaining one takes over (service.py). This
moves the mark on request, in one transaction, so there is never none or two.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import NotFound
from exmaild.store import model as m

D = m.domains.c


class DomainAdmin:
    """Mixed into DirectoryService: uses its checks (`_ent_for`, `_log` ...)."""

    pool: Any

    async def set_primary_domain(self, actor: Actor, name: str,
                                 enterprise: str | None = None) -> dict[str, Any]:
        self._need(actor, "domains")  # type: ignore[attr-defined]
        domain = name.strip().lower().rstrip(".")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, "x@" + domain, enterprise)  # type: ignore[attr-defined]
            row = conn.execute(sa.select(m.domains).where(
                D.name == domain, D.enterprise_id == ent.id)).first()
            if row is None:
                raise NotFound(f"unknown domain {name}")
            old = conn.execute(sa.select(D.name).where(
                D.enterprise_id == ent.id, D.is_primary.is_(True))).scalar()
            if not row.is_primary:
                conn.execute(m.domains.update().where(D.enterprise_id == ent.id)
                             .values(is_primary=D.id == row.id))
                self._log(conn, actor, ent.id, "domain.primary", domain,  # type: ignore[attr-defined]
                          before={"primary": old}, after={"primary": domain})
            return {"name": row.name, "primary": True, "created": row.created,
                    "enterprise": ent.name}

        return await self.pool.transaction(thd)
