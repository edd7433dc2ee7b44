"""`exmailctl apppass ...`, `user set ... --secure-login`, `log logins` and
`login-policy ...` (issue #14). Hooked into exmaild/cli.py's parser by
`add_parsers`; handlers register through the caller's `command` decorator
(exmailctl runs as __main__, so importing exmaild.cli here would make a
second registry). Every rule lives in exmaild/auth/service.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from exmaild.auth.service import LoginSecurity
from exmaild.directory.errors import Invalid


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _sec(store: Any) -> LoginSecurity:
    from exmaild.directory.service import DirectoryService

    return LoginSecurity(DirectoryService(store, store.cfg.directory))


def _actor() -> Any:
    import getpass

    from exmaild.directory.actor import Actor

    try:
        who = getpass.getuser()
    except Exception:
        who = "?"
    return Actor(f"cli:{who}", ip="local")


def _when(t: int | None) -> str:
    if t is None:
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _on(text: str) -> bool:
    return text == "on"


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


async def apppass_add(store: Any, a: argparse.Namespace) -> int:
    _info, password = await _sec(store).add_app_password(_actor(), a.address, a.name, by=a.by)
    _out(password)  # only the password: scripts read it
    return 0


async def apppass_list(store: Any, a: argparse.Namespace) -> int:
    for p in await _sec(store).list_app_passwords(_actor(), a.address):
        _out(f"{p['name']}\t{_when(p['created'])}\t{_when(p['last_used'])}\t{p['created_by']}")
    return 0


async def apppass_revoke(store: Any, a: argparse.Namespace) -> int:
    await _sec(store).revoke_app_password(_actor(), a.address, a.name)
    _out(f"{a.address.lower()}: app password {a.name!r} revoked")
    return 0


async def user_set(store: Any, a: argparse.Namespace) -> int:
    if a.secure_login is None:
        raise Invalid("nothing to set (--secure-login on|off)")
    r = await _sec(store).set_secure_login(_actor(), a.address, _on(a.secure_login))
    forced = " (also forced by the enterprise's login policy)" if r["forced"] else ""
    _out(f"{r['address']}: secure login {a.secure_login}{forced}")
    return 0


async def log_logins(store: Any, a: argparse.Namespace) -> int:
    since = None
    if a.since:
        try:
            day = dt.date.fromisoformat(a.since)
        except ValueError:
            raise Invalid(f"--since {a.since!r}: use YYYY-MM-DD") from None
        since = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    page = await _sec(store).login_log(_actor(), account=a.account, since=since,
                                       result=a.result, limit=a.limit,
                                       enterprise=a.enterprise)
    for e in reversed(page["items"]):  # oldest first, like a log file
        _out("\t".join((_when(e["time"]), e["account"], e["ip"], e["protocol"], e["method"],
                        e["result"], e["reason"])))
    return 0


async def policy_show(store: Any, a: argparse.Namespace) -> int:
    _out(json.dumps(await _sec(store).get_policy(_actor(), a.enterprise), indent=2,
                    ensure_ascii=False))
    return 0


def _protocol_rule(cur: dict[str, Any], rule: str) -> None:
    """`everyone:imap=off`, `dept:Sales/East:pop=on`, `member:a@b:imap=default`."""
    where, _, setting = rule.rpartition(":")
    proto, _, value = setting.partition("=")
    scope, _, target = where.partition(":")
    if proto not in ("imap", "pop") or value not in ("on", "off", "default") or (
            scope not in ("everyone", "dept", "member")) or (scope != "everyone") != bool(
            target):
        raise Invalid(f"--protocol {rule!r}: use everyone:imap=off, dept:PATH:pop=on or "
                         "member:ADDRESS:imap=default")
    if scope == "everyone":
        rules = cur["everyone"]
    else:
        rules = cur["departments" if scope == "dept" else "members"].setdefault(target, {})
    if value == "default":
        rules.pop(proto, None)
    else:
        rules[proto] = value == "on"


async def policy_set(store: Any, a: argparse.Namespace) -> int:
    sec = _sec(store)
    changes: dict[str, Any] = {}
    sl: dict[str, Any] = {}
    if a.secure_login_everyone is not None:
        sl["everyone"] = _on(a.secure_login_everyone)
    if a.secure_login_members is not None:
        sl["members"] = _list(a.secure_login_members)
    if a.secure_login_depts is not None:
        sl["departments"] = _list(a.secure_login_depts)
    if sl:
        changes["secure_login"] = sl
    if a.ip_allow is not None:
        changes["ip_allow"] = _list(a.ip_allow)
    if a.ip_exempt is not None:
        changes["ip_exempt"] = _list(a.ip_exempt)
    if a.protocol or a.members_may_change is not None:
        cur = (await sec.get_policy(_actor(), a.enterprise))["protocols"]
        for rule in a.protocol or ():
            _protocol_rule(cur, rule)
        if a.members_may_change is not None:
            cur["members_may_change"] = _on(a.members_may_change)
        changes["protocols"] = cur
    if a.admin_totp is not None:
        changes["admin_totp"] = _on(a.admin_totp)
    if not changes:
        raise Invalid("nothing to set (see exmailctl login-policy set --help)")
    await sec.update_policy(_actor(), changes, a.enterprise)
    _out("login policy updated")
    return 0


def add_parsers(sub: Any, usr: Any, log: Any, command: Callable[..., Any]) -> None:
    onoff = ("on", "off")
    ap = sub.add_parser("apppass", help="app passwords (client-specific passwords)")
    ap = ap.add_subparsers(dest="cmd", required=True)
    aa = ap.add_parser("add", help="prints only the new password")
    aa.add_argument("address")
    aa.add_argument("name")
    aa.add_argument("--by", metavar="MEMBER",
                    help="for a business mailbox: the assigned member it is made by")
    ap.add_parser("list").add_argument("address")
    ar = ap.add_parser("revoke")
    ar.add_argument("address")
    ar.add_argument("name")

    us = usr.add_parser("set", help="a member's login settings")
    us.add_argument("address")
    us.add_argument("--secure-login", choices=onoff,
                    help="on: mail clients log in only with app passwords")

    ll = log.add_parser("logins", help="the login log: time, account, source IP, protocol, "
                        "method, result, reason (tab-separated, oldest first)")
    ll.add_argument("--account", metavar="ADDRESS")
    ll.add_argument("--since", metavar="YYYY-MM-DD", help="from this day (UTC) on")
    ll.add_argument("--result", choices=("ok", "fail"))
    ll.add_argument("--limit", type=int, default=1000, help="newest attempts shown")
    ll.add_argument("--enterprise")

    lp = sub.add_parser("login-policy", help="an enterprise's login rules")
    lp = lp.add_subparsers(dest="cmd", required=True)
    lp.add_parser("show").add_argument("--enterprise")
    ls = lp.add_parser("set", help="each option given replaces that part of the policy")
    ls.add_argument("--enterprise")
    ls.add_argument("--secure-login-everyone", choices=onoff)
    ls.add_argument("--secure-login-members", metavar="ADDR,...",
                    help="members forced to secure login ('' for none)")
    ls.add_argument("--secure-login-depts", metavar="PATH,...",
                    help="departments (with sub-departments) forced to secure login")
    ls.add_argument("--ip-allow", metavar="CIDR,...",
                    help="networks logins may come from ('' for anywhere)")
    ls.add_argument("--ip-exempt", metavar="ADDR,...", help="members allowed from anywhere")
    ls.add_argument("--protocol", action="append", metavar="RULE",
                    help="everyone:imap=off, dept:PATH:pop=on, member:ADDR:imap=default")
    ls.add_argument("--admin-totp", choices=onoff,
                    help="administrators need a second factor (TOTP) for API logins")
    ls.add_argument("--members-may-change", choices=onoff,
                    help="may members change their own IMAP/POP switches")

    for (group, name), fn in {
        ("apppass", "add"): apppass_add, ("apppass", "list"): apppass_list,
        ("apppass", "revoke"): apppass_revoke, ("user", "set"): user_set,
        ("log", "logins"): log_logins, ("login-policy", "show"): policy_show,
        ("login-policy", "set"): policy_set,
    }.items():
        command(group, name)(fn)
