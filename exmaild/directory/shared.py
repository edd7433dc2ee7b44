"""Business mailboxes (manual §4.4.2.3, §5.2) at protocol time: which ones a
member may reach.

A business mailbox is an account of kind "shared" with no password; the
members and departments it is assigned to are rows of `group_members` under
its account id (kind member, or department with or without sub-departments),
so assignment expands exactly like a mail group's membership. Only enabled,
live business mailboxes of the member's own enterprise count: another
enterprise's can never appear, whatever its rows say.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.groups import expand
from exmaild.store import model as m

A = m.accounts.c
D = m.domains.c
KIND = "shared"


def assigned_ids(conn: sa.Connection, shared_id: int) -> set[int]:
    """The live, enabled members a business mailbox is assigned to."""
    ids, _externals = expand(conn, [shared_id])
    return ids


def accessible(conn: sa.Connection, account_id: int) -> list[tuple[int, str]]:
    """(account id, address) of each business mailbox `account_id` may use,
    by address."""
    ent = conn.execute(sa.select(D.enterprise_id).select_from(m.accounts.join(m.domains))
                       .where(A.id == account_id)).scalar()
    if ent is None:
        return []
    rows = conn.execute(
        sa.select(A.id, A.address).select_from(m.accounts.join(m.domains)).where(
            D.enterprise_id == ent, A.kind == KIND, A.enabled.is_(True),
            A.deleted_at.is_(None)).order_by(A.address)).all()
    return [(r.id, r.address) for r in rows if account_id in assigned_ids(conn, r.id)]


def send_as(conn: sa.Connection, account_id: int) -> list[str]:
    """The addresses (own and aliases) of the business mailboxes a member may send as."""
    out: list[str] = []
    for sid, address in accessible(conn, account_id):
        out.append(address)
        out.extend(conn.execute(sa.select(m.aliases.c.address).where(
            m.aliases.c.account_id == sid)).scalars())
    return out


async def accessible_mailboxes(pool: Any, account_id: int) -> list[tuple[int, str]]:
    return await pool.do(lambda conn: accessible(conn, account_id))


async def send_as_addresses(pool: Any, account_id: int) -> list[str]:
    return await pool.do(lambda conn: send_as(conn, account_id))
