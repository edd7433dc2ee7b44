"""Brute-force throttling state (issue #14 item 6), in the store so every
node sees the same counts.

Failures are counted per (account name, source IP) and per source IP; a
count is forgotten [auth] throttle_window seconds after its last failure.
Past [auth] throttle_account_failures or throttle_ip_failures the next
attempts are refused without checking the password, except from an address
where the account logged in successfully before (auth/policy.py), so an
attacker hammering one account cannot lock its owner out. Every failure is
answered after a delay that doubles with the count (Dovecot's auth penalty).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from exmaild.store import model as m

T = m.auth_throttle.c


def keys(name: str, ip: str) -> tuple[str, str]:
    return f"a:{name[:320]}|{ip[:64]}", f"i:{ip[:64]}"


def counts(conn: sa.Connection, name: str, ip: str, now: int, window: int) -> tuple[int, int]:
    """Live failures of (account, IP) and of IP."""
    ka, ki = keys(name, ip)
    rows = {r.key: r for r in conn.execute(sa.select(m.auth_throttle).where(
        T.key.in_((ka, ki))))}

    def live(k: str) -> int:
        r = rows.get(k)
        return r.failures if r is not None and r.updated >= now - window else 0

    return live(ka), live(ki)


def failed(conn: sa.Connection, name: str, ip: str, now: int, window: int) -> None:
    """Count one failure on both keys (an upsert: nodes may race on a key)."""
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)
    for key in keys(name, ip):
        stmt = insert(m.auth_throttle).values(key=key, failures=1, updated=now)
        stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={
            "failures": sa.case((T.updated < now - window, 1), else_=T.failures + 1),
            "updated": now,
        })
        conn.execute(stmt)


def succeeded(conn: sa.Connection, name: str, ip: str) -> None:
    """A right password clears its (account, IP) count; the IP's count stays."""
    conn.execute(m.auth_throttle.delete().where(T.key == keys(name, ip)[0]))


def delay(failures: int, base: float, most: float) -> float:
    if failures <= 0 or base <= 0:
        return 0.0
    return min(base * 2 ** min(failures - 1, 30), most)


def sweep(conn: sa.Connection, now: int, window: int) -> int:
    return conn.execute(m.auth_throttle.delete().where(T.updated < now - window)).rowcount
