"""Members and their aliases: add, list, update, delete and restore
(recycle bin), rename, purge; the VIP and member-count limits."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.auth.passwords import WeakPassword, check_policy, hash_password
from exmaild.directory.actor import Actor
from exmaild.directory.base import (
    _COLUMN,
    _LIMITS,
    AD,
    GENDERS,
    MEMBER_FIELDS,
    UNSET,
    A,
    D,
    DirectoryBase,
    _diff,
    _loggable,
    _now,
)
from exmaild.directory.domain_removal import (
    account_enterprise,
    accounts_and_domains,
    domain_back,
)
from exmaild.directory.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
)
from exmaild.directory.quotas import default_quota, quota_after_role_change
from exmaild.directory.tags import tag_id, tags_of
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import (
    _delete_account,
    insert_account,
)


class MemberAdmin(DirectoryBase):
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
