"""The login log (manual §4.4.8, §5.5.7): one row per login attempt on any
face, written by auth/policy.py, queried by the CLI and both APIs."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.codec.csvrows import rows_csv
from exmaild.store import model as m

L = m.login_log.c
COLUMNS = ("time", "account", "ip", "protocol", "method", "client", "result", "reason")


def record(conn: sa.Connection, **values: Any) -> None:
    values["account"] = values["account"][:320]
    values["method"] = values["method"][:120]
    values["client"] = (values.get("client") or "")[:200]
    values["reason"] = values["reason"][:200]
    conn.execute(m.login_log.insert().values(**values))


def known_address(conn: sa.Connection, account_id: int, ip: str) -> bool:
    """Whether the account logged in successfully from this address before."""
    return conn.execute(sa.select(L.id).where(
        L.account_id == account_id, L.ip == ip, L.result == "ok").limit(1)).first() is not None


def query(conn: sa.Connection, *, enterprise_id: int | None = None,
          account_ids: list[int] | None = None, account: str | None = None,
          since: int | None = None, until: int | None = None, ip: str | None = None,
          result: str | None = None, limit: int = 100, offset: int = 0
          ) -> tuple[int, list[dict[str, Any]]]:
    """(total, rows newest first)."""
    where = []
    if enterprise_id is not None:
        where.append(L.enterprise_id == enterprise_id)
    if account_ids is not None:
        where.append(L.account_id.in_(account_ids))
    if account:
        where.append(L.account == account.strip().lower())
    if since is not None:
        where.append(L.created >= since)
    if until is not None:
        where.append(L.created < until)
    if ip:
        where.append(L.ip == ip)
    if result:
        where.append(L.result == result)
    total = conn.execute(sa.select(sa.func.count()).select_from(m.login_log)
                         .where(*where)).scalar_one()
    rows = conn.execute(sa.select(m.login_log).where(*where)
                        .order_by(L.id.desc()).limit(limit).offset(offset))
    return total, [row_out(r) for r in rows]


def row_out(r: Any) -> dict[str, Any]:
    return {"time": r.created, "account": r.account, "ip": r.ip, "protocol": r.protocol,
            "method": r.method, "client": r.client, "result": r.result, "reason": r.reason}


def to_csv(rows: list[dict[str, Any]]) -> str:
    return rows_csv(COLUMNS, rows)


def last_logins(conn: sa.Connection, enterprise_id: int) -> dict[int, int]:
    """account id -> time of its last successful login still in the log."""
    rows = conn.execute(sa.select(L.account_id, sa.func.max(L.created)).where(
        L.enterprise_id == enterprise_id, L.result == "ok", L.account_id.isnot(None))
        .group_by(L.account_id))
    return {aid: t for aid, t in rows}


def sweep(conn: sa.Connection, before: int) -> int:
    return conn.execute(m.login_log.delete().where(L.created < before)).rowcount
