"""`exmailctl sieve put|activate|get|list|delete ADDRESS ...`: a member's Sieve
scripts, with the same checks as ManageSieve's PUTSCRIPT."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exmaild.sieve import rules as R
from exmaild.sieve import senders
from exmaild.sieve.scripts import ScriptError, ScriptStore


def _err(msg: str) -> int:
    sys.stderr.write("exmailctl: " + " | ".join(msg.splitlines()) + "\n")
    return 1


async def _account(store: Any, address: str) -> int | None:
    acct = await store.directory.get_account(address)
    return None if acct is None else acct.id


async def _run(store: Any, a: argparse.Namespace) -> int:
    aid = await _account(store, a.address)
    if aid is None:
        return _err(f"no account {a.address}")
    scripts = ScriptStore(store.pool, store.cfg.sieve)
    try:
        if a.cmd == "put":
            try:
                data = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
                text = data.decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                return _err(f"cannot read {a.file}: {e}")
            await scripts.put(aid, a.name, text)
            sys.stdout.write(f"script {a.name} stored for {a.address}\n")
        elif a.cmd == "activate":
            await scripts.activate(aid, a.name)
            sys.stdout.write(f"script {a.name} active for {a.address}\n" if a.name
                             else f"no script active for {a.address}\n")
        elif a.cmd == "get":
            text = await scripts.get(aid, a.name)
            if text is None:
                return _err(f"no script named {a.name!r} for {a.address}")
            if a.output:  # export as a file, as `sieve put` imports one
                try:
                    Path(a.output).write_bytes(text.encode("utf-8"))
                except OSError as e:
                    return _err(f"cannot write {a.output}: {e}")
            else:
                sys.stdout.write(text)
        elif a.cmd == "list":
            for s in await scripts.list(aid):
                sys.stdout.write(s.name + ("\tactive" if s.active else "") + "\n")
        elif a.cmd == "delete":
            await scripts.delete(aid, a.name)
            sys.stdout.write(f"script {a.name} deleted\n")
    except ScriptError as e:
        return _err(str(e))
    return 0


async def _filter(store: Any, a: argparse.Namespace) -> int:
    aid = await _account(store, a.address)
    if aid is None:
        return _err(f"no account {a.address}")
    try:
        if a.cmd == "add":
            action = "refuse" if a.refuse else "junk"
            p = await store.pool.transaction(
                lambda c: senders.add(c, aid, a.list, a.pattern, action))
            sys.stdout.write(f"{p} added to the {a.list} list of {a.address}"
                             + (f" ({action})" if a.list == "block" else "") + "\n")
        elif a.cmd == "remove":
            await store.pool.transaction(lambda c: senders.remove(c, aid, a.list, a.pattern))
            sys.stdout.write(f"{a.pattern} removed from the {a.list} list\n")
        else:
            for e in await store.pool.do(lambda c: senders.entries(c, aid)):
                sys.stdout.write(f"{e.list}\t{e.pattern}"
                                 + (f"\t{e.action}" if e.list == "block" else "") + "\n")
    except senders.FilterError as e:
        return _err(str(e))
    return 0


async def _enterprise_filter(store: Any, a: argparse.Namespace) -> int:
    """`exmailctl filter enterprise-add|-remove|-list`: the enterprise's
    inbound filters (manual §4.4.4); errors reach the CLI's handler."""
    from exmaild.cli import _actor, _svc
    from exmaild.sieve.entfilters import EnterpriseFilters

    ef = EnterpriseFilters(_svc(store))
    if a.cmd == "enterprise-add":
        e = await ef.add(_actor(), a.kind, a.pattern, "refuse" if a.refuse else "junk",
                         a.enterprise)
        sys.stdout.write(f"{e['kind']} {e['pattern']} ({e['action']}) added\n")
    elif a.cmd == "enterprise-remove":
        await ef.remove(_actor(), a.kind, a.pattern, a.enterprise)
        sys.stdout.write(f"{a.kind} {a.pattern} removed\n")
    else:
        for e in await ef.list(_actor(), a.enterprise):
            sys.stdout.write(f"{e['kind']}\t{e['pattern']}\t{e['action']}\n")
    return 0


async def _rules(store: Any, a: argparse.Namespace) -> int:
    acct = await store.directory.get_account(a.address)
    if acct is None:
        return _err(f"no account {a.address}")
    scripts = ScriptStore(store.pool, store.cfg.sieve)
    try:
        rules = await R.load(scripts, acct.id, acct.address)
        if a.cmd == "list":
            for n, r in enumerate(rules, 1):
                sys.stdout.write(f"{n}\t{'on' if r.data.get('enabled', True) else 'off'}\t"
                                 f"{r.data.get('name', '')}"
                                 + ("\tsend" if r.data.get("kind") == "send" else "")
                                 + ("\tcustom" if r.custom else "") + "\n")
            return 0
        if a.cmd == "run":
            from exmaild.sieve.apply import apply_rule

            if not 1 <= a.number <= len(rules):
                return _err(f"no rule {a.number}")
            from exmaild.sieve.delivery import zone_of

            done = await apply_rule(store, acct, rules[a.number - 1].data, a.folder,
                                    zone=zone_of(store.cfg))
            sys.stdout.write(
                f"{done.examined} examined, {done.matched} matched: {done.moved} moved, "
                f"{done.copied} copied, {done.flagged} flagged, {done.deleted} deleted"
                + (f", {done.failed} failed" if done.failed else "") + "\n")
            return 0
        if a.cmd == "show":
            sys.stdout.write(json.dumps([r.data for r in rules], ensure_ascii=False,
                                        indent=2) + "\n")
            return 0
        if a.cmd == "add":
            try:
                data = json.loads(a.rule)
            except ValueError as e:
                return _err(f"the rule is not JSON: {e}")
            if not isinstance(data, dict):
                return _err("the rule is a JSON object")
            R.compile_rule(data, acct.address)  # refuse a bad rule before anything
            rules.append(R.Rule(data))
        else:
            if not 1 <= a.number <= len(rules):
                return _err(f"no rule {a.number}")
            if a.cmd == "remove":
                del rules[a.number - 1]
            else:
                rules[a.number - 1].data["enabled"] = a.cmd == "enable"
        await R.save(scripts, acct.id, acct.address, rules)
        sys.stdout.write(f"{len(rules)} rule(s) saved for {acct.address}\n")
    except (R.RuleError, ScriptError) as e:
        return _err(str(e))
    return 0


def add_parsers(sub: Any, command: Callable[[str, str], Callable[[Any], Any]]) -> None:
    sv = sub.add_parser("sieve", help="members' Sieve scripts (filters, vacation)")
    sv = sv.add_subparsers(dest="cmd", required=True)
    put = sv.add_parser("put", help="store a script from FILE ('-': stdin), checked first")
    put.add_argument("address")
    put.add_argument("name")
    put.add_argument("file")
    act = sv.add_parser("activate", help="make NAME the script run at delivery ('' for none)")
    act.add_argument("address")
    act.add_argument("name")
    get = sv.add_parser("get", help="print a script (or write it to --output FILE)")
    get.add_argument("address")
    get.add_argument("name")
    get.add_argument("--output", "-o", metavar="FILE", help="write the script to FILE")
    sv.add_parser("list", help="the member's scripts; the active one is marked").add_argument(
        "address")
    rm = sv.add_parser("delete", help="delete a script that is not active")
    rm.add_argument("address")
    rm.add_argument("name")
    for name in ("put", "activate", "get", "list", "delete"):
        command("sieve", name)(_run)

    fl = sub.add_parser("filter", help="a member's blocked and allowed senders (manual §5.6.1)")
    fl = fl.add_subparsers(dest="cmd", required=True)
    fa = fl.add_parser("add", help="block (to Junk, or --refuse) or allow an address or domain")
    fa.add_argument("address")
    fa.add_argument("list", choices=senders.LISTS)
    fa.add_argument("pattern", help="user@example.com, or a domain: example.com")
    fa.add_argument("--refuse", action="store_true",
                    help="blocked mail is refused (550) instead of filed to Junk")
    fr = fl.add_parser("remove")
    fr.add_argument("address")
    fr.add_argument("list", choices=senders.LISTS)
    fr.add_argument("pattern")
    fl.add_parser("list", help="list, pattern and action, one a line").add_argument("address")
    for name in ("add", "remove", "list"):
        command("filter", name)(_filter)
    from exmaild.sieve.entfilters import KINDS

    ea = fl.add_parser("enterprise-add", help="the enterprise's inbound filter: block or "
                       "allow an address or domain, or a subject keyword (to Junk, or --refuse)")
    ea.add_argument("kind", choices=KINDS)
    ea.add_argument("pattern", help="user@example.com, example.com, or a keyword")
    ea.add_argument("--refuse", action="store_true", help="refuse (550) instead of Junk")
    er = fl.add_parser("enterprise-remove", help="remove an enterprise filter")
    er.add_argument("kind", choices=KINDS)
    er.add_argument("pattern")
    el = fl.add_parser("enterprise-list", help="the enterprise's filters: kind, pattern, action")
    for p in (ea, er, el):
        p.add_argument("--enterprise", help="the enterprise (needed when there are several)")
    for name in ("enterprise-add", "enterprise-remove", "enterprise-list"):
        command("filter", name)(_enterprise_filter)
    from exmaild.sieve import admincli

    admincli.add_parsers(fl, command)  # catch-all and backup rules

    ru = sub.add_parser("rules", help="a member's receive rules (kept as Sieve: exmail-rules)")
    ru = ru.add_subparsers(dest="cmd", required=True)
    ru.add_parser("list", help="number, on/off, name (custom: edited in Sieve)").add_argument(
        "address")
    ru.add_parser("show", help="the rules as JSON").add_argument("address")
    ra = ru.add_parser("add", help="append a rule given as JSON (docs/sieve.md)")
    ra.add_argument("address")
    ra.add_argument("rule")
    for verb in ("remove", "enable", "disable"):
        rp = ru.add_parser(verb)
        rp.add_argument("address")
        rp.add_argument("number", type=int)
    rr = ru.add_parser("run", help="apply rule NUMBER to the mail stored in FOLDER now")
    rr.add_argument("address")
    rr.add_argument("number", type=int)
    rr.add_argument("folder")
    for name in ("list", "show", "add", "remove", "enable", "disable", "run"):
        command("rules", name)(_rules)
