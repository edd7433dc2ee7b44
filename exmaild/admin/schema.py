"""JSON Schemas of the admin API (OpenAPI 3.1 uses JSON Schema 2020-12) and the
small validator the API checks request bodies and query parameters with, so
the published document and the server's checks are the same data.

The validator covers the subset used here: type (one or a list), properties,
required, additionalProperties false, items, minItems, maxItems, anyOf, enum, minLength,
maxLength, pattern, minimum, maximum. NUL characters are refused in every string (no
database stores them).
"""

from __future__ import annotations

import re
from typing import Any

from exmaild.directory.actor import FUNCTIONS, ROLES
from exmaild.directory.settings import DISPLAY_NAME_POLICIES, WELCOME_MODES
from exmaild.mailauth.entpolicy import ACTIONS
from exmaild.store.records import DEFAULT_SETTINGS, FETCH_WINDOWS

INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
EPOCH = {"type": "integer", "minimum": 0, "maximum": 2**40, "description": "Unix seconds"}


def _str(max_len: int, min_len: int = 0, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": min_len, "maxLength": max_len, **kw}


ADDRESS = _str(320, 3, description="an email address")
PASSWORD = _str(200, 1, description="checked against the password policy")
DEPT_REF = {"type": ["integer", "string"],
            "description": "a department id, or its path such as Sales/East"}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "enum": [
            "malformed", "unauthorized", "forbidden", "not_found", "method_not_allowed",
            "conflict", "too_large", "invalid", "throttled", "internal", "unavailable"]},
            "message": {"type": "string"},
            "field": {"type": "string", "description":
                      "the part of the request that breaks the document's schema"}},
    }},
}

DEPT_LINK = {"type": "object", "required": ["id", "path"],
             "properties": {"id": {"type": "integer"}, "path": {"type": "string"}}}

MEMBER = {
    "type": "object",
    "required": ["address", "name", "status", "departments", "aliases", "vip"],
    "properties": {
        "address": {"type": "string"}, "kind": {"type": "string"},
        "name": {"type": "string"}, "nickname": {"type": "string"},
        "phone": {"type": "string"}, "title": {"type": "string"},
        "gender": {"type": "string", "enum": ["", "male", "female"]},
        "external_id": {"type": ["string", "null"]},
        "departments": {"type": "array", "items": DEPT_LINK},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "vip": {"type": "boolean"},
        "status": {"type": "string", "enum": ["enabled", "disabled", "deleted"]},
        "quota_bytes": {"type": "integer", "description": "0: unlimited"},
        "used_bytes": {"type": "integer"}, "message_count": {"type": "integer"},
        "created": EPOCH, "deleted_at": {"type": ["integer", "null"]},
        "days_left": {"type": ["integer", "null"], "description": "in the recycle bin"},
        "must_change_password": {"type": "boolean",
                                 "description": "protocol logins refused until changed"},
    },
}

_PROFILE = {
    "name": _str(200), "nickname": _str(200), "phone": _str(40), "title": _str(200),
    "gender": {"type": "string", "enum": ["", "male", "female"]},
    "external_id": {"type": ["string", "null"], "maxLength": 200},
    "departments": {"type": "array", "items": DEPT_REF, "maxItems": 100},
    "vip": {"type": "boolean"},
    "quota_bytes": {"type": "integer", "minimum": 0, "maximum": 2**62},
}

MEMBER_CREATE = {
    "type": "object", "required": ["address"], "additionalProperties": False,
    "properties": {"address": ADDRESS, "password": PASSWORD, **_PROFILE},
}
MEMBER_UPDATE = {
    "type": "object", "additionalProperties": False,
    "properties": {"password": PASSWORD, "enabled": {"type": "boolean"},
                   "must_change_password": {"type": "boolean"}, **_PROFILE},
}

IMPORT = {"type": "object", "required": ["csv"], "additionalProperties": False,
          "properties": {"csv": {"type": "string", "description":
                                 "address,name,nickname,phone,title,gender,external_id,"
                                 "departments (paths separated by ';'),vip,quota_bytes"
                                 "[,password]"}}}
IMPORTED = {"type": "object", "required": ["imported"],
            "properties": {"imported": {"type": "integer"}}}
CSV_TEXT = {"type": "object", "required": ["csv"], "properties": {"csv": {"type": "string"}}}

RENAME = {"type": "object", "required": ["address"], "additionalProperties": False,
          "properties": {"address": ADDRESS}}

DEPARTMENT = {
    "type": "object", "required": ["id", "name", "parent_id", "position", "path"],
    "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                   "parent_id": {"type": ["integer", "null"]}, "position": {"type": "integer"},
                   "path": {"type": "string"}, "members": {"type": "integer"}},
}
DEPARTMENT_CREATE = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": _str(200, 1), "parent_id": {"type": ["integer", "null"],
                                                       "minimum": 1, "maximum": 2**31 - 1},
                   "position": INT32},
}
DEPARTMENT_UPDATE = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": _str(200, 1), "parent_id": {"type": ["integer", "null"],
                                                       "minimum": 1, "maximum": 2**31 - 1},
                   "position": INT32},
}

DOMAIN = {"type": "object", "required": ["name", "primary"],
          "properties": {"name": {"type": "string"}, "primary": {"type": "boolean"},
                         "created": EPOCH, "enterprise": {"type": "string"}}}
DOMAIN_CREATE = {"type": "object", "required": ["name"], "additionalProperties": False,
                 "properties": {"name": _str(253, 1)}}

ENTERPRISE = {"type": "object", "required": ["id", "name"],
              "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                             "created": EPOCH, "member_limit": {"type": "integer"},
                             "members": {"type": "integer"},
                             "vip_seats": {"type": ["integer", "null"]},
                             "vip_used": {"type": "integer"},
                             "domains": {"type": "array", "items": {"type": "string"}},
                             "creator": {"type": ["string", "null"]}}}

ALIAS = {"type": "object", "required": ["alias", "member"],
         "properties": {"alias": {"type": "string"}, "member": {"type": "string"}}}
ALIAS_CREATE = {"type": "object", "required": ["alias"], "additionalProperties": False,
                "properties": {"alias": ADDRESS}}

_ALLOW = {"type": "string", "enum": ["anyone", "enterprise", "members", "list"]}
_ADDRS = {"type": "array", "items": ADDRESS, "maxItems": 1000}
GROUP_IMPORT = {"type": "object", "required": ["csv"], "additionalProperties": False,
                "properties": {"csv": {"type": "string", "description":
                                       "address,name,allow,members,departments,groups,"
                                       "externals,tags,representatives,all_staff "
                                       "(lists separated by ';')"}}}
DEPTS_IMPORTED = {"type": "object", "required": ["rows", "added"],
                  "properties": {"rows": {"type": "integer"}, "added": {"type": "integer"}}}
REASSIGN = {"type": "object", "required": ["to"], "additionalProperties": False,
            "properties": {"to": ADDRESS}}
REASSIGNED = {"type": "object", "required": ["address", "to", "messages", "folder"],
              "properties": {"address": {"type": "string"}, "to": {"type": "string"},
                             "messages": {"type": "integer"}, "folder": {"type": "string"}}}
# Printable, not only blanks (the pattern is valid ECMA-262 and Python regex).
TAG_NAME = _str(100, 1, description="a tag's name",
                pattern="^[^\\x00-\\x1f\\x7f]*[^\\s\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$")
_TAGS = {"type": "array", "items": TAG_NAME, "maxItems": 100}
TAG = {"type": "object", "required": ["name", "member_count"],
       "properties": {"name": {"type": "string"}, "created": {"type": "integer"},
                      "member_count": {"type": "integer", "minimum": 0},
                      "members": {"type": "array", "items": {"type": "string"}}}}
TAG_CREATE = {"type": "object", "required": ["name"], "additionalProperties": False,
              "properties": {"name": TAG_NAME}}
TAG_MEMBERS = {"type": "object", "additionalProperties": False,
               "properties": {"add": _ADDRS, "remove": _ADDRS}}
GROUP = {"type": "object", "required": ["address", "allow", "recipients"],
         "properties": {"address": {"type": "string"}, "name": {"type": "string"},
                        "department": {"type": ["string", "null"], "description":
                                       "a department's own group: the department it follows"},
                        "allow": _ALLOW, "allow_list": {"type": "array"},
                        "members": {"type": "array", "items": {"type": "string"}},
                        "groups": {"type": "array", "items": {"type": "string"}},
                        "departments": {"type": "array"},
                        "externals": {"type": "array", "items": {"type": "string"}},
                        "all_staff": {"type": "boolean",
                                      "description": "every member, as the directory is"},
                        "representatives": {"type": "array", "items": {"type": "string"},
                                            "description": "members who may send as it"},
                        "tags": {"type": "array", "items": {"type": "string"},
                                 "description": "members with these tags"},
                        "recipients": {"type": "array", "items": {"type": "string"}}}}
DEPT_GROUP_CREATE = {"type": "object", "required": ["address"], "additionalProperties": False,
                     "properties": {"address": ADDRESS}}
GROUP_SUMMARY = {
    "type": "object",
    "required": ["address", "name", "allow", "all_staff", "member_count", "group_count",
                 "department_count", "external_count", "representative_count"],
    "properties": {"address": {"type": "string"}, "name": {"type": "string"},
                   "allow": _ALLOW, "all_staff": {"type": "boolean"},
                   **{k: {"type": "integer", "minimum": 0} for k in (
                       "member_count", "group_count", "department_count", "external_count",
                       "representative_count", "tag_count")}}}
GROUP_CREATE = {
    "type": "object", "required": ["address"], "additionalProperties": False,
    "properties": {"address": ADDRESS, "name": _str(200), "members": _ADDRS,
                   "departments": {"type": "array", "items": DEPT_REF, "maxItems": 100},
                   "groups": _ADDRS, "externals": _ADDRS, "allow": _ALLOW,
                   "allow_list": _ADDRS, "representatives": _ADDRS,
                   "all_staff": {"type": "boolean"}, "tags": _TAGS},
}
GROUP_UPDATE = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": _str(200), "add_members": _ADDRS, "add_groups": _ADDRS,
                   "add_departments": {"type": "array", "items": DEPT_REF, "maxItems": 100},
                   "add_externals": _ADDRS, "remove": _ADDRS, "allow": _ALLOW,
                   "add_representatives": _ADDRS, "remove_representatives": _ADDRS,
                   "all_staff": {"type": "boolean"}, "add_tags": _TAGS, "remove_tags": _TAGS},
}

# Business mailboxes (manual §4.4.2.3): assigned to members and departments.
SHARED = {"type": "object", "required": ["address", "status", "assigned"],
          "properties": {"address": {"type": "string"}, "kind": {"type": "string"},
                         "name": {"type": "string"},
                         "status": {"type": "string",
                                    "enum": ["enabled", "disabled", "deleted"]},
                         "aliases": {"type": "array", "items": {"type": "string"}},
                         "members": {"type": "array", "items": {"type": "string"}},
                         "departments": {"type": "array"},
                         "assigned": {"type": "array", "items": {"type": "string"}},
                         "quota_bytes": {"type": "integer", "description": "0: unlimited"},
                         "used_bytes": {"type": "integer"},
                         "message_count": {"type": "integer"}, "created": EPOCH,
                         "deleted_at": {"type": ["integer", "null"]},
                         "days_left": {"type": ["integer", "null"]}}}
_DEPTS = {"type": "array", "items": DEPT_REF, "maxItems": 100}
SHARED_CREATE = {
    "type": "object", "required": ["address"], "additionalProperties": False,
    "properties": {"address": ADDRESS, "name": _str(200), "members": _ADDRS,
                   "departments": _DEPTS,
                   "quota_bytes": {"type": "integer", "minimum": 0, "maximum": 2**62}},
}
SHARED_UPDATE = {
    "type": "object", "additionalProperties": False,
    "properties": {"name": _str(200), "enabled": {"type": "boolean"},
                   "quota_bytes": {"type": "integer", "minimum": 0, "maximum": 2**62}},
}
SHARED_ASSIGN = {
    "type": "object", "additionalProperties": False,
    "properties": {"members": _ADDRS, "departments": _DEPTS},
    "description": "at least one member or department",
    "anyOf": [{"required": [k], "properties": {k: {"minItems": 1}}}
              for k in ("members", "departments")],
}

ADMIN = {"type": "object", "required": ["address", "role"],
         "properties": {"address": {"type": "string"},
                        "role": {"type": "string", "enum": list(ROLES)},
                        "functions": {"type": "array", "items": {"type": "string"}},
                        "departments": {"type": "array", "items": DEPT_LINK}}}
ADMIN_CREATE = {
    "type": "object", "required": ["address", "role"], "additionalProperties": False,
    "properties": {"address": ADDRESS, "role": {"type": "string", "enum": list(ROLES)},
                   "departments": {"type": "array", "items": DEPT_REF, "maxItems": 100},
                   "functions": {"type": "array", "maxItems": 10,
                                 "items": {"type": "string", "enum": list(FUNCTIONS)}}},
}

TOKEN = {"type": "object", "required": ["id", "name", "kind"],
         "properties": {"id": {"type": "integer"}, "name": {"type": "string"},
                        "kind": {"type": "string"}, "created": EPOCH,
                        "expires": {"type": ["integer", "null"]},
                        "enterprise": {"type": "string"},
                        "token": {"type": "string", "description": "shown once, on creation"}}}
TOKEN_CREATE = {"type": "object", "additionalProperties": False,
                "properties": {"name": _str(200)}}

LOGIN = {"type": "object", "required": ["address", "password"], "additionalProperties": False,
         "properties": {"address": _str(320, 1), "password": _str(1024, 1),
                        "otp": _str(32, 1, description="second factor, when enabled")}}
SESSION = {"type": "object", "required": ["token", "expires", "role"],
           "properties": {"token": {"type": "string"}, "expires": EPOCH,
                          "role": {"type": "string"}}}

MEMBER_SESSION = {"type": "object", "required": ["token", "expires", "address",
                                               "must_change_password"],
                  "properties": {"token": {"type": "string"}, "expires": EPOCH,
                                 "address": {"type": "string"},
                                 "must_change_password": {"type": "boolean"}}}
CLIENT_SETTINGS_UPDATE = {
    "type": "object", "additionalProperties": False,
    "properties": {k: {"type": "boolean"} for k in DEFAULT_SETTINGS if k != "fetch_window"}
    | {"fetch_window": {"type": "string", "enum": list(FETCH_WINDOWS)}},
}
CLIENT_SETTINGS = {"type": "object", "required": list(DEFAULT_SETTINGS),
                   "properties": CLIENT_SETTINGS_UPDATE["properties"]}
ME = {"type": "object", "required": [*MEMBER["required"], "settings", "nickname_changeable",
                                     "must_change_password"],
      "properties": {**MEMBER["properties"], "settings": CLIENT_SETTINGS,
                     "nickname_changeable": {"type": "boolean"},
                     "must_change_password": {"type": "boolean"}}}
ME_UPDATE = {"type": "object", "additionalProperties": False,
             "properties": {"nickname": _str(200)}}
OWN_PASSWORD = {"type": "object", "required": ["old_password", "new_password"],
                "additionalProperties": False,
                "properties": {"old_password": _str(1024, 1), "new_password": PASSWORD}}
PASSWORD_RESET = {"type": "object", "required": ["password"], "additionalProperties": False,
                  "properties": {"password": PASSWORD, "must_change": {
                      "type": "boolean", "default": True,
                      "description": "refuse protocol logins until the member sets its own"}}}
_ENT_SETTINGS_PROPS = {
    "display_name": {"type": "string", "enum": list(DISPLAY_NAME_POLICIES),
                     "description": "From: display name of mail members submit"},
    "members_may_change_nickname": {"type": "boolean"},
    "welcome": {"type": "string", "enum": list(WELCOME_MODES)},
    "welcome_template": _str(20000, description="placeholders {name} {address} {enterprise}"),
    **{f"{role}_quota_bytes": {
        "type": ["integer", "null"], "minimum": 0, "maximum": 2**62,
        "description": f"default quota of a new {what} in bytes (0: unlimited); "
                       "null: the server's [directory] setting"}
       for role, what in (("member", "member"), ("vip", "VIP member"),
                          ("shared", "business mailbox"))},
    "forward_outside": {"type": "boolean",
                        "description": "members' rules may forward outside the enterprise"},
    "department_groups": {"type": "boolean",
                          "description": "each new department gets its own mail group (an "
                                         "address from its name's pinyin); turning it on makes "
                                         "the missing ones"},
    **{key: {"type": ["string", "null"], "enum": [*values, None],
             "description": f"[mailauth] {key} for mail to the enterprise's members; "
                          "null: the server's"} for key, values in ACTIONS.items()},
}
ENTERPRISE_SETTINGS = {"type": "object", "required": list(_ENT_SETTINGS_PROPS),
                       "properties": _ENT_SETTINGS_PROPS}
ENTERPRISE_SETTINGS_UPDATE = {"type": "object", "additionalProperties": False,
                              "properties": _ENT_SETTINGS_PROPS}

DOMAIN_CHECK = {
    "type": "object", "required": ["domain", "status", "required", "found", "error"],
    "properties": {
        "domain": {"type": "string"},
        "status": {"type": "string", "enum": ["verified", "pending", "mx_elsewhere",
                                              "no_domain", "dns_error"]},
        "required": {"type": "object", "description": "records to set: mx, spf (TXT), txt"},
        "found": {"type": "object", "description": "mx, spf, token and whether they fit"},
        "error": {"type": ["string", "null"]},
        "auth": {"type": ["object", "null"], "description": "mail-authentication DNS state; "
                 "null when the domain's own lookups failed", "properties": {
                     "dkim": {"type": "object", "properties": {
                         "status": {"type": "string", "enum": [
                             "ok", "missing", "mismatch", "dns_error", "no_key"],
                             "description": "the active keys' records against the stored "
                                            "keys"},
                         "selectors": {"type": "array", "items": {"type": "object"}}}},
                     "spf": {"type": "object", "properties": {
                         "status": {"type": "string", "enum": [
                             "ok", "not_us", "missing", "multiple"]},
                         "record": {"type": ["string", "null"]}}},
                     "dmarc": {"type": "object", "properties": {
                         "status": {"type": "string", "enum": ["found", "missing",
                                                               "dns_error"]},
                         "policy": {"type": ["string", "null"]},
                         "record": {"type": ["string", "null"]}}}}}}}

LOG_ENTRY = {"type": "object", "required": ["id", "actor", "action", "target", "time"],
             "properties": {"id": {"type": "integer"}, "actor": {"type": "string"},
                            "action": {"type": "string"}, "target": {"type": "string"},
                            "before": {}, "after": {}, "ip": {"type": "string"},
                            "time": EPOCH}}


def page_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "total", "limit", "offset", "next_offset"],
            "properties": {"items": {"type": "array", "items": item},
                           "total": {"type": "integer"}, "limit": {"type": "integer"},
                           "offset": {"type": "integer"},
                           "next_offset": {"type": ["integer", "null"]}}}


def page_or_csv(item: dict[str, Any]) -> dict[str, Any]:
    """A page of `item`, or with format=csv the page's rows as CSV text."""
    return {"anyOf": [page_of(item), {
        "type": "object", "required": ["csv", "total", "next_offset"],
        "properties": {"csv": {"type": "string"}, "total": {"type": "integer"},
                       "next_offset": {"type": ["integer", "null"]}}}]}


def list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items"],
            "properties": {"items": {"type": "array", "items": item}}}


HEALTH = {"type": "object", "properties": {"status": {"type": "string"}}}


# -- validation ---------------------------------------------------------------
class SchemaViolation(ValueError):
    def __init__(self, message: str, where: str) -> None:
        super().__init__(message)
        self.where = where


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: dict[str, Any], where: str = "body") -> None:
    """Raise SchemaViolation naming the first place `value` breaks `schema`."""
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_TYPES[t](value) for t in names):
            raise SchemaViolation(f"{where} must be {' or '.join(names)}", where)
    if "enum" in schema and value not in schema["enum"]:
        shown = ", ".join(repr(e) for e in schema["enum"])
        raise SchemaViolation(f"{where} must be one of {shown}", where)
    if isinstance(value, str):
        if "\x00" in value:
            raise SchemaViolation(f"{where} must not contain NUL characters", where)
        if len(value) < schema.get("minLength", 0):
            raise SchemaViolation(f"{where} is too short", where)
        if len(value) > schema.get("maxLength", 1 << 30):
            raise SchemaViolation(f"{where} is longer than {schema['maxLength']} characters", where)
        if "pattern" in schema and not re.search(schema["pattern"], value):
            raise SchemaViolation(f"{where} does not match {schema['pattern']}", where)
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(f"{where} must be at least {schema['minimum']}", where)
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(f"{where} must be at most {schema['maximum']}", where)
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                validate(value, alt, where)
                break
            except SchemaViolation as e:
                errors.append(str(e))
        else:
            raise SchemaViolation(" or ".join(errors), where)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            raise SchemaViolation(f"{where} needs at least {schema['minItems']} items", where)
        if len(value) > schema.get("maxItems", 1 << 30):
            raise SchemaViolation(f"{where} has more than {schema['maxItems']} items", where)
        if "items" in schema:
            for i, item in enumerate(value):
                validate(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", ()):
            if key not in value:
                raise SchemaViolation(f"{where}.{key} is required", where)
        for key, item in value.items():
            if key in props:
                validate(item, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                raise SchemaViolation(f"{where}.{key} is not a known field", where)
