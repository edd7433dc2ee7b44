"""Member tags (manual §4.3.4), the part of DirectoryService that manages them.

A tag is a label an enterprise defines ("Managers", "Shanghai office") and
puts on any of its members, whatever their departments. The member list
filters by tag (`GET /members?tag=`), and a mail group may take a tag as a
source: it then reaches whoever carries the tag when the mail arrives.
Creating, renaming and deleting tags is for creator and super admins; a
graded admin may tag and untag the members of its own departments.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

T = m.tags.c
MT = m.member_tags.c
MAX_NAME = 100


def check_tag_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Invalid("a tag name is needed")
    name = name.strip()
    if len(name) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise Invalid(f"a tag name is 1 to {MAX_NAME} printable characters")
    return name


def tags_of(conn: sa.Connection, account_ids: list[int]) -> dict[int, list[str]]:
    """Each account's tag names, sorted."""
    out: dict[int, list[str]] = {i: [] for i in account_ids}
    if account_ids:
        for aid, name in conn.execute(
                sa.select(MT.account_id, T.name).select_from(m.member_tags.join(m.tags))
                .where(MT.account_id.in_(account_ids)).order_by(T.name)):
            out[aid].append(name)
    return out


def tag_id(conn: sa.Connection, ent_id: int, name: str) -> int:
    tid = conn.execute(sa.select(T.id).where(T.enterprise_id == ent_id,
                                             T.name == check_tag_name(name))).scalar()
    if tid is None:
        raise NotFound(f"unknown tag {name}")
    return int(tid)


class TagAdmin:
    """Mixed into DirectoryService: uses its checks (`_enterprise`, `_log` ...)."""

    pool: Any

    def _tag_admin(self, actor: Actor) -> None:
        self._need(actor, "members")  # type: ignore[attr-defined]
        if actor.graded:
            raise Forbidden("only creator and super administrators define tags")

    def _tag_out(self, conn: sa.Connection, tid: int) -> dict[str, Any]:
        row = conn.execute(sa.select(m.tags).where(T.id == tid)).one()
        members = conn.execute(
            sa.select(m.accounts.c.address).select_from(m.member_tags.join(m.accounts))
            .where(MT.tag_id == tid, m.accounts.c.deleted_at.is_(None))
            .order_by(m.accounts.c.address)).scalars().all()
        return {"name": row.name, "created": row.created, "member_count": len(members),
                "members": list(members)}

    async def list_tags(self, actor: Actor, enterprise: str | None = None
                        ) -> list[dict[str, Any]]:
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            counts = dict(conn.execute(
                sa.select(MT.tag_id, sa.func.count()).select_from(
                    m.member_tags.join(m.accounts)).where(m.accounts.c.deleted_at.is_(None))
                .group_by(MT.tag_id)).all())
            rows = conn.execute(sa.select(m.tags).where(T.enterprise_id == ent.id)
                                .order_by(T.name)).all()
            return [{"name": r.name, "created": r.created, "member_count": counts.get(r.id, 0)}
                    for r in rows]

        return await self.pool.do(thd)

    async def get_tag(self, actor: Actor, name: str, enterprise: str | None = None
                      ) -> dict[str, Any]:
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            return self._tag_out(conn, tag_id(conn, ent.id, name))

        return await self.pool.do(thd)

    async def add_tag(self, actor: Actor, name: str, enterprise: str | None = None
                      ) -> dict[str, Any]:
        self._tag_admin(actor)
        name = check_tag_name(name)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            if conn.execute(sa.select(T.id).where(T.enterprise_id == ent.id,
                                                  T.name == name)).first():
                raise Conflict(f"tag {name} already exists")
            tid = conn.execute(m.tags.insert().values(
                enterprise_id=ent.id, name=name, created=int(time.time()))
            ).inserted_primary_key[0]
            self._log(conn, actor, ent.id, "tag.add", name)  # type: ignore[attr-defined]
            return self._tag_out(conn, tid)

        return await self.pool.transaction(thd)

    async def rename_tag(self, actor: Actor, name: str, new_name: str,
                         enterprise: str | None = None) -> dict[str, Any]:
        self._tag_admin(actor)
        new_name = check_tag_name(new_name)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tid = tag_id(conn, ent.id, name)
            clash = conn.execute(sa.select(T.id).where(T.enterprise_id == ent.id,
                                                       T.name == new_name)).scalar()
            if clash is not None and clash != tid:
                raise Conflict(f"tag {new_name} already exists")
            conn.execute(m.tags.update().where(T.id == tid).values(name=new_name))
            self._log(conn, actor, ent.id, "tag.rename", new_name,  # type: ignore[attr-defined]
                      before={"name": name.strip()}, after={"name": new_name})
            return self._tag_out(conn, tid)

        return await self.pool.transaction(thd)

    async def delete_tag(self, actor: Actor, name: str, enterprise: str | None = None) -> None:
        """Take the tag off every member and out of every group, then delete it."""
        self._tag_admin(actor)

        def thd(conn: sa.Connection) -> None:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tid = tag_id(conn, ent.id, name)
            before = self._tag_out(conn, tid)
            conn.execute(m.member_tags.delete().where(MT.tag_id == tid))
            conn.execute(m.group_members.delete().where(m.group_members.c.tag_id == tid))
            conn.execute(m.tags.delete().where(T.id == tid))
            self._log(conn, actor, ent.id, "tag.delete", before["name"],  # type: ignore[attr-defined]
                      before={"members": before["members"]})

        await self.pool.transaction(thd)

    async def tag_members(self, actor: Actor, name: str, *, add: list[str] = (),  # type: ignore[assignment]
                          remove: list[str] = (),  # type: ignore[assignment]
                          enterprise: str | None = None) -> dict[str, Any]:
        """Put the tag on members and take it off others, all or nothing."""
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tid = tag_id(conn, ent.id, name)
            tree = DeptTree.load(conn, ent.id)
            have = set(conn.execute(sa.select(MT.account_id).where(MT.tag_id == tid)).scalars())
            added, removed = [], []
            for addr, on in [*((a, True) for a in add), *((a, False) for a in remove)]:
                row = self._member_row(conn, ent.id, addr)  # type: ignore[attr-defined]
                if row.kind != "member":
                    raise Invalid(f"{row.address} is not a member: tags are for members")
                self._member_in_scope(conn, actor, tree, row.id)  # type: ignore[attr-defined]
                if on and row.id not in have:
                    conn.execute(m.member_tags.insert().values(account_id=row.id, tag_id=tid))
                    have.add(row.id)
                    added.append(row.address)
                elif not on and row.id in have:
                    conn.execute(m.member_tags.delete().where(MT.account_id == row.id,
                                                              MT.tag_id == tid))
                    have.discard(row.id)
                    removed.append(row.address)
            out = self._tag_out(conn, tid)
            self._log(conn, actor, ent.id, "tag.members", out["name"],  # type: ignore[attr-defined]
                      after={"added": added, "removed": removed})
            return out

        return await self.pool.transaction(thd)
