"""useroption/get|update, mail/newcount and service/get_login_url."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from exmaild.auth import rules
from exmaild.auth.service import LoginSecurity
from exmaild.directory.errors import ServiceError
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import to_int
from exmaild.exmail_api.errors import ApiError
from exmaild.exmail_api.users import _userid
from exmaild.store import flags as F
from exmaild.store import model as m
from exmaild.store.records import DEFAULT_SETTINGS

if TYPE_CHECKING:
    from exmaild.exmail_api.resource import Call

# Exmail's option types: 2 and 3 are the per-account protocol switches of
# manual §6.2.2; 4 is the member's own secure login and 1 the enterprise's
# login policy forcing it on this member (auth/service.py, docs/login-security.md).
SWITCHES = {2: "imap_enabled", 3: "pop_enabled"}
FORCED, SECURE = 1, 4
A = m.accounts.c
MB = m.mailboxes.c
MSG = m.messages.c


def _types(value: Any) -> list[int]:
    if not isinstance(value, list) or not value:
        raise ApiError(E.INVALID_PARAMETER, "type is a list of option types (1 to 4)")
    out = [to_int(v, E.INVALID_PARAMETER, "option type") for v in value]
    if any(t not in (1, 2, 3, 4) for t in out):
        raise ApiError(E.INVALID_PARAMETER, "option types are 1 to 4")
    return out


def _member(c: Call, conn: sa.Connection, address: str) -> Any:
    try:
        row = c.svc._member_row(conn, c.enterprise_id, address)
    except ServiceError:
        raise ApiError(E.USER_NOT_FOUND, f"userid not found: {address}") from None
    if row.kind != "member":
        raise ApiError(E.USER_NOT_FOUND, f"{address} is not a member")
    return row


async def option_get(c: Call) -> dict[str, Any]:
    address = _userid(c)
    types = _types(c.arg("type"))

    def thd(conn: sa.Connection) -> dict[int, bool]:
        row = _member(c, conn, address)
        settings = {**DEFAULT_SETTINGS, **(row.settings or {})}
        values = {t: bool(settings[k]) for t, k in SWITCHES.items()}
        values[SECURE] = bool(settings.get("secure_login"))
        values[FORCED] = rules.for_account(conn, c.enterprise_id, row.id, "").secure_forced
        return values

    values = await c.svc.pool.do(thd)
    return {"option": [{"type": t, "value": "1" if values[t] else "0"} for t in types]}


async def option_update(c: Call) -> dict[str, Any]:
    address = _userid(c)
    opts = c.arg("option")
    if not isinstance(opts, list) or not opts or not all(isinstance(o, dict) for o in opts):
        raise ApiError(E.INVALID_PARAMETER, "option is a list of {type, value}")
    want: dict[int, bool] = {}
    for o in opts:
        t = to_int(o.get("type"), E.INVALID_PARAMETER, "option type")
        if t not in (1, 2, 3, 4):
            raise ApiError(E.INVALID_PARAMETER, "option types are 1 to 4")
        if str(o.get("value")) not in ("0", "1"):
            raise ApiError(E.INVALID_PARAMETER, "an option's value is \"0\" or \"1\"")
        want[t] = str(o["value"]) == "1"
    changes = {SWITCHES[t]: v for t, v in want.items() if t in SWITCHES}
    security = LoginSecurity(c.svc)

    def thd(conn: sa.Connection) -> None:
        row = _member(c, conn, address)
        # The same changes (and operation-log entries) as `exmailctl user set
        # --secure-login` and `exmailctl login-policy set --secure-login-members`.
        if SECURE in want:
            security._set_secure(conn, c.actor, c.enterprise_id, row, want[SECURE])
            row = _member(c, conn, address)  # its settings just changed
        if FORCED in want:
            security.force_secure_for(conn, c.actor, c.enterprise_id, row, want[FORCED])
        before = dict(row.settings or {})
        merged = {**before, **changes}
        if merged == before:
            return
        conn.execute(m.accounts.update().where(A.id == row.id).values(settings=merged))
        # The operation log row also tells running daemons to drop cached accounts.
        c.svc._log(conn, c.actor, c.enterprise_id, "member.settings", row.address,
                   before={k: before.get(k, DEFAULT_SETTINGS[k]) for k in changes},
                   after=changes)

    await c.svc.pool.transaction(thd)
    return {}


def _day(value: Any, what: str, tz: dt.tzinfo) -> dt.datetime:
    try:
        day = dt.date.fromisoformat(str(value))
    except ValueError:
        raise ApiError(E.INVALID_PARAMETER, f"{what} is YYYY-MM-DD") from None
    if len(str(value)) != 10:
        raise ApiError(E.INVALID_PARAMETER, f"{what} is YYYY-MM-DD")
    return dt.datetime.combine(day, dt.time(), tz)


async def newcount(c: Call) -> dict[str, Any]:
    """Unread mail in the member's INBOX, received between begin_date and
    end_date (both whole days, inclusive, in [exmail_api] timezone)."""
    address = _userid(c)
    tz = zoneinfo.ZoneInfo(c.app.cfg.exmail_api.timezone)
    where = [MSG.flags.op("&")(F.SEEN | F.DELETED) == 0, MSG.pop_hidden.is_(False)]
    if c.arg("begin_date") is not None:
        where.append(MSG.internal_date >= int(_day(c.arg("begin_date"), "begin_date",
                                                    tz).timestamp()))
    if c.arg("end_date") is not None:
        end = _day(c.arg("end_date"), "end_date", tz) + dt.timedelta(days=1)
        where.append(MSG.internal_date < int(end.timestamp()))

    def thd(conn: sa.Connection) -> int:
        row = _member(c, conn, address)
        return int(conn.execute(
            sa.select(sa.func.count()).select_from(m.messages.join(m.mailboxes))
            .where(MB.account_id == row.id, MB.name == "INBOX", *where)).scalar_one())

    return {"count": await c.svc.pool.do(thd)}


async def get_login_url(c: Call) -> dict[str, Any]:
    raise ApiError(E.NOT_PERMITTED, "api forbidden: exmaild has no webmail, so there is no "
                                    "login URL; members use IMAP, POP3 and SMTP clients")


OPTION_HANDLERS = {"get": option_get, "update": option_update}
