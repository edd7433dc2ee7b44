"""Enterprises and their domains: creation, settings, the domain check."""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.base import (
    A,
    D,
    DirectoryBase,
    E,
    _diff,
    _now,
)
from exmaild.directory.dept_autogroup import sync_all
from exmaild.directory.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
)
from exmaild.directory.settings import check_settings, enterprise_settings
from exmaild.store import model as m
from exmaild.store.directory import (
    DirectoryError,
    normalise_domain,
)


class EnterpriseAdmin(DirectoryBase):
    async def add_enterprise(
        self, actor: Actor, name: str, member_limit: int | None = None,
        vip_seats: int | None = None,
    ) -> dict[str, Any]:
        if actor.enterprise_id is not None:
            raise Forbidden("only the server's administrator (exmailctl) adds enterprises")
        name = name.strip()
        if not name or len(name) > 200:
            raise Invalid("an enterprise name must be 1 to 200 characters")
        if member_limit is not None and member_limit < 1:
            raise Invalid("the member limit must be positive")
        if vip_seats is not None and vip_seats < 0:
            raise Invalid("VIP seats must not be negative")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            if conn.execute(sa.select(E.id).where(E.name == name)).first():
                raise Conflict(f"enterprise {name} already exists")
            eid = conn.execute(m.enterprises.insert().values(
                name=name, created=_now(), member_limit=member_limit, vip_seats=vip_seats,
            )).inserted_primary_key[0]
            self._log(conn, actor, eid, "enterprise.add", name)
            return self._enterprise_out(conn, eid)

        return await self.pool.transaction(thd)

    def _enterprise_out(self, conn: sa.Connection, eid: int) -> dict[str, Any]:
        r = conn.execute(sa.select(m.enterprises).where(E.id == eid)).one()
        members = conn.execute(
            sa.select(sa.func.count()).select_from(m.accounts.join(m.domains)).where(
                D.enterprise_id == eid, A.kind == "member", A.deleted_at.is_(None))
        ).scalar_one()
        domains = conn.execute(
            sa.select(D.name).where(D.enterprise_id == eid).order_by(D.is_primary.desc(), D.name)
        ).scalars().all()
        creator = conn.execute(
            sa.select(A.address).select_from(m.admin_roles.join(m.accounts)).where(
                m.admin_roles.c.enterprise_id == eid, m.admin_roles.c.role == "creator")
        ).scalar()
        return {
            "id": r.id, "name": r.name, "created": r.created,
            "member_limit": r.member_limit or self.cfg.member_limit, "members": members,
            "vip_seats": r.vip_seats, "vip_used": self._vip_used(conn, eid),
            "domains": list(domains), "creator": creator,
        }

    async def get_enterprise_settings(self, actor: Actor, enterprise: str | None = None
                                      ) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            return enterprise_settings(conn, self._enterprise(conn, actor, enterprise).id)

        return await self.pool.do(thd)

    async def update_enterprise_settings(self, actor: Actor, changes: dict[str, Any],
                                         enterprise: str | None = None) -> dict[str, Any]:
        """Display-name policy, nickname permission, welcome letter (manual §4.4.1)."""
        self._need(actor, "admins")
        check_settings(changes)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)
            before = enterprise_settings(conn, ent.id)
            after = {**before, **changes}
            if after["welcome"] == "template" and not after["welcome_template"].strip():
                raise Invalid("welcome is template but welcome_template is empty")
            conn.execute(m.enterprises.update().where(E.id == ent.id).values(settings=after))
            diff_b, diff_a = _diff(before, after)
            self._log(conn, actor, ent.id, "enterprise.settings", ent.name,
                      before=diff_b, after=diff_a)
            if changes.get("department_groups") is True:  # and the missing ones
                sync_all(self, conn, actor, ent.id)
            return after

        return await self.pool.transaction(thd)

    async def list_enterprises(self, actor: Actor) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            q = sa.select(E.id).order_by(E.name)
            if actor.enterprise_id is not None:
                q = q.where(E.id == actor.enterprise_id)
            return [self._enterprise_out(conn, eid) for eid in conn.execute(q).scalars()]

        return await self.pool.do(thd)

    async def get_enterprise(self, actor: Actor, name: str | None = None) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            return self._enterprise_out(conn, self._enterprise(conn, actor, name).id)

        return await self.pool.do(thd)

    # ------------------------------------------------------------------
    # domains
    async def add_domain(self, actor: Actor, name: str, enterprise: str | None = None
                         ) -> dict[str, Any]:
        self._need(actor, "domains")
        try:
            name = normalise_domain(name)
        except DirectoryError as e:
            raise Invalid(str(e)) from None

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise, create_default=True)
            if conn.execute(sa.select(D.id).where(D.name == name)).first():
                raise Conflict(f"domain {name} already exists")
            first = not conn.execute(sa.select(D.id).where(D.enterprise_id == ent.id)).first()
            now = _now()
            conn.execute(m.domains.insert().values(
                enterprise_id=ent.id, name=name, created=now, is_primary=first))
            self._log(conn, actor, ent.id, "domain.add", name)
            return {"name": name, "primary": first, "created": now, "enterprise": ent.name}

        return await self.pool.transaction(thd)

    async def list_domains(self, actor: Actor, enterprise: str | None = None
                           ) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self._enterprise(conn, actor, enterprise)
            rows = conn.execute(sa.select(m.domains).where(D.enterprise_id == ent.id)
                                .order_by(D.is_primary.desc(), D.name))
            return [{"name": r.name, "primary": bool(r.is_primary), "created": r.created,
                     "enterprise": ent.name} for r in rows]

        return await self.pool.do(thd)

    async def get_domain(self, actor: Actor, name: str) -> dict[str, Any]:
        for d in await self.list_domains(actor):
            if d["name"] == name.strip().lower().rstrip("."):
                return d
        raise NotFound(f"unknown domain {name}")

    async def check_domain(self, actor: Actor, name: str, enterprise: str | None = None
                           ) -> dict[str, Any]:
        """"Check resolution" (manual §1.3): MX, SPF and ownership-token TXT
        records found in DNS, the ones to set, and a status."""
        from twisted.internet import threads

        from exmaild.directory.dnscheck import check
        from exmaild.mailauth import keys as dkim_keys

        domain = name.strip().lower().rstrip(".")

        def thd(conn: sa.Connection) -> str:
            ent = self._ent_for(conn, actor, "x@" + domain, enterprise)
            row = conn.execute(sa.select(D.id, D.enterprise_id, D.verify_token).where(
                D.name == domain)).first()
            if row is None or row.enterprise_id != ent.id:
                raise NotFound(f"unknown domain {name}")
            if row.verify_token:
                return str(row.verify_token)
            token = secrets.token_hex(16)
            conn.execute(m.domains.update().where(D.id == row.id).values(verify_token=token))
            return token

        token = await self.pool.transaction(thd)
        keys = await self.pool.do(lambda c: [k for k in dkim_keys.keys_of(c, domain)
                                             if k.state != dkim_keys.RETIRED])
        cfg = self.store.cfg
        reactor = self.store.reactor
        return await threads.deferToThreadPool(
            reactor, reactor.getThreadPool(), lambda: check(
                domain, mx_host=cfg.server.hostname, token=token,
                servers=tuple(cfg.queue.dns_servers), timeout=cfg.queue.dns_timeout,
                dkim_keys=keys))
