"""Members' sender lists (manual §5.6.1): blocked senders go to Junk or are
refused, allowed senders skip the Junk decision. Checked at delivery before
the member's Sieve script; the envelope sender and the From: address count.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa

from exmaild.store import model as m

T = m.member_filters
LISTS = ("block", "allow")
ACTIONS = ("junk", "refuse")


class FilterError(Exception):
    pass


@dataclass(frozen=True)
class Entry:
    list: str
    pattern: str
    action: str


def normalise(pattern: str) -> str:
    """An address (local@domain) or a domain ("example.com", "@example.com")."""
    p = pattern.strip().lower().rstrip(".")
    if p.startswith("@"):
        p = p[1:]
    if not p or len(p) > 320 or any(c in p for c in " <>,;\"\\()[]") or p.count("@") > 1 \
            or p.endswith("@") or "." not in p.rpartition("@")[2]:
        raise FilterError(f"not an address or domain: {pattern!r}")
    return p


def matches(pattern: str, address: str) -> bool:
    a = address.lower()
    if "@" in pattern:
        return a == pattern
    domain = a.rpartition("@")[2]
    return domain == pattern or domain.endswith("." + pattern)


def decide(entries: list[Entry], senders: list[str]) -> str | None:
    """"allow", "junk", "refuse" or None. An allow entry wins over a block
    (the member listed the sender explicitly as wanted)."""
    senders = [s for s in senders if s]
    if not senders:
        return None
    if any(e.list == "allow" and any(matches(e.pattern, s) for s in senders) for e in entries):
        return "allow"
    for e in entries:
        if e.list == "block" and any(matches(e.pattern, s) for s in senders):
            return e.action
    return None


def load(conn: sa.Connection, account_ids: list[int]) -> dict[int, list[Entry]]:
    out: dict[int, list[Entry]] = {}
    for i in range(0, len(account_ids), 500):
        rows = conn.execute(sa.select(T.c.account_id, T.c.list, T.c.pattern, T.c.action)
                            .where(T.c.account_id.in_(account_ids[i : i + 500])))
        for r in rows:
            out.setdefault(r[0], []).append(Entry(r[1], r[2], r[3]))
    return out


def add(conn: sa.Connection, account_id: int, lst: str, pattern: str, action: str) -> str:
    if lst not in LISTS:
        raise FilterError(f"list must be one of {', '.join(LISTS)}")
    if action not in ACTIONS:
        raise FilterError(f"action must be one of {', '.join(ACTIONS)}")
    p = normalise(pattern)
    done = conn.execute(T.update().where(T.c.account_id == account_id, T.c.list == lst,
                                         T.c.pattern == p).values(action=action)).rowcount
    if not done:
        conn.execute(T.insert().values(account_id=account_id, list=lst, pattern=p,
                                       action=action, created=int(time.time())))
    return p


def remove(conn: sa.Connection, account_id: int, lst: str, pattern: str) -> None:
    p = normalise(pattern)
    if not conn.execute(T.delete().where(T.c.account_id == account_id, T.c.list == lst,
                                         T.c.pattern == p)).rowcount:
        raise FilterError(f"{p} is not on the {lst} list")


def entries(conn: sa.Connection, account_id: int) -> list[Entry]:
    rows = conn.execute(sa.select(T.c.list, T.c.pattern, T.c.action)
                        .where(T.c.account_id == account_id).order_by(T.c.list, T.c.pattern))
    return [Entry(r[0], r[1], r[2]) for r in rows]
