"""The admin HTTP API under /api/v1 (twisted.web), JSON in and out.

One route table drives both the dispatcher and the OpenAPI 3.1 document at
/api/v1/openapi.json, so the document describes what the server does. Every
rule lives in `exmaild.directory.service`; a handler here only turns HTTP into
a service call and the service's typed errors into `{"error": {"code",
"message"}}` with their status. Every route except the document and the login
needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest

from exmaild import __version__
from exmaild.admin import api_http as H
from exmaild.admin import schema as S
from exmaild.admin.api_http import HTTPError
from exmaild.app import App
from exmaild.directory.actor import Actor
from exmaild.directory.errors import Forbidden, NotFound, ServiceError, Unauthorized
from exmaild.directory.selfservice import SelfService
from exmaild.directory.service import DirectoryService
from exmaild.exmail_api.secrets import PURPOSES as EXMAIL_PURPOSES
from exmaild.store.directory import DirectoryError

log = Logger()


@dataclass
class Ctx:
    app: App
    svc: DirectoryService
    request: IRequest
    actor: Actor | None
    params: dict[str, Any]  # path parameters
    query: dict[str, Any]
    body: Any


Handler = Callable[[Ctx], Awaitable[tuple[int, Any]]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # below /api/v1, with {name} parameters
    handler: Handler
    summary: str
    tag: str
    status: int = 200
    response: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    open: bool = False  # no token needed

    @property
    def operation_id(self) -> str:
        return self.handler.__name__

    def match(self, segments: list[str]) -> dict[str, str] | None:
        parts = self.path.strip("/").split("/")
        if len(parts) != len(segments):
            return None
        out: dict[str, str] = {}
        for part, seg in zip(parts, segments, strict=True):
            if part.startswith("{"):
                out[part[1:-1]] = seg
            elif part != seg:
                return None
        return out


# -- handlers -----------------------------------------------------------------
def _actor(c: Ctx) -> Actor:
    assert c.actor is not None
    return c.actor


async def openapi_document(c: Ctx) -> tuple[int, Any]:
    return 200, openapi(c.app)


async def _api_login(c: Ctx, protocol: str) -> Any:
    """The account, through the login policy (exmaild/auth/policy.py)."""
    d = await c.app.logins.login(c.body["address"], c.body["password"], protocol=protocol,
                                 ip=_client_ip(c.request), otp=c.body.get("otp"))
    if d.kind == "throttled":  # the client's doing: 429, not a server fault
        raise HTTPError(429, "throttled", d.text or "too many failures, try again later")
    if d.kind == "unavailable":
        raise HTTPError(503, "unavailable", d.text or "login unavailable, try again later")
    if d.kind == "refused" and d.code in ("ip", "second_factor"):
        raise Forbidden(d.text)
    if d.kind == "second_factor":
        raise Unauthorized(d.text)
    if not d.ok:
        raise Unauthorized("wrong address or password, or the account is disabled")
    return d.account


async def login(c: Ctx) -> tuple[int, Any]:
    acct = await _api_login(c, "api")
    return 200, await c.svc.start_session(acct.id, _client_ip(c.request))


async def logout(c: Ctx) -> tuple[int, Any]:
    actor = _actor(c)
    if actor.token_id is not None:
        await c.svc.revoke_token(actor, actor.token_id)
    return 204, None


async def member_login(c: Ctx) -> tuple[int, Any]:
    # A member whose password an admin reset logs in here to set a new one.
    acct = await _api_login(c, "api-me")
    return 200, await SelfService(c.svc).start_session(acct.id, _client_ip(c.request))


async def get_me(c: Ctx) -> tuple[int, Any]:
    return 200, await SelfService(c.svc).me(_actor(c))


async def update_me(c: Ctx) -> tuple[int, Any]:
    return 200, await SelfService(c.svc).update_profile(_actor(c), c.body)


async def change_my_password(c: Ctx) -> tuple[int, Any]:
    await SelfService(c.svc).change_password(_actor(c), c.body["old_password"],
                                             c.body["new_password"])
    return 204, None


async def get_my_settings(c: Ctx) -> tuple[int, Any]:
    return 200, await SelfService(c.svc).settings(_actor(c))


async def update_my_settings(c: Ctx) -> tuple[int, Any]:
    from exmaild.auth.service import LoginSecurity

    # The IMAP/POP switches only where the enterprise's login rules allow.
    await LoginSecurity(c.svc).check_own_switches(_actor(c), c.body)
    return 200, await SelfService(c.svc).update_settings(_actor(c), c.body)


async def get_enterprise_settings(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_enterprise_settings(_actor(c))


async def update_enterprise_settings(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.update_enterprise_settings(_actor(c), c.body)


async def reset_password(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.reset_password(_actor(c), c.params["address"], c.body["password"],
                                           must_change=c.body.get("must_change", True))


async def get_enterprise(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_enterprise(_actor(c))


async def list_domains(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_domains(_actor(c))}


async def add_domain(c: Ctx) -> tuple[int, Any]:
    return 201, await c.svc.add_domain(_actor(c), c.body["name"])


async def get_domain(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_domain(_actor(c), c.params["name"])


async def make_primary_domain(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.set_primary_domain(_actor(c), c.params["name"])


async def check_domain(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.check_domain(_actor(c), c.params["name"])


async def remove_domain(c: Ctx) -> tuple[int, Any]:
    await c.svc.remove_domain(_actor(c), c.params["name"], confirm=c.query.get("confirm", False))
    return 204, None


async def list_departments(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_departments(_actor(c))}


async def add_department(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 201, await c.svc.add_department(
        _actor(c), b["name"], b.get("parent_id"), position=b.get("position"))


async def import_departments(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.import_departments(_actor(c), c.body["csv"])


async def export_departments(c: Ctx) -> tuple[int, Any]:
    return 200, {"csv": await c.svc.export_departments(_actor(c))}


async def get_department(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_department(_actor(c), c.params["id"])


async def update_department(c: Ctx) -> tuple[int, Any]:
    kw: dict[str, Any] = {k: c.body[k] for k in ("name", "position") if k in c.body}
    if "parent_id" in c.body:
        kw["parent_id"] = c.body["parent_id"]
    return 200, await c.svc.update_department(_actor(c), c.params["id"], **kw)


async def delete_department(c: Ctx) -> tuple[int, Any]:
    await c.svc.delete_department(_actor(c), c.params["id"])
    return 204, None


async def add_department_group(c: Ctx) -> tuple[int, Any]:
    return 201, await c.svc.add_department_group(_actor(c), c.params["id"], c.body["address"])


async def import_groups(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.import_groups(_actor(c), c.body["csv"])


async def export_groups(c: Ctx) -> tuple[int, Any]:
    return 200, {"csv": await c.svc.export_groups(_actor(c))}


async def list_members(c: Ctx) -> tuple[int, Any]:
    q = c.query
    return 200, await c.svc.list_members(
        _actor(c), department=q.get("department"), children=q.get("children", True),
        status=q.get("status"), q=q.get("q"), vip=q.get("vip"), tag=q.get("tag"),
        limit=q.get("limit", 50), offset=q.get("offset", 0),
    )


async def add_member(c: Ctx) -> tuple[int, Any]:
    b = dict(c.body)
    address, password = b.pop("address"), b.pop("password", None)
    departments = b.pop("departments", [])
    return 201, await c.svc.add_member(_actor(c), address, password,
                                       departments=departments, **b)


async def import_members(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.import_members(_actor(c), c.body["csv"])


async def export_members(c: Ctx) -> tuple[int, Any]:
    return 200, {"csv": await c.svc.export_members(_actor(c))}


async def get_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_member(_actor(c), c.params["address"])


async def update_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.update_member(_actor(c), c.params["address"], c.body)


async def delete_member(c: Ctx) -> tuple[int, Any]:
    await c.svc.delete_member(_actor(c), c.params["address"])
    return 204, None


async def disable_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.set_enabled(_actor(c), c.params["address"], False)


async def enable_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.set_enabled(_actor(c), c.params["address"], True)


async def restore_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.restore_member(_actor(c), c.params["address"])


async def rename_member(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.rename_member(_actor(c), c.params["address"], c.body["address"])


async def reassign_member_mail(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.reassign_recycled(_actor(c), c.params["address"], c.body["to"])


async def purge_member(c: Ctx) -> tuple[int, Any]:
    await c.svc.purge_member(_actor(c), c.params["address"])
    return 204, None


async def list_aliases(c: Ctx) -> tuple[int, Any]:
    m = await c.svc.get_member(_actor(c), c.params["address"])
    return 200, {"items": [{"alias": a, "member": m["address"]} for a in m["aliases"]]}


async def add_alias(c: Ctx) -> tuple[int, Any]:
    return 201, await c.svc.add_alias(_actor(c), c.body["alias"], c.params["address"])


async def remove_alias(c: Ctx) -> tuple[int, Any]:
    await c.svc.remove_alias(_actor(c), c.params["alias"])
    return 204, None


async def add_group(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 201, await c.svc.add_group(
        _actor(c), b["address"], name=b.get("name", ""), members=b.get("members", []),
        departments=b.get("departments", []), groups=b.get("groups", []),
        externals=b.get("externals", []), allow=b.get("allow", "anyone"),
        allow_list=b.get("allow_list", []), representatives=b.get("representatives", []),
        all_staff=b.get("all_staff", False), tags=b.get("tags", []),
    )


async def list_groups(c: Ctx) -> tuple[int, Any]:
    q = c.query
    return 200, await c.svc.list_groups(_actor(c), q=q.get("q"), limit=q.get("limit", 50),
                                        offset=q.get("offset", 0))


async def delete_group(c: Ctx) -> tuple[int, Any]:
    await c.svc.delete_group(_actor(c), c.params["address"])
    return 204, None


async def get_group(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_group(_actor(c), c.params["address"])


async def update_group(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 200, await c.svc.edit_group(
        _actor(c), c.params["address"], add_members=b.get("add_members", []),
        add_groups=b.get("add_groups", []), remove_members=b.get("remove", []),
        add_departments=b.get("add_departments", []),
        add_externals=b.get("add_externals", []), allow=b.get("allow"), name=b.get("name"),
        add_representatives=b.get("add_representatives", []),
        remove_representatives=b.get("remove_representatives", []),
        all_staff=b.get("all_staff"), add_tags=b.get("add_tags", []),
        remove_tags=b.get("remove_tags", []),
    )


async def list_tags(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_tags(_actor(c))}


async def add_tag(c: Ctx) -> tuple[int, Any]:
    return 201, await c.svc.add_tag(_actor(c), c.body["name"])


async def get_tag(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_tag(_actor(c), c.params["name"])


async def rename_tag(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.rename_tag(_actor(c), c.params["name"], c.body["name"])


async def delete_tag(c: Ctx) -> tuple[int, Any]:
    await c.svc.delete_tag(_actor(c), c.params["name"])
    return 204, None


async def tag_members(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.tag_members(_actor(c), c.params["name"],
                                        add=c.body.get("add", []), remove=c.body.get("remove", []))


async def add_shared(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 201, await c.svc.add_shared(
        _actor(c), b["address"], name=b.get("name", ""), members=b.get("members", []),
        departments=b.get("departments", []), quota_bytes=b.get("quota_bytes"))


async def list_shared(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_shared(_actor(c))}


async def get_shared(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.get_shared(_actor(c), c.params["address"])


async def update_shared(c: Ctx) -> tuple[int, Any]:
    return 200, await c.svc.update_shared(_actor(c), c.params["address"], c.body)


async def assign_shared(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 200, await c.svc.assign_shared(_actor(c), c.params["address"],
                                          members=b.get("members", []),
                                          departments=b.get("departments", []))


async def unassign_shared(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 200, await c.svc.assign_shared(_actor(c), c.params["address"],
                                          members=b.get("members", []),
                                          departments=b.get("departments", []), unassign=True)


async def remove_shared(c: Ctx) -> tuple[int, Any]:
    await c.svc.remove_shared(_actor(c), c.params["address"])
    return 204, None


async def list_admins(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_admins(_actor(c))}


async def add_admin(c: Ctx) -> tuple[int, Any]:
    b = c.body
    return 201, await c.svc.add_admin(_actor(c), b["address"], b["role"],
                                      departments=b.get("departments", []),
                                      functions=b.get("functions"))


async def remove_admin(c: Ctx) -> tuple[int, Any]:
    await c.svc.remove_admin(_actor(c), c.params["address"])
    return 204, None


async def list_tokens(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await c.svc.list_tokens(_actor(c))}


async def create_token(c: Ctx) -> tuple[int, Any]:
    info, token = await c.svc.create_token(_actor(c), c.body.get("name", ""))
    return 201, {**info, "token": token}


async def create_exmail_secret(c: Ctx) -> tuple[int, Any]:
    from exmaild.exmail_api.secrets import create_secret

    corp, secret = await create_secret(c.svc, _actor(c), None, c.body["purpose"])
    return 201, {"corpid": corp, "secret": secret, "purpose": c.body["purpose"]}


async def revoke_exmail_secret(c: Ctx) -> tuple[int, Any]:
    from exmaild.exmail_api.secrets import revoke_secret

    await revoke_secret(c.svc, _actor(c), None, c.params["purpose"])
    return 204, None


async def revoke_token(c: Ctx) -> tuple[int, Any]:
    await c.svc.revoke_token(_actor(c), c.params["id"])
    return 204, None


async def list_log(c: Ctx) -> tuple[int, Any]:
    q = c.query
    return 200, await c.svc.list_log(_actor(c), action=q.get("action"),
                                     limit=q.get("limit", 50), offset=q.get("offset", 0))


# -- the route table ----------------------------------------------------------
_PAGE = {"limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
         "offset": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}}
_ADDR = {"address": S.ADDRESS}
_ID = {"id": S.ID}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/openapi.json", openapi_document, "This document", "meta", open=True,
          response={"type": "object"}),
    Route("POST", "/auth/login", login, "Admin login: a short-lived bearer token", "auth",
          body=S.LOGIN, response=S.SESSION, open=True),
    Route("DELETE", "/auth/session", logout, "End this token's session (revoke it)", "auth",
          status=204),
    Route("GET", "/enterprise", get_enterprise, "The caller's enterprise", "enterprise",
          response=S.ENTERPRISE),
    Route("GET", "/enterprise/settings", get_enterprise_settings,
          "Display-name policy, nickname permission, welcome letter", "enterprise",
          response=S.ENTERPRISE_SETTINGS),
    Route("PATCH", "/enterprise/settings", update_enterprise_settings,
          "Change the enterprise settings", "enterprise", body=S.ENTERPRISE_SETTINGS_UPDATE,
          response=S.ENTERPRISE_SETTINGS),
    Route("GET", "/domains", list_domains, "Domains", "domains", response=S.list_of(S.DOMAIN)),
    Route("POST", "/domains", add_domain, "Add a domain", "domains", status=201,
          body=S.DOMAIN_CREATE, response=S.DOMAIN),
    Route("GET", "/domains/{name}", get_domain, "One domain", "domains",
          params={"name": S._str(253, 1)}, response=S.DOMAIN),
    Route("POST", "/domains/{name}/primary", make_primary_domain,
          "Make this the enterprise's primary domain (the old one stays, not primary)",
          "domains", params={"name": S._str(253, 1)}, response=S.DOMAIN),
    Route("GET", "/domains/{name}/check", check_domain,
          "Check resolution: MX, SPF and ownership-token records found, to set, a status",
          "domains", params={"name": S._str(253, 1)}, response=S.DOMAIN_CHECK),
    Route("DELETE", "/domains/{name}", remove_domain,
          "Remove a domain: its accounts go to the recycle bin, its groups are deleted "
          "(needs confirm=true when it has any)", "domains",
          status=204, params={"name": S._str(253, 1)},
          query={"confirm": {"type": "boolean", "default": False}}),
    Route("GET", "/departments", list_departments, "The department tree, depth first",
          "departments", response=S.list_of(S.DEPARTMENT)),
    Route("POST", "/departments", add_department, "Add a department", "departments",
          status=201, body=S.DEPARTMENT_CREATE, response=S.DEPARTMENT),
    Route("POST", "/departments/import", import_departments,
          "CSV import of department paths (missing parents made; all rows or none)",
          "departments", body=S.IMPORT, response=S.DEPTS_IMPORTED),
    Route("GET", "/departments/export", export_departments,
          "CSV export of the department tree (path, members)", "departments",
          response=S.CSV_TEXT),
    Route("GET", "/departments/{id}", get_department, "One department", "departments",
          params=_ID, response=S.DEPARTMENT),
    Route("PATCH", "/departments/{id}", update_department, "Rename, move or reorder",
          "departments", params=_ID, body=S.DEPARTMENT_UPDATE, response=S.DEPARTMENT),
    Route("DELETE", "/departments/{id}", delete_department, "Delete an empty department",
          "departments", status=204, params=_ID),
    Route("POST", "/departments/{id}/group", add_department_group,
          "The department's own mail group: members and name follow the department",
          "groups", status=201, params=_ID, body=S.DEPT_GROUP_CREATE, response=S.GROUP),
    Route("GET", "/members", list_members, "Members, paged and filtered", "members",
          response=S.page_of(S.MEMBER), query={
              **_PAGE,
              "department": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
              "children": {"type": "boolean", "default": True,
                           "description": "with the department's sub-departments"},
              "status": {"type": "string", "enum": ["enabled", "disabled", "deleted"]},
              "q": S._str(200, description="text in the address, name or nickname"),
              "vip": {"type": "boolean"},
              "tag": {**S.TAG_NAME, "description": "only members with this tag"}}),
    Route("POST", "/members", add_member, "Add a member", "members", status=201,
          body=S.MEMBER_CREATE, response=S.MEMBER),
    Route("POST", "/members/import", import_members,
          "CSV import: every row or, at the first bad row (named by line), none", "members",
          body=S.IMPORT, response=S.IMPORTED),
    Route("GET", "/members/export", export_members, "CSV export of the members", "members",
          response=S.CSV_TEXT),
    Route("GET", "/members/{address}", get_member, "One member", "members", params=_ADDR,
          response=S.MEMBER),
    Route("PATCH", "/members/{address}", update_member, "Change a member", "members",
          params=_ADDR, body=S.MEMBER_UPDATE, response=S.MEMBER),
    Route("DELETE", "/members/{address}", delete_member, "Move a member to the recycle bin",
          "members", status=204, params=_ADDR),
    Route("POST", "/members/{address}/disable", disable_member,
          "Disable: no login, new mail refused", "members", params=_ADDR, response=S.MEMBER),
    Route("POST", "/members/{address}/enable", enable_member, "Enable", "members",
          params=_ADDR, response=S.MEMBER),
    Route("POST", "/members/{address}/password", reset_password,
          "Admin password reset; by default the member must change it at next login",
          "members", params=_ADDR, body=S.PASSWORD_RESET, response=S.MEMBER),
    Route("POST", "/members/{address}/restore", restore_member,
          "Restore from the recycle bin", "members", params=_ADDR, response=S.MEMBER),
    Route("POST", "/members/{address}/rename", rename_member,
          "The one change of the address prefix; the old address stays an alias", "members",
          params=_ADDR, body=S.RENAME, response=S.MEMBER),
    Route("POST", "/members/{address}/reassign", reassign_member_mail,
          "Move a recycled member's mail to another member (under Recycled/ADDRESS/)",
          "members", params=_ADDR, body=S.REASSIGN, response=S.REASSIGNED),
    Route("POST", "/members/{address}/purge", purge_member,
          "Delete a member in the recycle bin for good, with its mail", "members",
          status=204, params=_ADDR),
    Route("GET", "/members/{address}/aliases", list_aliases, "A member's aliases", "aliases",
          params=_ADDR, response=S.list_of(S.ALIAS)),
    Route("POST", "/members/{address}/aliases", add_alias, "Add an alias", "aliases",
          status=201, params=_ADDR, body=S.ALIAS_CREATE, response=S.ALIAS),
    Route("DELETE", "/aliases/{alias}", remove_alias, "Remove an alias", "aliases",
          status=204, params={"alias": S.ADDRESS}),
    Route("GET", "/groups", list_groups, "Mail groups, paged, with their source counts",
          "groups", response=S.page_of(S.GROUP_SUMMARY),
          query={**_PAGE, "q": S._str(200, description="text in the address or name")}),
    Route("POST", "/groups", add_group, "Add a mail group", "groups", status=201,
          body=S.GROUP_CREATE, response=S.GROUP),
    Route("POST", "/groups/import", import_groups,
          "CSV import of mail groups (new groups only; all rows or none)", "groups",
          body=S.GROUP_IMPORT, response=S.DEPTS_IMPORTED),
    Route("GET", "/groups/export", export_groups,
          "CSV export of the mail groups (address, name, allow, sources)", "groups",
          response=S.CSV_TEXT),
    Route("GET", "/groups/{address}", get_group, "A mail group and its expanded recipients",
          "groups", params=_ADDR, response=S.GROUP),
    Route("PATCH", "/groups/{address}", update_group, "Add or remove a group's sources",
          "groups", params=_ADDR, body=S.GROUP_UPDATE, response=S.GROUP),
    Route("DELETE", "/groups/{address}", delete_group,
          "Delete a mail group (for good: it holds no mail) and its nestings", "groups",
          status=204, params=_ADDR),
    Route("GET", "/tags", list_tags, "Member tags with their member counts", "tags",
          response=S.list_of(S.TAG)),
    Route("POST", "/tags", add_tag, "Define a tag", "tags", status=201, body=S.TAG_CREATE,
          response=S.TAG),
    Route("GET", "/tags/{name}", get_tag, "A tag and the members that carry it", "tags",
          params={"name": S.TAG_NAME}, response=S.TAG),
    Route("PATCH", "/tags/{name}", rename_tag, "Rename a tag", "tags",
          params={"name": S.TAG_NAME}, body=S.TAG_CREATE, response=S.TAG),
    Route("DELETE", "/tags/{name}", delete_tag,
          "Delete a tag: off every member and out of every group", "tags", status=204,
          params={"name": S.TAG_NAME}),
    Route("POST", "/tags/{name}/members", tag_members,
          "Put the tag on members and take it off others (all or nothing)", "tags",
          params={"name": S.TAG_NAME}, body=S.TAG_MEMBERS, response=S.TAG),
    Route("GET", "/shared", list_shared, "Business mailboxes", "shared",
          response=S.list_of(S.SHARED)),
    Route("POST", "/shared", add_shared, "Add a business mailbox", "shared", status=201,
          body=S.SHARED_CREATE, response=S.SHARED),
    Route("GET", "/shared/{address}", get_shared, "A business mailbox and who may use it",
          "shared", params=_ADDR, response=S.SHARED),
    Route("PATCH", "/shared/{address}", update_shared, "Rename, set quota, disable or enable",
          "shared", params=_ADDR, body=S.SHARED_UPDATE, response=S.SHARED),
    Route("POST", "/shared/{address}/assign", assign_shared,
          "Assign members or departments (with sub-departments)", "shared", params=_ADDR,
          body=S.SHARED_ASSIGN, response=S.SHARED),
    Route("POST", "/shared/{address}/unassign", unassign_shared,
          "Take members or departments off", "shared", params=_ADDR, body=S.SHARED_ASSIGN,
          response=S.SHARED),
    Route("DELETE", "/shared/{address}", remove_shared,
          "Recall to the recycle bin (kept 60 days by default)", "shared", status=204,
          params=_ADDR),
    Route("GET", "/admins", list_admins, "Administrators", "admins",
          response=S.list_of(S.ADMIN)),
    Route("POST", "/admins", add_admin, "Make a member an administrator", "admins",
          status=201, body=S.ADMIN_CREATE, response=S.ADMIN),
    Route("DELETE", "/admins/{address}", remove_admin, "Withdraw admin rights", "admins",
          status=204, params=_ADDR),
    Route("GET", "/tokens", list_tokens, "API tokens (never the tokens themselves)", "tokens",
          response=S.list_of(S.TOKEN)),
    Route("POST", "/tokens", create_token, "A long-lived API token for this enterprise",
          "tokens", status=201, body=S.TOKEN_CREATE, response=S.TOKEN),
    Route("DELETE", "/tokens/{id}", revoke_token, "Revoke a token", "tokens", status=204,
          params=_ID),
    # Exmail's open API under /cgi-bin/ (docs/exmail-api.md): secrets for gettoken.
    Route("POST", "/exmail-api/secrets", create_exmail_secret,
          "A secret for one purpose of Exmail's open API (replaces that purpose's previous "
          "one); shown once", "tokens", status=201,
          body={"type": "object", "required": ["purpose"], "additionalProperties": False,
                "properties": {"purpose": {"type": "string", "enum": list(EXMAIL_PURPOSES)}}},
          response={"type": "object", "required": ["corpid", "secret", "purpose"],
                    "properties": {"corpid": {"type": "string"}, "secret": {"type": "string"},
                                   "purpose": {"type": "string"}}}),
    Route("DELETE", "/exmail-api/secrets/{purpose}", revoke_exmail_secret,
          "End a purpose's secret and its access tokens", "tokens", status=204,
          params={"purpose": {"type": "string", "enum": list(EXMAIL_PURPOSES)}}),
    Route("POST", "/me/login", member_login,
          "Member login (its own password): a short-lived token for /me only", "me",
          body=S.LOGIN, response=S.MEMBER_SESSION, open=True),
    Route("GET", "/me", get_me, "The member's own profile and settings", "me",
          response=S.ME),
    Route("PATCH", "/me", update_me, "Change the own nickname (when the enterprise allows)",
          "me", body=S.ME_UPDATE, response=S.ME),
    Route("POST", "/me/password", change_my_password,
          "Set a new password (needs the current one; the password policy applies)", "me",
          status=204, body=S.OWN_PASSWORD),
    Route("GET", "/me/settings", get_my_settings, "The member's client settings", "me",
          response=S.CLIENT_SETTINGS),
    Route("PATCH", "/me/settings", update_my_settings, "Change client settings", "me",
          body=S.CLIENT_SETTINGS_UPDATE, response=S.CLIENT_SETTINGS),
    Route("GET", "/log", list_log, "The operation log, newest first", "log",
          response=S.page_of(S.LOG_ENTRY),
          query={**_PAGE, "action": S._str(64, description="action prefix, e.g. member.")}),
)

# Login security (issue #14) keeps its routes in a module of its own.
from exmaild.admin.api_auth import ROUTES as _LOGIN_ROUTES  # noqa: E402

ROUTES += _LOGIN_ROUTES
# The rule engine's faces (issue #13): Sieve, rules, auto-reply, sender lists.
from exmaild.admin.api_rules import ROUTES as _RULE_ROUTES  # noqa: E402

ROUTES += _RULE_ROUTES
from exmaild.admin.api_forwarding import ROUTES as _FORWARDING_ROUTES  # noqa: E402

ROUTES += _FORWARDING_ROUTES

from exmaild.admin.api_entrules import ROUTES as _ENT_RULE_ROUTES  # noqa: E402

ROUTES += _ENT_RULE_ROUTES  # catch-all and backup rules

from exmaild.admin.api_maillog import ROUTES as _MAIL_LOG_ROUTES  # noqa: E402

ROUTES += _MAIL_LOG_ROUTES
from exmaild.admin.api_jobs import ROUTES as _JOB_ROUTES  # noqa: E402

ROUTES += _JOB_ROUTES  # CSV imports as jobs


# -- OpenAPI ------------------------------------------------------------------
def openapi(app: App | None = None) -> dict[str, Any]:
    return H.document(ROUTES, __version__)


# -- dispatch -----------------------------------------------------------------
def _client_ip(request: IRequest) -> str:
    peer = request.getClientAddress()
    return getattr(peer, "host", "") or ""


def _bearer(request: IRequest) -> str | None:
    raw = request.getHeader(b"authorization")
    if not raw:
        return None
    scheme, _, token = raw.decode("latin-1").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class APIResource(resource.Resource):
    """Everything below /api: one leaf that dispatches on the route table."""

    isLeaf = True

    def __init__(self, app: App) -> None:
        super().__init__()
        self.app = app
        self.svc = DirectoryService(app.store, app.cfg.directory)

    def render(self, request: IRequest) -> Any:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = defer.Deferred.fromCoroutine(self._handle(request, gone))
        d.addErrback(lambda f: log.failure("admin API request failed", f))
        return server.NOT_DONE_YET

    async def _handle(self, request: IRequest, gone: list[bool]) -> None:
        status, body, headers = 500, None, {}
        try:
            status, body = await self._dispatch(request)
        except ServiceError as e:
            status, body = e.status, H.error_body(e)
            if e.status == 401:
                headers[b"www-authenticate"] = b"Bearer"
            if e.status == 405:
                headers[b"allow"] = getattr(e, "allow", b"")
        except DirectoryError as e:
            status, body = 422, {"error": {"code": "invalid", "message": str(e)}}
        except Exception:
            log.failure("admin API: unexpected error in {method} {path}",
                        method=request.method, path=request.path)
            status = 500
            body = {"error": {"code": "internal", "message": "internal error (see the log)"}}
        if gone or request.finished:
            return  # the client went away
        request.setResponseCode(status)
        for k, v in headers.items():
            request.setHeader(k, v)
        if status == 204 or body is None:
            request.finish()
            return
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(json.dumps(body, ensure_ascii=False).encode() + b"\n")
        request.finish()

    async def _dispatch(self, request: IRequest) -> tuple[int, Any]:
        segments = H.segments(request)
        method = request.method.decode("latin-1").upper()
        route, raw, here = H.resolve(ROUTES, segments, method)
        if route is None and here and all(r.open for r in here):
            raise H.not_allowed(method, here)  # an open path: no token to ask for
        actor: Actor | None = None
        if route is None or not route.open:
            token = _bearer(request)
            if token is None:
                raise Unauthorized("a bearer token is required (Authorization: Bearer ...)")
            if len(token) > 200:
                raise Unauthorized("invalid or expired token")
            actor = await self.svc.actor_for_token(token, _client_ip(request))
        if route is None:
            raise H.not_allowed(method, here) if here else NotFound("no such resource")
        own = route.path == "/me" or route.path.startswith("/me/")
        if actor is not None and actor.member != own and not (
                route.path == "/auth/session"):
            # Member sessions reach only /me; admin credentials never /me.
            raise Forbidden("a member session reaches only /api/v1/me" if actor.member else
                            "/api/v1/me is for a member's own login (POST /api/v1/me/login)")
        ctx = Ctx(
            self.app, self.svc, request, actor, H.parse_params(route, raw),
            H.parse_query(route, request),
            H.parse_body(route, request, self.app.cfg.directory.api_max_body),
        )
        status, body = await route.handler(ctx)
        return (route.status if status in (200, 201, 204) else status), body
