"""App passwords ("client-specific passwords", manual §5.6.8): named,
random, shown once, stored as argon2 hashes like account passwords.

A business mailbox has no password of its own: it logs in only with an app
password made by a member assigned to it, and that password stops working
when the member is no longer assigned (checked at every login).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m

P = m.app_passwords.c
MAX_PER_ACCOUNT = 20
_LETTERS = "abcdefghijkmnopqrstuvwxyz"  # no l: it reads like 1 in some fonts
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,100}")


def generate() -> str:
    """16 letters in groups of four (about 74 bits), easy to type on a phone."""
    raw = "".join(secrets.choice(_LETTERS) for _ in range(16))
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


def check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError("an app password's name is 1 to 100 printable characters")
    return name


def add(conn: sa.Connection, account_id: int, created_by: int, name: str,
        password_hash: str, now: int) -> dict[str, Any]:
    """Raises ValueError (limit) or KeyError (name taken)."""
    have = conn.execute(sa.select(P.name).where(P.account_id == account_id)).scalars().all()
    if name in have:
        raise KeyError(name)
    if len(have) >= MAX_PER_ACCOUNT:
        raise ValueError(f"at most {MAX_PER_ACCOUNT} app passwords per account")
    conn.execute(m.app_passwords.insert().values(
        account_id=account_id, created_by=created_by, name=name, password_hash=password_hash,
        created=now))
    return {"name": name, "created": now, "last_used": None}


def listed(conn: sa.Connection, account_id: int | None = None,
           created_by: int | None = None) -> list[dict[str, Any]]:
    A = m.accounts.c
    owner = m.accounts.alias("owner")
    q = (sa.select(P.name, P.created, P.last_used, A.address.label("by"),
                   owner.c.address.label("account"))
         .select_from(m.app_passwords.join(m.accounts, A.id == P.created_by)
                      .join(owner, owner.c.id == P.account_id))
         .order_by(owner.c.address, P.name))
    if account_id is not None:
        q = q.where(P.account_id == account_id)
    if created_by is not None:
        q = q.where(P.created_by == created_by)
    return [{"account": r.account, "name": r.name, "created": r.created,
             "last_used": r.last_used, "created_by": r.by} for r in conn.execute(q)]


def revoke(conn: sa.Connection, account_id: int, name: str,
           created_by: int | None = None) -> bool:
    where = [P.account_id == account_id, P.name == name]
    if created_by is not None:
        where.append(P.created_by == created_by)
    return conn.execute(m.app_passwords.delete().where(*where)).rowcount > 0


def for_login(conn: sa.Connection, account_id: int) -> list[Any]:
    """(id, name, password_hash, created_by), the most recently used first."""
    return conn.execute(sa.select(P.id, P.name, P.password_hash, P.created_by).where(
        P.account_id == account_id).order_by(P.last_used.desc().nulls_last(), P.id)).all()


def used(conn: sa.Connection, app_id: int, now: int) -> None:
    conn.execute(m.app_passwords.update().where(P.id == app_id).values(last_used=now))
