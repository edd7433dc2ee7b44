"""Departments: the tree, creation by path, moves and renames, deletion
(with the department's automatic group)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.base import (
    AD,
    UNSET,
    A,
    DirectoryBase,
)
from exmaild.directory.dept_autogroup import auto_group
from exmaild.directory.dept_groups import (
    drop_with_department,
    follow_rename,
)
from exmaild.directory.errors import (
    Conflict,
    Forbidden,
    Invalid,
)
from exmaild.directory.tree import DeptTree, check_name, split_path
from exmaild.store import model as m


class DepartmentAdmin(DirectoryBase):
    def _dept_out(self, tree: DeptTree, dept_id: int, counts: dict[int, int]) -> dict[str, Any]:
        d = tree.get(dept_id)
        return {"id": d.id, "name": d.name, "parent_id": d.parent_id, "position": d.position,
                "path": tree.path(d.id), "members": counts.get(d.id, 0)}

    @staticmethod
    def _dept_counts(conn: sa.Connection, ids: Iterable[int]) -> dict[int, int]:
        ids = list(ids)
        if not ids:
            return {}
        q = (sa.select(AD.department_id, sa.func.count())
             .select_from(m.account_departments.join(m.accounts))
             .where(AD.department_id.in_(ids), A.deleted_at.is_(None))
             .group_by(AD.department_id))
        return {k: v for k, v in conn.execute(q).all()}

    async def list_departments(self, actor: Actor, enterprise: str | None = None
                               ) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, enterprise)
            tree = DeptTree.load(conn, ent.id)
            scope = self._scope(actor, tree)
            depts = [d for d in tree.ordered() if scope is None or d.id in scope]
            counts = self._dept_counts(conn, (d.id for d in depts))
            return [self._dept_out(tree, d.id, counts) for d in depts]

        return await self.pool.do(thd)

    async def get_department(self, actor: Actor, dept_id: int) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for_dept(conn, actor, dept_id)
            tree = DeptTree.load(conn, ent.id)
            tree.get(dept_id)
            scope = self._scope(actor, tree)
            if scope is not None and dept_id not in scope:
                raise Forbidden("this department is outside the administrator's departments")
            return self._dept_out(tree, dept_id, self._dept_counts(conn, [dept_id]))

        return await self.pool.do(thd)

    async def add_department(
        self, actor: Actor, name: str, parent: int | str | None = None, *,
        position: int | None = None, enterprise: str | None = None,
    ) -> dict[str, Any]:
        """A new department under `parent` (an id, a path, or None for the top)."""
        self._need(actor, "departments")
        name = check_name(name)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)
            tree = DeptTree.load(conn, ent.id)
            parent_id = self._dept_ref(tree, parent)
            scope = self._scope(actor, tree)
            if scope is not None and parent_id not in scope:
                raise Forbidden("a graded administrator adds departments only inside its own")
            if tree.depth(parent_id) + 1 > self.cfg.max_department_depth:
                raise Invalid(f"departments nest at most {self.cfg.max_department_depth} levels")
            siblings = tree.children.get(parent_id, [])
            if any(s.name == name for s in siblings):
                raise Conflict(f"department {name} already exists there")
            pos = position if position is not None else (
                max((s.position for s in siblings), default=-1) + 1)
            did = conn.execute(m.departments.insert().values(
                enterprise_id=ent.id, parent_id=parent_id, name=name, position=pos,
            )).inserted_primary_key[0]
            tree = DeptTree.load(conn, ent.id)
            out = self._dept_out(tree, did, {})
            self._log(conn, actor, ent.id, "department.add", out["path"], after=out)
            auto_group(self, conn, actor, ent.id, did)  # when the enterprise wants one
            return out

        return await self.pool.transaction(thd)

    async def add_department_path(self, actor: Actor, path: str, enterprise: str | None = None
                                  ) -> dict[str, Any]:
        """`Sales/East`: adds East under the existing Sales."""
        parts = split_path(path)
        parent = "/".join(parts[:-1]) or None
        return await self.add_department(actor, parts[-1], parent, enterprise=enterprise)

    @staticmethod
    def _dept_ref(tree: DeptTree, ref: int | str | None) -> int | None:
        if ref is None:
            return None
        if isinstance(ref, int):
            return tree.get(ref).id
        return tree.by_path(ref).id

    async def update_department(
        self, actor: Actor, dept_id: int, *, name: str | None = None,
        parent_id: int | None = UNSET, position: int | None = None,
    ) -> dict[str, Any]:
        """Rename, move (never under itself) or reorder a department."""
        self._need(actor, "departments")
        if name is not None:
            name = check_name(name)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for_dept(conn, actor, dept_id)
            tree = DeptTree.load(conn, ent.id)
            d = tree.get(dept_id)
            scope = self._scope(actor, tree)
            if scope is not None and (d.id not in scope or d.id in actor.departments):
                raise Forbidden("outside the administrator's departments")
            before = self._dept_out(tree, d.id, {})
            values: dict[str, Any] = {}
            new_parent = d.parent_id
            if parent_id is not UNSET and parent_id != d.parent_id:
                if parent_id is not None:
                    tree.get(parent_id)
                    if parent_id in tree.subtree({d.id}):
                        raise Invalid("a department cannot move under itself")
                if scope is not None and parent_id not in scope:
                    raise Forbidden("the new parent is outside the administrator's departments")
                if tree.depth(parent_id) + tree.height(d.id) > self.cfg.max_department_depth:
                    raise Invalid(
                        f"departments nest at most {self.cfg.max_department_depth} levels")
                values["parent_id"] = new_parent = parent_id
            new_name = name if name is not None else d.name
            if (new_name, new_parent) != (d.name, d.parent_id) and any(
                s.name == new_name and s.id != d.id for s in tree.children.get(new_parent, [])
            ):
                raise Conflict(f"department {new_name} already exists there")
            if name is not None:
                values["name"] = name
                follow_rename(conn, d.id, name)
            if position is not None:
                values["position"] = position
            if values:
                conn.execute(m.departments.update().where(
                    m.departments.c.id == d.id).values(**values))
            after = self._dept_out(DeptTree.load(conn, ent.id), d.id,
                                   self._dept_counts(conn, [d.id]))
            if values:
                self._log(conn, actor, ent.id, "department.update", after["path"],
                          before=before, after={k: after[k] for k in
                                                ("name", "parent_id", "position", "path")})
            return after

        return await self.pool.transaction(thd)

    async def delete_department(self, actor: Actor, dept: int | str,
                                enterprise: str | None = None) -> None:
        """Only an empty department goes: no sub-departments, no members."""
        self._need(actor, "departments")

        def thd(conn: sa.Connection) -> None:
            ent = (self._ent_for_dept(conn, actor, dept) if isinstance(dept, int)
                   else self._enterprise(conn, actor, enterprise))
            tree = DeptTree.load(conn, ent.id)
            did = self._dept_ref(tree, dept)
            assert did is not None
            scope = self._scope(actor, tree)
            if scope is not None and (did not in scope or did in actor.departments):
                raise Forbidden("outside the administrator's departments")
            if tree.children.get(did):
                raise Conflict("the department has sub-departments")
            if conn.execute(sa.select(AD.account_id).where(AD.department_id == did)).first():
                raise Conflict("the department has members")
            path = tree.path(did)
            conn.execute(m.admin_role_departments.delete().where(
                m.admin_role_departments.c.department_id == did))
            group = drop_with_department(conn, did)
            conn.execute(m.departments.delete().where(m.departments.c.id == did))
            self._log(conn, actor, ent.id, "department.delete", path,
                      after={"group_deleted": group} if group else None)

        await self.pool.transaction(thd)
