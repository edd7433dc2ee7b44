"""DirectoryService: every directory rule, for the CLI and the admin API alike.

Each public method takes the `Actor` asking, runs its checks and its change in
one database transaction on the store's thread pool, writes the operation log
row in that same transaction (so a refused or failed change leaves neither
change nor log line), and raises a `ServiceError` subclass when it refuses.
Enterprises are isolated by construction: every lookup of a member, domain,
department, admin or token is filtered by the caller's enterprise, and what
belongs to another enterprise is "not found".
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from exmaild.auth.passwords import WeakPassword, check_policy, hash_password
from exmaild.config import DirectoryConfig
from exmaild.directory.actor import FUNCTIONS, ROLES, Actor
from exmaild.directory.dept_autogroup import auto_group, sync_all
from exmaild.directory.dept_csv import DepartmentCSV
from exmaild.directory.dept_groups import (
    DepartmentGroups,
    drop_with_department,
    follow_rename,
    refuse_source_edit,
)
from exmaild.directory.domain_removal import (
    DomainRemoval,
    account_enterprise,
    accounts_and_domains,
    domain_back,
    orphan_enterprise,
)
from exmaild.directory.domains import DomainAdmin
from exmaild.directory.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    ServiceError,
    Unauthorized,
)
from exmaild.directory.group_csv import GroupCSV
from exmaild.directory.group_service import GroupAdmin
from exmaild.directory.progress import APPLYING, CHECKING, NoProgress, Progress, count_rows
from exmaild.directory.quotas import default_quota, quota_after_role_change
from exmaild.directory.recycle import RecycleAdmin
from exmaild.directory.settings import check_settings, enterprise_settings
from exmaild.directory.shared_service import SharedMailboxes
from exmaild.directory.tags import TagAdmin, tag_id, tags_of
from exmaild.directory.tree import DeptTree, check_name, split_path
from exmaild.store import model as m
from exmaild.store.directory import (
    DirectoryError,
    _delete_account,
    insert_account,
    normalise_address,
    normalise_domain,
)

A = m.accounts.c
D = m.domains.c
E = m.enterprises.c
AD = m.account_departments.c

MEMBER_FIELDS = ("name", "nickname", "phone", "title", "gender", "external_id")
_COLUMN = {"name": "display_name"}  # API field -> accounts column, where they differ
GENDERS = ("", "male", "female")
_LIMITS = {"name": 200, "nickname": 200, "phone": 40, "title": 200, "external_id": 200}
UNSET: Any = object()
CSV_COLUMNS = ("address", "name", "nickname", "phone", "title", "gender", "external_id",
               "departments", "vip", "quota_bytes")
_FLAGS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}


def _now() -> int:
    return int(time.time())


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class DirectoryService(SharedMailboxes, GroupAdmin, TagAdmin, DomainAdmin, RecycleAdmin,
                       DepartmentCSV, DomainRemoval, DepartmentGroups, GroupCSV):
    def __init__(self, store: Any, cfg: DirectoryConfig) -> None:
        self.store = store
        self.pool = store.pool
        self.cfg = cfg
        # Where welcome letters are ingested: the daemon's MailStore ingestor;
        # the CLI sets its own process's (cli_ops._ingestor). None: no letters.
        self.ingestor = getattr(store, "ingestor", None)
        self.ingestor_factory: Any = None  # makes one when first needed

    # ------------------------------------------------------------------
    # shared checks (run inside transactions)
    def _enterprise(
        self, conn: sa.Connection, actor: Actor, name: str | None, *, create_default: bool = False
    ) -> Any:
        if actor.enterprise_id is not None:
            row = conn.execute(sa.select(m.enterprises).where(E.id == actor.enterprise_id)).first()
            if row is None:
                raise Unauthorized("the enterprise of this token no longer exists")
            if name and name != row.name:
                raise Forbidden(f"this credential is for enterprise {row.name}")
            return row
        if name:
            row = conn.execute(sa.select(m.enterprises).where(E.name == name)).first()
            if row is None:
                raise NotFound(f"unknown enterprise {name}")
            return row
        rows = conn.execute(sa.select(m.enterprises).order_by(E.id).limit(2)).all()
        if len(rows) == 1:
            return rows[0]
        if not rows:
            if create_default:
                eid = conn.execute(
                    m.enterprises.insert().values(name="default", created=_now())
                ).inserted_primary_key[0]
                self._log(conn, actor, eid, "enterprise.add", "default")
                return conn.execute(sa.select(m.enterprises).where(E.id == eid)).one()
            raise NotFound("no enterprise yet: add one with `exmailctl enterprise add NAME`")
        raise Invalid("several enterprises exist: name one (--enterprise NAME)")

    def _ent_for(self, conn: sa.Connection, actor: Actor, address: str,
                 enterprise: str | None = None) -> Any:
        """The enterprise an address's domain belongs to (for the CLI, which
        names members by address), or the caller's own."""
        if actor.enterprise_id is not None or enterprise:
            return self._enterprise(conn, actor, enterprise)
        domain = address.strip().lower().rpartition("@")[2].rstrip(".")
        eid = conn.execute(sa.select(D.enterprise_id).where(D.name == domain)).scalar()
        if eid is None:
            eid = orphan_enterprise(conn, address)  # in the bin, its domain removed
        if eid is None:
            raise NotFound(f"unknown domain {domain}")
        return conn.execute(sa.select(m.enterprises).where(E.id == eid)).one()

    def _ent_for_dept(self, conn: sa.Connection, actor: Actor, dept_id: int) -> Any:
        if actor.enterprise_id is not None:
            return self._enterprise(conn, actor, None)
        eid = conn.execute(sa.select(m.departments.c.enterprise_id).where(
            m.departments.c.id == dept_id)).scalar()
        if eid is None:
            raise NotFound(f"unknown department {dept_id}")
        return conn.execute(sa.select(m.enterprises).where(E.id == eid)).one()

    @staticmethod
    def _need(actor: Actor, function: str) -> None:
        if actor.full:
            return
        if function == "admins" or function not in actor.functions:
            raise Forbidden(f"this administrator may not manage {function}")

    @staticmethod
    def _scope(actor: Actor, tree: DeptTree) -> set[int] | None:
        """The departments a graded admin may act in; None: all."""
        return tree.subtree(actor.departments) if actor.graded else None

    def _member_in_scope(self, conn: sa.Connection, actor: Actor, tree: DeptTree, aid: int) -> None:
        scope = self._scope(actor, tree)
        if scope is None:
            return
        mine = set(conn.execute(sa.select(AD.department_id).where(AD.account_id == aid)).scalars())
        if not mine & scope:
            raise Forbidden("this member is outside the administrator's departments")

    def _log(
        self,
        conn: sa.Connection,
        actor: Actor,
        enterprise_id: int | None,
        action: str,
        target: str,
        before: Any = None,
        after: Any = None,
    ) -> None:
        conn.execute(
            m.operation_log.insert().values(
                enterprise_id=enterprise_id, actor=actor.name[:320], action=action,
                target=target[:400], before=before, after=after, ip=actor.ip[:64],
                created=_now(),
            )
        )

    def _member_row(
        self, conn: sa.Connection, ent_id: int, address: str, *, deleted: bool = False
    ) -> Any:
        """The member (or other account) an address names in this enterprise."""
        addr = address.strip().lower()
        q = sa.select(m.accounts).select_from(accounts_and_domains()).where(
            account_enterprise() == ent_id
        )
        q = q.where(A.deleted_at.isnot(None) if deleted else A.deleted_at.is_(None))
        row = conn.execute(q.where(A.address == addr)).first()
        if row is None:
            aid = conn.execute(sa.select(m.aliases.c.account_id).where(
                m.aliases.c.address == addr)).scalar()
            if aid is not None:
                row = conn.execute(q.where(A.id == aid)).first()
        if row is None:
            raise NotFound(f"unknown member {address}")
        return row

    def _domain_of(self, conn: sa.Connection, ent_id: int, domain: str) -> int:
        row = conn.execute(sa.select(D.id, D.enterprise_id).where(D.name == domain)).first()
        if row is None or row.enterprise_id != ent_id:
            raise Invalid(f"domain {domain} is not a domain of this enterprise")
        return row.id

    @staticmethod
    def _address_free(conn: sa.Connection, address: str) -> None:
        row = conn.execute(sa.select(A.deleted_at).where(A.address == address)).first()
        if row is not None:
            where = " (by an account in the recycle bin)" if row.deleted_at else ""
            raise Conflict(f"address {address} is already in use{where}")
        if conn.execute(sa.select(m.aliases.c.id).where(m.aliases.c.address == address)).first():
            raise Conflict(f"address {address} is already in use as an alias")

    @staticmethod
    def _address(address: str) -> tuple[str, str, str]:
        try:
            local, domain = normalise_address(address)
        except DirectoryError as e:
            raise Invalid(str(e)) from None
        return f"{local}@{domain}", local, domain

    # ------------------------------------------------------------------
    # enterprises
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

    # ------------------------------------------------------------------
    # departments
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

    # ------------------------------------------------------------------
    # members
    def _members_out(self, conn: sa.Connection, rows: list[Any], tree: DeptTree
                     ) -> list[dict[str, Any]]:
        ids = [r.id for r in rows]
        aliases: dict[int, list[str]] = {i: [] for i in ids}
        depts: dict[int, list[int]] = {i: [] for i in ids}
        if ids:
            for aid, addr in conn.execute(sa.select(m.aliases.c.account_id, m.aliases.c.address)
                                          .where(m.aliases.c.account_id.in_(ids))):
                aliases[aid].append(addr)
            for aid, did in conn.execute(sa.select(AD.account_id, AD.department_id)
                                         .where(AD.account_id.in_(ids))):
                depts[aid].append(did)
        tags = tags_of(conn, ids)
        out = []
        for r in rows:
            status = "deleted" if r.deleted_at else ("enabled" if r.enabled else "disabled")
            out.append({
                "address": r.address, "kind": r.kind, "name": r.display_name,
                "nickname": r.nickname, "phone": r.phone, "title": r.title, "gender": r.gender,
                "external_id": r.external_id,
                "departments": [{"id": d, "path": tree.path(d)}
                                for d in sorted(depts[r.id]) if d in tree.by_id],
                "aliases": sorted(aliases[r.id]), "tags": tags[r.id], "vip": bool(r.vip),
                "status": status,
                "quota_bytes": r.quota_bytes, "used_bytes": r.used_bytes,
                "message_count": r.message_count, "created": r.created,
                "deleted_at": r.deleted_at,
                "days_left": self._days_left(r.deleted_at, r.kind),
                "must_change_password": bool(r.must_change_password),
            })
        return out

    def _recycle_days(self, kind: str) -> int:
        # Business mailboxes stay longer (manual §4.4.2.3: 60 days).
        return self.cfg.shared_recycle_days if kind == "shared" else self.cfg.recycle_days

    def _days_left(self, deleted_at: int | None, kind: str = "member") -> int | None:
        """Whole days until the recycle-bin sweep purges a deleted account."""
        if deleted_at is None:
            return None
        left = deleted_at + self._recycle_days(kind) * 86400 - _now()
        return max(0, -(-left // 86400))

    def _check_profile(self, values: dict[str, Any]) -> dict[str, Any]:
        cols: dict[str, Any] = {}
        for key in MEMBER_FIELDS:
            if key not in values:
                continue
            v = values[key]
            if key == "external_id" and v is None:
                cols[key] = None
                continue
            if not isinstance(v, str):
                raise Invalid(f"{key} must be a string")
            v = v.strip()
            if any(ord(c) < 32 for c in v):
                raise Invalid(f"{key} cannot contain control characters")
            if key == "gender" and v not in GENDERS:
                raise Invalid("gender is male, female or empty")
            if len(v) > _LIMITS.get(key, 200):
                raise Invalid(f"{key} is longer than {_LIMITS.get(key, 200)} characters")
            cols[_COLUMN.get(key, key)] = v or (None if key == "external_id" else "")
        if "vip" in values:
            cols["vip"] = bool(values["vip"])
        if "quota_bytes" in values:
            q = values["quota_bytes"]
            if not isinstance(q, int) or isinstance(q, bool) or q < 0:
                raise Invalid("quota_bytes must be a whole number of bytes, 0 for unlimited")
            cols["quota_bytes"] = q
        return cols

    async def _hash(self, password: str | None, address: str) -> str | None:
        if password is None:
            return None
        try:
            check_policy(password, address)
        except WeakPassword as e:
            raise Invalid(f"weak password: {e}") from None
        return await self.pool.call(hash_password, password)

    def _set_departments(self, conn: sa.Connection, actor: Actor, tree: DeptTree, aid: int,
                         refs: list[int | str]) -> list[int]:
        ids = []
        for ref in refs:
            did = self._dept_ref(tree, ref)
            assert did is not None
            ids.append(did)
        ids = sorted(set(ids))
        scope = self._scope(actor, tree)
        if scope is not None and not set(ids) <= scope:
            raise Forbidden("a department given is outside the administrator's departments")
        conn.execute(m.account_departments.delete().where(AD.account_id == aid))
        if ids:
            conn.execute(m.account_departments.insert(),
                         [{"account_id": aid, "department_id": d} for d in ids])
        return ids

    async def add_member(
        self, actor: Actor, address: str, password: str | None = None, *,
        enterprise: str | None = None, departments: list[int | str] = (),  # type: ignore[assignment]
        **profile: Any,
    ) -> dict[str, Any]:
        self._need(actor, "members")
        address, _local, domain = self._address(address)
        cols = self._check_profile(profile)
        pw_hash = await self._hash(password, address)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address, enterprise)
            tree = DeptTree.load(conn, ent.id)
            return self._insert_member(conn, actor, ent, tree, address, domain, pw_hash, cols,
                                       list(departments))

        out = await self.pool.transaction(thd)
        await self._welcome([out["address"]])
        return out

    async def _welcome(self, addresses: list[str]) -> None:
        from exmaild.directory.welcome import send_welcome

        if self.ingestor is None and self.ingestor_factory is not None:
            self.ingestor = self.ingestor_factory()
        await send_welcome(self.store, self.ingestor, addresses, self.store.cfg.server.hostname)

    def _insert_member(
        self, conn: sa.Connection, actor: Actor, ent: Any, tree: DeptTree, address: str,
        domain: str, pw_hash: str | None, cols: dict[str, Any], departments: list[int | str],
    ) -> dict[str, Any]:
        did = self._domain_of(conn, ent.id, domain)
        self._address_free(conn, address)
        self._check_limit(conn, ent)
        if actor.graded and not departments:
            raise Forbidden("a graded administrator must put the member in its departments")
        if "quota_bytes" not in cols:  # the role's default (directory/quotas.py)
            cols = {**cols, "quota_bytes": default_quota(conn, self.cfg, ent.id,
                                                         vip=bool(cols.get("vip")))}
        aid = insert_account(conn, did, address, pw_hash, kind="member", **cols)
        self._set_departments(conn, actor, tree, aid, departments)
        if cols.get("vip"):
            self._check_vip(conn, ent)
        row = conn.execute(sa.select(m.accounts).where(A.id == aid)).one()
        out = self._members_out(conn, [row], tree)[0]
        self._log(conn, actor, ent.id, "member.add", address, after=_loggable(out))
        return out

    async def import_members(self, actor: Actor, text: str, enterprise: str | None = None,
                             progress: Progress | None = None) -> dict[str, Any]:
        """Members from CSV (columns of `CSV_COLUMNS`, `address` required,
        `departments` as paths separated by ';', optional `password`), all in
        one transaction: a bad row is reported with its line number and reason,
        and nothing of the import is applied."""
        self._need(actor, "members")
        progress = progress or NoProgress()
        parsed = []
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in (*CSV_COLUMNS, "password")]
        if "address" not in header:
            raise Invalid("line 1: the header needs an address column")
        if unknown:
            raise Invalid(f"line 1: unknown column(s) {', '.join(unknown)}")
        progress.begin(CHECKING, count_rows(text))
        for rec in reader:
            line = reader.line_num
            if len(parsed) >= self.cfg.import_max_rows:
                raise Invalid(f"line {line}: more than {self.cfg.import_max_rows} rows")
            try:
                if None in rec:
                    raise Invalid("more fields than the header has")
                address, _l, domain = self._address(rec.get("address") or "")
                profile: dict[str, Any] = {k: rec[k] for k in MEMBER_FIELDS if rec.get(k)}
                if rec.get("vip"):
                    flag = rec["vip"].strip().lower()
                    if flag not in _FLAGS:
                        raise Invalid(f"vip is yes or no, not {rec['vip']!r}")
                    profile["vip"] = _FLAGS[flag]
                if rec.get("quota_bytes"):
                    if not rec["quota_bytes"].strip().isdigit():
                        raise Invalid("quota_bytes is a whole number of bytes")
                    profile["quota_bytes"] = int(rec["quota_bytes"])
                cols = self._check_profile(profile)
                depts = [p for p in (rec.get("departments") or "").split(";") if p.strip()]
                pw_hash = await self._hash(rec.get("password") or None, address)
            except ServiceError as e:
                raise type(e)(f"line {line}: {e.message}") from None
            parsed.append((line, address, domain, pw_hash, cols, depts))
            await progress.checked()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            progress.begin(APPLYING, len(parsed))  # again on a retry
            ent = self._enterprise(conn, actor, enterprise)
            tree = DeptTree.load(conn, ent.id)
            for line, address, domain, pw_hash, cols, depts in parsed:
                try:
                    self._insert_member(conn, actor, ent, tree, address, domain, pw_hash, cols,
                                        depts)
                except ServiceError as e:
                    raise type(e)(f"line {line}: {e.message}") from None
                progress.applied()
            self._log(conn, actor, ent.id, "member.import", f"{len(parsed)} members")
            return {"imported": len(parsed)}

        out = await self.pool.transaction(thd)
        await self._welcome([address for _, address, *_ in parsed])
        return out

    async def export_members(self, actor: Actor, enterprise: str | None = None) -> str:
        """The enterprise's members (those the caller may see) as CSV, the
        columns `import_members` reads."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(CSV_COLUMNS)
        offset: int | None = 0
        while offset is not None:
            page = await self.list_members(actor, enterprise=enterprise, offset=offset,
                                           limit=self.cfg.api_page_limit)
            for m_ in page["items"]:
                w.writerow([
                    m_["address"], m_["name"], m_["nickname"], m_["phone"], m_["title"],
                    m_["gender"], m_["external_id"] or "",
                    ";".join(d["path"] for d in m_["departments"]),
                    "yes" if m_["vip"] else "no", m_["quota_bytes"],
                ])
            offset = page["next_offset"]
        return out.getvalue()

    @staticmethod
    def _vip_used(conn: sa.Connection, ent_id: int) -> int:
        return conn.execute(
            sa.select(sa.func.count()).select_from(m.accounts.join(m.domains)).where(
                D.enterprise_id == ent_id, A.vip.is_(True), A.deleted_at.is_(None))
        ).scalar_one()

    def _check_vip(self, conn: sa.Connection, ent: Any) -> None:
        """Called after a member became VIP (in the same transaction): over the
        enterprise's seats, the change is refused and rolled back."""
        if ent.vip_seats is None:
            return
        used = self._vip_used(conn, ent.id)
        if used > ent.vip_seats:
            raise Invalid(f"no VIP seat left: the enterprise has {ent.vip_seats}")

    def _check_limit(self, conn: sa.Connection, ent: Any) -> None:
        limit = ent.member_limit or self.cfg.member_limit
        count = conn.execute(
            sa.select(sa.func.count()).select_from(m.accounts.join(m.domains)).where(
                D.enterprise_id == ent.id, A.kind == "member", A.deleted_at.is_(None))
        ).scalar_one()
        if count >= limit:
            raise Invalid(f"the enterprise has reached its member limit ({limit})")

    async def get_member(self, actor: Actor, address: str, *, deleted: bool = False
                         ) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            self._need(actor, "members")
            row = self._member_row(conn, ent.id, address, deleted=deleted)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            return self._members_out(conn, [row], tree)[0]

        return await self.pool.do(thd)

    async def list_members(
        self, actor: Actor, *, enterprise: str | None = None, department: int | str | None = None,
        children: bool = True, status: str | None = None, q: str | None = None,
        vip: bool | None = None, limit: int = 50, offset: int = 0, tag: str | None = None,
    ) -> dict[str, Any]:
        self._need(actor, "members")
        if status not in (None, "enabled", "disabled", "deleted"):
            raise Invalid("status is enabled, disabled or deleted")
        if not 1 <= limit <= self.cfg.api_page_limit:
            raise Invalid(f"limit must be 1 to {self.cfg.api_page_limit}")
        if offset < 0:
            raise Invalid("offset must not be negative")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._enterprise(conn, actor, enterprise)
            tree = DeptTree.load(conn, ent.id)
            where = [account_enterprise() == ent.id, A.kind == "member"]
            where.append(A.deleted_at.isnot(None) if status == "deleted"
                         else A.deleted_at.is_(None))
            if status in ("enabled", "disabled"):
                where.append(A.enabled.is_(status == "enabled"))
            if vip is not None:
                where.append(A.vip.is_(vip))
            if q:
                text = q.strip().lower()
                where.append(sa.or_(
                    A.address.contains(text, autoescape=True),
                    sa.func.lower(A.display_name).contains(text, autoescape=True),
                    sa.func.lower(A.nickname).contains(text, autoescape=True),
                ))
            for ids in self._dept_filters(actor, tree, department, children):
                where.append(A.id.in_(
                    sa.select(AD.account_id).where(AD.department_id.in_(sorted(ids)))))
            if tag is not None:
                where.append(A.id.in_(sa.select(m.member_tags.c.account_id).where(
                    m.member_tags.c.tag_id == tag_id(conn, ent.id, tag))))
            base = sa.select(m.accounts).select_from(accounts_and_domains()).where(*where)
            total = conn.execute(
                sa.select(sa.func.count()).select_from(base.subquery())).scalar_one()
            rows = conn.execute(base.order_by(A.address).limit(limit).offset(offset)).all()
            items = self._members_out(conn, rows, tree)
            nxt = offset + len(items) if offset + len(items) < total else None
            return {"items": items, "total": total, "limit": limit, "offset": offset,
                    "next_offset": nxt}

        return await self.pool.do(thd)

    def _dept_filters(self, actor: Actor, tree: DeptTree, department: int | str | None,
                      children: bool) -> list[set[int]]:
        out = []
        if department is not None:
            did = self._dept_ref(tree, department)
            assert did is not None
            out.append(tree.subtree({did}) if children else {did})
        scope = self._scope(actor, tree)
        if scope is not None:
            out.append(scope)
        return out

    async def update_member(self, actor: Actor, address: str, changes: dict[str, Any]
                            ) -> dict[str, Any]:
        """Change profile fields, departments, VIP, quota, status or password."""
        self._need(actor, "members")
        cols = self._check_profile(changes)
        if "enabled" in changes:
            cols["enabled"] = bool(changes["enabled"])
        if "must_change_password" in changes:
            cols["must_change_password"] = bool(changes["must_change_password"])
        unknown = set(changes) - set(MEMBER_FIELDS) - {
            "vip", "quota_bytes", "enabled", "departments", "password", "must_change_password"}
        if unknown:
            raise Invalid(f"unknown field(s): {', '.join(sorted(unknown))}")
        pw_hash = UNSET
        if changes.get("password") is not None:
            canonical = address.strip().lower()
            pw_hash = await self._hash(changes["password"], canonical)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            before = self._members_out(conn, [row], tree)[0]
            values = dict(cols)
            if "vip" in values and "quota_bytes" not in values and row.kind == "member":
                follow = quota_after_role_change(conn, self.cfg, ent.id, quota=row.quota_bytes,
                                                 was_vip=row.vip, vip=bool(values["vip"]))
                if follow is not None:
                    values["quota_bytes"] = follow
            if row.kind == "shared" and pw_hash is not UNSET:
                raise Invalid("a business mailbox has no password: its members use their own")
            if pw_hash is not UNSET:
                values["password_hash"] = pw_hash
            if values:
                conn.execute(m.accounts.update().where(A.id == row.id).values(**values))
            if values.get("vip") and not row.vip:
                self._check_vip(conn, ent)
            if "departments" in changes:
                if not isinstance(changes["departments"], list):
                    raise Invalid("departments is a list of department ids or paths")
                ids = self._set_departments(conn, actor, tree, row.id, changes["departments"])
                if actor.graded and not ids:
                    raise Forbidden("a graded administrator cannot take a member out of "
                                    "all its departments")
            new = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
            after = self._members_out(conn, [new], tree)[0]
            action = "member.update"
            if set(changes) == {"enabled"}:
                action = "member.enable" if changes["enabled"] else "member.disable"
            diff_b, diff_a = _diff(before, after)
            if "password" in changes:
                diff_a["password"] = "changed"
                if set(changes) <= {"password", "must_change_password"}:
                    action = "member.password_reset"
            self._log(conn, actor, ent.id, action, row.address, before=diff_b, after=diff_a)
            return after

        return await self.pool.transaction(thd)

    async def reset_password(self, actor: Actor, address: str, password: str, *,
                             must_change: bool = True) -> dict[str, Any]:
        """An admin sets a member's password; with `must_change` (the default)
        protocol logins are refused until the member sets its own through
        /api/v1/me/password. The new hash ends every cached verification."""
        return await self.update_member(
            actor, address, {"password": password, "must_change_password": must_change})

    async def set_enabled(self, actor: Actor, address: str, enabled: bool) -> dict[str, Any]:
        return await self.update_member(actor, address, {"enabled": enabled})

    async def delete_member(self, actor: Actor, address: str) -> None:
        """To the recycle bin: no login, no mail, address and mail kept."""
        self._need(actor, "members")

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            conn.execute(m.accounts.update().where(A.id == row.id).values(deleted_at=_now()))
            conn.execute(m.api_tokens.update().where(m.api_tokens.c.account_id == row.id)
                         .values(revoked=True))
            self._log(conn, actor, ent.id, "member.delete", row.address)

        await self.pool.transaction(thd)

    async def restore_member(self, actor: Actor, address: str) -> dict[str, Any]:
        self._need(actor, "members")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address, deleted=True)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            self._check_limit(conn, ent)
            back = {} if row.domain_id is not None else {
                "domain_id": domain_back(conn, ent.id, row), "orphan_enterprise_id": None}
            conn.execute(m.accounts.update().where(A.id == row.id).values(
                deleted_at=None, **back))
            if row.vip:
                self._check_vip(conn, ent)
            self._log(conn, actor, ent.id, "member.restore", row.address)
            new = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
            return self._members_out(conn, [new], tree)[0]

        return await self.pool.transaction(thd)

    async def rename_member(self, actor: Actor, address: str, new_address: str
                            ) -> dict[str, Any]:
        """The one change of a member's address prefix (same domain); the old
        address stays as an alias so mail to it still arrives."""
        self._need(actor, "members")
        new, _local, new_domain = self._address(new_address)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            if row.renamed:
                raise Conflict(f"the address of {row.address} was changed once already")
            if new_domain != row.address.rpartition("@")[2]:
                raise Invalid("only the part before @ can change")
            self._address_free(conn, new)
            conn.execute(m.accounts.update().where(A.id == row.id).values(
                address=new, renamed=True))
            conn.execute(m.aliases.insert().values(address=row.address, account_id=row.id))
            self._log(conn, actor, ent.id, "member.rename", new,
                      before={"address": row.address}, after={"address": new})
            fresh = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
            return self._members_out(conn, [fresh], tree)[0]

        return await self.pool.transaction(thd)

    async def purge_member(self, actor: Actor, address: str) -> None:
        """Delete an account in the recycle bin for good, with its mail."""
        self._need(actor, "members")

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address, deleted=True)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            _delete_account(conn, row.id)
            self._log(conn, actor, ent.id, "member.purge", row.address)

        await self.pool.transaction(thd)

    async def sweep_recycle_bin(self, actor: Actor) -> int:
        """Purge every account whose time in the recycle bin is up; how many."""
        cutoff = _now() - self.cfg.recycle_days * 86400
        shared_cutoff = _now() - self.cfg.shared_recycle_days * 86400

        def thd(conn: sa.Connection) -> int:
            expired = sa.or_(sa.and_(A.kind != "shared", A.deleted_at <= cutoff),
                             sa.and_(A.kind == "shared", A.deleted_at <= shared_cutoff))
            rows = conn.execute(
                sa.select(A.id, A.address, account_enterprise().label("enterprise_id"))
                .select_from(accounts_and_domains())
                .where(A.deleted_at.isnot(None), expired).limit(1000)).all()
            for r in rows:
                _delete_account(conn, r.id)
                self._log(conn, actor, r.enterprise_id, "member.purge", r.address,
                          after={"expired": True})
            return len(rows)

        total = 0
        while n := await self.pool.transaction(thd):  # in batches: short transactions
            total += n
        return total

    # ------------------------------------------------------------------
    # aliases
    async def add_alias(self, actor: Actor, alias: str, address: str) -> dict[str, Any]:
        self._need(actor, "members")
        alias, _local, domain = self._address(alias)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self._ent_for(conn, actor, address)
            row = self._member_row(conn, ent.id, address)
            tree = DeptTree.load(conn, ent.id)
            self._member_in_scope(conn, actor, tree, row.id)
            self._domain_of(conn, ent.id, domain)
            self._address_free(conn, alias)
            n = conn.execute(sa.select(sa.func.count()).where(
                m.aliases.c.account_id == row.id)).scalar_one()
            if n >= self.cfg.max_aliases:
                raise Invalid(f"a member has at most {self.cfg.max_aliases} aliases")
            conn.execute(m.aliases.insert().values(address=alias, account_id=row.id))
            self._log(conn, actor, ent.id, "alias.add", alias, after={"member": row.address})
            return {"alias": alias, "member": row.address}

        return await self.pool.transaction(thd)

    async def remove_alias(self, actor: Actor, alias: str) -> None:
        self._need(actor, "members")
        alias = alias.strip().lower()

        def thd(conn: sa.Connection) -> None:
            ent = self._ent_for(conn, actor, alias)
            row = conn.execute(
                sa.select(m.aliases.c.id, A.id.label("aid"), A.address)
                .select_from(m.aliases.join(m.accounts).join(m.domains, D.id == A.domain_id))
                .where(m.aliases.c.address == alias, D.enterprise_id == ent.id)
            ).first()
            if row is None:
                raise NotFound(f"unknown alias {alias}")
            self._member_in_scope(conn, actor, DeptTree.load(conn, ent.id), row.aid)
            conn.execute(m.aliases.delete().where(m.aliases.c.id == row.id))
            self._log(conn, actor, ent.id, "alias.remove", alias, before={"member": row.address})

        await self.pool.transaction(thd)

    # ------------------------------------------------------------------
    # mail groups
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

    # ------------------------------------------------------------------
    # administrators
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


def _loggable(member: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "nickname", "departments", "vip", "status", "quota_bytes", "aliases")
    return {k: member[k] for k in keep}


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in before if k not in ("used_bytes", "message_count") and
            before[k] != after.get(k)]
    return {k: before[k] for k in keys}, {k: after[k] for k in keys}
