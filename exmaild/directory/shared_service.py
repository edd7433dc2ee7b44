"""The business-mailbox part of DirectoryService (manual §4.4.2.3).

A business mailbox is an account of kind "shared": no password (nobody logs
in as it), mail delivered to its INBOX like any account's, aliases through
the ordinary alias rules, and assignments stored as `group_members` rows
(member, or department with its sub-departments) that `directory/shared.py`
expands when a member logs in over IMAP or submits mail.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.domain_removal import account_enterprise, accounts_and_domains
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.directory.quotas import default_quota
from exmaild.directory.shared import KIND, assigned_ids
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import insert_account

A = m.accounts.c
G = m.group_members.c


class SharedMailboxes:
    """Mixed into DirectoryService: uses its checks (`_ent_for`, `_log` ...)."""

    cfg: Any
    pool: Any

    def _full_admin(self, actor: Actor) -> None:
        self._need(actor, "members")  # type: ignore[attr-defined]
        if actor.graded:
            raise Forbidden("only creator and super administrators manage business mailboxes")

    def _shared_row(self, conn: sa.Connection, ent_id: int, address: str,
                    *, deleted: bool = False) -> Any:
        row = self._member_row(conn, ent_id, address, deleted=deleted)  # type: ignore[attr-defined]
        if row.kind != KIND:
            raise NotFound(f"{address} is not a business mailbox")
        return row

    def _assign_rows(self, conn: sa.Connection, ent_id: int, tree: DeptTree, shared_id: int,
                     members: list[str], departments: list[int | str]) -> list[dict[str, Any]]:
        rows = []
        for addr in members:
            r = self._member_row(conn, ent_id, addr)  # type: ignore[attr-defined]
            if r.kind != "member":
                raise Invalid(f"{r.address} is not a member: business mailboxes are "
                              "assigned to members and departments")
            rows.append({"kind": "member", "account_id": r.id, "department_id": None})
        for ref in departments:
            did = self._dept_ref(tree, ref)  # type: ignore[attr-defined]
            if did is None:
                raise Invalid("a department is needed")
            rows.append({"kind": "department", "account_id": None, "department_id": did})
        have = {(x.kind, x.account_id, x.department_id) for x in conn.execute(
            sa.select(m.group_members).where(G.group_id == shared_id))}
        out, seen = [], set()
        for r in rows:
            key = (r["kind"], r["account_id"], r["department_id"])
            if key in have or key in seen:
                continue
            seen.add(key)
            out.append({"group_id": shared_id, "with_children": True, "address": None, **r})
        return out

    def _shared_out(self, conn: sa.Connection, tree: DeptTree, row: Any) -> dict[str, Any]:
        src = conn.execute(sa.select(m.group_members, A.address.label("member")).select_from(
            m.group_members.outerjoin(m.accounts, A.id == G.account_id)).where(
            G.group_id == row.id).order_by(G.id)).all()
        ids = assigned_ids(conn, row.id)
        reach = conn.execute(sa.select(A.address).where(A.id.in_(sorted(ids)))).scalars().all()
        aliases = conn.execute(sa.select(m.aliases.c.address).where(
            m.aliases.c.account_id == row.id)).scalars().all()
        status = "deleted" if row.deleted_at else ("enabled" if row.enabled else "disabled")
        return {
            "address": row.address, "kind": row.kind, "name": row.display_name,
            "status": status, "aliases": sorted(aliases),
            "members": [x.member for x in src if x.kind == "member"],
            "departments": [{"id": x.department_id, "path": tree.path(x.department_id)}
                            for x in src if x.kind == "department"
                            and x.department_id in tree.by_id],
            "assigned": sorted(reach),
            "quota_bytes": row.quota_bytes, "used_bytes": row.used_bytes,
            "message_count": row.message_count, "created": row.created,
            "deleted_at": row.deleted_at,
            "days_left": self._days_left(row.deleted_at, row.kind),  # type: ignore[attr-defined]
        }

    async def add_shared(
        self, actor: Actor, address: str, *, name: str = "",
        members: list[str] = (), departments: list[int | str] = (),  # type: ignore[assignment]
        quota_bytes: int | None = None, enterprise: str | None = None,
    ) -> dict[str, Any]:
        self._full_admin(actor)
        address, _local, domain = self._address(address)  # type: ignore[attr-defined]
        cols = self._check_profile({"name": name})  # type: ignore[attr-defined]
        quota = quota_bytes
        if quota is not None and (not isinstance(quota, int) or isinstance(quota, bool)
                                  or quota < 0):
            raise Invalid("quota_bytes must be a whole number of bytes, 0 for unlimited")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address, enterprise)  # type: ignore[attr-defined]
            nonlocal quota
            if quota is None:  # the enterprise's default, else the server's
                quota = default_quota(conn, self.cfg, ent.id, kind=KIND)
            did = self._domain_of(conn, ent.id, domain)  # type: ignore[attr-defined]
            self._address_free(conn, address)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            sid = insert_account(conn, did, address, None, kind=KIND, quota_bytes=quota, **cols)
            rows = self._assign_rows(conn, ent.id, tree, sid, list(members), list(departments))
            if rows:
                conn.execute(m.group_members.insert(), rows)
            row = conn.execute(sa.select(m.accounts).where(A.id == sid)).one()
            out = self._shared_out(conn, tree, row)
            self._log(conn, actor, ent.id, "shared.add", address,  # type: ignore[attr-defined]
                      after={k: out[k] for k in ("members", "departments", "quota_bytes")})
            return out

        return await self.pool.transaction(thd)

    async def get_shared(self, actor: Actor, address: str, *, deleted: bool = False
                         ) -> dict[str, Any]:
        self._full_admin(actor)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._shared_row(conn, ent.id, address, deleted=deleted)
            return self._shared_out(conn, DeptTree.load(conn, ent.id), row)

        return await self.pool.do(thd)

    async def list_shared(self, actor: Actor, *, enterprise: str | None = None,
                          deleted: bool = False) -> list[dict[str, Any]]:
        self._full_admin(actor)

        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            rows = conn.execute(
                sa.select(m.accounts).select_from(accounts_and_domains()).where(
                    account_enterprise() == ent.id, A.kind == KIND,
                    A.deleted_at.isnot(None) if deleted else A.deleted_at.is_(None))
                .order_by(A.address)).all()
            return [self._shared_out(conn, tree, r) for r in rows]

        return await self.pool.do(thd)

    async def assign_shared(
        self, actor: Actor, address: str, *, members: list[str] = (),  # type: ignore[assignment]
        departments: list[int | str] = (), unassign: bool = False,  # type: ignore[assignment]
    ) -> dict[str, Any]:
        """Assign members/departments to a business mailbox, or take them off."""
        self._full_admin(actor)
        if not members and not departments:
            raise Invalid("name at least one member or department")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._shared_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            before = self._shared_out(conn, tree, row)
            if not unassign:
                rows = self._assign_rows(conn, ent.id, tree, row.id, list(members),
                                         list(departments))
                if rows:
                    conn.execute(m.group_members.insert(), rows)
            else:
                for addr in members:
                    target = self._member_row(conn, ent.id, addr)  # type: ignore[attr-defined]
                    res = conn.execute(m.group_members.delete().where(
                        G.group_id == row.id, G.kind == "member", G.account_id == target.id))
                    if res.rowcount == 0:
                        raise NotFound(f"{target.address} is not assigned to {row.address}")
                for ref in departments:
                    did = self._dept_ref(tree, ref)  # type: ignore[attr-defined]
                    res = conn.execute(m.group_members.delete().where(
                        G.group_id == row.id, G.kind == "department", G.department_id == did))
                    if res.rowcount == 0:
                        raise NotFound(f"department {tree.path(did)} is not assigned to "
                                       f"{row.address}")
            out = self._shared_out(conn, tree, row)
            keys = ("members", "departments")
            self._log(conn, actor, ent.id,  # type: ignore[attr-defined]
                      "shared.unassign" if unassign else "shared.assign", row.address,
                      before={k: before[k] for k in keys}, after={k: out[k] for k in keys})
            return out

        return await self.pool.transaction(thd)

    async def update_shared(self, actor: Actor, address: str, changes: dict[str, Any]
                            ) -> dict[str, Any]:
        """Change the name, quota or status (enabled) of a business mailbox."""
        self._full_admin(actor)
        unknown = set(changes) - {"name", "quota_bytes", "enabled"}
        if unknown:
            raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        cols = self._check_profile(  # type: ignore[attr-defined]
            {k: v for k, v in changes.items() if k in ("name", "quota_bytes")})
        if "enabled" in changes:
            if not isinstance(changes["enabled"], bool):
                raise Invalid("enabled is true or false")
            cols["enabled"] = changes["enabled"]

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._shared_row(conn, ent.id, address)
            if cols:
                conn.execute(m.accounts.update().where(A.id == row.id).values(**cols))
            new = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
            action = "shared.update"
            if set(changes) == {"enabled"}:
                action = "shared.enable" if changes["enabled"] else "shared.disable"
            self._log(conn, actor, ent.id, action, row.address,  # type: ignore[attr-defined]
                      after={k: (v if k != "name" else str(v)) for k, v in cols.items()})
            return self._shared_out(conn, DeptTree.load(conn, ent.id), new)

        return await self.pool.transaction(thd)

    async def remove_shared(self, actor: Actor, address: str) -> None:
        """Recall: to the recycle bin (kept `shared_recycle_days`), mail kept."""
        self._full_admin(actor)

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, address)  # type: ignore[attr-defined]
            row = self._shared_row(conn, ent.id, address)
            if row.deleted_at is not None:
                raise Conflict(f"{row.address} is in the recycle bin already")
            conn.execute(m.accounts.update().where(A.id == row.id).values(
                deleted_at=_now()))
            self._log(conn, actor, ent.id, "shared.remove", row.address)  # type: ignore[attr-defined]

        await self.pool.transaction(thd)


def _now() -> int:
    return int(time.time())
