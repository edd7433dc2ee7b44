"""Listing and deleting mail groups: the part of DirectoryService beyond
add/edit/show (which live in group_edit.py).

A group holds no mail, so deleting one is final (no recycle bin): its
sources, its sender settings, its aliases and every nesting of it in other
groups go in the one transaction that removes the account.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.dept_groups import refuse_source_edit
from exmaild.directory.errors import Forbidden, Invalid, NotFound
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import _delete_account

A = m.accounts.c
D = m.domains.c
G = m.group_members.c


class GroupAdmin:
    """Mixed into DirectoryService: uses its checks (`_ent_for`, `_log` ...)."""

    pool: Any

    def _group_admin(self, actor: Actor) -> None:
        self._need(actor, "members")  # type: ignore[attr-defined]
        if actor.graded:
            raise Forbidden("only creator and super administrators manage mail groups")

    async def list_groups(
        self, actor: Actor, *, q: str | None = None, limit: int = 50, offset: int = 0,
        enterprise: str | None = None,
    ) -> dict[str, Any]:
        """A page of the enterprise's groups by address, with their source counts
        (expanding every group of a page would cost a walk per group)."""
        self._need(actor, "members")  # type: ignore[attr-defined]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            where = [D.enterprise_id == ent.id, A.kind == "group", A.deleted_at.is_(None)]
            if q:
                pat = "%" + q.lower().replace("\\", "\\\\").replace("%", "\\%").replace(
                    "_", "\\_") + "%"
                where.append(sa.or_(A.address.like(pat, escape="\\"),
                                    sa.func.lower(A.display_name).like(pat, escape="\\")))
            base = sa.select(A.id).select_from(m.accounts.join(m.domains)).where(*where)
            total = conn.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar()
            rows = conn.execute(
                sa.select(A.id, A.address, A.display_name, m.mail_groups.c.allow)
                .select_from(m.accounts.join(m.domains).outerjoin(
                    m.mail_groups, m.mail_groups.c.account_id == A.id))
                .where(*where).order_by(A.address).limit(limit).offset(offset)).all()
            counts: dict[tuple[int, str], int] = {}
            if rows:
                for gid, kind, n in conn.execute(
                        sa.select(G.group_id, G.kind, sa.func.count()).where(
                            G.group_id.in_([r.id for r in rows])).group_by(G.group_id, G.kind)):
                    counts[(gid, kind)] = n
            items = [{
                "address": r.address, "name": r.display_name, "allow": r.allow or "anyone",
                "all_staff": bool(counts.get((r.id, "all"))),
                **{key: counts.get((r.id, kind), 0) for key, kind in (
                    ("member_count", "member"), ("group_count", "group"),
                    ("department_count", "department"), ("external_count", "external"),
                    ("tag_count", "tag"),
                    ("representative_count", "representative"))},
            } for r in rows]
            nxt = offset + len(items)
            return {"items": items, "total": total, "limit": limit, "offset": offset,
                    "next_offset": nxt if nxt < total else None}

        return await self.pool.do(thd)

    async def delete_group(self, actor: Actor, address: str) -> None:
        self._group_admin(actor)

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._member_row(conn, ent.id, address)  # type: ignore[attr-defined]
            if row.kind != "group":
                raise NotFound(f"{address} is not a mail group")
            before = self._group_out(  # type: ignore[attr-defined]
                conn, DeptTree.load(conn, ent.id), row)
            nested_in = conn.execute(sa.select(A.address).select_from(
                m.group_members.join(m.accounts, A.id == G.group_id)).where(
                G.kind == "group", G.account_id == row.id)).scalars().all()
            # Explicit rather than trusting ON DELETE CASCADE, which SQLite
            # applies only with its foreign_keys pragma on.
            conn.execute(m.group_members.delete().where(
                sa.or_(G.group_id == row.id, G.account_id == row.id)))
            conn.execute(m.mail_groups.delete().where(m.mail_groups.c.account_id == row.id))
            _delete_account(conn, row.id)
            keys = ("name", "members", "groups", "departments", "externals", "allow",
                    "all_staff", "representatives", "tags")
            self._log(conn, actor, ent.id, "group.delete",  # type: ignore[attr-defined]
                      row.address, before={**{k: before[k] for k in keys},
                                           "nested_in": sorted(nested_in)})

        await self.pool.transaction(thd)

    async def replace_group(
        self, actor: Actor, address: str, *, name: str | None = None,
        allow: str | None = None, allow_list: list[str] | None = None,
        members: list[str] | None = None, groups: list[str] | None = None,
        departments: list[int | str] | None = None,
    ) -> dict[str, Any]:
        """Each list given replaces that kind of source (members, nested groups,
        departments) or the allowed senders, as Exmail's group/update does;
        None leaves it. Sources kept are not re-added, so their order stays."""
        from exmaild.directory.groups import ALLOW

        self._group_admin(actor)
        if allow is not None and allow not in ALLOW:
            raise Invalid(f"allow is one of {', '.join(ALLOW)}")
        allowed = None if allow_list is None else list(dict.fromkeys(
            self._address(a)[0] for a in allow_list))  # type: ignore[attr-defined]
        cols = self._check_profile({"name": name}) if name is not None else {}  # type: ignore[attr-defined]
        kinds = {k for k, v in (("member", members), ("group", groups),
                                ("department", departments)) if v is not None}

        def key(r: Any) -> tuple[Any, ...]:
            return (r["kind"], r["account_id"], r["department_id"])

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._member_row(conn, ent.id, address)  # type: ignore[attr-defined]
            if row.kind != "group":
                raise NotFound(f"{address} is not a mail group")
            if kinds or cols:
                refuse_source_edit(conn, row.id)
            tree = DeptTree.load(conn, ent.id)
            before = self._group_out(conn, tree, row)  # type: ignore[attr-defined]
            want = self._group_sources(  # type: ignore[attr-defined]
                conn, ent.id, tree, row.id, members=members or (), groups=groups or (),
                depts=departments or ())
            have = {key(dict(x._mapping)): x.id for x in conn.execute(
                sa.select(m.group_members).where(G.group_id == row.id, G.kind.in_(kinds)))}
            wanted = {key(r) for r in want}
            gone = [i for k, i in have.items() if k not in wanted]
            if gone:
                conn.execute(m.group_members.delete().where(G.id.in_(gone)))
            new = list({key(r): r for r in want if key(r) not in have}.values())
            if new:
                conn.execute(m.group_members.insert(), [{"group_id": row.id, **r} for r in new])
            values: dict[str, Any] = {}
            if allow is not None:
                values["allow"] = allow
            if allowed is not None:
                values["allow_list"] = allowed
            if values:
                conn.execute(m.mail_groups.update().where(
                    m.mail_groups.c.account_id == row.id).values(**values))
            if cols:
                conn.execute(m.accounts.update().where(A.id == row.id).values(**cols))
            out = self._group_out(  # type: ignore[attr-defined]
                conn, tree, conn.execute(sa.select(m.accounts).where(A.id == row.id)).one())
            changed = [k for k in ("name", "members", "groups", "departments", "allow",
                                   "allow_list") if before[k] != out[k]]
            self._log(conn, actor, ent.id, "group.edit", row.address,  # type: ignore[attr-defined]
                      before={k: before[k] for k in changed}, after={k: out[k] for k in changed})
            return out

        return await self.pool.transaction(thd)
