"""An enterprise's login rules (manual §4.4.5): forced secure login, allowed
source networks with exempt members, and the IMAP/SMTP and POP/SMTP switches.

Stored as one JSON document per enterprise in `login_policy`, naming members
by account id and departments by id (so renames do not break a rule), and
read afresh at every login: a change made by the CLI or the API on any node
applies to the next login, with no cache to invalidate.

    {"secure_login": {"everyone": bool, "departments": [id], "members": [id]},
     "ip_allow": ["192.0.2.0/24", "2001:db8::/32"],   # empty: from anywhere
     "ip_exempt": [id],
     "protocols": {"everyone": {"imap": bool, "pop": bool},
                   "departments": {"id": {...}}, "members": {"id": {...}},
                   "members_may_change": bool},
     "admin_totp": bool}                              # admins need TOTP on the API
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

PROTOCOLS = ("imap", "pop")


def empty_policy() -> dict[str, Any]:
    return {
        "secure_login": {"everyone": False, "departments": [], "members": []},
        "ip_allow": [],
        "ip_exempt": [],
        "protocols": {"everyone": {}, "departments": {}, "members": {},
                      "members_may_change": True},
        "admin_totp": False,
    }


def load(conn: sa.Connection, enterprise_id: int) -> dict[str, Any]:
    raw = conn.execute(sa.select(m.login_policy.c.policy).where(
        m.login_policy.c.enterprise_id == enterprise_id)).scalar()
    policy = empty_policy()
    for key, value in (raw or {}).items():
        if isinstance(policy.get(key), dict) and isinstance(value, dict):
            policy[key].update(value)
        else:
            policy[key] = value
    return policy


def save(conn: sa.Connection, enterprise_id: int, policy: dict[str, Any], now: int) -> None:
    P = m.login_policy.c
    if conn.execute(sa.select(P.enterprise_id).where(P.enterprise_id == enterprise_id)).first():
        conn.execute(m.login_policy.update().where(P.enterprise_id == enterprise_id)
                     .values(policy=policy, updated=now))
    else:
        conn.execute(m.login_policy.insert().values(enterprise_id=enterprise_id,
                                                    policy=policy, updated=now))


def parse_networks(items: list[str]) -> list[str]:
    """Normalised CIDRs, or ValueError naming the bad one."""
    out = []
    for item in items:
        try:
            out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return out


@dataclass(frozen=True)
class Rules:
    """What the policy says for one account."""

    secure_forced: bool
    ip_allowed: bool
    imap: bool  # the admin side of the switches; the member's own setting is ANDed in
    pop: bool
    members_may_change: bool
    admin_totp: bool = False  # administrators need a second factor on the API



def for_account(conn: sa.Connection, enterprise_id: int | None, account_id: int,
                ip: str) -> Rules:
    if enterprise_id is None:
        return Rules(False, True, True, True, True, False)
    policy = load(conn, enterprise_id)
    own = set(conn.execute(sa.select(m.account_departments.c.department_id).where(
        m.account_departments.c.account_id == account_id)).scalars())
    # A rule on a department covers its sub-departments.
    depts: set[int] = set()
    if own:
        tree = DeptTree.load(conn, enterprise_id)
        for d in own:
            depts.add(d)
            depts.update(a.id for a in tree.ancestors(d))
    sl = policy["secure_login"]
    forced = bool(sl.get("everyone")) or account_id in sl.get("members", []) or bool(
        depts & set(sl.get("departments", [])))
    return Rules(
        secure_forced=forced,
        ip_allowed=_ip_allowed(policy, account_id, ip),
        imap=_switch(policy["protocols"], "imap", account_id, depts),
        pop=_switch(policy["protocols"], "pop", account_id, depts),
        members_may_change=bool(policy["protocols"].get("members_may_change", True)),
        admin_totp=bool(policy.get("admin_totp")),
    )


def _ip_allowed(policy: dict[str, Any], account_id: int, ip: str) -> bool:
    nets = policy.get("ip_allow") or []
    if not nets or account_id in (policy.get("ip_exempt") or []):
        return True
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in ipaddress.ip_network(n, strict=False) for n in nets)


def _switch(protocols: dict[str, Any], name: str, account_id: int, depts: set[int]) -> bool:
    """The most specific rule wins: member, then its departments (off wins
    among several), then everyone; no rule: on."""
    mine = protocols.get("members", {}).get(str(account_id), {})
    if name in mine:
        return bool(mine[name])
    found = [bool(v[name]) for k, v in protocols.get("departments", {}).items()
             if int(k) in depts and name in v]
    if found:
        return all(found)
    return bool(protocols.get("everyone", {}).get(name, True))


def merged(policy: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` (ids already resolved) laid over `policy`: each named part replaces."""
    out = copy.deepcopy(policy)
    for key, value in changes.items():
        if key in ("secure_login", "protocols") and isinstance(value, dict):
            out[key].update(value)
        else:
            out[key] = value
    return out
