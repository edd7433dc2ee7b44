"""Administrators, API tokens, admin sessions and the operation log."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import FUNCTIONS, ROLES, Actor
from exmaild.directory.base import (
    A,
    DirectoryBase,
    _now,
    token_hash,
)
from exmaild.directory.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
)
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m


class AdminRoles(DirectoryBase):
    async def add_admin(
        self, actor: Actor, address: str, role: str, *, departments: list[int | str] = (),  # type: ignore[assignment]
        functions: list[str] | None = None, enterprise: str | None = None,
    ) -> dict[str, Any]:
        """Make a member an administrator; a new creator takes over from the old
        one (who stays a super admin)."""
        self._need(actor, "admins")
        if role not in ROLES:
            raise Invalid(f"role is one of {', '.join(ROLES)}")
        if role == "creator" and actor.role not in ("system", "creator"):
            raise Forbidden("only the creator (or exmailctl) hands the creator role on")
        funcs = list(functions) if functions is not None else list(FUNCTIONS)
        bad = set(funcs) - set(FUNCTIONS)
        if bad:
            raise Invalid(f"unknown function(s) {', '.join(sorted(bad))}; "
                          f"choose from {', '.join(FUNCTIONS)}")
        if role == "graded" and not departments:
            raise Invalid("a graded administrator needs at least one department")
        if role != "graded" and departments:
            raise Invalid("only a graded administrator is limited to departments")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address, enterprise)
            row = self._member_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            ids = sorted({self._dept_ref(tree, d) for d in departments})  # type: ignore[type-var]
            R = m.admin_roles.c
            old = conn.execute(sa.select(m.admin_roles).where(
                R.enterprise_id == ent.id, R.account_id == row.id)).first()
            if old is not None and old.role == "creator" and role != "creator":
                raise Conflict("the creator's role changes only by handing it to someone else")
            if role == "creator":
                conn.execute(m.admin_roles.update().where(
                    R.enterprise_id == ent.id, R.role == "creator").values(role="super"))
            values = {"role": role, "functions": funcs if role == "graded" else []}
            if old is None:
                rid = conn.execute(m.admin_roles.insert().values(
                    enterprise_id=ent.id, account_id=row.id, created=_now(), **values,
                )).inserted_primary_key[0]
            else:
                rid = old.id
                conn.execute(m.admin_roles.update().where(R.id == rid).values(**values))
                conn.execute(m.admin_role_departments.delete().where(
                    m.admin_role_departments.c.role_id == rid))
            if ids:
                conn.execute(m.admin_role_departments.insert(),
                             [{"role_id": rid, "department_id": d} for d in ids])
            out = self._admin_out(conn, tree, rid)
            self._log(conn, actor, ent.id, "admin.set", row.address,
                      before={"role": old.role} if old else None, after=out)
            return out

        return await self.pool.transaction(thd)

    def _admin_out(self, conn: sa.Connection, tree: DeptTree, role_id: int) -> dict[str, Any]:
        r = conn.execute(sa.select(m.admin_roles, A.address).select_from(
            m.admin_roles.join(m.accounts)).where(m.admin_roles.c.id == role_id)).one()
        depts = conn.execute(sa.select(m.admin_role_departments.c.department_id).where(
            m.admin_role_departments.c.role_id == role_id)).scalars().all()
        return {"address": r.address, "role": r.role,
                "functions": list(r.functions) if r.role == "graded" else list(FUNCTIONS),
                "departments": [{"id": d, "path": tree.path(d)} for d in sorted(depts)]}

    async def list_admins(self, actor: Actor) -> list[dict[str, Any]]:
        self._need(actor, "admins")

        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, None)
            tree = DeptTree.load(conn, ent.id)
            ids = conn.execute(sa.select(m.admin_roles.c.id).where(
                m.admin_roles.c.enterprise_id == ent.id).order_by(m.admin_roles.c.id)).scalars()
            return [self._admin_out(conn, tree, i) for i in ids]

        return await self.pool.do(thd)

    async def remove_admin(self, actor: Actor, address: str) -> None:
        self._need(actor, "admins")

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            R = m.admin_roles.c
            old = conn.execute(sa.select(m.admin_roles).where(
                R.enterprise_id == ent.id, R.account_id == row.id)).first()
            if old is None:
                raise NotFound(f"{address} is not an administrator")
            if old.role == "creator":
                raise Conflict("the creator cannot be removed; hand the role on first")
            conn.execute(m.admin_roles.delete().where(R.id == old.id))
            conn.execute(m.api_tokens.update().where(
                m.api_tokens.c.account_id == row.id, m.api_tokens.c.kind == "session"
            ).values(revoked=True))
            self._log(conn, actor, ent.id, "admin.remove", row.address,
                      before={"role": old.role})

        await self.pool.transaction(thd)

    # ------------------------------------------------------------------
    # bearer tokens
    async def create_token(self, actor: Actor, name: str = "", enterprise: str | None = None
                           ) -> tuple[dict[str, Any], str]:
        """A long-lived API token for the enterprise; the token itself is
        returned once and only its hash is stored."""
        self._need(actor, "admins")
        name = name.strip()
        if len(name) > 200:
            raise Invalid("a token name is at most 200 characters")
        token = "exm_" + secrets.token_urlsafe(32)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)
            now = _now()
            tid = conn.execute(m.api_tokens.insert().values(
                enterprise_id=ent.id, kind="api", name=name, token_hash=token_hash(token),
                created=now)).inserted_primary_key[0]
            self._log(conn, actor, ent.id, "token.create", f"token {tid}", after={"name": name})
            return {"id": tid, "name": name, "kind": "api", "created": now, "expires": None,
                    "enterprise": ent.name}

        return await self.pool.transaction(thd), token

    async def list_tokens(self, actor: Actor) -> list[dict[str, Any]]:
        self._need(actor, "admins")

        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, None)
            T = m.api_tokens.c
            rows = conn.execute(sa.select(m.api_tokens).where(
                T.enterprise_id == ent.id, T.kind == "api", T.revoked.is_(False)).order_by(T.id))
            return [{"id": r.id, "name": r.name, "kind": r.kind, "created": r.created,
                     "expires": r.expires, "enterprise": ent.name} for r in rows]

        return await self.pool.do(thd)

    async def revoke_token(self, actor: Actor, token_id: int) -> None:
        def thd(conn: sa.Connection) -> None:
            ent = self._enterprise(conn, actor, None)
            T = m.api_tokens.c
            row = conn.execute(sa.select(m.api_tokens).where(
                T.id == token_id, T.enterprise_id == ent.id, T.revoked.is_(False))).first()
            if row is None:
                raise NotFound(f"unknown token {token_id}")
            if token_id != actor.token_id:  # anyone may end their own session
                self._need(actor, "admins")
            conn.execute(m.api_tokens.update().where(T.id == token_id).values(revoked=True))
            self._log(conn, actor, ent.id, "token.revoke", f"token {token_id}")

        await self.pool.transaction(thd)

    async def start_session(self, account_id: int, ip: str) -> dict[str, Any]:
        """A short-lived token for an administrator whose password the caller verified."""
        token = "exs_" + secrets.token_urlsafe(32)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            R = m.admin_roles.c
            role = conn.execute(sa.select(m.admin_roles, A.address).select_from(
                m.admin_roles.join(m.accounts)).where(R.account_id == account_id)).first()
            if role is None:
                raise Forbidden("this account is not an administrator")
            now = _now()
            expires = now + self.cfg.session_ttl
            conn.execute(m.api_tokens.insert().values(
                enterprise_id=role.enterprise_id, account_id=account_id, kind="session",
                name="login", token_hash=token_hash(token), created=now, expires=expires))
            # Expired sessions are useless: sweep them here rather than on a timer.
            conn.execute(m.api_tokens.delete().where(
                m.api_tokens.c.kind == "session", m.api_tokens.c.expires < now))
            self._log(conn, Actor(role.address, ip=ip), role.enterprise_id, "admin.login",
                      role.address)
            return {"token": token, "expires": expires, "role": role.role}

        return await self.pool.transaction(thd)

    async def actor_for_token(self, token: str, ip: str) -> Actor:
        """Who a bearer token speaks for, or Unauthorized."""
        digest = token_hash(token)

        def thd(conn: sa.Connection) -> Actor:
            T = m.api_tokens.c
            t = conn.execute(sa.select(m.api_tokens).where(T.token_hash == digest)).first()
            if t is None or t.revoked or (t.expires is not None and t.expires <= _now()):
                raise Unauthorized("invalid or expired token")
            if t.account_id is None:
                return Actor(f"token:{t.name or t.id}", ip=ip, enterprise_id=t.enterprise_id,
                             role="token", token_id=t.id)
            if t.kind == "member":  # a member's self-service session
                a = conn.execute(sa.select(A.address, A.enabled, A.deleted_at).where(
                    A.id == t.account_id)).first()
                if a is None or not a.enabled or a.deleted_at:
                    raise Unauthorized("this account can no longer log in")
                return Actor(a.address, ip=ip, enterprise_id=t.enterprise_id, role="member",
                             token_id=t.id, account_id=t.account_id)
            R = m.admin_roles.c
            r = conn.execute(sa.select(m.admin_roles, A.address, A.enabled, A.deleted_at)
                             .select_from(m.admin_roles.join(m.accounts))
                             .where(R.account_id == t.account_id,
                                    R.enterprise_id == t.enterprise_id)).first()
            if r is None or not r.enabled or r.deleted_at:
                raise Unauthorized("this administrator's rights were withdrawn")
            depts = conn.execute(sa.select(m.admin_role_departments.c.department_id).where(
                m.admin_role_departments.c.role_id == r.id)).scalars().all()
            return Actor(r.address, ip=ip, enterprise_id=t.enterprise_id, role=r.role,
                         departments=frozenset(depts), functions=frozenset(r.functions or ()),
                         token_id=t.id)

        return await self.pool.do(thd)

    # ------------------------------------------------------------------
    # operation log
    async def list_log(self, actor: Actor, *, action: str | None = None, limit: int = 50,
                       offset: int = 0, enterprise: str | None = None) -> dict[str, Any]:
        self._need(actor, "log")
        if not 1 <= limit <= self.cfg.api_page_limit:
            raise Invalid(f"limit must be 1 to {self.cfg.api_page_limit}")
        if offset < 0:
            raise Invalid("offset must not be negative")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)
            L = m.operation_log.c
            where = [L.enterprise_id == ent.id]
            if action:
                where.append(L.action.startswith(action, autoescape=True))
            total = conn.execute(sa.select(sa.func.count()).where(*where)).scalar_one()
            rows = conn.execute(sa.select(m.operation_log).where(*where)
                                .order_by(L.id.desc()).limit(limit).offset(offset))
            items = [{"id": r.id, "actor": r.actor, "action": r.action, "target": r.target,
                      "before": r.before, "after": r.after, "ip": r.ip, "time": r.created}
                     for r in rows]
            nxt = offset + len(items) if offset + len(items) < total else None
            return {"items": items, "total": total, "limit": limit, "offset": offset,
                    "next_offset": nxt}

        return await self.pool.do(thd)

    async def change_counter(self) -> int:
        """The operation log's highest id: it moves whenever the directory changes."""
        return await self.pool.do(lambda conn: conn.execute(
            sa.select(sa.func.max(m.operation_log.c.id))).scalar() or 0)
