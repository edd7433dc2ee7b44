"""Managing login security: app passwords, secure login, the enterprise's
login rules and the login log, for the CLI, the admin API and the member
self-service API. Rights are the directory's (exmaild/directory/service.py):
app passwords and secure login of a member need the "members" function and
the member in the admin's departments; the login rules need a full admin;
the login log needs "log". Every change is written to the operation log.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import sqlalchemy as sa

from exmaild.auth import apppass, loginlog, rules, second_factor
from exmaild.auth.passwords import hash_password
from exmaild.directory.actor import Actor
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.directory.service import A, D, DirectoryService, _now
from exmaild.directory.shared import KIND as SHARED
from exmaild.directory.shared import accessible, assigned_ids
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

Row = Any


class LoginSecurity:
    def __init__(self, svc: DirectoryService) -> None:
        self.svc = svc
        self.pool = svc.pool

    # -- helpers ---------------------------------------------------------------
    def _target(self, conn: sa.Connection, actor: Actor, address: str) -> tuple[Row, Row]:
        """(enterprise, account) an admin may manage (members or business mailboxes)."""
        self.svc._need(actor, "members")
        ent = self.svc._ent_for(conn, actor, address)
        row = self.svc._member_row(conn, ent.id, address)
        if row.kind not in ("member", SHARED):
            raise Invalid(f"{row.address} is a {row.kind}: it does not log in")
        if row.kind == "member":
            self.svc._member_in_scope(conn, actor, DeptTree.load(conn, ent.id), row.id)
        return ent, row

    def _own(self, conn: sa.Connection, actor: Actor) -> Row:
        if not actor.member or actor.account_id is None:
            raise Forbidden("only a member's own session may use /me")
        row = conn.execute(sa.select(m.accounts, D.enterprise_id).join(
            m.domains, D.id == A.domain_id).where(A.id == actor.account_id)).first()
        if row is None or row.deleted_at or not row.enabled:
            raise Forbidden("this account can no longer log in")
        return row

    def _creator_for(self, conn: sa.Connection, ent_id: int, account: Row,
                     by: str | None) -> int:
        """Who an app password is made by: the member itself, or for a business
        mailbox a member assigned to it."""
        if account.kind != SHARED:
            if by and by.strip().lower() != account.address:
                raise Invalid("a member's app password is its own: leave out --by")
            return int(account.id)
        if not by:
            raise Invalid(f"{account.address} is a business mailbox: name the assigned "
                          "member the app password is made by")
        member = self.svc._member_row(conn, ent_id, by)
        if member.id not in assigned_ids(conn, account.id):
            raise Forbidden(f"{member.address} is not assigned to {account.address}")
        return int(member.id)

    def _insert(self, conn: sa.Connection, actor: Actor, ent_id: int, account: Row,
                creator: int, name: str, pw_hash: str) -> dict[str, Any]:
        try:
            info = apppass.add(conn, account.id, creator, name, pw_hash, _now())
        except KeyError:
            raise Conflict(f"{account.address} already has an app password named "
                           f"{name!r}") from None
        except ValueError as e:
            raise Invalid(str(e)) from None
        self.svc._log(conn, actor, ent_id, "apppass.add", account.address,
                      after={"name": name})
        return {"account": account.address, **info}

    @staticmethod
    def _name(name: str) -> str:
        try:
            return apppass.check_name(name)
        except ValueError as e:
            raise Invalid(str(e)) from None

    # -- app passwords (admin, CLI) ----------------------------------------------
    async def add_app_password(self, actor: Actor, address: str, name: str,
                               by: str | None = None) -> tuple[dict[str, Any], str]:
        """(its description, the password: shown this once)."""
        name = self._name(name)
        password = apppass.generate()
        pw_hash = await self.pool.call(hash_password, password)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent, row = self._target(conn, actor, address)
            creator = self._creator_for(conn, ent.id, row, by)
            return self._insert(conn, actor, ent.id, row, creator, name, pw_hash)

        return await self.pool.transaction(thd), password

    async def list_app_passwords(self, actor: Actor, address: str) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            _ent, row = self._target(conn, actor, address)
            return apppass.listed(conn, account_id=row.id)

        return await self.pool.do(thd)

    async def revoke_app_password(self, actor: Actor, address: str, name: str) -> None:
        def thd(conn: sa.Connection) -> None:
            ent, row = self._target(conn, actor, address)
            if not apppass.revoke(conn, row.id, name):
                raise NotFound(f"{row.address} has no app password named {name!r}")
            self.svc._log(conn, actor, ent.id, "apppass.revoke", row.address,
                          before={"name": name})

        await self.pool.transaction(thd)

    # -- app passwords (self-service) ----------------------------------------------
    def _my_mailbox(self, conn: sa.Connection, me: Row, mailbox: str | None) -> Row:
        if not mailbox or mailbox.strip().lower() == me.address:
            return me
        wanted = mailbox.strip().lower()
        for sid, address in accessible(conn, me.id):
            if address == wanted:
                return conn.execute(sa.select(m.accounts).where(A.id == sid)).one()
        raise Forbidden(f"{mailbox} is not a business mailbox assigned to you")

    async def my_app_passwords(self, actor: Actor) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            me = self._own(conn, actor)
            return apppass.listed(conn, created_by=me.id)

        return await self.pool.do(thd)

    async def add_my_app_password(self, actor: Actor, name: str, mailbox: str | None = None
                                  ) -> tuple[dict[str, Any], str]:
        name = self._name(name)
        password = apppass.generate()
        pw_hash = await self.pool.call(hash_password, password)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self._own(conn, actor)
            target = self._my_mailbox(conn, me, mailbox)
            return self._insert(conn, actor, me.enterprise_id, target, me.id, name, pw_hash)

        return await self.pool.transaction(thd), password

    async def revoke_my_app_password(self, actor: Actor, name: str,
                                     mailbox: str | None = None) -> None:
        def thd(conn: sa.Connection) -> None:
            me = self._own(conn, actor)
            target = self._my_mailbox(conn, me, mailbox)
            if not apppass.revoke(conn, target.id, name, created_by=me.id):
                raise NotFound(f"no app password named {name!r} for {target.address}")
            self.svc._log(conn, actor, me.enterprise_id, "apppass.revoke", target.address,
                          before={"name": name})

        await self.pool.transaction(thd)

    # -- secure login ----------------------------------------------------------------
    def _set_secure(self, conn: sa.Connection, actor: Actor, ent_id: int, row: Row,
                    on: bool) -> dict[str, Any]:
        if row.kind != "member":
            raise Invalid(f"{row.address} is not a member (business mailboxes always use "
                          "app passwords)")
        before = dict(row.settings or {})
        if bool(before.get("secure_login")) != on:
            conn.execute(m.accounts.update().where(A.id == row.id).values(
                settings={**before, "secure_login": on}))
            self.svc._log(conn, actor, ent_id, "member.secure_login", row.address,
                          before={"secure_login": bool(before.get("secure_login"))},
                          after={"secure_login": on})
        forced = rules.for_account(conn, ent_id, row.id, "").secure_forced
        return {"address": row.address, "secure_login": on, "forced": forced}

    def force_secure_for(self, conn: sa.Connection, actor: Actor, ent_id: int, row: Row,
                         on: bool) -> None:
        """Name or unname one member in the login policy's forced secure login
        (as `login-policy set --secure-login-members` does for a list)."""
        before = rules.load(conn, ent_id)
        have = set(before["secure_login"]["members"])
        want = have | {row.id} if on else have - {row.id}
        if want == have:
            return
        after = rules.merged(before, {"secure_login": {"members": sorted(want)}})
        rules.save(conn, ent_id, after, _now())
        name = conn.execute(sa.select(m.enterprises.c.name).where(
            m.enterprises.c.id == ent_id)).scalar() or ""
        self.svc._log(conn, actor, ent_id, "login.policy", name,
                      before={"secure_login": self._policy_out(conn, ent_id, before)[
                          "secure_login"]},
                      after={"secure_login": self._policy_out(conn, ent_id, after)[
                          "secure_login"]})

    async def set_secure_login(self, actor: Actor, address: str, on: bool) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent, row = self._target(conn, actor, address)
            return self._set_secure(conn, actor, ent.id, row, on)

        return await self.pool.transaction(thd)

    async def my_secure_login(self, actor: Actor, on: bool | None = None) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self._own(conn, actor)
            if on is None:
                forced = rules.for_account(conn, me.enterprise_id, me.id, "").secure_forced
                return {"address": me.address, "forced": forced,
                        "secure_login": bool((me.settings or {}).get("secure_login"))}
            return self._set_secure(conn, actor, me.enterprise_id, me, on)

        return await self.pool.transaction(thd)

    async def check_own_switches(self, actor: Actor, changes: dict[str, Any]) -> None:
        """Members change their IMAP/POP switches only where the enterprise lets them."""
        if not {"imap_enabled", "pop_enabled"} & set(changes):
            return

        def thd(conn: sa.Connection) -> None:
            me = self._own(conn, actor)
            r = rules.for_account(conn, me.enterprise_id, me.id, "")
            if not r.members_may_change:
                raise Forbidden("your administrator does not let members change the "
                                "IMAP/SMTP and POP/SMTP switches")
            for key, admin_on in (("imap_enabled", r.imap), ("pop_enabled", r.pop)):
                if changes.get(key) is True and not admin_on:
                    raise Forbidden(f"{key.split('_')[0].upper()} is switched off by your "
                                    "administrator")

        await self.pool.do(thd)

    # -- the enterprise's login rules --------------------------------------------------
    def _policy_out(self, conn: sa.Connection, ent_id: int, p: dict[str, Any]
                    ) -> dict[str, Any]:
        tree = DeptTree.load(conn, ent_id)
        ids = set(p["secure_login"]["members"]) | set(p["ip_exempt"]) | {
            int(k) for k in p["protocols"]["members"]}
        names = dict(conn.execute(sa.select(A.id, A.address).where(A.id.in_(ids))).all()) \
            if ids else {}

        def dept(i: int | str) -> str:
            try:
                return tree.path(int(i))
            except Exception:
                return f"#{i}"

        pr = p["protocols"]
        return {
            "secure_login": {"everyone": bool(p["secure_login"]["everyone"]),
                             "departments": [dept(i) for i in p["secure_login"]["departments"]],
                             "members": sorted(names.get(i, f"#{i}")
                                               for i in p["secure_login"]["members"])},
            "ip_allow": list(p["ip_allow"]),
            "ip_exempt": sorted(names.get(i, f"#{i}") for i in p["ip_exempt"]),
            "protocols": {"everyone": dict(pr["everyone"]),
                          "departments": {dept(k): v for k, v in pr["departments"].items()},
                          "members": {names.get(int(k), f"#{k}"): v
                                      for k, v in pr["members"].items()},
                          "members_may_change": bool(pr.get("members_may_change", True))},
            "admin_totp": bool(p.get("admin_totp")),
        }

    def _resolve(self, conn: sa.Connection, ent_id: int, changes: dict[str, Any]
                 ) -> dict[str, Any]:
        """Addresses and department paths of an update made into ids."""
        tree = DeptTree.load(conn, ent_id)

        def member(address: str) -> int:
            row = self.svc._member_row(conn, ent_id, address)
            if row.kind != "member":
                raise Invalid(f"{row.address} is not a member")
            return int(row.id)

        def dept(ref: int | str) -> int:
            d = self.svc._dept_ref(tree, ref)
            assert d is not None
            return d

        def switches(v: Any, where: str) -> dict[str, bool]:
            if not isinstance(v, dict) or not set(v) <= set(rules.PROTOCOLS) or not all(
                    isinstance(x, bool) for x in v.values()):
                raise Invalid(f"{where}: switches are {{\"imap\": bool, \"pop\": bool}}")
            return dict(v)

        out: dict[str, Any] = {}
        if "secure_login" in changes:
            sl = changes["secure_login"]
            cur: dict[str, Any] = {}
            if "everyone" in sl:
                cur["everyone"] = bool(sl["everyone"])
            if "departments" in sl:
                cur["departments"] = sorted({dept(x) for x in sl["departments"]})
            if "members" in sl:
                cur["members"] = sorted({member(x) for x in sl["members"]})
            out["secure_login"] = cur
        if "ip_allow" in changes:
            try:
                out["ip_allow"] = rules.parse_networks(list(changes["ip_allow"]))
            except ValueError as e:
                raise Invalid(f"ip_allow: {e}") from None
        if "ip_exempt" in changes:
            out["ip_exempt"] = sorted({member(x) for x in changes["ip_exempt"]})
        if "admin_totp" in changes:
            out["admin_totp"] = bool(changes["admin_totp"])
        if "protocols" in changes:
            pr = changes["protocols"]
            cur = {}
            if "everyone" in pr:
                cur["everyone"] = switches(pr["everyone"], "protocols.everyone")
            if "departments" in pr:
                cur["departments"] = {str(dept(k)): switches(v, f"protocols.departments.{k}")
                                      for k, v in pr["departments"].items() if v}
            if "members" in pr:
                cur["members"] = {str(member(k)): switches(v, f"protocols.members.{k}")
                                  for k, v in pr["members"].items() if v}
            if "members_may_change" in pr:
                cur["members_may_change"] = bool(pr["members_may_change"])
            out["protocols"] = cur
        return out

    async def get_policy(self, actor: Actor, enterprise: str | None = None) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            return self._policy_out(conn, ent.id, rules.load(conn, ent.id))

        return await self.pool.do(thd)

    async def update_policy(self, actor: Actor, changes: dict[str, Any],
                            enterprise: str | None = None) -> dict[str, Any]:
        """Each part named in `changes` replaces what was there (lists whole;
        within secure_login and protocols, the keys given)."""
        self.svc._need(actor, "admins")
        unknown = set(changes) - {"secure_login", "ip_allow", "ip_exempt", "protocols",
                                  "admin_totp"}
        if unknown:
            raise Invalid(f"unknown login policy part {sorted(unknown)[0]}")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            before = rules.load(conn, ent.id)
            after = rules.merged(before, self._resolve(conn, ent.id, changes))
            rules.save(conn, ent.id, after, _now())
            out_b = self._policy_out(conn, ent.id, before)
            out_a = self._policy_out(conn, ent.id, after)
            keys = [k for k in out_a if out_a[k] != out_b[k]]
            if keys:
                self.svc._log(conn, actor, ent.id, "login.policy", ent.name,
                              before={k: out_b[k] for k in keys},
                              after={k: out_a[k] for k in keys})
            return out_a

        return await self.pool.transaction(thd)

    # -- the login log ------------------------------------------------------------------
    async def login_log(self, actor: Actor, *, account: str | None = None,
                        since: int | None = None, until: int | None = None,
                        ip: str | None = None, result: str | None = None, limit: int = 100,
                        offset: int = 0, enterprise: str | None = None) -> dict[str, Any]:
        self.svc._need(actor, "log")
        if ip:
            try:
                ip = str(ipaddress.ip_address(ip))
            except ValueError:
                raise Invalid(f"{ip!r} is not an IP address") from None

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent_id = None
            if actor.enterprise_id is not None or enterprise:
                ent_id = self.svc._enterprise(conn, actor, enterprise).id
            ids = None if ent_id is None else self._members_in_scope(conn, actor, ent_id)
            total, items = loginlog.query(conn, enterprise_id=ent_id, account_ids=ids,
                                          account=account,
                                          since=since, until=until, ip=ip, result=result,
                                          limit=limit, offset=offset)
            nxt = offset + len(items) if offset + len(items) < total else None
            return {"items": items, "total": total, "limit": limit, "offset": offset,
                    "next_offset": nxt}

        return await self.pool.do(thd)

    async def login_activity(self, actor: Actor, days: int, logged_in: bool,
                             enterprise: str | None = None) -> list[dict[str, Any]]:
        """Members who have (or have not) logged in successfully within `days` days."""
        self.svc._need(actor, "log")
        since = _now() - days * 86400

        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            last = loginlog.last_logins(conn, ent.id)
            rows = conn.execute(sa.select(A.id, A.address).select_from(
                m.accounts.join(m.domains)).where(
                D.enterprise_id == ent.id, A.kind == "member", A.deleted_at.is_(None))
                .order_by(A.address)).all()
            ids = self._members_in_scope(conn, actor, ent.id)
            return [{"address": r.address, "last_login": last.get(r.id)} for r in rows
                    if (last.get(r.id, 0) >= since) == logged_in
                    and (ids is None or r.id in ids)]

        return await self.pool.do(thd)

    def _members_in_scope(self, conn: sa.Connection, actor: Actor, ent_id: int
                          ) -> list[int] | None:
        """The accounts a graded administrator's departments cover (None: all),
        so its login queries show only those members."""
        scope = self.svc._scope(actor, DeptTree.load(conn, ent_id))
        if scope is None:
            return None
        AD = m.account_departments.c
        return sorted(set(conn.execute(sa.select(AD.account_id).where(
            AD.department_id.in_(scope))).scalars()))

    async def my_logins(self, actor: Actor, limit: int = 100, offset: int = 0
                        ) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self._own(conn, actor)
            total, items = loginlog.query(conn, account_ids=[me.id], limit=limit,
                                          offset=offset)
            nxt = offset + len(items) if offset + len(items) < total else None
            return {"items": items, "total": total, "limit": limit, "offset": offset,
                    "next_offset": nxt}

        return await self.pool.do(thd)

    # -- the second factor of the API logins (auth/second_factor.py) ----------------
    async def my_totp(self, actor: Actor) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            return second_factor.status(conn, self._own(conn, actor).id)

        return await self.pool.do(thd)

    async def begin_my_totp(self, actor: Actor) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self._own(conn, actor)
            issuer = conn.execute(sa.select(m.enterprises.c.name).where(
                m.enterprises.c.id == me.enterprise_id)).scalar() or "exmaild"
            out = second_factor.begin(conn, me.id, me.address, issuer, _now())
            if out is None:
                raise Conflict("the second factor is on: turn it off first")
            return out

        return await self.pool.transaction(thd)

    async def confirm_my_totp(self, actor: Actor, code: str) -> dict[str, Any]:
        def thd(conn: sa.Connection) -> dict[str, Any]:
            me = self._own(conn, actor)
            codes = second_factor.confirm(conn, me.id, code, _now(), actor.ip)
            if codes is None:
                raise Invalid("wrong code, or no secret waiting (POST /api/v1/me/totp first)")
            return {"enabled": True, "recovery_codes": codes}

        return await self.pool.transaction(thd)

    async def disable_my_totp(self, actor: Actor, code: str) -> None:
        """Needs a current code or a recovery code."""
        now = _now()

        def thd(conn: sa.Connection) -> None:
            me = self._own(conn, actor)
            if second_factor.consume(conn, me.id, code, now, actor.ip) is None:
                raise Forbidden("wrong or reused code")
            second_factor.disable(conn, me.id, now, ip=actor.ip)

        await self.pool.transaction(thd)

    async def reset_totp(self, actor: Actor, address: str) -> None:
        """An administrator turns a member's second factor off (a lost phone)."""
        def thd(conn: sa.Connection) -> None:
            _ent, row = self._target(conn, actor, address)
            if not second_factor.disable(conn, row.id, _now(), actor=actor.name, ip=actor.ip):
                raise NotFound(f"{row.address} has no second factor")

        await self.pool.transaction(thd)
