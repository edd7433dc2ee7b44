"""Member self-service (/api/v1/me): a member sees and changes only itself.

The actor here is always a member session (`Actor.member`): every method
works on `actor.account_id` and nothing else, so no argument can reach
another account. Enterprise settings that govern what a member may change
(the nickname, manual §4.4.1.3) are read from the member's enterprise.
"""

from __future__ import annotations

import secrets
from typing import Any

import sqlalchemy as sa

from exmaild.auth.passwords import verify_password
from exmaild.directory.actor import Actor
from exmaild.directory.errors import Forbidden, Invalid, Unauthorized
from exmaild.directory.service import A, D, DirectoryService, _now, token_hash
from exmaild.directory.settings import enterprise_settings
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.records import DEFAULT_SETTINGS, FETCH_WINDOWS

_BOOL_SETTINGS = tuple(k for k, v in DEFAULT_SETTINGS.items() if isinstance(v, bool))


class SelfService:
    def __init__(self, svc: DirectoryService) -> None:
        self.svc = svc
        self.pool = svc.pool

    def _own(self, conn: sa.Connection, actor: Actor) -> Any:
        if not actor.member or actor.account_id is None:
            raise Forbidden("only a member's own session may use /me")
        row = conn.execute(sa.select(m.accounts, D.enterprise_id).join(
            m.domains, D.id == A.domain_id).where(A.id == actor.account_id)).first()
        if row is None or row.deleted_at or not row.enabled:
            raise Unauthorized("this account can no longer log in")
        return row

    def _out(self, conn: sa.Connection, row: Any) -> dict[str, Any]:
        tree = DeptTree.load(conn, row.enterprise_id)
        acct = conn.execute(sa.select(m.accounts).where(A.id == row.id)).one()
        out = self.svc._members_out(conn, [acct], tree)[0]
        for hidden in ("deleted_at", "days_left"):
            out.pop(hidden, None)
        es = enterprise_settings(conn, row.enterprise_id)
        out["nickname_changeable"] = es["members_may_change_nickname"]
        out["settings"] = {**DEFAULT_SETTINGS, **(acct.settings or {})}
        return out

    async def start_session(self, account_id: int, ip: str) -> dict[str, Any]:
        """A short-lived token for a member whose password the caller verified."""
        token = "exu_" + secrets.token_urlsafe(32)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            row = conn.execute(sa.select(m.accounts, D.enterprise_id).join(
                m.domains, D.id == A.domain_id).where(A.id == account_id)).one()
            if row.kind != "member":
                raise Forbidden("only members have a self-service login")
            now = _now()
            expires = now + self.svc.cfg.session_ttl
            T = m.api_tokens.c
            conn.execute(m.api_tokens.insert().values(
                enterprise_id=row.enterprise_id, account_id=account_id, kind="member",
                name="me", token_hash=token_hash(token), created=now, expires=expires))
            conn.execute(m.api_tokens.delete().where(
                T.kind.in_(("session", "member")), T.expires < now))
            return {"token": token, "expires": expires, "address": row.address,
                    "must_change_password": bool(row.must_change_password)}

        return await self.pool.transaction(thd)

    async def me(self, actor: Actor) -> dict[str, Any]:
        return await self.pool.do(lambda conn: self._out(conn, self._own(conn, actor)))

    async def update_profile(self, actor: Actor, changes: dict[str, Any]) -> dict[str, Any]:
        """A member changes its nickname, when its enterprise allows that."""
        unknown = set(changes) - {"nickname"}
        if unknown:
            raise Invalid(f"a member may change only its nickname, not {', '.join(unknown)}")
        cols = self.svc._check_profile(changes)

        def thd(conn: sa.Connection) -> dict[str, Any]:
            row = self._own(conn, actor)
            if cols and cols.get("nickname") != row.nickname:
                if not enterprise_settings(conn, row.enterprise_id)[
                        "members_may_change_nickname"]:
                    raise Forbidden("your enterprise does not let members change their nickname")
                conn.execute(m.accounts.update().where(A.id == row.id).values(**cols))
                self.svc._log(conn, actor, row.enterprise_id, "me.update", row.address,
                              before={"nickname": row.nickname}, after=cols)
            return self._out(conn, row)

        return await self.pool.transaction(thd)

    async def change_password(self, actor: Actor, old: str, new: str) -> None:
        """Needs the current password; the new one must pass the policy and
        differ from it. Clears "must change at next login"; the new hash ends
        every cached verification of the old password."""
        def load(conn: sa.Connection) -> Any:
            return self._own(conn, actor)

        row = await self.pool.do(load)
        if not await self.pool.call(verify_password, row.password_hash, old):
            raise Forbidden("the current password is wrong")
        if new == old:
            raise Invalid("weak password: the new password must differ from the current one")
        pw_hash = await self.svc._hash(new, row.address)

        def thd(conn: sa.Connection) -> None:
            cur = self._own(conn, actor)
            if cur.password_hash != row.password_hash:
                raise Invalid("the password changed meanwhile: try again")
            conn.execute(m.accounts.update().where(A.id == row.id).values(
                password_hash=pw_hash, must_change_password=False))
            self.svc._log(conn, actor, row.enterprise_id, "me.password", row.address,
                          after={"password": "changed"})

        await self.pool.transaction(thd)

    async def settings(self, actor: Actor) -> dict[str, Any]:
        return (await self.me(actor))["settings"]

    async def update_settings(self, actor: Actor, changes: dict[str, Any]) -> dict[str, Any]:
        """The client settings of manual §6.2.2 that exist today."""
        for key, value in changes.items():
            if key in _BOOL_SETTINGS:
                if not isinstance(value, bool):
                    raise Invalid(f"{key} is true or false")
            elif key == "fetch_window":
                if value not in FETCH_WINDOWS:
                    raise Invalid(f"fetch_window is one of {', '.join(FETCH_WINDOWS)}")
            else:
                raise Invalid(f"unknown setting {key}")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            row = self._own(conn, actor)
            before = dict(row.settings or {})
            merged = {**before, **changes}
            if merged != before:
                conn.execute(m.accounts.update().where(A.id == row.id).values(settings=merged))
                self.svc._log(conn, actor, row.enterprise_id, "me.settings", row.address,
                              before={k: before.get(k, DEFAULT_SETTINGS[k]) for k in changes},
                              after=changes)
            return {**DEFAULT_SETTINGS, **merged}

        return await self.pool.transaction(thd)
