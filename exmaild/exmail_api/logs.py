"""log/mail, log/login and log/mailstatus: Exmail's log queries answered
from exmaild's mail log (mailstore/mail_log.py) and login log (auth/loginlog.py).

Dates are whole days (YYYY-MM-DD, both ends inclusive) in [exmail_api]
timezone; times in answers are Unix seconds. The status and type numbers are
listed in docs/exmail-api.md.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import sqlalchemy as sa

from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import to_int
from exmaild.exmail_api.errors import ApiError
from exmaild.exmail_api.options import _day
from exmaild.exmail_api.resource import Call

# log/mail's status: exmaild's mail-log statuses as Exmail's numbers (its API
# documentation, "查询邮件"), which differ for mail sent and mail received.
SENT_STATUS = {"queued": 1, "deferred": 1, "bounced": 2, "delivered": 3, "junk": 3,
               "refused": 4}
RECEIVED_STATUS = {"refused": 11, "junk": 12, "delivered": 13}
# log/login's type: the face logged in on.
LOGIN_TYPE = {"imap": 2, "pop3": 3, "smtp": 4, "sieve": 5}
MAX_DAYS = 31  # one query covers at most a month, as Exmail's does
MAX_ROWS = 10000


def _range(c: Call) -> tuple[int, int]:
    tz = zoneinfo.ZoneInfo(c.app.cfg.exmail_api.timezone)
    for name in ("begin_date", "end_date"):
        if c.arg(name) is None:
            raise ApiError(E.INVALID_PARAMETER, f"missing parameter {name} (YYYY-MM-DD)")
    begin = _day(c.arg("begin_date"), "begin_date", tz)
    end = _day(c.arg("end_date"), "end_date", tz) + dt.timedelta(days=1)
    if end <= begin:
        raise ApiError(E.INVALID_PARAMETER, "end_date is before begin_date")
    if (end - begin).days > MAX_DAYS:
        raise ApiError(E.INVALID_PARAMETER, f"a query covers at most {MAX_DAYS} days")
    return int(begin.timestamp()), int(end.timestamp())


def _user(c: Call) -> str | None:
    v = c.arg("userid")
    if v is None:
        return None
    if not isinstance(v, str) or "@" not in v:
        raise ApiError(E.INVALID_USERID, "userid is a member's address")
    return v.strip().lower()


async def mail(c: Call) -> dict[str, Any]:
    from exmaild.mailstore import mail_log

    since, until = _range(c)
    mailtype = to_int(c.arg("mailtype") if c.arg("mailtype") is not None else 0,
                      E.INVALID_PARAMETER, "mailtype")
    if mailtype not in (0, 1, 2):
        raise ApiError(E.INVALID_PARAMETER, "mailtype is 0 (both), 1 (sent) or 2 (received)")
    user = _user(c)
    subject = c.arg("subject")
    if subject is not None and not isinstance(subject, str):
        raise ApiError(E.INVALID_PARAMETER, "subject is text")
    # Sent/received: by a member, the side it is on; else the copy's direction.
    q: dict[str, Any] = {"enterprise_id": c.enterprise_id, "since": since, "until": until,
                         "subject": subject, "limit": MAX_ROWS}
    if user is None:
        q["direction"] = {1: "out", 2: "in"}.get(mailtype)
    else:
        q[{0: "member", 1: "sender", 2: "recipient"}[mailtype]] = user
    _, rows = await c.svc.pool.do(lambda conn: mail_log.query(conn, **q))
    out = []
    for r in rows:
        sent = r["sender"].lower() == user if user else r["direction"] == "out"
        status = (SENT_STATUS if sent else RECEIVED_STATUS).get(r["status"], 0)
        out.append({"mailtype": 1 if sent else 2, "sender": r["sender"],
                    "receiver": r["recipient"], "time": r["time"], "status": status})
    return {"list": out}


async def login(c: Call) -> dict[str, Any]:
    from exmaild.auth import loginlog

    since, until = _range(c)
    user = _user(c)
    if user is None:
        raise ApiError(E.MISSING_USERID, "missing parameter userid")
    _, rows = await c.svc.pool.do(lambda conn: loginlog.query(
        conn, enterprise_id=c.enterprise_id, account=user, since=since, until=until,
        result="ok", limit=MAX_ROWS))
    return {"list": [{"time": r["time"], "ip": r["ip"],
                      "type": LOGIN_TYPE.get(r["protocol"], 0)} for r in rows]}


async def mailstatus(c: Call) -> dict[str, Any]:
    from exmaild.mailstore import mail_log
    from exmaild.store import model as m

    since, until = _range(c)
    domain = c.arg("domain")
    if not isinstance(domain, str) or not domain.strip():
        raise ApiError(E.INVALID_PARAMETER, "missing parameter domain")
    domain = domain.strip().lower()

    def thd(conn: sa.Connection) -> tuple[int, int]:
        ours = conn.execute(sa.select(m.domains.c.id).where(
            m.domains.c.name == domain, m.domains.c.enterprise_id == c.enterprise_id)).first()
        if ours is None:  # another enterprise's domain is not found either
            raise ApiError(E.INVALID_PARAMETER, f"domain {domain} is not this enterprise's")
        return mail_log.counts(conn, c.enterprise_id, domain, since, until)

    sent, received = await c.svc.pool.do(thd)
    return {"sendsum": sent, "recvsum": received}


HANDLERS = {"mail": mail, "login": login, "mailstatus": mailstatus}
