"""Mail groups at delivery time: who a group reaches and who may write to it.

Expansion walks nested groups with a visited set (groups may contain each
other), adds department members (with sub-departments when asked), and
returns each mailbox once however many routes lead to it: the caller stores
one blob and one content row for all of them. Disabled and deleted members
are left out (they take no new mail); other enterprises cannot appear, as
membership is checked when a source is added.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

ALLOW = ("anyone", "enterprise", "members", "list")
# group_members kinds that are not delivery routes: a representative may send
# as the group (submission), it does not receive the group's mail for that.
REPRESENTATIVE = "representative"
ALL_STAFF = "all"  # every live member of the group's enterprise, as it is at delivery
A = m.accounts.c
D = m.domains.c
G = m.group_members.c


def expand(conn: sa.Connection, group_ids: list[int]) -> tuple[set[int], set[str]]:
    """(member account ids, external addresses) that mail to these groups reaches."""
    seen: set[int] = set()
    accounts: set[int] = set()
    externals: set[str] = set()
    trees: dict[int, DeptTree] = {}
    todo = list(group_ids)
    while todo:
        gid = todo.pop()
        if gid in seen:
            continue
        seen.add(gid)
        for r in conn.execute(sa.select(m.group_members).where(G.group_id == gid)):
            if r.kind == "member":
                accounts.add(r.account_id)
            elif r.kind == "group":
                todo.append(r.account_id)
            elif r.kind == "external" and r.address:
                externals.add(r.address)
            elif r.kind == ALL_STAFF:
                accounts.update(_all_staff(conn, gid))
            elif r.kind == "tag" and r.tag_id is not None:
                accounts.update(conn.execute(sa.select(m.member_tags.c.account_id).where(
                    m.member_tags.c.tag_id == r.tag_id)).scalars())
            elif r.kind == "department" and r.department_id is not None:
                ent = conn.execute(sa.select(m.departments.c.enterprise_id).where(
                    m.departments.c.id == r.department_id)).scalar()
                if ent is None:
                    continue
                tree = trees.get(ent) or trees.setdefault(ent, DeptTree.load(conn, ent))
                depts = tree.subtree({r.department_id}) if r.with_children else {r.department_id}
                accounts.update(conn.execute(sa.select(m.account_departments.c.account_id).where(
                    m.account_departments.c.department_id.in_(sorted(depts)))).scalars())
    if accounts:
        live = conn.execute(sa.select(A.id).where(
            A.id.in_(sorted(accounts)), A.enabled.is_(True), A.deleted_at.is_(None),
            A.kind != "group")).scalars()
        accounts = set(live)
    return accounts, externals


def _all_staff(conn: sa.Connection, group_id: int) -> list[int]:
    ent = conn.execute(sa.select(D.enterprise_id).select_from(m.accounts.join(m.domains))
                       .where(A.id == group_id)).scalar()
    return list(conn.execute(sa.select(A.id).select_from(m.accounts.join(m.domains)).where(
        D.enterprise_id == ent, A.kind == "member", A.enabled.is_(True),
        A.deleted_at.is_(None))).scalars())


def represented(conn: sa.Connection, account_id: int) -> list[str]:
    """The addresses (own and aliases) of the live groups `account_id`
    represents: it may send as them through submission."""
    gids = conn.execute(sa.select(G.group_id).select_from(
        m.group_members.join(m.accounts, A.id == G.group_id)).where(
        G.kind == REPRESENTATIVE, G.account_id == account_id, A.enabled.is_(True),
        A.deleted_at.is_(None))).scalars().all()
    if not gids:
        return []
    out = list(conn.execute(sa.select(A.address).where(A.id.in_(gids))).scalars())
    out += conn.execute(sa.select(m.aliases.c.address).where(
        m.aliases.c.account_id.in_(gids))).scalars()
    return out


def may_send(conn: sa.Connection, group_id: int, sender: str) -> bool:
    """Whether mail from `sender` (the envelope sender) may go to the group."""
    row = conn.execute(sa.select(m.mail_groups).where(
        m.mail_groups.c.account_id == group_id)).first()
    allow = row.allow if row is not None else "anyone"
    if allow == "anyone":
        return True
    sender = sender.strip().lower()
    if not sender:
        return False  # bounces are not for lists that restrict their senders
    if allow == "list":
        return sender in {a.lower() for a in (row.allow_list or [])}
    if allow == "enterprise":
        domain = sender.rpartition("@")[2]
        q = (sa.select(m.domains.c.enterprise_id).select_from(m.accounts.join(m.domains))
             .where(A.id == group_id))
        ent = conn.execute(q).scalar()
        return bool(conn.execute(sa.select(m.domains.c.id).where(
            m.domains.c.name == domain, m.domains.c.enterprise_id == ent)).first())
    # members: the sender is one of the addresses the group reaches
    ids, externals = expand(conn, [group_id])
    if sender in externals:
        return True
    aid = _account_of(conn, sender)
    if aid is None:
        return False
    return aid in ids or bool(conn.execute(sa.select(G.id).where(
        G.group_id == group_id, G.kind == REPRESENTATIVE, G.account_id == aid)).first())


def _account_of(conn: sa.Connection, address: str) -> int | None:
    aid = conn.execute(sa.select(A.id).where(A.address == address)).scalar()
    if aid is None:
        aid = conn.execute(sa.select(m.aliases.c.account_id).where(
            m.aliases.c.address == address)).scalar()
    return aid


async def expand_groups(pool: Any, group_ids: list[int]) -> tuple[set[int], set[str]]:
    return await pool.do(lambda conn: expand(conn, group_ids))


async def group_permits(pool: Any, group_id: int, sender: str) -> bool:
    return await pool.do(lambda conn: may_send(conn, group_id, sender))


async def represented_groups(pool: Any, account_id: int) -> list[str]:
    return await pool.do(lambda conn: represented(conn, account_id))
