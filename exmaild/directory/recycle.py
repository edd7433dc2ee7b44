"""Recycle-bin work beyond restore and purge (manual §4.4.2.5): finding the
account whose mail an admin exports before the purge. The zip itself is
written by `exmaild/ops/recyclezip.py` (mail I/O, no directory rules)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.tree import DeptTree


class RecycleAdmin:
    """Mixed into DirectoryService: uses its checks (`_ent_for`, `_log` ...)."""

    pool: Any

    async def recycled_for_export(self, actor: Actor, address: str) -> tuple[int, str]:
        """(account id, address) of an account in the recycle bin that `actor`
        may export; the export is logged (`recycle.export`)."""
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> tuple[int, str]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._member_row(conn, ent.id, address, deleted=True)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)  # type: ignore[attr-defined]
            self._log(conn, actor, ent.id, "recycle.export", row.address)  # type: ignore[attr-defined]
            return int(row.id), str(row.address)

        return await self.pool.transaction(thd)
