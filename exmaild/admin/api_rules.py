"""Admin and self-service API routes of the rule engine (issue #13): Sieve
scripts, structured rules, the auto-reply and sender lists. Appended to the
route table of exmaild/admin/api.py. Scripts go through the daemon's one
ScriptStore (exmaild/sieve/delivery.py `scripts_of`), so an edit here counts
at the next delivery and is what ManageSieve's GETSCRIPT shows, and the
reverse; every check is PUTSCRIPT's (exmaild/sieve/scripts.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.directory.errors import Conflict, Forbidden, Invalid, NotFound
from exmaild.sieve import rules as R
from exmaild.sieve import senders
from exmaild.sieve.apply import Applied, apply_rule
from exmaild.sieve.delivery import limits_of, scripts_of, zone_of
from exmaild.sieve.entfilters import KINDS, EnterpriseFilters
from exmaild.sieve.scripts import ScriptError, ScriptStore
from exmaild.store.records import Account


def _script_error(e: ScriptError) -> Exception:
    if e.code == "NONEXISTENT":
        return NotFound(str(e))
    if e.code in ("ACTIVE", "ALREADYEXISTS"):
        return Conflict(str(e))
    return Invalid(str(e))  # parse errors name "line N, column C"


async def _me(c: Ctx) -> Any:
    actor = _actor(c)
    acct = (await c.app.store.directory.get_account_by_id(actor.account_id)
            if actor.account_id is not None else None)
    if acct is None:
        raise Forbidden("a member's own session is needed")
    return acct


async def _member(c: Ctx) -> Any:
    """The member named in the path, when the admin may manage it."""
    found = await c.svc.get_member(_actor(c), c.params["address"])
    acct = await c.app.store.directory.get_account(found["address"])
    if acct is None:
        raise NotFound(f"no member {c.params['address']}")
    return acct


def _scripts(c: Ctx) -> ScriptStore:
    return scripts_of(c.app)


# -- Sieve scripts (both faces) -------------------------------------------------
async def _list(c: Ctx, acct: Any) -> tuple[int, Any]:
    return 200, {"items": [dataclasses.asdict(s) for s in await _scripts(c).list(acct.id)]}


async def _get(c: Ctx, acct: Any) -> tuple[int, Any]:
    name = c.params["name"]
    text = await _scripts(c).get(acct.id, name)
    if text is None:
        raise NotFound(f"no script named {name!r}")
    active = any(s.active for s in await _scripts(c).list(acct.id) if s.name == name)
    return 200, {"name": name, "active": active, "script": text}


async def _put(c: Ctx, acct: Any) -> tuple[int, Any]:
    name, scripts = c.params["name"], _scripts(c)
    try:
        await scripts.put(acct.id, name, c.body["script"])
        if c.body.get("activate"):
            await scripts.activate(acct.id, name)
    except ScriptError as e:
        raise _script_error(e) from None
    return await _get(c, acct)


async def _activate(c: Ctx, acct: Any, name: str) -> tuple[int, Any]:
    try:
        await _scripts(c).activate(acct.id, name)
    except ScriptError as e:
        raise _script_error(e) from None
    return await _list(c, acct)


async def my_scripts(c: Ctx) -> tuple[int, Any]:
    return await _list(c, await _me(c))


async def get_my_script(c: Ctx) -> tuple[int, Any]:
    return await _get(c, await _me(c))


async def put_my_script(c: Ctx) -> tuple[int, Any]:
    return await _put(c, await _me(c))


async def activate_my_script(c: Ctx) -> tuple[int, Any]:
    return await _activate(c, await _me(c), c.params["name"])


async def deactivate_my_scripts(c: Ctx) -> tuple[int, Any]:
    return await _activate(c, await _me(c), "")


async def delete_my_script(c: Ctx) -> tuple[int, Any]:
    acct = await _me(c)
    try:
        await _scripts(c).delete(acct.id, c.params["name"])
    except ScriptError as e:
        raise _script_error(e) from None
    return 204, None


async def member_scripts(c: Ctx) -> tuple[int, Any]:
    return await _list(c, await _member(c))


async def get_member_script(c: Ctx) -> tuple[int, Any]:
    return await _get(c, await _member(c))


async def put_member_script(c: Ctx) -> tuple[int, Any]:
    return await _put(c, await _member(c))


# -- structured rules and the auto-reply --------------------------------------
def _rule_out(n: int, r: R.Rule) -> dict[str, Any]:
    return {**r.data, "number": n, "custom": r.custom}


async def _rules(c: Ctx) -> tuple[Any, list[R.Rule]]:
    acct = await _me(c)
    return acct, await R.load(_scripts(c), acct.id, acct.address)


def _nth(rules: list[R.Rule], n: int) -> R.Rule:
    if not 1 <= n <= len(rules):
        raise NotFound(f"no rule {n}")
    return rules[n - 1]


async def _save(c: Ctx, acct: Any, rules: list[R.Rule], **kw: Any) -> None:
    try:
        await R.save(_scripts(c), acct.id, acct.address, rules, **kw)
    except R.RuleError as e:
        raise Conflict(str(e)) from None
    except ScriptError as e:
        raise _script_error(e) from None


def _checked(acct: Any, data: dict[str, Any]) -> dict[str, Any]:
    try:
        R.compile_rule(data, acct.address)
    except R.RuleError as e:
        raise Invalid(str(e)) from None
    return data


async def my_rules(c: Ctx) -> tuple[int, Any]:
    _, rules = await _rules(c)
    return 200, {"items": [_rule_out(n, r) for n, r in enumerate(rules, 1)]}


async def _saved(c: Ctx, acct: Any, rules: list[R.Rule], rule: R.Rule) -> dict[str, Any]:
    """Save, then `rule` with its number as stored (receive rules come
    before send rules, so a rule's kind decides where it lands)."""
    await _save(c, acct, rules)
    stored = await R.load(_scripts(c), acct.id, acct.address)
    n = max((i for i, r in enumerate(stored, 1) if r.data == rule.data), default=len(stored))
    return _rule_out(n, rule)


async def add_my_rule(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    rules.append(R.Rule(_checked(acct, c.body)))
    return 201, await _saved(c, acct, rules, rules[-1])


async def replace_my_rule(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    n = c.params["number"]
    _nth(rules, n)
    rules[n - 1] = R.Rule(_checked(acct, c.body))
    return 200, await _saved(c, acct, rules, rules[n - 1])


async def update_my_rule(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    n = c.params["number"]
    rule = _nth(rules, n)
    if rule.custom:
        where = R.SEND_SCRIPT if rule.data.get("kind") == "send" else R.SCRIPT_NAME
        raise Conflict(f"rule {n} was edited in Sieve; edit the {where} script instead")
    rules[n - 1] = R.Rule(_checked(acct, {**rule.data, **c.body}))
    return 200, await _saved(c, acct, rules, rules[n - 1])


async def remove_my_rule(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    _nth(rules, c.params["number"])
    del rules[c.params["number"] - 1]
    await _save(c, acct, rules)
    return 204, None


async def run_my_rule(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    rule = _nth(rules, c.params["number"])
    try:
        done = await apply_rule(c.app.store, acct, rule.data, c.body["folder"],
                                limits_of(c.app.cfg), zone_of(c.app.cfg))
    except R.RuleError as e:
        raise NotFound(str(e)) from None
    return 200, dataclasses.asdict(done)


async def get_my_vacation(c: Ctx) -> tuple[int, Any]:
    acct = await _me(c)
    v = await R.load_vacation(_scripts(c), acct.id)
    if v is None:
        return 200, {"enabled": False, "custom": False}
    return 200, {"enabled": True, **v.data, "custom": v.custom}


async def put_my_vacation(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    try:
        R.compile_vacation(c.body)
    except R.RuleError as e:
        raise Invalid(str(e)) from None
    await _save(c, acct, rules, vacation=c.body)
    return await get_my_vacation(c)


async def delete_my_vacation(c: Ctx) -> tuple[int, Any]:
    acct, rules = await _rules(c)
    await _save(c, acct, rules, vacation=None)
    return 204, None


# -- sender lists ---------------------------------------------------------------
# One account's lists, for the member's own face (/me/filters) and the
# administrators' (/members/{address}/filters, admin/api_entrules.py).
async def list_filters(c: Ctx, acct: Account) -> tuple[int, Any]:
    got = await c.app.store.pool.do(lambda conn: senders.entries(conn, acct.id))
    return 200, {"items": [dataclasses.asdict(e) for e in got]}


async def add_filter(c: Ctx, acct: Account) -> tuple[int, Any]:
    b = c.body
    action = b.get("action", "junk")
    try:
        p = await c.app.store.pool.transaction(
            lambda conn: senders.add(conn, acct.id, b["list"], b["pattern"], action))
    except senders.FilterError as e:
        raise Invalid(str(e)) from None
    _scripts(c).invalidate(acct.id)
    return 201, {"list": b["list"], "pattern": p, "action": action}


async def remove_filter(c: Ctx, acct: Account) -> tuple[int, Any]:
    lst = c.params["list"]
    if lst not in senders.LISTS:
        raise NotFound(f"no list {lst!r}")
    try:
        await c.app.store.pool.transaction(
            lambda conn: senders.remove(conn, acct.id, lst, c.params["pattern"]))
    except senders.FilterError as e:
        raise NotFound(str(e)) from None
    _scripts(c).invalidate(acct.id)
    return 204, None


async def my_filters(c: Ctx) -> tuple[int, Any]:
    return await list_filters(c, await _me(c))


async def add_my_filter(c: Ctx) -> tuple[int, Any]:
    return await add_filter(c, await _me(c))


async def remove_my_filter(c: Ctx) -> tuple[int, Any]:
    return await remove_filter(c, await _me(c))


# -- the enterprise's filters (admins) -------------------------------------------
def _ent(c: Ctx) -> EnterpriseFilters:
    return EnterpriseFilters(c.svc)


def _dropped(c: Ctx) -> None:
    _scripts(c).invalidate()  # every member of the enterprise: drop them all


async def list_enterprise_filters(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await _ent(c).list(_actor(c))}


async def add_enterprise_filter(c: Ctx) -> tuple[int, Any]:
    b = c.body
    got = await _ent(c).add(_actor(c), b["kind"], b["pattern"], b.get("action", "junk"))
    _dropped(c)
    return 201, got


async def remove_enterprise_filter(c: Ctx) -> tuple[int, Any]:
    if c.params["kind"] not in KINDS:
        raise NotFound(f"no filter kind {c.params['kind']!r}")
    await _ent(c).remove(_actor(c), c.params["kind"], c.params["pattern"])
    _dropped(c)
    return 204, None


# -- the document ---------------------------------------------------------------
_NAME = {"name": S._str(255, 1, description="the script's name")}
_ADDR = {"address": S.ADDRESS}
_NUM = {"number": {"type": "integer", "minimum": 1, "description": "the rule's place, from 1"}}
SCRIPT_INFO = {"type": "object", "required": ["name", "active", "size"],
               "properties": {"name": {"type": "string"}, "active": {"type": "boolean"},
                              "size": {"type": "integer"}}}
SCRIPT = {"type": "object", "required": ["name", "active", "script"],
          "properties": {"name": {"type": "string"}, "active": {"type": "boolean"},
                         "script": {"type": "string"}}}
SCRIPT_PUT = {"type": "object", "required": ["script"], "additionalProperties": False,
              "properties": {"script": {"type": "string", "maxLength": 1 << 20,
                                        "description": "Sieve (RFC 5228), checked as "
                                        "PUTSCRIPT; errors name line N, column C"},
                             "activate": {"type": "boolean"}}}
_TEXT = {"type": ["string", "integer", "array"], "maxLength": 1000, "maxItems": 7,
         "items": {"type": ["string", "integer"], "maxLength": 10},
         "description": "text, octets (size), YYYY-MM-DD (date), [from, to] (date or "
                        "HH:MM time between), weekdays 0-6 from Sunday (weekday)"}
CONDITION = {"type": "object", "required": ["field"], "additionalProperties": False,
             "properties": {"field": {"type": "string", "enum": list(R.FIELDS)},
                            "op": {"type": "string", "enum": list(R.OPS)},
                            "value": _TEXT}}
ACTION = {"type": "object", "required": ["type"], "additionalProperties": False,
          "properties": {"type": {"type": "string", "enum": list(R.ACTIONS)},
                         "value": {"type": ["string", "array"], "maxLength": 1000,
                                   "maxItems": R.MAX_FORWARD,
                                   "items": S._str(320, 3)},
                         "keep": {"type": "boolean"}}}
RULE_FIELDS = {"name": S._str(200), "enabled": {"type": "boolean"},
               "kind": {"type": "string", "enum": list(R.KINDS),
                        "description": "receive (default) or send: run on the Sent copy of "
                                       "mail sent through SMTP"},
               "match": {"type": "string", "enum": ["all", "any"]},
               "stop": {"type": "boolean"},
               "conditions": {"type": "array", "items": CONDITION, "minItems": 1,
                              "maxItems": 50},
               "actions": {"type": "array", "items": ACTION, "minItems": 1, "maxItems": 20}}
RULE_IN = {"type": "object", "required": ["conditions", "actions"],
           "additionalProperties": False, "properties": RULE_FIELDS}
RULE_PATCH = {"type": "object", "additionalProperties": False, "properties": RULE_FIELDS}
RULE = {"type": "object", "required": ["number", "custom"],
        "properties": {**RULE_FIELDS, "number": {"type": "integer"},
                       "custom": {"type": "boolean",
                                  "description": "its Sieve was edited by hand: read only"}}}
RUN = {"type": "object", "required": ["folder"], "additionalProperties": False,
       "properties": {"folder": S._str(1000, 1)}}
APPLIED = {"type": "object", "required": [f.name for f in dataclasses.fields(Applied)]}
_DATE = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "description": "YYYY-MM-DD"}
VACATION_FIELDS = {"enabled": {"type": "boolean"}, "text": S._str(400, 1),
                   "subject": S._str(200), "start": _DATE, "end": _DATE,
                   "days": {"type": "integer", "minimum": 1, "maximum": 365,
                            "description": "at most one reply per sender in this many days"},
                   "known_only": {"type": "boolean",
                                  "description": "reply only to senders on the allow list "
                                                 "or that the member has sent mail to"}}
VACATION_IN = {"type": "object", "required": ["text"], "additionalProperties": False,
               "properties": VACATION_FIELDS}
VACATION = {"type": "object", "required": ["enabled", "custom"],
            "properties": {**VACATION_FIELDS, "custom": {"type": "boolean"}}}
FILTER = {"type": "object", "required": ["list", "pattern", "action"],
          "properties": {"list": {"type": "string", "enum": list(senders.LISTS)},
                         "pattern": {"type": "string"},
                         "action": {"type": "string", "enum": list(senders.ACTIONS)}}}
FILTER_IN = {"type": "object", "required": ["list", "pattern"], "additionalProperties": False,
             "properties": {"list": {"type": "string", "enum": list(senders.LISTS)},
                            "pattern": S._str(320, 1, description="an address or a domain"),
                            "action": {"type": "string", "enum": list(senders.ACTIONS)}}}
ENT_FILTER = {"type": "object", "required": ["kind", "pattern", "action"],
              "properties": {"kind": {"type": "string", "enum": list(KINDS)},
                             "pattern": {"type": "string"},
                             "action": {"type": "string", "enum": list(senders.ACTIONS)}}}
ENT_FILTER_IN = {"type": "object", "required": ["kind", "pattern"],
                 "additionalProperties": False,
                 "properties": {"kind": {"type": "string", "enum": list(KINDS)},
                                "pattern": S._str(320, 1, description="an address or domain "
                                                  "(block, allow) or a keyword (subject)"),
                                "action": {"type": "string", "enum": list(senders.ACTIONS)}}}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/me/sieve", my_scripts, "Your Sieve scripts; one may be active", "me",
          response=S.list_of(SCRIPT_INFO)),
    Route("POST", "/me/sieve/deactivate", deactivate_my_scripts,
          "Make none of your scripts active", "me", response=S.list_of(SCRIPT_INFO)),
    Route("GET", "/me/sieve/{name}", get_my_script, "One of your Sieve scripts", "me",
          params=_NAME, response=SCRIPT),
    Route("PUT", "/me/sieve/{name}", put_my_script,
          "Store a Sieve script (checked as ManageSieve's PUTSCRIPT)", "me", params=_NAME,
          body=SCRIPT_PUT, response=SCRIPT),
    Route("POST", "/me/sieve/{name}/activate", activate_my_script,
          "Make the script the one run at delivery", "me", params=_NAME,
          response=S.list_of(SCRIPT_INFO)),
    Route("DELETE", "/me/sieve/{name}", delete_my_script,
          "Delete a script that is not active", "me", status=204, params=_NAME),
    Route("GET", "/me/rules", my_rules, "Your receive rules, in order (kept as the Sieve "
          "script exmail-rules)", "me", response=S.list_of(RULE)),
    Route("POST", "/me/rules", add_my_rule, "Append a receive rule (exmail-rules becomes the "
          "active script)", "me", status=201, body=RULE_IN, response=RULE),
    Route("PUT", "/me/rules/{number}", replace_my_rule, "Replace a rule", "me", params=_NUM,
          body=RULE_IN, response=RULE),
    Route("PATCH", "/me/rules/{number}", update_my_rule,
          "Change parts of a rule, e.g. {\"enabled\": false}", "me", params=_NUM,
          body=RULE_PATCH, response=RULE),
    Route("DELETE", "/me/rules/{number}", remove_my_rule, "Remove a rule", "me", status=204,
          params=_NUM),
    Route("POST", "/me/rules/{number}/run", run_my_rule,
          "Apply a rule to the mail stored in a folder now (no forwards or replies)", "me",
          params=_NUM, body=RUN, response=APPLIED),
    Route("GET", "/me/vacation", get_my_vacation, "Your auto-reply", "me", response=VACATION),
    Route("PUT", "/me/vacation", put_my_vacation,
          "Set your auto-reply (at most 400 characters, optional date range)", "me",
          body=VACATION_IN, response=VACATION),
    Route("DELETE", "/me/vacation", delete_my_vacation, "Remove your auto-reply", "me",
          status=204),
    Route("GET", "/me/filters", my_filters, "Your blocked and allowed senders", "me",
          response=S.list_of(FILTER)),
    Route("POST", "/me/filters", add_my_filter,
          "Block (to Junk, or refuse) or allow an address or domain", "me", status=201,
          body=FILTER_IN, response=FILTER),
    Route("DELETE", "/me/filters/{list}/{pattern}", remove_my_filter,
          "Take an address or domain off a list", "me", status=204,
          params={"list": S._str(10, 1), "pattern": S._str(320, 1)}),
    Route("GET", "/members/{address}/sieve", member_scripts, "A member's Sieve scripts",
          "rules", params=_ADDR, response=S.list_of(SCRIPT_INFO)),
    Route("GET", "/members/{address}/sieve/{name}", get_member_script,
          "One of a member's Sieve scripts", "rules", params={**_ADDR, **_NAME},
          response=SCRIPT),
    Route("PUT", "/members/{address}/sieve/{name}", put_member_script,
          "Store a member's Sieve script (checked as PUTSCRIPT; activate: make it active)",
          "rules", params={**_ADDR, **_NAME}, body=SCRIPT_PUT, response=SCRIPT),
    Route("GET", "/filters", list_enterprise_filters,
          "The enterprise's inbound filters (run before members' lists and rules)", "rules",
          response=S.list_of(ENT_FILTER)),
    Route("POST", "/filters", add_enterprise_filter,
          "Block or allow a sender (address or domain) or file/refuse a subject keyword",
          "rules", status=201, body=ENT_FILTER_IN, response=ENT_FILTER),
    Route("DELETE", "/filters/{kind}/{pattern}", remove_enterprise_filter,
          "Remove an enterprise filter", "rules", status=204,
          params={"kind": S._str(10, 1), "pattern": S._str(320, 1)}),
)
