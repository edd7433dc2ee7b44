"""TLS-RPT (RFC 8460): per UTC day and receiving domain, how many outbound
TLS sessions met the domain's policy and which failed why
(`tls_report_counts`), and the JSON report of a day that
`exmailctl tlsrpt report DOMAIN --day YYYY-MM-DD` prints. Sending the
report to the domain's `_smtp._tls` rua is not done.
"""

from __future__ import annotations

import datetime
import json
import time
from typing import Any

import sqlalchemy as sa

from exmaild.store import model as m

SUCCESS = "success"


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def add(conn: sa.Connection, day: str, domain: str, policy_type: str, mx: str,
        result: str, n: int = 1) -> None:
    t = m.tls_report_counts
    key = sa.and_(t.c.day == day, t.c.domain == domain, t.c.policy_type == policy_type,
                  t.c.mx_host == mx, t.c.result == result)
    if conn.execute(t.update().where(key).values(count=t.c.count + n)).rowcount:
        return
    conn.execute(t.insert().values(day=day, domain=domain, policy_type=policy_type,
                                   mx_host=mx, result=result, count=n))


async def count(store: Any, domain: str, policy_type: str, mx: str, result: str) -> None:
    day = today()
    domain, mx = domain.lower().rstrip(".")[:253], mx.lower().rstrip(".")[:253]
    for attempt in (0, 1):  # another node may insert the same row first
        try:
            await store.pool.transaction(
                lambda c: add(c, day, domain, policy_type, mx, result[:40]))
            return
        except sa.exc.IntegrityError:
            if attempt:
                raise


def report(conn: sa.Connection, domain: str, day: str, organization: str,
           contact: str) -> dict[str, Any]:
    """The RFC 8460 §4.4 report of `day` for mail to `domain`."""
    datetime.date.fromisoformat(day)  # ValueError for a malformed day
    domain = domain.lower().rstrip(".")
    t = m.tls_report_counts
    rows = conn.execute(sa.select(t.c.policy_type, t.c.mx_host, t.c.result, t.c.count)
                        .where(t.c.day == day, t.c.domain == domain)
                        .order_by(t.c.policy_type, t.c.mx_host, t.c.result)).all()
    p = m.mta_sts_policies
    sts = conn.execute(sa.select(p).where(p.c.domain == domain)).first()
    policies = []
    for ptype in dict.fromkeys(r.policy_type for r in rows):
        mine = [r for r in rows if r.policy_type == ptype]
        policy: dict[str, Any] = {"policy-type": ptype, "policy-domain": domain}
        if ptype == "sts" and sts is not None:
            policy["policy-string"] = ["version: STSv1", f"mode: {sts.mode}",
                                       *(f"mx: {x}" for x in sts.mx.split("\n") if x),
                                       f"max_age: {sts.max_age}"]
            policy["mx-host"] = [x for x in sts.mx.split("\n") if x]
        failures = [r for r in mine if r.result != SUCCESS]
        policies.append({
            "policy": policy,
            "summary": {
                "total-successful-session-count": sum(r.count for r in mine
                                                      if r.result == SUCCESS),
                "total-failure-session-count": sum(r.count for r in failures),
            },
            "failure-details": [{"result-type": r.result, "receiving-mx-hostname": r.mx_host,
                                 "failed-session-count": r.count} for r in failures],
        })
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z",
                       "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": f"{day}_{domain}@{organization}",
        "policies": policies,
    }


def report_json(conn: sa.Connection, domain: str, day: str, hostname: str) -> str:
    return json.dumps(report(conn, domain, day, hostname, f"postmaster@{hostname}"), indent=2)
