"""group/create|update|delete|get: mail groups, through DirectoryService.

allow_type: 0 enterprise members, 1 anyone, 2 the group's members, 3 those
in allow_userlist (the directory's enterprise | anyone | members | list).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exmaild.directory.errors import ServiceError
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import dept_out, str_list, to_int
from exmaild.exmail_api.errors import ApiError
from exmaild.exmail_api.users import _dept_list, _known_depts

if TYPE_CHECKING:
    from exmaild.exmail_api.resource import Call

ALLOW_IN = {0: "enterprise", 1: "anyone", 2: "members", 3: "list"}
ALLOW_OUT = {v: k for k, v in ALLOW_IN.items()}


def _groupid(c: Call) -> str:
    gid = c.arg("groupid")
    if gid is None:
        raise ApiError(E.MISSING_USERID, "missing groupid")
    if not isinstance(gid, str) or "@" not in gid:
        raise ApiError(E.INVALID_USERID, "invalid groupid: it is the group's address")
    return gid.strip().lower()


def _error(e: ServiceError) -> ApiError:
    msg = e.message
    if e.code == "conflict" and "department's group" in msg:
        return ApiError(E.INVALID_PARAMETER, msg)  # its sources follow the department
    if e.code == "conflict":
        return ApiError(E.USERID_EXISTS, msg)
    if e.code == "not_found" and "department" in msg:
        return ApiError(E.INVALID_DEPT_ID, msg)
    if e.code == "not_found":
        return ApiError(E.USER_NOT_FOUND, msg)
    if "domain" in msg or "address" in msg:
        return ApiError(E.INVALID_USERID, msg)
    return ApiError(E.INVALID_PARAMETER, msg)


def _allow(c: Call) -> str | None:
    if c.arg("allow_type") is None:
        return None
    t = to_int(c.arg("allow_type"), E.INVALID_PARAMETER, "allow_type")
    if t not in ALLOW_IN:
        raise ApiError(E.INVALID_PARAMETER, "allow_type is 0, 1, 2 or 3")
    return ALLOW_IN[t]


async def _get(c: Call, address: str) -> dict[str, Any]:
    try:
        return await c.svc.get_group(c.actor, address)
    except ServiceError as e:
        raise ApiError(E.USER_NOT_FOUND, f"group not found: {e.message}") from None


async def create(c: Call) -> dict[str, Any]:
    address = _groupid(c)
    name = c.arg("groupname")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(E.INVALID_NAME, "missing groupname")
    depts = await _known_depts(c, _dept_list(c.arg("department") or []))
    try:
        await c.svc.add_group(
            c.actor, address, name=name, members=str_list(c.arg("userlist"), "userlist"),
            groups=str_list(c.arg("grouplist"), "grouplist"), departments=depts,  # type: ignore[arg-type]
            allow=_allow(c) or "anyone",
            allow_list=str_list(c.arg("allow_userlist"), "allow_userlist"))
    except ServiceError as e:
        raise _error(e) from None
    return {}


async def update(c: Call) -> dict[str, Any]:
    """Fields given replace the group's (lists whole, as the SDKs send them);
    fields left out (or "") stay."""
    address = _groupid(c)
    before = await _get(c, address)
    kw: dict[str, Any] = {}
    if c.arg("groupname") is not None:
        kw["name"] = str(c.arg("groupname"))
    kw["allow"] = _allow(c)
    for key, arg in (("userlist", "members"), ("grouplist", "groups"),
                     ("allow_userlist", "allow_list")):
        if c.arg(key) is not None:
            kw[arg] = str_list(c.arg(key), key)
    if c.arg("department") is not None:
        kw["departments"] = await _known_depts(c, _dept_list(c.arg("department")))
    try:
        await c.svc.replace_group(c.actor, before["address"], **kw)
    except ServiceError as e:
        raise _error(e) from None
    return {}


async def delete(c: Call) -> dict[str, Any]:
    before = await _get(c, _groupid(c))
    # A group holds no mail: to the recycle bin and out of it at once, which
    # frees its address as Exmail does.
    try:
        await c.svc.delete_member(c.actor, before["address"])
        await c.svc.purge_member(c.actor, before["address"])
    except ServiceError as e:
        raise _error(e) from None
    return {}


async def get(c: Call) -> dict[str, Any]:
    g = await _get(c, _groupid(c))
    return {"groupid": g["address"], "groupname": g["name"], "userlist": g["members"],
            "grouplist": g["groups"], "department": [dept_out(d["id"]) for d in g["departments"]],
            "allow_type": ALLOW_OUT.get(g["allow"], 1), "allow_userlist": g["allow_list"]}


HANDLERS = {"create": create, "update": update, "delete": delete, "get": get}
