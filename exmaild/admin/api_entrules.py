"""Admin API routes for an enterprise's catch-all (manual §4.4.4.3 邮件转移),
its mail backup rules (manual §4.4.6.1) and a member's sender lists (the
admin's face of /me/filters), appended to the route table of
exmaild/admin/api.py. A change drops the daemon's delivery caches at once."""

from __future__ import annotations

from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.admin.api_rules import (
    FILTER,
    FILTER_IN,
    _member,
    add_filter,
    list_filters,
    remove_filter,
)
from exmaild.sieve.backup import DIRECTIONS, BackupRules, cache_of
from exmaild.sieve.catchall import CatchAll


def _dropped(c: Ctx) -> None:
    from exmaild.protocols.smtp.factory import policy_for

    policy_for(c.app).cache.forget()
    cache_of(c.app).forget()


async def list_catchall(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await CatchAll(c.svc).list(_actor(c))}


async def set_catchall(c: Ctx) -> tuple[int, Any]:
    got = await CatchAll(c.svc).set(_actor(c), c.params["domain"], c.body["address"])
    _dropped(c)
    return 200, got


async def remove_catchall(c: Ctx) -> tuple[int, Any]:
    await CatchAll(c.svc).set(_actor(c), c.params["domain"], None)
    _dropped(c)
    return 204, None


async def list_backup_rules(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await BackupRules(c.svc).list(_actor(c))}


async def add_backup_rule(c: Ctx) -> tuple[int, Any]:
    b = c.body
    got = await BackupRules(c.svc).add(
        _actor(c), sources=b["sources"], direction=b.get("direction", "both"),
        keywords=b.get("keywords", []), destination=b["destination"], folder=b["folder"])
    _dropped(c)
    return 201, got


async def remove_backup_rule(c: Ctx) -> tuple[int, Any]:
    await BackupRules(c.svc).remove(_actor(c), int(c.params["id"]))
    _dropped(c)
    return 204, None


async def member_filters(c: Ctx) -> tuple[int, Any]:
    return await list_filters(c, await _member(c))


async def add_member_filter(c: Ctx) -> tuple[int, Any]:
    return await add_filter(c, await _member(c))


async def remove_member_filter(c: Ctx) -> tuple[int, Any]:
    return await remove_filter(c, await _member(c))


CATCHALL = {"type": "object", "required": ["domain", "address", "folder"],
            "properties": {"domain": {"type": "string"},
                           "address": {"type": ["string", "null"]},
                           "folder": {"type": "string"}}}
CATCHALL_IN = {"type": "object", "required": ["address"], "additionalProperties": False,
               "properties": {"address": S._str(320, 3, description="a member or business "
                                                "mailbox of the enterprise")}}
_KEYWORDS = {"type": "array", "maxItems": 20, "items": S._str(100, 1),
             "description": "all must appear in the subject or the body; none: every message"}
BACKUP = {"type": "object",
          "required": ["id", "sources", "direction", "keywords", "destination", "folder"],
          "properties": {"id": {"type": "integer"},
                         "sources": {"type": "array", "items": {"type": "string"}},
                         "direction": {"type": "string", "enum": list(DIRECTIONS)},
                         "keywords": _KEYWORDS, "destination": {"type": "string"},
                         "folder": {"type": "string"}}}
BACKUP_IN = {"type": "object", "required": ["sources", "destination", "folder"],
             "additionalProperties": False,
             "properties": {"sources": {"type": "array", "minItems": 1, "maxItems": 1000,
                                        "items": S._str(320, 1),
                                        "description": "addresses, dept:PATH or all"},
                            "direction": {"type": "string", "enum": list(DIRECTIONS)},
                            "keywords": _KEYWORDS, "destination": S._str(320, 3),
                            "folder": S._str(1000, 1)}}
_DOMAIN = {"domain": S._str(253, 1, description="a domain of the enterprise")}
_ADDR = {"address": S.ADDRESS}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/catchall", list_catchall,
          "Domains whose unknown addresses go to a mailbox's folder 邮件转移", "rules",
          response=S.list_of(CATCHALL)),
    Route("PUT", "/catchall/{domain}", set_catchall,
          "Send mail to the domain's unknown addresses to a member's folder 邮件转移", "rules",
          params=_DOMAIN, body=CATCHALL_IN, response=CATCHALL),
    Route("DELETE", "/catchall/{domain}", remove_catchall,
          "Refuse mail to the domain's unknown addresses again", "rules", status=204,
          params=_DOMAIN),
    Route("GET", "/backup-rules", list_backup_rules, "The enterprise's mail backup rules",
          "rules", response=S.list_of(BACKUP)),
    Route("POST", "/backup-rules", add_backup_rule,
          "Copy mail sent or received by the sources into a member's folder", "rules",
          status=201, body=BACKUP_IN, response=BACKUP),
    Route("DELETE", "/backup-rules/{id}", remove_backup_rule, "Remove a backup rule", "rules",
          status=204, params={"id": {"type": "integer", "minimum": 1}}),
    Route("GET", "/members/{address}/filters", member_filters,
          "A member's blocked and allowed senders", "rules", params=_ADDR,
          response=S.list_of(FILTER)),
    Route("POST", "/members/{address}/filters", add_member_filter,
          "Block (to Junk, or refuse) or allow an address or domain for a member", "rules",
          status=201, params=_ADDR, body=FILTER_IN, response=FILTER),
    Route("DELETE", "/members/{address}/filters/{list}/{pattern}", remove_member_filter,
          "Take an address or domain off a member's list", "rules", status=204,
          params={**_ADDR, "list": S._str(10, 1), "pattern": S._str(320, 1)}),
)
