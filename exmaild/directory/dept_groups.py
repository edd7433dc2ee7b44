"""A department's own mail group (manual §4.4.2.2, "sync a department as a
group"): its members are the department's, sub-departments included, and
follow it by themselves because groups are expanded when mail arrives; its
name is the department's and follows a rename. Its sources cannot be edited
(that would break the sync); who may write to it and its representatives
are the administrator's to set, as for any group. Deleting the department
deletes its group. One such group per department.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Conflict, Forbidden
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import _delete_account, insert_account

A = m.accounts.c
MG = m.mail_groups.c
G = m.group_members.c


def synced_department(conn: sa.Connection, group_id: int) -> int | None:
    """The department a group follows, or None for an ordinary group."""
    return conn.execute(sa.select(MG.department_id).where(MG.account_id == group_id)).scalar()


def refuse_source_edit(conn: sa.Connection, group_id: int) -> None:
    if synced_department(conn, group_id) is not None:
        raise Conflict("this is a department's group: its members and name follow the "
                       "department and cannot be edited (allow and representatives can)")


def make_department_group(conn: sa.Connection, domain_id: int, address: str, dept_id: int,
                          name: str) -> int:
    """The group account following a department (the address checked free)."""
    gid = insert_account(conn, domain_id, address, None, kind="group", display_name=name)
    conn.execute(m.mail_groups.insert().values(
        account_id=gid, allow="anyone", allow_list=[], department_id=dept_id))
    conn.execute(m.group_members.insert().values(
        group_id=gid, kind="department", department_id=dept_id, with_children=True))
    return int(gid)


def follow_rename(conn: sa.Connection, dept_id: int, name: str) -> None:
    conn.execute(m.accounts.update().where(A.id.in_(
        sa.select(MG.account_id).where(MG.department_id == dept_id))).values(display_name=name))


def drop_with_department(conn: sa.Connection, dept_id: int) -> str | None:
    """Delete the department's group with the department; its address."""
    row = conn.execute(sa.select(A.id, A.address).select_from(
        m.mail_groups.join(m.accounts, A.id == MG.account_id)).where(
        MG.department_id == dept_id)).first()
    if row is None:
        return None
    # Explicit, as delete_group: SQLite cascades only with its pragma on.
    conn.execute(m.group_members.delete().where(
        sa.or_(G.group_id == row.id, G.account_id == row.id)))
    conn.execute(m.mail_groups.delete().where(MG.account_id == row.id))
    _delete_account(conn, row.id)
    return str(row.address)


class DepartmentGroups:
    """Mixed into DirectoryService: uses its checks (`_ent_for`, `_log` ...)."""

    pool: Any

    async def add_department_group(self, actor: Actor, dept: int | str, address: str, *,
                                   enterprise: str | None = None) -> dict[str, Any]:
        self._need(actor, "members")  # type: ignore[attr-defined]
        if actor.graded:
            raise Forbidden("only creator and super administrators manage mail groups")
        address, _local, domain = self._address(address)  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            if isinstance(dept, int):
                ent = self._ent_for_dept(conn, actor, dept)  # type: ignore[attr-defined]
            else:
                ent = self._ent_for(conn, actor, address, enterprise)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            did = self._dept_ref(tree, dept)  # type: ignore[attr-defined]
            have = conn.execute(sa.select(A.address).select_from(
                m.mail_groups.join(m.accounts, A.id == MG.account_id)).where(
                MG.department_id == did)).scalar()
            if have is not None:
                raise Conflict(f"department {tree.path(did)} has its group already: {have}")
            domain_id = self._domain_of(conn, ent.id, domain)  # type: ignore[attr-defined]
            self._address_free(conn, address)  # type: ignore[attr-defined]
            gid = make_department_group(conn, domain_id, address, did, tree.get(did).name)
            row = conn.execute(sa.select(m.accounts).where(A.id == gid)).one()
            out: dict[str, Any] = self._group_out(conn, tree, row)  # type: ignore[attr-defined]
            self._log(conn, actor, ent.id, "group.add", address,  # type: ignore[attr-defined]
                      after={"department": tree.path(did), "synced": True})
            return out

        return await self.pool.transaction(thd)
