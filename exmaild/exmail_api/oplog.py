"""log/operation and log/batchjob: Exmail's queries of administrators' actions,
answered from exmaild's operation log (table operation_log, written by the
directory service for every change made through exmailctl, /api/v1 or
/cgi-bin/), only the token's enterprise's rows.

Exmail numbers both the request's category and each row's operation type
(its API documentation, "查询操作记录" and "查询批量任务"); exmaild's
actions are mapped onto those numbers here (docs/exmail-api.md). Exmail has
no batch-job record of its own kind in exmaild: the batch jobs are the CSV
imports (members, departments, groups), which the operation log records.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import to_int
from exmaild.exmail_api.errors import ApiError
from exmaild.exmail_api.logs import MAX_ROWS, _range
from exmaild.exmail_api.resource import Call
from exmaild.store import model as m

L = m.operation_log.c

# Row types: an action's Exmail operation type (0: other).
OPERATION_TYPE = {
    "admin.login": 1, "domain.add": 3, "domain.remove": 4,
    "member.add": 19, "member.delete": 20, "member.purge": 20, "member.restore": 21,
    "member.update": 23, "member.rename": 23, "alias.add": 24, "alias.remove": 24,
    "member.import": 25, "admin.set": 26, "admin.remove": 27,
    "department.add": 28, "department.import": 28, "department.delete": 29,
    "department.update": 30, "group.add": 32, "group.import": 32, "group.delete": 33,
    "group.edit": 34, "recycle.reassign": 36, "login.policy": 37,
    "exmail_api.secret.create": 40, "exmail_api.secret.revoke": 41, "me.password": 47,
}

# Request categories: 0 all; which actions each of Exmail's others covers.
# 1 (changes made through the open API) goes by the actor instead. 8 (mail
# backup) has nothing in exmaild.
CATEGORY: dict[int, tuple[str, ...]] = {
    2: ("admin.login", "token.", "exmail_api."),
    3: ("admin.set", "admin.remove"),
    4: ("enterprise.", "domain."),
    5: ("filter.",),
    6: ("recycle.",),
    7: ("member.", "alias.", "group.", "department.", "shared.", "tag."),
    8: (),
    9: ("login.policy", "member.secure_login", "member.settings", "apppass."),
}

# log/batchjob's types: exmaild's batch jobs (the CSV imports) as Exmail's.
BATCH_TYPE = {"member.import": 2, "department.import": 0, "group.import": 0}


def _type(action: str, after: Any) -> int:
    if action == "member.secure_login" and isinstance(after, dict):
        return 50 if after.get("secure_login") else 51
    if action == "member.update" and isinstance(after, dict) and "enabled" in after:
        return 21 if after["enabled"] else 22
    if action in ("filter.add", "filter.remove"):
        return 0
    return OPERATION_TYPE.get(action, 0)


def _filter_type(action: str, target: str) -> int:
    """An enterprise filter's entry: block or allow list (manual §4.4.4)."""
    kind = target.split(" ", 1)[0]
    if kind == "allow":
        return 14 if action == "filter.add" else 15
    return 11 if action == "filter.add" else 12


async def operation(c: Call) -> dict[str, Any]:
    since, until = _range(c)
    category = to_int(c.arg("type") if c.arg("type") is not None else 0,
                      E.INVALID_PARAMETER, "type")
    if category != 0 and category != 1 and category not in CATEGORY:
        raise ApiError(E.INVALID_PARAMETER, "type is 0 (all) to 9")
    where = [L.enterprise_id == c.enterprise_id, L.created >= since, L.created < until]
    if category == 1:
        where.append(L.actor.startswith("exmail-api:", autoescape=True))
    elif category:
        prefixes = CATEGORY[category]
        if not prefixes:
            return {"list": []}
        where.append(sa.or_(*(L.action.startswith(p, autoescape=True) for p in prefixes)))

    def thd(conn: sa.Connection) -> list[Any]:
        return list(conn.execute(sa.select(L.created, L.actor, L.action, L.target, L.after)
                                 .where(*where).order_by(L.id.desc()).limit(MAX_ROWS)))

    out = []
    for r in await c.svc.pool.do(thd):
        t = _filter_type(r.action, r.target) if r.action.startswith("filter.") \
            else _type(r.action, r.after)
        out.append({"time": int(r.created), "operator": r.actor, "type": t,
                    "operand": r.target, "remark": r.action})
    return {"list": out}


async def batchjob(c: Call) -> dict[str, Any]:
    since, until = _range(c)

    def thd(conn: sa.Connection) -> list[Any]:
        return list(conn.execute(
            sa.select(L.created, L.actor, L.action, L.target).where(
                L.enterprise_id == c.enterprise_id, L.created >= since, L.created < until,
                L.action.in_(sorted(BATCH_TYPE))).order_by(L.id.desc()).limit(MAX_ROWS)))

    return {"list": [{"time": int(r.created), "operator": r.actor,
                      "type": BATCH_TYPE[r.action], "remark": f"{r.action}: {r.target}"}
                     for r in await c.svc.pool.do(thd)]}


HANDLERS = {"operation": operation, "batchjob": batchjob}
