"""Corp ids, per-purpose secrets and the access tokens gettoken issues.

Secrets and tokens are stored as SHA-256 (they are long random strings, so a
slow hash buys nothing); tokens live in the database so that every node of a
cluster accepts a token any node issued. Corp ids, secrets and tokens use only
[A-Za-z0-9_-]: clients paste them into URLs unencoded.
"""

from __future__ import annotations

import secrets as _random
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid, NotFound
from exmaild.directory.service import DirectoryService, token_hash
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.errors import ApiError
from exmaild.store import model as m

PURPOSES = ("directory", "logs", "newmail", "login")
C = m.exmail_api_corps.c
S = m.exmail_api_secrets.c
T = m.exmail_api_tokens.c
# An expired token is remembered this long, to answer 42001 instead of 40014.
EXPIRED_KEPT = 86400
_MAX_LEN = 200  # longer corp ids, secrets or tokens are not ours


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Grant:
    """What an access token reaches: one purpose of one enterprise."""

    enterprise_id: int
    purpose: str


async def create_secret(svc: DirectoryService, actor: Actor, enterprise: str | None,
                        purpose: str) -> tuple[str, str]:
    """(corp id, secret) for a purpose; a new secret replaces the previous one
    of that purpose and ends the tokens it issued."""
    if purpose not in PURPOSES:
        raise Invalid(f"purpose is one of {', '.join(PURPOSES)}")
    svc._need(actor, "admins")
    secret = _random.token_urlsafe(32)

    def thd(conn: sa.Connection) -> str:
        ent = svc._enterprise(conn, actor, enterprise)
        corp = conn.execute(sa.select(C.corp_id).where(C.enterprise_id == ent.id)).scalar()
        if corp is None:
            corp = "exm" + _random.token_hex(8)
            conn.execute(m.exmail_api_corps.insert().values(
                enterprise_id=ent.id, corp_id=corp, created=_now()))
        old = conn.execute(sa.select(S.id).where(
            S.enterprise_id == ent.id, S.purpose == purpose)).scalar()
        if old is not None:
            conn.execute(m.exmail_api_tokens.delete().where(T.secret_id == old))
            conn.execute(m.exmail_api_secrets.delete().where(S.id == old))
        conn.execute(m.exmail_api_secrets.insert().values(
            enterprise_id=ent.id, purpose=purpose, secret_hash=token_hash(secret),
            created=_now()))
        svc._log(conn, actor, ent.id, "exmail_api.secret.create", purpose,
                 after={"corpid": corp, "replaced": old is not None})
        return str(corp)

    corp = await svc.pool.transaction(thd)
    return corp, secret


async def revoke_secret(svc: DirectoryService, actor: Actor, enterprise: str | None,
                        purpose: str) -> None:
    """End a purpose's secret and every token it issued."""
    svc._need(actor, "admins")

    def thd(conn: sa.Connection) -> None:
        ent = svc._enterprise(conn, actor, enterprise)
        old = conn.execute(sa.select(S.id).where(
            S.enterprise_id == ent.id, S.purpose == purpose)).scalar()
        if old is None:
            raise NotFound(f"enterprise {ent.name} has no {purpose} secret")
        conn.execute(m.exmail_api_tokens.delete().where(T.secret_id == old))
        conn.execute(m.exmail_api_secrets.delete().where(S.id == old))
        svc._log(conn, actor, ent.id, "exmail_api.secret.revoke", purpose)

    await svc.pool.transaction(thd)


async def get_token(svc: DirectoryService, corpid: str, corpsecret: str, ttl: int
                    ) -> tuple[str, int]:
    """gettoken: a new access token for the purpose the secret was made for."""
    if not corpid:
        raise ApiError(E.MISSING_CORPID, "missing corpid")
    if not corpsecret:
        raise ApiError(E.MISSING_SECRET, "missing corpsecret")
    token = _random.token_urlsafe(32)
    digest = token_hash(corpsecret[:_MAX_LEN])

    def thd(conn: sa.Connection) -> None:
        eid = conn.execute(sa.select(C.enterprise_id).where(
            C.corp_id == corpid[:_MAX_LEN])).scalar()
        if eid is None:
            raise ApiError(E.INVALID_CORPID, "invalid corpid")
        sid = conn.execute(sa.select(S.id).where(
            S.enterprise_id == eid, S.secret_hash == digest)).scalar()
        if sid is None:
            raise ApiError(E.INVALID_SECRET, "invalid credential: corpsecret is wrong")
        now = _now()
        # Tokens long expired are useless: swept here rather than on a timer.
        conn.execute(m.exmail_api_tokens.delete().where(T.expires < now - EXPIRED_KEPT))
        conn.execute(m.exmail_api_tokens.insert().values(
            secret_id=sid, token_hash=token_hash(token), created=now, expires=now + ttl))

    await svc.pool.transaction(thd)
    return token, ttl


async def check_token(svc: DirectoryService, token: str) -> Grant:
    if not token:
        raise ApiError(E.MISSING_TOKEN, "missing access_token")
    if len(token) > _MAX_LEN:
        raise ApiError(E.INVALID_TOKEN, "invalid access_token")
    digest = token_hash(token)

    def thd(conn: sa.Connection) -> Any:
        return conn.execute(
            sa.select(T.expires, S.enterprise_id, S.purpose)
            .select_from(m.exmail_api_tokens.join(m.exmail_api_secrets))
            .where(T.token_hash == digest)).first()

    row = await svc.pool.do(thd)
    if row is None:
        raise ApiError(E.INVALID_TOKEN, "invalid access_token")
    if row.expires <= _now():
        raise ApiError(E.TOKEN_EXPIRED, "access_token expired")
    return Grant(row.enterprise_id, row.purpose)
