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

from exmaild import __version__
from exmaild.auth.passwords import WeakPassword, check_policy, hash_password
from exmaild.clifmt import human_size, table
from exmaild.config import Config, ConfigError, load_config
from exmaild.configfind import describe, find_config
from exmaild.errors import StartupError, report
from exmaild.startup_checks import check_database, safe_url, sqlite_path
from exmaild.store import schema
from exmaild.store.connector import Store
from exmaild.store.directory import DirectoryError, normalise_address, normalise_domain

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
    if not a.with_accounts:
        accounts = await store.directory.list_accounts(normalise_domain(a.name))
        if accounts:
            raise CLIError(
                f"domain {a.name} still has {len(accounts)} account(s); add --with-accounts "
                "to remove them and their mail with the domain"
            )
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
    out(f"account {acct.address} added" + (" (VIP)" if acct.vip else ""))
    return 0


@command("user", "list")
async def user_list(store: Store, a: argparse.Namespace) -> int:
    accounts = await store.directory.list_accounts(a.domain)
    if not accounts:
        out(f"no accounts in {a.domain}" if a.domain else "no accounts")
        return 0
    rows = []
    for acct in accounts:
        flags = ["vip"] * acct.vip + ["disabled"] * (not acct.enabled)
        rows.append([
            acct.address, acct.display_name or "-", str(acct.message_count),
            human_size(acct.used_bytes),
            human_size(acct.quota_bytes) if acct.quota_bytes else "unlimited",
            ",".join(flags) or "-",
        ])
    for line in table(["ADDRESS", "NAME", "MESSAGES", "USED", "QUOTA", "FLAGS"], rows):
        out(line)
    return 0


@command("user", "passwd")
async def user_passwd(store: Store, a: argparse.Namespace) -> int:
    acct = await store.directory.get_account(a.address)
    if acct is None or acct.address != a.address.lower():
        raise CLIError(f"unknown account {a.address}")
    pw = _read_password(a, acct.address)
    await store.directory.set_password(acct.address, await store.pool.call(hash_password, pw))
    out(f"password of {acct.address} changed")
    return 0


@command("user", "remove")
async def user_remove(store: Store, a: argparse.Namespace) -> int:
    await store.directory.remove_account(a.address)
    out(f"account {a.address.lower()} removed")
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
    p.add_argument("--version", action="version", version=f"exmailctl (exmaild) {__version__}")
    p.add_argument("--config", "-c", help="TOML configuration (default: $EXMAILD_CONFIG, "
                   "./exmaild.toml, /etc/exmaild/exmaild.toml, else embedded with data in ./var)")
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
    return p


def _db_command(cfg: Config, cmd: str, created: bool) -> int:
    store = Store(cfg, reactor=None)
    if cmd != "status":
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    before = schema.current_revision(store.engine)
    head = schema.head_revision()
    if cmd == "status":
        out(f"config:   {describe(cfg.source or None)}")
        out(f"database: {safe_url(cfg.database_url)}")
        out(f"data:     {cfg.data_dir}")
        out(f"schema:   {before or 'none'}" + (
            " (current)" if before == head
            else f" (this version needs {head}: run `exmailctl db upgrade`)"))
        return 0 if before == head else 1
    schema.upgrade(store.engine)
    if created:
        return 0
    out(f"schema upgraded from {before or 'empty'} to {head}" if before != head
        else f"schema already at {head}")
    return 0


# Commands (by their last word) that only read: they never create a database,
# and name the one they looked for when there is none.
READ_ONLY_COMMANDS = frozenset({"list", "show", "status", "verify"})


def _announce_created(cfg: Config) -> None:
    """The one line a writing command says when it made the database."""
    path = sqlite_path(cfg)
    where = (f"a new database at {path}" if path is not None
             else f"the exmaild tables in {safe_url(cfg.database_url)}")
    sys.stderr.write(f"exmailctl: created {where}\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(find_config(args.config))
    except ConfigError as e:
        for err in e.errors:
            sys.stderr.write(f"exmailctl: {err}\n")
        return 2
    read_only = getattr(args, "cmd", None) in READ_ONLY_COMMANDS
    try:
        created = check_database(cfg, create=not read_only) == "missing"
    except StartupError as e:
        return report("exmailctl", e)
    if args.group == "db":
        rc = _db_command(cfg, args.cmd, created)
        if created:
            _announce_created(cfg)
        return rc
    handler = _COMMANDS[(args.group, args.cmd)]
    result = {"rc": 1}

    async def run(reactor: Any) -> None:
        store = Store(cfg, reactor)
        try:
            store.open()
            if created:
                _announce_created(cfg)
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
