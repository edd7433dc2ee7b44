"""department/create|update|delete|list|search.

Exmail numbers departments per enterprise with 1 for the enterprise itself;
exmaild's top-level departments hang under that root (see convert.dept_in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from exmaild.directory.errors import ServiceError
from exmaild.exmail_api import errors as E
from exmaild.exmail_api.convert import ROOT, dept_in, dept_out, mapped, to_int
from exmaild.exmail_api.errors import ApiError

if TYPE_CHECKING:
    from exmaild.exmail_api.resource import Call


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 200:
        raise ApiError(E.DEPT_NAME_LENGTH, "department name must be 1 to 200 characters")
    name = value.strip()
    if "/" in name or any(ord(c) < 32 for c in name):
        raise ApiError(E.DEPT_NAME_CHARS, "department name contains '/' or control characters")
    return name


async def _all(c: Call) -> tuple[str, list[dict[str, Any]]]:
    ent = await c.svc.get_enterprise(c.actor)
    return ent["name"], await c.svc.list_departments(c.actor)


def _out(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": dept_out(d["id"]), "name": d["name"], "parentid": dept_out(d["parent_id"]),
            "order": d["position"]}


def _root(name: str) -> dict[str, Any]:
    return {"id": ROOT, "name": name, "parentid": 0, "order": 0}


async def create(c: Call) -> dict[str, Any]:
    name = _name(c.arg("name"))
    if c.arg("parentid") is None:
        raise ApiError(E.PARENT_NOT_FOUND, "missing parentid")
    parent = to_int(c.arg("parentid"), E.PARENT_NOT_FOUND, "parentid")
    order = to_int(c.arg("order"), E.INVALID_PARAMETER, "order") \
        if c.arg("order") is not None else None
    if parent < ROOT:
        raise ApiError(E.PARENT_NOT_FOUND, "parent department not found")
    d = await mapped(lambda: c.svc.add_department(c.actor, name, dept_in(parent),
                                                  position=order),
                     {"not_found": E.PARENT_NOT_FOUND, "conflict": E.DEPT_EXISTS})
    return {"id": dept_out(d["id"])}


async def _existing(c: Call, key: str = "id") -> int:
    if c.arg(key) is None:
        raise ApiError(E.INVALID_DEPT_ID, f"missing {key}")
    ext = to_int(c.arg(key), E.INVALID_DEPT_ID, key)
    if ext == ROOT:
        return ext
    _ent, depts = await _all(c)
    if ext < ROOT or not any(d["id"] == dept_in(ext) for d in depts):
        raise ApiError(E.DEPT_NOT_FOUND, "department not found")
    return ext


async def update(c: Call) -> dict[str, Any]:
    ext = await _existing(c)
    if ext == ROOT:
        raise ApiError(E.INVALID_PARAMETER, "the root department is the enterprise itself")
    kw: dict[str, Any] = {}
    if c.arg("name") is not None:
        kw["name"] = _name(c.arg("name"))
    if c.arg("parentid") is not None:
        parent = to_int(c.arg("parentid"), E.PARENT_NOT_FOUND, "parentid")
        if parent < ROOT:
            raise ApiError(E.PARENT_NOT_FOUND, "parent department not found")
        kw["parent_id"] = dept_in(parent)
    if c.arg("order") is not None:
        kw["position"] = to_int(c.arg("order"), E.INVALID_PARAMETER, "order")
    internal = dept_in(ext)
    assert internal is not None
    await mapped(lambda: c.svc.update_department(c.actor, internal, **kw),
                 {"not_found": E.PARENT_NOT_FOUND, "conflict": E.DEPT_EXISTS,
                  "invalid": E.DEPT_CYCLE if "parent_id" in kw else E.INVALID_PARAMETER})
    return {}


async def delete(c: Call) -> dict[str, Any]:
    ext = await _existing(c)
    if ext == ROOT:
        raise ApiError(E.DEPT_ROOT, "the root department cannot be deleted")
    internal = dept_in(ext)
    assert internal is not None
    try:
        await c.svc.delete_department(c.actor, internal)
    except ServiceError as e:
        if e.code == "conflict" and "sub-departments" in e.message:
            raise ApiError(E.DEPT_HAS_CHILDREN, "department has sub-departments") from None
        if e.code == "conflict" and "members" in e.message:
            raise ApiError(E.DEPT_HAS_MEMBERS, "department has members") from None
        if e.code == "not_found":
            raise ApiError(E.DEPT_NOT_FOUND, "department not found") from None
        raise
    return {}


async def list_(c: Call) -> dict[str, Any]:
    ext = await _existing(c) if c.arg("id") is not None else ROOT
    ent, depts = await _all(c)
    # list_departments is depth-first with siblings in order: an org chart.
    if ext == ROOT:
        return {"department": [_root(ent), *(_out(d) for d in depts)]}
    start = dept_in(ext)
    keep = {start}
    out = []
    for d in depts:
        if d["id"] in keep or d["parent_id"] in keep:
            keep.add(d["id"])
            out.append(_out(d))
    return {"department": out}


async def search(c: Call) -> dict[str, Any]:
    name = c.arg("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(E.DEPT_NAME_LENGTH, "missing name")
    fuzzy = c.arg("fuzzy") in (1, "1")
    want = name.strip().lower()
    ent, depts = await _all(c)
    hits = [{"id": ROOT, "name": ent, "parentid": 0, "order": 0, "path": ent, "_n": ent}]
    hits += [{**_out(d), "path": f"{ent}/{d['path']}", "_n": d["name"]} for d in depts]
    found = [h for h in hits if (want in h["_n"].lower() if fuzzy else h["_n"].lower() == want)]
    return {"department": [{k: v for k, v in h.items() if k != "_n"} for h in found]}


HANDLERS = {"create": create, "update": update, "delete": delete, "list": list_,
            "search": search}
