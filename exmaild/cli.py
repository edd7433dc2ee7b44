"""exmailctl: the administrator's command line.

Each command runs against the same store the daemon uses, through the same
components, on a short-lived reactor.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, task

from exmaild.auth.passwords import WeakPassword, check_policy, hash_password
from exmaild.config import Config, ConfigError, load_config
from exmaild.mailauth import cli as dkim_cli
from exmaild.store import schema
from exmaild.store.connector import Store
from exmaild.store.directory import DirectoryError, normalise_address

Handler = Callable[[Store, argparse.Namespace], Awaitable[int]]
_COMMANDS: dict[tuple[str, str], Handler] = {}


class CLIError(Exception):
    pass


def command(group: str, name: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        _COMMANDS[(group, name)] = fn
        return fn

    return deco


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")


# -- domains ---------------------------------------------------------------
@command("domain", "add")
async def domain_add(store: Store, a: argparse.Namespace) -> int:
    d = await store.directory.add_domain(a.name)
    out(f"domain {d.name} added")
    return 0


@command("domain", "list")
async def domain_list(store: Store, a: argparse.Namespace) -> int:
    for d in await store.directory.list_domains():
        out(d.name)
    return 0


@command("domain", "remove")
async def domain_remove(store: Store, a: argparse.Namespace) -> int:
    n = await store.directory.remove_domain(a.name, with_accounts=a.with_accounts)
    out(f"domain {a.name} removed" + (f" with {n} account(s)" if n else ""))
    return 0


# -- users -----------------------------------------------------------------
def _read_password(a: argparse.Namespace, address: str) -> str:
    if a.password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    elif a.password is not None:
        pw = a.password
    elif sys.stdin.isatty():
        pw = getpass.getpass(f"password for {address}: ")
    else:
        raise CLIError("give --password or --password-stdin")
    try:
        check_policy(pw, address)
    except WeakPassword as e:
        raise CLIError(f"weak password: {e}") from None
    return pw


@command("user", "add")
async def user_add(store: Store, a: argparse.Namespace) -> int:
    local, domain = normalise_address(a.address)
    address = f"{local}@{domain}"
    if await store.directory.get_domain(domain) is None:
        raise CLIError(f"unknown domain {domain}: add it with `exmailctl domain add {domain}`")
    pw = _read_password(a, address)
    pw_hash = await store.pool.call(hash_password, pw)
    acct = await store.directory.add_account(
        address, pw_hash, vip=a.vip, display_name=a.name or "",
        quota_bytes=_parse_size(a.quota) if a.quota else 0,
    )
    out(f"user {acct.address} added" + (" (VIP)" if acct.vip else ""))
    return 0


@command("user", "list")
async def user_list(store: Store, a: argparse.Namespace) -> int:
    for acct in await store.directory.list_accounts(a.domain):
        flags = []
        if acct.vip:
            flags.append("vip")
        if not acct.enabled:
            flags.append("disabled")
        quota = f"{acct.used_bytes}/{acct.quota_bytes or 'unlimited'}"
        out(f"{acct.address}\t{acct.message_count} msgs\t{quota} bytes\t{','.join(flags)}")
    return 0


@command("user", "passwd")
async def user_passwd(store: Store, a: argparse.Namespace) -> int:
    acct = await store.directory.get_account(a.address)
    if acct is None or acct.address != a.address.lower():
        raise CLIError(f"unknown user {a.address}")
    pw = _read_password(a, acct.address)
    await store.directory.set_password(acct.address, await store.pool.call(hash_password, pw))
    out(f"password of {acct.address} changed")
    return 0


@command("user", "remove")
async def user_remove(store: Store, a: argparse.Namespace) -> int:
    await store.directory.remove_account(a.address)
    out(f"user {a.address.lower()} removed")
    return 0


@command("blobs", "compact")
async def blobs_compact(store: Store, a: argparse.Namespace) -> int:
    s = await store.compact()
    out(
        f"removed {s.segments_removed} segment(s), moved {s.blobs_moved} blob(s), "
        f"reclaimed {s.bytes_reclaimed} bytes"
    )
    return 0


# -- outbound queue --------------------------------------------------------
@command("queue", "list")
async def queue_list(store: Store, a: argparse.Namespace) -> int:
    from exmaild.queue import admin

    for line in admin.format_list(await admin.list_queue(store, include_finished=a.all)):
        out(line)
    return 0


@command("queue", "show")
async def queue_show(store: Store, a: argparse.Namespace) -> int:
    from exmaild.queue import admin

    found = await admin.show(store, a.queue_id)
    if found is None:
        raise CLIError(f"no message {a.queue_id} in the queue")
    for line in admin.format_show(*found):
        out(line)
    return 0


@command("queue", "retry")
async def queue_retry(store: Store, a: argparse.Namespace) -> int:
    from exmaild.queue import admin

    n = await admin.retry(store, a.queue_id)
    if n is None:
        raise CLIError(f"no message {a.queue_id} in the queue")
    out(f"{a.queue_id.upper()}: {n} recipient(s) due now")
    return 0


@command("queue", "flush")
async def queue_flush(store: Store, a: argparse.Namespace) -> int:
    from exmaild.queue import admin

    n = await admin.retry(store, None)
    out(f"{n} recipient(s) due now")
    return 0


@command("queue", "delete")
async def queue_delete(store: Store, a: argparse.Namespace) -> int:
    from exmaild.queue import admin

    if not await admin.delete(store, a.queue_id):
        raise CLIError(f"no message {a.queue_id} in the queue")
    out(f"{a.queue_id.upper()}: removed")
    return 0


def _parse_size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
    t = text.strip().lower().removesuffix("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise CLIError(f"bad size {text!r} (use e.g. 2G, 500M)") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exmailctl", description="Administer an exmaild server.")
    p.add_argument("--config", "-c", help="TOML configuration (default: embedded, ./var)")
    sub = p.add_subparsers(dest="group", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    db.add_parser("upgrade", help="upgrade the schema to this version")
    db.add_parser("status", help="show the schema revision")

    dom = sub.add_parser("domain", help="hosted domains").add_subparsers(dest="cmd", required=True)
    dom.add_parser("add").add_argument("name")
    dom.add_parser("list")
    rm = dom.add_parser("remove")
    rm.add_argument("name")
    rm.add_argument("--with-accounts", action="store_true",
                    help="also remove the domain's accounts and their mail")

    usr = sub.add_parser("user", help="member accounts").add_subparsers(dest="cmd", required=True)
    add = usr.add_parser("add")
    add.add_argument("address")
    add.add_argument("--vip", action="store_true")
    add.add_argument("--name", help="display name")
    add.add_argument("--quota", help="mailbox quota, e.g. 2G (default: unlimited)")
    for sp in (add, usr.add_parser("passwd")):
        if sp is not add:
            sp.add_argument("address")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--password", help="the password (visible to other users: prefer stdin)")
        g.add_argument("--password-stdin", action="store_true", help="read one line from stdin")
    lst = usr.add_parser("list")
    lst.add_argument("domain", nargs="?")
    usr.add_parser("remove").add_argument("address")

    bl = sub.add_parser("blobs", help="message blob store")
    bl = bl.add_subparsers(dest="cmd", required=True)
    bl.add_parser("compact", help="reclaim space of deleted mail")

    qu = sub.add_parser("queue", help="outbound mail queue")
    qu = qu.add_subparsers(dest="cmd", required=True)
    ql = qu.add_parser("list", help="messages waiting for delivery (like mailq)")
    ql.add_argument("--all", action="store_true",
                    help="also finished messages kept for delivery status")
    qu.add_parser("show", help="envelope, recipient status and header").add_argument("queue_id")
    qu.add_parser("retry", help="try a message again now").add_argument("queue_id")
    qu.add_parser("delete", help="remove a message without a DSN").add_argument("queue_id")
    qu.add_parser("flush", help="try every waiting message now")
    dkim_cli.add_parsers(sub, command)
    return p


def _db_command(cfg: Config, cmd: str) -> int:
    store = Store(cfg, reactor=None)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    before = schema.current_revision(store.engine)
    head = schema.head_revision()
    if cmd == "status":
        out(f"schema revision {before or 'none'} (this version needs {head})")
        return 0 if before == head else 1
    schema.upgrade(store.engine)
    out(f"schema upgraded from {before or 'empty'} to {head}" if before != head
        else f"schema already at {head}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        for err in e.errors:
            sys.stderr.write(f"exmailctl: {err}\n")
        return 2
    if args.group == "db":
        return _db_command(cfg, args.cmd)
    handler = _COMMANDS[(args.group, args.cmd)]
    result = {"rc": 1}

    async def run(reactor: Any) -> None:
        store = Store(cfg, reactor)
        try:
            store.open()
            store.startService()
            try:
                result["rc"] = await handler(store, args)
            finally:
                store.stopService()
        except (CLIError, DirectoryError, schema.SchemaError) as e:
            sys.stderr.write(f"exmailctl: {e}\n")
            result["rc"] = 1

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit:
        pass
    return result["rc"]


if __name__ == "__main__":
    sys.exit(main())
