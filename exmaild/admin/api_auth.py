"""Admin and self-service API routes of login security (issue #14): app
passwords, secure login, the enterprise's login rules, the login log.
Appended to the route table of exmaild/admin/api.py; every rule lives in
exmaild/auth/service.py."""

from __future__ import annotations

from typing import Any

from exmaild.admin import schema as S
from exmaild.admin.api import Ctx, Route, _actor
from exmaild.auth import loginlog
from exmaild.auth.service import LoginSecurity

_NAME = S._str(100, 1, description="the app password's name, e.g. the device")
APP_PASSWORD = {"type": "object", "required": ["account", "name", "created"],
                "properties": {"account": {"type": "string"}, "name": {"type": "string"},
                               "created": S.EPOCH,
                               "last_used": {"type": ["integer", "null"]},
                               "created_by": {"type": "string"},
                               "password": {"type": "string",
                                            "description": "only in the answer to POST"}}}
APP_PASSWORD_CREATE = {"type": "object", "required": ["name"], "additionalProperties": False,
                       "properties": {"name": _NAME, "member": S.ADDRESS}}
MY_APP_PASSWORD_CREATE = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {"name": _NAME, "mailbox": {
        **S.ADDRESS, "description": "a business mailbox assigned to you (default: your own)"}}}
SECURE_LOGIN = {"type": "object", "required": ["secure_login"],
                "properties": {"address": {"type": "string"},
                               "secure_login": {"type": "boolean"},
                               "forced": {"type": "boolean"}}}
SECURE_LOGIN_SET = {"type": "object", "required": ["on"], "additionalProperties": False,
                    "properties": {"on": {"type": "boolean"}}}
_SWITCHES = {"type": "object", "additionalProperties": False,
             "properties": {"imap": {"type": "boolean"}, "pop": {"type": "boolean"}}}
_ADDRS = {"type": "array", "items": S.ADDRESS, "maxItems": 10000}
POLICY_UPDATE = {
    "type": "object", "additionalProperties": False, "properties": {
        "secure_login": {"type": "object", "additionalProperties": False, "properties": {
            "everyone": {"type": "boolean"}, "members": _ADDRS,
            "departments": {"type": "array", "items": S.DEPT_REF, "maxItems": 1000}}},
        "ip_allow": {"type": "array", "items": S._str(64, 2), "maxItems": 1000,
                     "description": "addresses or CIDRs, v4 or v6; empty: from anywhere"},
        "ip_exempt": _ADDRS,
        "admin_totp": {"type": "boolean",
                       "description": "administrators need a second factor on the API"},
        "protocols": {"type": "object", "additionalProperties": False, "properties": {
            "everyone": _SWITCHES,
            "departments": {"type": "object", "description": "department path or id -> "
                            "switches ({} removes the rule)"},
            "members": {"type": "object", "description": "address -> switches"},
            "members_may_change": {"type": "boolean"}}},
    }}
POLICY = {"type": "object", "required": ["secure_login", "ip_allow", "ip_exempt", "protocols"]}
LOGIN_ENTRY = {"type": "object", "required": list(loginlog.COLUMNS),
               "properties": {c: {"type": "string"} for c in loginlog.COLUMNS}
               | {"time": S.EPOCH}}
ACTIVITY = {"type": "object", "required": ["address"],
            "properties": {"address": {"type": "string"},
                           "last_login": {"type": ["integer", "null"]}}}
_PAGE = {"limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
         "offset": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}}
_ADDR = {"address": S.ADDRESS}


def _sec(c: Ctx) -> LoginSecurity:
    return LoginSecurity(c.svc)


async def list_app_passwords(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await _sec(c).list_app_passwords(_actor(c), c.params["address"])}


async def add_app_password(c: Ctx) -> tuple[int, Any]:
    info, password = await _sec(c).add_app_password(
        _actor(c), c.params["address"], c.body["name"], by=c.body.get("member"))
    return 201, {**info, "password": password}


async def revoke_app_password(c: Ctx) -> tuple[int, Any]:
    await _sec(c).revoke_app_password(_actor(c), c.params["address"], c.params["name"])
    return 204, None


async def set_secure_login(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).set_secure_login(_actor(c), c.params["address"], c.body["on"])


async def get_login_policy(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).get_policy(_actor(c))


async def update_login_policy(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).update_policy(_actor(c), c.body)


async def list_logins(c: Ctx) -> tuple[int, Any]:
    q = c.query
    page = await _sec(c).login_log(
        _actor(c), account=q.get("account"), since=q.get("since"), until=q.get("until"),
        ip=q.get("ip"), result=q.get("result"), limit=q.get("limit", 100),
        offset=q.get("offset", 0))
    if q.get("format") == "csv":
        return 200, {"csv": loginlog.to_csv(page["items"]), "total": page["total"],
                     "next_offset": page["next_offset"]}
    return 200, page


async def login_activity(c: Ctx) -> tuple[int, Any]:
    q = c.query
    return 200, {"items": await _sec(c).login_activity(
        _actor(c), q["days"], q.get("logged_in", False))}


async def my_app_passwords(c: Ctx) -> tuple[int, Any]:
    return 200, {"items": await _sec(c).my_app_passwords(_actor(c))}


async def add_my_app_password(c: Ctx) -> tuple[int, Any]:
    info, password = await _sec(c).add_my_app_password(_actor(c), c.body["name"],
                                                       c.body.get("mailbox"))
    return 201, {**info, "password": password}


async def revoke_my_app_password(c: Ctx) -> tuple[int, Any]:
    await _sec(c).revoke_my_app_password(_actor(c), c.params["name"], c.query.get("mailbox"))
    return 204, None


async def get_my_secure_login(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).my_secure_login(_actor(c))


async def set_my_secure_login(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).my_secure_login(_actor(c), c.body["on"])


async def my_logins(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).my_logins(_actor(c), c.query.get("limit", 100),
                                        c.query.get("offset", 0))


async def get_my_totp(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).my_totp(_actor(c))


async def begin_my_totp(c: Ctx) -> tuple[int, Any]:
    return 201, await _sec(c).begin_my_totp(_actor(c))


async def confirm_my_totp(c: Ctx) -> tuple[int, Any]:
    return 200, await _sec(c).confirm_my_totp(_actor(c), c.body["code"])


async def disable_my_totp(c: Ctx) -> tuple[int, Any]:
    await _sec(c).disable_my_totp(_actor(c), c.body["code"])
    return 204, None


async def reset_totp(c: Ctx) -> tuple[int, Any]:
    await _sec(c).reset_totp(_actor(c), c.params["address"])
    return 204, None


_APP = {**_ADDR, "name": S._str(100, 1)}
_CODE = {"type": "object", "required": ["code"], "additionalProperties": False,
         "properties": {"code": S._str(32, 1)}}
TOTP_STATUS = {"type": "object", "required": ["enabled"],
               "properties": {"enabled": {"type": "boolean"},
                              "recovery_left": {"type": "integer"}}}

ROUTES: tuple[Route, ...] = (
    Route("GET", "/members/{address}/app-passwords", list_app_passwords,
          "App passwords of a member or business mailbox (never the passwords)", "login",
          params=_ADDR, response=S.list_of(APP_PASSWORD)),
    Route("POST", "/members/{address}/app-passwords", add_app_password,
          "New app password, shown only in this answer; for a business mailbox name the "
          "assigned member it is made by", "login", status=201, params=_ADDR,
          body=APP_PASSWORD_CREATE, response=APP_PASSWORD),
    Route("DELETE", "/members/{address}/app-passwords/{name}", revoke_app_password,
          "Revoke an app password (the next login with it fails)", "login", status=204,
          params=_APP),
    Route("POST", "/members/{address}/secure-login", set_secure_login,
          "Turn a member's secure login on or off", "login", params=_ADDR,
          body=SECURE_LOGIN_SET, response=SECURE_LOGIN),
    Route("GET", "/login-policy", get_login_policy,
          "Forced secure login, allowed networks, protocol switches", "login",
          response=POLICY),
    Route("PATCH", "/login-policy", update_login_policy,
          "Change the login rules: each part given replaces the old one", "login",
          body=POLICY_UPDATE, response=POLICY),
    Route("GET", "/logins", list_logins, "The login log, newest first (format=csv: as CSV)",
          "login", response=S.page_or_csv(LOGIN_ENTRY), query={
              **_PAGE, "account": S.ADDRESS, "since": S.EPOCH, "until": S.EPOCH,
              "ip": S._str(64, 2, anyOf=[{"format": "ipv4"}, {"format": "ipv6"}]),
              "result": {"type": "string", "enum": ["ok", "fail"]},
              "format": {"type": "string", "enum": ["json", "csv"]}}),
    Route("GET", "/logins/activity", login_activity,
          "Members who have (logged_in=true) or have not logged in within `days` days",
          "login", response=S.list_of(ACTIVITY), query={
              "days": {"type": "integer", "minimum": 0, "maximum": 3650, "default": 30},
              "logged_in": {"type": "boolean", "default": False}}),
    Route("GET", "/me/app-passwords", my_app_passwords,
          "Your app passwords (also those for business mailboxes you made)", "me",
          response=S.list_of(APP_PASSWORD)),
    Route("POST", "/me/app-passwords", add_my_app_password,
          "New app password, shown only in this answer", "me", status=201,
          body=MY_APP_PASSWORD_CREATE, response=APP_PASSWORD),
    Route("DELETE", "/me/app-passwords/{name}", revoke_my_app_password,
          "Revoke one of your app passwords", "me", status=204,
          params={"name": S._str(100, 1)}, query={"mailbox": S.ADDRESS}),
    Route("GET", "/me/secure-login", get_my_secure_login,
          "Your secure login, and whether your administrator forces it", "me",
          response=SECURE_LOGIN),
    Route("POST", "/me/secure-login", set_my_secure_login,
          "Turn secure login on or off: on, mail clients need app passwords", "me",
          body=SECURE_LOGIN_SET, response=SECURE_LOGIN),
    Route("GET", "/me/totp", get_my_totp, "Your second factor: on or off", "me",
          response=TOTP_STATUS),
    Route("POST", "/me/totp", begin_my_totp,
          "Start enrolling: a TOTP secret and its otpauth:// URI (off until confirmed)", "me",
          status=201, response={"type": "object", "required": ["secret", "uri"]}),
    Route("POST", "/me/totp/confirm", confirm_my_totp,
          "Turn the second factor on with a first code: recovery codes, shown once", "me",
          body=_CODE, response={"type": "object", "required": ["recovery_codes"]}),
    Route("POST", "/me/totp/disable", disable_my_totp,
          "Turn the second factor off (a current code or a recovery code)", "me",
          status=204, body=_CODE),
    Route("POST", "/members/{address}/totp/reset", reset_totp,
          "Turn a member's second factor off (a lost phone)", "login", status=204,
          params=_ADDR),
    Route("GET", "/me/logins", my_logins, "Your own logins, newest first", "me",
          response=S.page_of(LOGIN_ENTRY), query=_PAGE),
)
