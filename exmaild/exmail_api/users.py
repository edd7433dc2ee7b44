"""user/create|update|delete|get|simplelist|list|batchcheck.

`userid` is the member's address, `slaves` its aliases, `position` its title,
`mobile` its phone, `extid` its external id, `cpwd_login` "must change the
password at the next login". Changes go through DirectoryService.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from exmaild.directory.errors import ServiceError
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import (
    ROOT,
    dept_in,
    dept_out,
    flag,
    mapped,
    refuse,
    str_list,
    to_int,
)
from exmaild.exmail_api.errors import ApiError
from exmaild.store import model as m
from exmaild.store.directory import DirectoryError, normalise_address

if TYPE_CHECKING:
    from exmaild.exmail_api.resource import Call

MAX_SLAVES = 5
MAX_BATCH = 20
MAX_DEPTS = 20  # departments of one member, as Exmail allows
_MOBILE = re.compile(r"\+?[0-9][0-9 -]{2,38}")
_GENDER_IN = {"0": "", "1": "male", "2": "female"}
_GENDER_OUT = {"": "0", "male": "1", "female": "2"}
A = m.accounts.c
D = m.domains.c


def _userid(c: Call) -> str:
    uid = c.arg("userid")
    if uid is None:
        raise ApiError(E.MISSING_USERID, "missing userid")
    if not isinstance(uid, str) or "@" not in uid:
        raise ApiError(E.INVALID_USERID, "invalid userid: it is the member's address")
    return uid.strip().lower()


def _codes(e: ServiceError, default: int) -> ApiError:
    msg = e.message
    if e.code == "conflict" and "already in use" in msg:
        return ApiError(E.USERID_EXISTS, msg)
    if e.code == "not_found" and "department" in msg:
        return ApiError(E.INVALID_DEPT_ID, msg)
    if e.code == "not_found":
        return ApiError(E.USER_NOT_FOUND, msg)
    if "domain" in msg or "address" in msg:
        return ApiError(E.INVALID_USERID, msg)
    return ApiError(default, msg)


async def _known_depts(c: Call, exts: list[int]) -> list[int]:
    """Exmail department ids to the directory's; the root means "none"."""
    have = {d["id"] for d in await c.svc.list_departments(c.actor)}
    out = []
    for ext in exts:
        internal = dept_in(ext) if ext >= ROOT else -1
        if internal is None:
            continue
        if internal not in have:
            raise ApiError(E.INVALID_DEPT_ID, f"invalid department id {ext}")
        out.append(internal)
    return out


def _dept_list(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise ApiError(E.INVALID_DEPT_ID, "department is a list of department ids")
    if len(value) > MAX_DEPTS:
        raise ApiError(E.INVALID_PARAMETER, f"department has at most {MAX_DEPTS} ids")
    return [to_int(v, E.INVALID_DEPT_ID, "department id") for v in value]


def _profile(c: Call) -> dict[str, Any]:
    """The profile fields given (a "" is not given)."""
    out: dict[str, Any] = {}
    name = c.arg("name")
    if name is not None:
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or any(
                ord(ch) < 32 for ch in name):
            raise ApiError(E.INVALID_NAME, "invalid member name")
        out["name"] = name.strip()
    if c.arg("position") is not None:
        out["title"] = str(c.arg("position"))
    mobile = c.arg("mobile")
    if mobile is not None:
        if not isinstance(mobile, str) or not _MOBILE.fullmatch(mobile.strip()):
            raise ApiError(E.INVALID_MOBILE, "invalid mobile")
        out["phone"] = mobile.strip()
    if c.arg("extid") is not None:
        out["external_id"] = str(c.arg("extid"))
    gender = c.arg("gender")
    if gender is not None:
        if str(gender) not in _GENDER_IN:
            raise ApiError(E.INVALID_PARAMETER, "gender is 1 (male) or 2 (female)")
        out["gender"] = _GENDER_IN[str(gender)]
    return out


def _tel(c: Call) -> str | None:
    tel = c.arg("tel")
    if tel is None:
        return None
    if not isinstance(tel, str) or not _MOBILE.fullmatch(tel.strip()):
        raise ApiError(E.INVALID_PARAMETER, "invalid tel")
    return tel.strip()


async def _set_tel(c: Call, address: str, tel: str) -> None:
    """The desk phone, which the directory has no column for, kept beside it
    and written to the same operation log."""
    P = m.exmail_api_profiles.c

    def thd(conn: sa.Connection) -> None:
        row = c.svc._member_row(conn, c.enterprise_id, address)
        old = conn.execute(sa.select(P.tel).where(P.account_id == row.id)).scalar()
        if old == tel:
            return
        if old is None:
            conn.execute(m.exmail_api_profiles.insert().values(account_id=row.id, tel=tel))
        else:
            conn.execute(m.exmail_api_profiles.update().where(P.account_id == row.id)
                         .values(tel=tel))
        c.svc._log(conn, c.actor, c.enterprise_id, "member.update", row.address,
                   before={"tel": old or ""}, after={"tel": tel})

    await c.svc.pool.transaction(thd)


async def _tels(c: Call, addresses: list[str]) -> dict[str, str]:
    P = m.exmail_api_profiles.c

    def thd(conn: sa.Connection) -> dict[str, str]:
        return dict(conn.execute(
            sa.select(A.address, P.tel).select_from(m.exmail_api_profiles.join(m.accounts))
            .where(A.address.in_(addresses))).all())

    return await c.svc.pool.do(thd) if addresses else {}


async def _address_types(c: Call, addresses: list[str]) -> dict[str, int]:
    """batchcheck's answer for each address: -1 invalid or not one of the
    enterprise's domains, 0 free, 1 member, 2 alias, 3 group."""
    domains = {d["name"] for d in await c.svc.list_domains(c.actor)}
    valid: list[str] = []
    out: dict[str, int] = {}
    for raw in addresses:
        try:
            local, domain = normalise_address(raw)
        except DirectoryError:
            out[raw] = -1
            continue
        out[raw] = -1 if domain not in domains else 0
        if domain in domains:
            valid.append(f"{local}@{domain}")

    def thd(conn: sa.Connection) -> tuple[dict[str, str], set[str]]:
        kinds = dict(conn.execute(sa.select(A.address, A.kind).where(A.address.in_(valid))).all())
        aliases = set(conn.execute(sa.select(m.aliases.c.address).where(
            m.aliases.c.address.in_(valid))).scalars())
        return kinds, aliases

    kinds, aliases = await c.svc.pool.do(thd) if valid else ({}, set())
    for raw in addresses:
        if out[raw] == 0:
            local, domain = normalise_address(raw)
            addr = f"{local}@{domain}"
            if addr in aliases:
                out[raw] = 2
            elif addr in kinds:
                out[raw] = 3 if kinds[addr] == "group" else 1
    return out


async def _check_slaves(c: Call, slaves: list[str], owner: str, current: list[str]) -> None:
    types = await _address_types(c, [s for s in slaves if s not in current])
    for s, t in types.items():
        if t == -1:
            raise ApiError(E.INVALID_USERID, f"invalid slave {s}: not an address of the "
                                              "enterprise's domains")
        if t != 0:
            raise ApiError(E.USERID_EXISTS, f"slave {s} is already in use")
    if owner in slaves:
        raise ApiError(E.INVALID_PARAMETER, "a member's address cannot be its own slave")


async def _set_slaves(c: Call, address: str, slaves: list[str], current: list[str]) -> None:
    for alias in current:
        if alias not in slaves:
            await mapped(lambda a=alias: c.svc.remove_alias(c.actor, a), {})  # type: ignore[misc]
    for alias in slaves:
        if alias not in current:
            try:
                await c.svc.add_alias(c.actor, alias, address)
            except ServiceError as e:
                raise _codes(e, E.INVALID_PARAMETER) from None


async def create(c: Call) -> dict[str, Any]:
    address = _userid(c)
    profile = _profile(c)
    if "name" not in profile:
        raise ApiError(E.INVALID_NAME, "missing name")
    if c.arg("department") is None or not c.arg("department"):
        raise ApiError(E.MISSING_DEPT, "missing department")
    depts = await _known_depts(c, _dept_list(c.arg("department")))
    password = c.arg("password")
    if not isinstance(password, str):
        raise ApiError(E.INVALID_PARAMETER, "missing password")
    slaves = str_list(c.arg("slaves"), "slaves", MAX_SLAVES)
    must_change = flag(c.arg("cpwd_login"), "cpwd_login") if c.arg("cpwd_login") is not None \
        else False
    enable = flag(c.arg("enable"), "enable") if c.arg("enable") is not None else True
    tel = _tel(c)
    await _check_slaves(c, slaves, address, [])
    try:
        await c.svc.add_member(c.actor, address, password, departments=depts, **profile)
    except ServiceError as e:
        raise _codes(e, E.INVALID_PARAMETER) from None
    await _set_slaves(c, address, slaves, [])
    if tel:
        await _set_tel(c, address, tel)
    changes: dict[str, Any] = {}
    if must_change:
        changes["must_change_password"] = True
    if not enable:
        changes["enabled"] = False
    if changes:
        await c.svc.update_member(c.actor, address, changes)
    return {}


async def update(c: Call) -> dict[str, Any]:
    address = _userid(c)
    profile = _profile(c)
    try:
        before = await c.svc.get_member(c.actor, address)
    except ServiceError as e:
        refuse(e, {"not_found": E.USER_NOT_FOUND})
    if before["kind"] != "member":
        raise ApiError(E.USER_NOT_FOUND, f"{address} is not a member")
    changes: dict[str, Any] = dict(profile)
    if c.arg("department") is not None:
        changes["departments"] = await _known_depts(c, _dept_list(c.arg("department")))
    if c.arg("password") is not None:
        changes["password"] = str(c.arg("password"))
    if c.arg("cpwd_login") is not None:
        changes["must_change_password"] = flag(c.arg("cpwd_login"), "cpwd_login")
    if c.arg("enable") is not None:
        changes["enabled"] = flag(c.arg("enable"), "enable")
    tel = _tel(c)
    slaves = None
    if c.arg("slaves") is not None:
        slaves = str_list(c.arg("slaves"), "slaves", MAX_SLAVES)
        await _check_slaves(c, slaves, before["address"], before["aliases"])
    if changes:
        try:
            await c.svc.update_member(c.actor, before["address"], changes)
        except ServiceError as e:
            raise _codes(e, E.INVALID_PARAMETER) from None
    if slaves is not None:
        await _set_slaves(c, before["address"], slaves, before["aliases"])
    if tel is not None:
        await _set_tel(c, before["address"], tel)
    return {}


async def delete(c: Call) -> dict[str, Any]:
    address = _userid(c)
    await _member(c, address)
    await mapped(lambda: c.svc.delete_member(c.actor, address), {"not_found": E.USER_NOT_FOUND})
    return {}


async def _member(c: Call, address: str) -> dict[str, Any]:
    try:
        mem = await c.svc.get_member(c.actor, address)
    except ServiceError as e:
        refuse(e, {"not_found": E.USER_NOT_FOUND})
    if mem["kind"] != "member":
        raise ApiError(E.USER_NOT_FOUND, f"{address} is not a member")
    return mem


def _record(mem: dict[str, Any], full: bool, tels: dict[str, str]) -> dict[str, Any]:
    depts = [dept_out(d["id"]) for d in mem["departments"]] or [ROOT]
    out: dict[str, Any] = {"userid": mem["address"], "name": mem["name"], "department": depts}
    if full:
        out.update({
            "position": mem["title"], "mobile": mem["phone"], "tel": tels.get(mem["address"], ""),
            "extid": mem["external_id"] or "", "gender": _GENDER_OUT.get(mem["gender"], "0"),
            "enable": 1 if mem["status"] == "enabled" else 0, "slaves": mem["aliases"],
            "cpwd_login": 1 if mem["must_change_password"] else 0,
        })
    return out


async def get(c: Call) -> dict[str, Any]:
    mem = await _member(c, _userid(c))
    return _record(mem, True, await _tels(c, [mem["address"]]))


async def _list(c: Call, full: bool) -> dict[str, Any]:
    if c.arg("department_id") is None:
        raise ApiError(E.MISSING_DEPT, "missing department_id")
    ext = to_int(c.arg("department_id"), E.INVALID_DEPT_ID, "department_id")
    children = c.arg("fetch_child") in (1, "1")
    internal = None
    if ext != ROOT:
        internal = (await _known_depts(c, [ext]))[0]
    page = c.svc.cfg.api_page_limit
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        got = await c.svc.list_members(c.actor, department=internal, children=children,
                                       limit=page, offset=offset)
        items += got["items"]
        offset = got["next_offset"]
    if ext == ROOT and not children:  # the root's own: members in no department
        items = [i for i in items if not i["departments"]]
    tels = await _tels(c, [i["address"] for i in items]) if full else {}
    return {"userlist": [_record(i, full, tels) for i in items]}


async def simplelist(c: Call) -> dict[str, Any]:
    return await _list(c, False)


async def list_(c: Call) -> dict[str, Any]:
    return await _list(c, True)


async def batchcheck(c: Call) -> dict[str, Any]:
    users = c.arg("userlist")
    if not isinstance(users, list) or not users or not all(isinstance(u, str) for u in users):
        raise ApiError(E.INVALID_PARAMETER, "userlist is a list of addresses")
    if len(users) > MAX_BATCH:
        raise ApiError(E.INVALID_PARAMETER, f"userlist has at most {MAX_BATCH} addresses")
    types = await _address_types(c, users)
    return {"list": [{"user": u, "type": types[u]} for u in users]}


HANDLERS = {"create": create, "update": update, "delete": delete, "get": get,
            "simplelist": simplelist, "list": list_, "batchcheck": batchcheck}
