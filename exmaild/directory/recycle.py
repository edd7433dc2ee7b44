"""Recycle-bin work beyond restore and purge (manual §4.4.2.5): exporting a
recycled account's mail (the zip itself is written by
`exmaild/ops/recyclezip.py`, mail I/O without directory rules) and handing it
to another member.

Reassigning moves every folder of the recycled account, with flags and
dates, under `Recycled/<address>/` of a live member of the same enterprise,
in one transaction: the message bodies are shared, not copied, the
receiving member's quota must hold it all (else nothing moves, 409), and
the recycled account is left empty for its purge.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Conflict, Invalid
from exmaild.directory.tree import DeptTree
from exmaild.store import imapfolders, imapmessages
from exmaild.store import model as m
from exmaild.store.imapfolders import FolderExists

MB = m.mailboxes.c


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

    async def reassign_recycled(self, actor: Actor, address: str, to: str) -> dict[str, Any]:
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._member_row(conn, ent.id, address, deleted=True)  # type: ignore[attr-defined]
            dst = self._member_row(conn, ent.id, to)  # type: ignore[attr-defined]
            if dst.kind != "member":
                raise Invalid(f"{dst.address} is not a member: mail is reassigned to members")
            tree = DeptTree.load(conn, ent.id)
            for aid in (row.id, dst.id):
                self._member_in_scope(conn, actor, tree, aid)  # type: ignore[attr-defined]
            boxes = conn.execute(sa.select(MB.id, MB.name).where(MB.account_id == row.id)
                                 .order_by(MB.name)).all()
            moved = 0
            for box in boxes:
                uids = conn.execute(sa.select(m.messages.c.uid).where(
                    m.messages.c.mailbox_id == box.id)).scalars().all()
                if not uids:
                    continue
                name = f"Recycled/{row.address}/{box.name}"
                try:
                    target = imapfolders.create(conn, dst.id, name).id
                except FolderExists:
                    target = conn.execute(sa.select(MB.id).where(
                        MB.account_id == dst.id, MB.name == name)).scalar_one()
                res = imapmessages.copy_messages(conn, box.id, list(uids), target, move=True,
                                                 check_quota=True)
                if res.overquota:
                    raise Conflict(f"{dst.address} has no room for the mail of {row.address} "
                                   "(quota)")
                moved += len(res.pairs)
            out = {"address": row.address, "to": dst.address, "messages": moved,
                   "folder": f"Recycled/{row.address}"}
            self._log(conn, actor, ent.id, "recycle.reassign", row.address,  # type: ignore[attr-defined]
                      after={"to": dst.address, "messages": moved})
            return out

        return await self.pool.transaction(thd)
