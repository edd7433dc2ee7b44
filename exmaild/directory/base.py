"""The part of DirectoryService every rule family uses: the store, the
configuration, and the checks that run inside a transaction (the caller's
enterprise, its rights and scope, the operation log row)."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import sqlalchemy as sa

from exmaild.config import DirectoryConfig
from exmaild.directory.actor import Actor
from exmaild.directory.domain_removal import (
    account_enterprise,
    accounts_and_domains,
    orphan_enterprise,
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
from exmaild.store.directory import (
    DirectoryError,
    normalise_address,
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




class DirectoryBase:
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



def _loggable(member: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "nickname", "departments", "vip", "status", "quota_bytes", "aliases")
    return {k: member[k] for k in keep}


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in before if k not in ("used_bytes", "message_count") and
            before[k] != after.get(k)]
    return {k: before[k] for k in keys}, {k: after[k] for k in keys}
