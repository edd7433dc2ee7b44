"""Mail groups: add, edit and show (listing and deletion are in
group_service.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.base import (
    A,
    DirectoryBase,
    _diff,
)
from exmaild.directory.dept_groups import (
    refuse_source_edit,
)
from exmaild.directory.errors import (
    Forbidden,
    Invalid,
    NotFound,
)
from exmaild.directory.tags import tag_id
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import (
    insert_account,
)


class GroupEdit(DirectoryBase):
    def _group_sources(
        self, conn: sa.Connection, ent_id: int, tree: DeptTree, group_id: int, *,
        members: Iterable[str] = (), depts: Iterable[int | str] = (),
        groups: Iterable[str] = (), externals: Iterable[str] = (), with_children: bool = True,
        representatives: Iterable[str] = (), all_staff: bool = False, tags: Iterable[str] = (),
    ) -> list[dict[str, Any]]:
        from exmaild.directory.groups import ALL_STAFF, REPRESENTATIVE

        rows: list[dict[str, Any]] = []
        for addr in [*members, *groups]:
            r = self._member_row(conn, ent_id, addr)
            kind = "group" if r.kind == "group" else "member"
            if r.id == group_id:
                raise Invalid("a group cannot contain itself")
            rows.append({"kind": kind, "account_id": r.id})
        for addr in representatives:
            r = self._member_row(conn, ent_id, addr)
            if r.kind != "member":
                raise Invalid(f"{r.address} is not a member: representatives are members")
            rows.append({"kind": REPRESENTATIVE, "account_id": r.id})
        if all_staff:
            rows.append({"kind": ALL_STAFF})
        for name in tags:
            rows.append({"kind": "tag", "tag_id": tag_id(conn, ent_id, name)})
        for ref in depts:
            did = self._dept_ref(tree, ref)
            rows.append({"kind": "department", "department_id": did,
                         "with_children": with_children})
        for addr in externals:
            full, _l, _d = self._address(addr)
            rows.append({"kind": "external", "address": full})
        # One shape for every row: an executemany needs the same keys throughout.
        blank = {"account_id": None, "department_id": None, "with_children": True,
                 "address": None, "tag_id": None}
        return [{**blank, **r} for r in rows]

    def _group_out(self, conn: sa.Connection, tree: DeptTree, row: Any) -> dict[str, Any]:
        from exmaild.directory.groups import expand

        g = conn.execute(sa.select(m.mail_groups).where(
            m.mail_groups.c.account_id == row.id)).first()
        src = conn.execute(sa.select(m.group_members, A.address.label("member")).select_from(
            m.group_members.outerjoin(m.accounts, A.id == m.group_members.c.account_id)).where(
            m.group_members.c.group_id == row.id).order_by(m.group_members.c.id)).all()
        ids, externals = expand(conn, [row.id])
        addrs = conn.execute(sa.select(A.address).where(A.id.in_(sorted(ids)))).scalars().all()
        return {
            "address": row.address, "name": row.display_name,
            "department": tree.path(g.department_id) if g and g.department_id else None,
            "allow": g.allow if g else "anyone", "allow_list": list(g.allow_list) if g else [],
            "members": [x.member for x in src if x.kind == "member"],
            "groups": [x.member for x in src if x.kind == "group"],
            "departments": [{"id": x.department_id, "path": tree.path(x.department_id),
                             "with_children": bool(x.with_children)}
                            for x in src if x.kind == "department"],
            "externals": [x.address for x in src if x.kind == "external"],
            "all_staff": any(x.kind == "all" for x in src),
            "tags": sorted(conn.execute(sa.select(m.tags.c.name).where(m.tags.c.id.in_(
                [x.tag_id for x in src if x.kind == "tag"]))).scalars()),
            "representatives": [x.member for x in src if x.kind == "representative"],
            "recipients": sorted([*addrs, *externals]),
        }

    async def add_group(
        self, actor: Actor, address: str, *, name: str = "", members: list[str] = (),  # type: ignore[assignment]
        departments: list[int | str] = (), groups: list[str] = (),  # type: ignore[assignment]
        externals: list[str] = (), allow: str = "anyone",  # type: ignore[assignment]
        allow_list: list[str] = (), enterprise: str | None = None,  # type: ignore[assignment]
        representatives: list[str] = (), all_staff: bool = False,  # type: ignore[assignment]
        tags: list[str] = (),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        from exmaild.directory.groups import ALLOW

        self._need(actor, "members")
        if actor.graded:
            raise Forbidden("only creator and super administrators manage mail groups")
        address, _local, domain = self._address(address)
        if allow not in ALLOW:
            raise Invalid(f"allow is one of {', '.join(ALLOW)}")
        allowed = [self._address(a)[0] for a in allow_list]
        cols = self._check_profile({"name": name})

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address, enterprise)
            did = self._domain_of(conn, ent.id, domain)
            self._address_free(conn, address)
            tree = DeptTree.load(conn, ent.id)
            gid = insert_account(conn, did, address, None, kind="group", **cols)
            conn.execute(m.mail_groups.insert().values(account_id=gid, allow=allow,
                                                       allow_list=allowed))
            rows = self._group_sources(conn, ent.id, tree, gid, members=members,
                                       depts=departments, groups=groups, externals=externals,
                                       representatives=representatives, all_staff=all_staff,
                                       tags=tags)
            if rows:
                conn.execute(m.group_members.insert(), [{"group_id": gid, **r} for r in rows])
            row = conn.execute(sa.select(m.accounts).where(A.id == gid)).one()
            out = self._group_out(conn, tree, row)
            self._log(conn, actor, ent.id, "group.add", address,
                      after={k: out[k] for k in ("members", "groups", "departments",
                                                 "externals", "allow", "all_staff",
                                                 "representatives", "tags")})
            return out

        return await self.pool.transaction(thd)

    async def edit_group(
        self, actor: Actor, address: str, *, add_members: list[str] = (),  # type: ignore[assignment]
        add_groups: list[str] = (), remove_members: list[str] = (),  # type: ignore[assignment]
        add_departments: list[int | str] = (), add_externals: list[str] = (),  # type: ignore[assignment]
        allow: str | None = None, name: str | None = None,
        add_representatives: list[str] = (),  # type: ignore[assignment]
        remove_representatives: list[str] = (),  # type: ignore[assignment]
        all_staff: bool | None = None, add_tags: list[str] = (),  # type: ignore[assignment]
        remove_tags: list[str] = (),  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Add sources; remove members, nested groups or externals by address."""
        from exmaild.directory.groups import ALLOW

        self._need(actor, "members")
        if actor.graded:
            raise Forbidden("only creator and super administrators manage mail groups")
        if allow is not None and allow not in ALLOW:
            raise Invalid(f"allow is one of {', '.join(ALLOW)}")
        cols = self._check_profile({"name": name}) if name is not None else {}

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            if row.kind != "group":
                raise NotFound(f"{address} is not a mail group")
            if (add_members or add_groups or remove_members or add_departments or add_externals
                    or all_staff is not None or add_tags or remove_tags or cols):
                refuse_source_edit(conn, row.id)
            tree = DeptTree.load(conn, ent.id)
            before = self._group_out(conn, tree, row)
            have = {(x.kind, x.account_id, x.department_id, x.address, x.tag_id)
                    for x in conn.execute(
                sa.select(m.group_members).where(m.group_members.c.group_id == row.id))}
            rows = [r for r in self._group_sources(
                conn, ent.id, tree, row.id, members=add_members, groups=add_groups,
                depts=add_departments, externals=add_externals,
                representatives=add_representatives, all_staff=bool(all_staff), tags=add_tags)
                if (r["kind"], r["account_id"], r["department_id"], r["address"], r["tag_id"])
                not in have]
            if rows:
                conn.execute(m.group_members.insert(), [{"group_id": row.id, **r} for r in rows])
            gm = m.group_members.c
            routes = gm.kind.in_(("member", "group", "external"))
            for addr, kinds in [*((a, routes) for a in remove_members),
                                *((a, gm.kind == "representative")
                                  for a in remove_representatives)]:
                addr = addr.strip().lower()
                target = conn.execute(sa.select(A.id).where(A.address == addr)).scalar()
                res = conn.execute(m.group_members.delete().where(
                    gm.group_id == row.id, kinds,
                    sa.or_(gm.account_id == target, gm.address == addr)))
                if res.rowcount == 0:
                    raise NotFound(f"{addr} is not a source of {row.address}")
            if all_staff is False:
                conn.execute(m.group_members.delete().where(
                    gm.group_id == row.id, gm.kind == "all"))
            for name in remove_tags:
                res = conn.execute(m.group_members.delete().where(
                    gm.group_id == row.id, gm.kind == "tag",
                    gm.tag_id == tag_id(conn, ent.id, name)))
                if res.rowcount == 0:
                    raise NotFound(f"tag {name} is not a source of {row.address}")
            if allow is not None:
                conn.execute(m.mail_groups.update().where(
                    m.mail_groups.c.account_id == row.id).values(allow=allow))
            if cols:
                conn.execute(m.accounts.update().where(A.id == row.id).values(**cols))
            new = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
            out = self._group_out(conn, tree, new)
            keys = ("name", "members", "groups", "departments", "externals", "allow",
                    "all_staff", "representatives", "tags")
            b, a = _diff({k: before[k] for k in keys}, {k: out[k] for k in keys})
            self._log(conn, actor, ent.id, "group.edit", row.address, before=b, after=a)
            return out

        return await self.pool.transaction(thd)

    async def get_group(self, actor: Actor, address: str) -> dict[str, Any]:
        self._need(actor, "members")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            if row.kind != "group":
                raise NotFound(f"{address} is not a mail group")
            return self._group_out(conn, DeptTree.load(conn, ent.id), row)

        return await self.pool.do(thd)
