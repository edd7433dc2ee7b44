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
from exmaild.auth import passwords
from exmaild.auth.passwords import WeakPassword, check_policy
from exmaild.clifmt import human_size, table
from exmaild.cliprogress import with_progress
from exmaild.config import Config, ConfigError, load_config
from exmaild.configfind import describe, find_config
from exmaild.directory.authdns import cli_lines
from exmaild.directory.errors import Conflict, NotFound, ServiceError
from exmaild.errors import StartupError, report
from exmaild.mailauth import cli as dkim_cli
from exmaild.mailauth import entpolicy
from exmaild.startup_checks import check_database, safe_url, sqlite_path
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
    d = await _svc(store).add_domain(_actor(), a.name, a.enterprise)
    out(f"domain {d['name']} added" + (f" to {d['enterprise']}" if a.enterprise else ""))
    return 0


@command("domain", "list")
async def domain_list(store: Store, a: argparse.Namespace) -> int:
    if a.enterprise:
        for d in await _svc(store).list_domains(_actor(), a.enterprise):
            out(d["name"] + ("\tprimary" if d["primary"] else ""))
        return 0
    for dom in await store.directory.list_domains():
        out(dom.name)
    return 0


@command("domain", "primary")
async def domain_primary(store: Store, a: argparse.Namespace) -> int:
    d = await _svc(store).set_primary_domain(_actor(), a.name)
    out(f"domain {d['name']} is the primary domain of {d['enterprise']}")
    return 0


@command("domain", "check")
async def domain_check(store: Store, a: argparse.Namespace) -> int:
    r = await _svc(store).check_domain(_actor(), a.name)
    f, want = r["found"], r["required"]
    out(f"status\t{r['status']}" + (f"\t{r['error']}" if r["error"] else ""))
    out(f"mx found\t{', '.join(f.get('mx', [])) or '-'}")
    out(f"mx to set\t{a.name} MX {want['mx'][0]}")
    out(f"spf found\t{' | '.join(f.get('spf', [])) or '-'}")
    out(f"spf to set\t{a.name} TXT \"{want['spf']}\"")
    out(f"token found\t{'yes' if f.get('token') else 'no'}")
    out(f"token to set\t{a.name} TXT \"{want['txt']}\"")
    for line in cli_lines(r.get("auth")):  # DKIM, SPF, DMARC state
        out(line)
    return 0


@command("domain", "remove")
async def domain_remove(store: Store, a: argparse.Namespace) -> int:
    svc, actor = _svc(store), _actor()
    ent = await _enterprise_of_domain(store, a.name)
    try:
        n = await svc.remove_domain(actor, a.name, confirm=a.with_accounts, enterprise=ent)
    except Conflict as e:  # the CLI's way to confirm is a flag: name it
        raise CLIError(f"{e.message}: add --with-accounts") from None
    out(f"domain {a.name} removed" + (
        f"; {n} account(s) in the recycle bin (to restore one: `domain add "
        f"{a.name.lower()}`, then `recycle restore ADDRESS`)" if n else ""))
    return 0


@command("enterprise", "settings")
async def enterprise_settings(store: Store, a: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if a.display_name:
        changes["display_name"] = a.display_name
    if a.nickname_changeable:
        changes["members_may_change_nickname"] = a.nickname_changeable == "yes"
    if a.welcome:
        changes["welcome"] = a.welcome
    if a.forward_outside:
        changes["forward_outside"] = a.forward_outside == "yes"
    if a.department_groups:
        changes["department_groups"] = a.department_groups == "yes"
    if a.welcome_template_file:
        try:
            with open(a.welcome_template_file, encoding="utf-8") as f:
                changes["welcome_template"] = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read {a.welcome_template_file}: {e}") from None
    for role in ("member", "vip", "shared"):
        size = getattr(a, f"{role}_quota")
        if size is not None:  # "default": back to the server's [directory] setting
            changes[f"{role}_quota_bytes"] = None if size == "default" else _parse_size(size)
    changes.update(entpolicy.cli_changes(a))  # the [mailauth] actions' overrides
    svc = _svc(store)
    if changes:
        cur = await svc.update_enterprise_settings(_actor(), changes, a.enterprise)
    else:
        cur = await svc.get_enterprise_settings(_actor(), a.enterprise)
    for k, v in cur.items():
        if k == "welcome_template":
            v = f"{len(v)} characters" if v else "(none)"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif v is None:
            v = "(server default)"
        out(f"{k}\t{v}")
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
    profile = {k: getattr(a, k) for k in ("name", "nickname", "phone", "title", "gender",
                                          "external_id") if getattr(a, k) is not None}
    if a.quota:
        profile["quota_bytes"] = _parse_size(a.quota)
    m = await _svc(store).add_member(
        _actor(), address, pw, enterprise=a.enterprise, departments=a.dept or [],
        vip=a.vip, **profile,
    )
    out(f"account {m['address']} added" + (" (VIP)" if m["vip"] else ""))
    return 0


@command("user", "show")
async def user_show(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).get_member(_actor(), a.address)
    quota = m["quota_bytes"] or "unlimited"
    for key, value in (
        ("address", m["address"]), ("name", m["name"]), ("nickname", m["nickname"]),
        ("phone", m["phone"]), ("title", m["title"]), ("gender", m["gender"]),
        ("external_id", m["external_id"] or ""), ("vip", "yes" if m["vip"] else "no"),
        ("status", m["status"]),
        ("departments", ", ".join(d["path"] for d in m["departments"])),
        ("aliases", ", ".join(m["aliases"])),
        ("usage", f"{m['used_bytes']}/{quota} bytes, {m['message_count']} messages"),
    ):
        out(f"{key}: {value}")
    return 0


@command("user", "rename")
async def user_rename(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).rename_member(_actor(), a.address, a.new_address)
    out(f"user {a.address.lower()} is now {m['address']} (the old address is an alias)")
    return 0


@command("user", "disable")
async def user_disable(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).set_enabled(_actor(), a.address, False)
    out(f"user {m['address']} disabled")
    return 0


@command("user", "enable")
async def user_enable(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).set_enabled(_actor(), a.address, True)
    out(f"user {m['address']} enabled")
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
    if a.must_change:
        await _svc(store).reset_password(_actor(), acct.address, pw, must_change=True)
        out(f"password of {acct.address} reset: it must be changed at next login")
        return 0
    await _svc(store).update_member(_actor(), acct.address,
                                    {"password": pw, "must_change_password": False})
    out(f"password of {acct.address} changed")
    return 0


@command("user", "remove")
async def user_remove(store: Store, a: argparse.Namespace) -> int:
    try:
        await _svc(store).delete_member(_actor(), a.address)
    except NotFound:
        raise CLIError(f"unknown account {a.address}") from None
    out(f"account {a.address.lower()} moved to the recycle bin")
    return 0


# -- the enterprise directory (exmaild/directory: every rule lives there) ----
def _svc(store: Store) -> Any:
    from exmaild.cli_ops import _ingestor
    from exmaild.directory.service import DirectoryService

    svc = DirectoryService(store, store.cfg.directory)
    # Welcome letters: this process ingests them itself.
    svc.ingestor_factory = lambda: _ingestor(store)
    return svc


def _actor() -> Any:
    from exmaild.directory.actor import Actor

    try:
        who = getpass.getuser()
    except Exception:
        who = "?"
    return Actor(f"cli:{who}", ip="local")


async def _enterprise_of_domain(store: Store, name: str) -> str | None:
    """The enterprise a domain belongs to, so the CLI can name a domain alone."""
    import sqlalchemy as sa

    from exmaild.store import model as m

    q = (sa.select(m.enterprises.c.name).select_from(m.domains.join(m.enterprises))
         .where(m.domains.c.name == name.strip().lower().rstrip(".")))
    return await store.pool.do(lambda conn: conn.execute(q).scalar())


@command("enterprise", "add")
async def enterprise_add(store: Store, a: argparse.Namespace) -> int:
    e = await _svc(store).add_enterprise(_actor(), a.name, a.member_limit, a.vip_seats)
    out(f"enterprise {e['name']} added")
    return 0


@command("enterprise", "list")
async def enterprise_list(store: Store, a: argparse.Namespace) -> int:
    for e in await _svc(store).list_enterprises(_actor()):
        seats = f"{e['vip_used']}/{e['vip_seats'] if e['vip_seats'] is not None else '-'} VIP"
        out(f"{e['name']}\t{e['members']}/{e['member_limit']} members\t{seats}\t"
            f"{' '.join(e['domains'])}")
    return 0


@command("dept", "add")
async def dept_add(store: Store, a: argparse.Namespace) -> int:
    d = await _svc(store).add_department_path(_actor(), a.path, a.enterprise)
    out(f"department {d['path']} added")
    return 0


@command("dept", "list")
async def dept_list(store: Store, a: argparse.Namespace) -> int:
    for d in await _svc(store).list_departments(_actor(), a.enterprise):
        out(f"{d['path']}\t{d['members']} members")
    return 0


@command("dept", "remove")
async def dept_remove(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).delete_department(_actor(), a.path, a.enterprise)
    out(f"department {a.path} removed")
    return 0


@command("dept", "group")
async def dept_group(store: Store, a: argparse.Namespace) -> int:
    g = await _svc(store).add_department_group(_actor(), a.path.strip("/"), a.address,
                                               enterprise=a.enterprise)
    out(f"group {g['address']} follows department {g['department']}")
    return 0


@command("dept", "move")
async def dept_move(store: Store, a: argparse.Namespace) -> int:
    svc, actor = _svc(store), _actor()
    depts = {d["path"]: d["id"] for d in await svc.list_departments(actor, a.enterprise)}
    for path in (a.path, a.parent):
        if path != "/" and path.strip("/") not in depts:
            raise CLIError(f"unknown department {path}")
    parent = None if a.parent == "/" else depts[a.parent.strip("/")]
    d = await svc.update_department(actor, depts[a.path.strip("/")], parent_id=parent)
    out(f"department {a.path} is now {d['path']}")
    return 0


@command("dept", "rename")
async def dept_rename(store: Store, a: argparse.Namespace) -> int:
    svc, actor = _svc(store), _actor()
    depts = {d["path"]: d["id"] for d in await svc.list_departments(actor, a.enterprise)}
    if a.path.strip("/") not in depts:
        raise CLIError(f"unknown department {a.path}")
    d = await svc.update_department(actor, depts[a.path.strip("/")], name=a.name)
    out(f"department {a.path} is now {d['path']}")
    return 0


@command("alias", "add")
async def alias_add(store: Store, a: argparse.Namespace) -> int:
    r = await _svc(store).add_alias(_actor(), a.alias, a.address)
    out(f"alias {r['alias']} added to {r['member']}")
    return 0


@command("alias", "remove")
async def alias_remove(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).remove_alias(_actor(), a.alias)
    out(f"alias {a.alias.lower()} removed")
    return 0


@command("group", "add")
async def group_add(store: Store, a: argparse.Namespace) -> int:
    g = await _svc(store).add_group(
        _actor(), a.address, name=a.name or "", members=a.member or [],
        departments=a.dept or [], groups=a.groups or [], externals=a.external or [],
        allow=a.allow, allow_list=a.allow_address or [], enterprise=a.enterprise,
        representatives=a.representative or [], all_staff=a.all_staff, tags=a.tag or [],
    )
    out(f"group {g['address']} added ({len(g['recipients'])} recipients)")
    return 0


@command("group", "edit")
async def group_edit(store: Store, a: argparse.Namespace) -> int:
    g = await _svc(store).edit_group(
        _actor(), a.address, add_members=a.add_member or [], add_groups=a.add_group or [],
        remove_members=a.remove_member or [], add_departments=a.add_dept or [],
        add_externals=a.add_external or [], allow=a.allow, name=a.name,
        add_representatives=a.add_representative or [],
        remove_representatives=a.remove_representative or [], all_staff=a.all_staff,
        add_tags=a.add_tag or [], remove_tags=a.remove_tag or [],
    )
    out(f"group {g['address']} changed ({len(g['recipients'])} recipients)")
    return 0


@command("group", "list")
async def group_list(store: Store, a: argparse.Namespace) -> int:
    svc, offset = _svc(store), 0
    while True:  # every page: scripts read the whole list
        page = await svc.list_groups(_actor(), q=a.q, limit=500, offset=offset,
                                     enterprise=a.enterprise)
        for g in page["items"]:
            sources = "all staff" if g["all_staff"] else (
                f"{g['member_count']} members, {g['department_count']} departments, "
                f"{g['group_count']} groups, {g['external_count']} external")
            out(f"{g['address']}\t{g['name']}\t{g['allow']}\t{sources}")
        if page["next_offset"] is None:
            return 0
        offset = page["next_offset"]


@command("tag", "add")
async def tag_add(store: Store, a: argparse.Namespace) -> int:
    t = await _svc(store).add_tag(_actor(), a.name, a.enterprise)
    out(f"tag {t['name']} added")
    return 0


@command("tag", "list")
async def tag_list(store: Store, a: argparse.Namespace) -> int:
    for t in await _svc(store).list_tags(_actor(), a.enterprise):
        out(f"{t['name']}\t{t['member_count']} members")
    return 0


@command("tag", "show")
async def tag_show(store: Store, a: argparse.Namespace) -> int:
    for address in (await _svc(store).get_tag(_actor(), a.name, a.enterprise))["members"]:
        out(address)
    return 0


@command("tag", "rename")
async def tag_rename(store: Store, a: argparse.Namespace) -> int:
    t = await _svc(store).rename_tag(_actor(), a.name, a.new_name, a.enterprise)
    out(f"tag {a.name.strip()} is now {t['name']}")
    return 0


@command("tag", "remove")
async def tag_remove(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).delete_tag(_actor(), a.name, a.enterprise)
    out(f"tag {a.name.strip()} removed")
    return 0


@command("tag", "members")
async def tag_members(store: Store, a: argparse.Namespace) -> int:
    t = await _svc(store).tag_members(_actor(), a.name, add=a.add or [], remove=a.remove or [],
                                      enterprise=a.enterprise)
    out(f"tag {t['name']}: {t['member_count']} members")
    return 0


@command("group", "delete")
async def group_delete(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).delete_group(_actor(), a.address)
    out(f"group {a.address.strip().lower()} deleted")
    return 0


@command("group", "show")
async def group_show(store: Store, a: argparse.Namespace) -> int:
    for address in (await _svc(store).get_group(_actor(), a.address))["recipients"]:
        out(address)
    return 0


def _read_csv(path: str) -> str:
    """A CSV file's text ("-": standard input); a BOM from a spreadsheet is dropped."""
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


@command("user", "import")
async def import_members(store: Store, a: argparse.Namespace) -> int:
    text = _read_csv(a.file)
    r = await with_progress(store.reactor, lambda p: _svc(store).import_members(
        _actor(), text, a.enterprise, progress=p))
    out(f"{r['imported']} member(s) imported")
    return 0


@command("dept", "import")
async def import_departments(store: Store, a: argparse.Namespace) -> int:
    text = _read_csv(a.file)
    r = await with_progress(store.reactor, lambda p: _svc(store).import_departments(
        _actor(), text, a.enterprise, progress=p))
    out(f"{r['added']} department(s) added from {r['rows']} row(s)")
    return 0


@command("group", "import")
async def import_groups(store: Store, a: argparse.Namespace) -> int:
    text = _read_csv(a.file)
    r = await with_progress(store.reactor, lambda p: _svc(store).import_groups(
        _actor(), text, a.enterprise, progress=p))
    out(f"{r['added']} group(s) added from {r['rows']} row(s)")
    return 0


@command("group", "export")
async def export_groups(store: Store, a: argparse.Namespace) -> int:
    sys.stdout.write(await _svc(store).export_groups(_actor(), a.enterprise))
    return 0


@command("dept", "export")
async def export_departments(store: Store, a: argparse.Namespace) -> int:
    sys.stdout.write(await _svc(store).export_departments(_actor(), a.enterprise))
    return 0


@command("user", "export")
async def export_members(store: Store, a: argparse.Namespace) -> int:
    sys.stdout.write(await _svc(store).export_members(_actor(), a.enterprise))
    return 0


@command("recycle", "list")
async def recycle_list(store: Store, a: argparse.Namespace) -> int:
    page = await _svc(store).list_members(_actor(), enterprise=a.enterprise, status="deleted",
                                          limit=store.cfg.directory.api_page_limit)
    for m in page["items"]:
        out(f"{m['address']}\t{m['days_left']} days left")
    for m in await _svc(store).list_shared(_actor(), enterprise=a.enterprise, deleted=True):
        out(f"{m['address']}\t{m['days_left']} days left")
    return 0


@command("recycle", "purge")
async def recycle_purge(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).purge_member(_actor(), a.address)
    out(f"user {a.address.lower()} purged with its mail")
    return 0


@command("recycle", "export")
async def recycle_export(store: Store, a: argparse.Namespace) -> int:
    from pathlib import Path

    from exmaild.ops.recyclezip import export_zip

    aid, address = await _svc(store).recycled_for_export(_actor(), a.address)
    try:
        st = await export_zip(store, aid, Path(a.file))
    except OSError as e:
        raise CLIError(f"cannot write {a.file}: {e.strerror or e}") from None
    out(f"{address}: {st.messages} message(s) in {st.folders} folder(s) written to {a.file}")
    return 0


@command("recycle", "reassign")
async def recycle_reassign(store: Store, a: argparse.Namespace) -> int:
    r = await _svc(store).reassign_recycled(_actor(), a.address, a.to)
    out(f"{r['messages']} message(s) of {r['address']} moved to {r['to']} under {r['folder']}")
    return 0


@command("recycle", "restore")
async def recycle_restore(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).restore_member(_actor(), a.address)
    out(f"user {m['address']} restored")
    return 0


# -- business mailboxes (manual §4.4.2.3) ---------------------------------------
def _shared_lines(m: dict[str, Any]) -> None:
    quota = m["quota_bytes"] or "unlimited"
    for key, value in (
        ("address", m["address"]), ("name", m["name"]), ("status", m["status"]),
        ("aliases", ", ".join(m["aliases"])), ("members", ", ".join(m["members"])),
        ("departments", ", ".join(d["path"] for d in m["departments"])),
        ("assigned", ", ".join(m["assigned"])),
        ("usage", f"{m['used_bytes']}/{quota} bytes, {m['message_count']} messages"),
    ):
        out(f"{key}: {value}")


@command("shared", "add")
async def shared_add(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).add_shared(
        _actor(), a.address, name=a.name or "", members=a.assign or [],
        departments=a.dept or [], quota_bytes=_parse_size(a.quota) if a.quota else None,
        enterprise=a.enterprise)
    out(f"business mailbox {m['address']} added ({len(m['assigned'])} assigned)")
    return 0


@command("shared", "show")
async def shared_show(store: Store, a: argparse.Namespace) -> int:
    _shared_lines(await _svc(store).get_shared(_actor(), a.address))
    return 0


@command("shared", "list")
async def shared_list(store: Store, a: argparse.Namespace) -> int:
    for m in await _svc(store).list_shared(_actor(), enterprise=a.enterprise):
        out(f"{m['address']}\t{m['status']}\t{len(m['assigned'])} assigned")
    return 0


@command("shared", "assign")
async def shared_assign(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).assign_shared(_actor(), a.address, members=a.member or [],
                                        departments=a.dept or [])
    out(f"business mailbox {m['address']}: {len(m['assigned'])} assigned")
    return 0


@command("shared", "unassign")
async def shared_unassign(store: Store, a: argparse.Namespace) -> int:
    m = await _svc(store).assign_shared(_actor(), a.address, members=a.member or [],
                                        departments=a.dept or [], unassign=True)
    out(f"business mailbox {m['address']}: {len(m['assigned'])} assigned")
    return 0


@command("shared", "disable")
async def shared_disable(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).update_shared(_actor(), a.address, {"enabled": False})
    out(f"business mailbox {a.address.lower()} disabled")
    return 0


@command("shared", "enable")
async def shared_enable(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).update_shared(_actor(), a.address, {"enabled": True})
    out(f"business mailbox {a.address.lower()} enabled")
    return 0


@command("shared", "remove")
async def shared_remove(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).remove_shared(_actor(), a.address)
    out(f"business mailbox {a.address.lower()} recalled to the recycle bin")
    return 0


@command("admin", "add")
async def admin_add(store: Store, a: argparse.Namespace) -> int:
    r = await _svc(store).add_admin(
        _actor(), a.address, a.role, departments=a.dept or [],
        functions=a.function or None, enterprise=a.enterprise,
    )
    scope = ", ".join(d["path"] for d in r["departments"])
    out(f"{r['address']} is now {r['role']} admin" + (f" of {scope}" if scope else ""))
    return 0


@command("admin", "list")
async def admin_list(store: Store, a: argparse.Namespace) -> int:
    for r in await _svc(store).list_admins(_actor()):
        scope = ",".join(d["path"] for d in r["departments"])
        out(f"{r['address']}\t{r['role']}\t{scope}\t{','.join(r['functions'])}")
    return 0


@command("admin", "remove")
async def admin_remove(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).remove_admin(_actor(), a.address)
    out(f"{a.address.lower()} is no longer an admin")
    return 0


@command("token", "create")
async def token_create(store: Store, a: argparse.Namespace) -> int:
    _info, token = await _svc(store).create_token(_actor(), a.name or "", a.enterprise)
    out(token)
    return 0


@command("token", "list")
async def token_list(store: Store, a: argparse.Namespace) -> int:
    for t in await _svc(store).list_tokens(_actor()):
        out(f"{t['id']}\t{t['name']}\tcreated {t['created']}")
    return 0


@command("token", "revoke")
async def token_revoke(store: Store, a: argparse.Namespace) -> int:
    await _svc(store).revoke_token(_actor(), a.id)
    out(f"token {a.id} revoked")
    return 0


@command("log", "list")
async def log_list(store: Store, a: argparse.Namespace) -> int:
    page = await _svc(store).list_log(_actor(), enterprise=a.enterprise, limit=a.limit,
                                      action=a.action)
    import datetime as dt

    for e in page["items"]:
        when = dt.datetime.fromtimestamp(e["time"], dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out(f"{when}\t{e['actor']}\t{e['ip']}\t{e['action']}\t{e['target']}")
    return 0


@command("blobs", "compact")
async def blobs_compact(store: Store, a: argparse.Namespace) -> int:
    s = await store.compact()
    out(
        f"removed {s.segments_removed} segment(s), moved {s.blobs_moved} blob(s), "
        f"reclaimed {s.bytes_reclaimed} bytes"
    )
    return 0


@command("blobs", "migrate")
async def blobs_migrate(store: Store, a: argparse.Namespace) -> int:
    from exmaild.ops import blobmigrate

    try:
        s = await store.pool.call(blobmigrate.migrate, store, a.to, out)
    except blobmigrate.MigrateError as e:
        raise CLIError(str(e)) from e
    if s.bad:
        sys.stderr.write(f"exmailctl: {len(s.bad)} content(s) whose bytes are missing or do not "
                         f"match their digest were left where they are (see the log): "
                         f"{' '.join(s.bad)}\n")
        return 1
    if store.cfg.blobs.backend != a.to:
        out(f"note: [blobs] backend is {store.cfg.blobs.backend!r} in this config: mail that "
            f"arrives is stored there until it says {a.to!r} (on every node)")
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


# -- search index ------------------------------------------------------------
@command("search", "reindex")
async def search_reindex(store: Store, a: argparse.Namespace) -> int:
    from exmaild.mailstore.reindex import reindex

    limit = store.cfg.search.max_text_chars
    if limit == 0:
        raise CLIError("[search] max_text_chars is 0: the whole-text index is switched off")

    def progress(st: Any) -> None:
        sys.stdout.write(f"\r{st.indexed} message(s), {st.text_chars / 1e6:.1f} M characters")
        sys.stdout.flush()

    stats = await reindex(store, limit=limit, rebuild=a.rebuild, batch=a.batch,
                          progress=progress if sys.stdout.isatty() else None)
    if sys.stdout.isatty():
        out()
    out(f"index: {stats.index}")
    out(f"{stats.indexed} message(s) indexed, {stats.text_chars} characters of text")
    if stats.unreadable:
        out(f"{stats.unreadable} message(s) could not be read now (moved?): run again")
        return 1
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


_ENT_HELP = "the enterprise (may be left out while only one exists)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        # One line for scripts (argparse would print the whole usage first).
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="exmailctl", description="Administer an exmaild server.")
    p.add_argument("--version", action="version", version=f"exmailctl (exmaild) {__version__}")
    p.add_argument("--config", "-c", help="TOML configuration (default: $EXMAILD_CONFIG, "
                   "./exmaild.toml, /etc/exmaild/exmaild.toml, else embedded with data in ./var)")
    sub = p.add_subparsers(dest="group", required=True)

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    db.add_parser("upgrade", help="upgrade the schema to this version")
    db.add_parser("status", help="show the schema revision")

    ent = sub.add_parser("enterprise", help="enterprises (tenants)")
    ent = ent.add_subparsers(dest="cmd", required=True)
    ea = ent.add_parser("add")
    ea.add_argument("name")
    ea.add_argument("--member-limit", type=int, help="members allowed (default [directory])")
    ea.add_argument("--vip-seats", type=int, help="VIP members allowed (default: no limit)")
    ent.add_parser("list")
    es = ent.add_parser("settings", help="show or change the enterprise settings")
    es.add_argument("--enterprise", help=_ENT_HELP)
    es.add_argument("--display-name", choices=("name", "nickname", "name(nickname)",
                                               "nickname(name)"),
                    help="From: display name of mail members send")
    es.add_argument("--nickname-changeable", choices=("yes", "no"),
                    help="may members change their nickname")
    es.add_argument("--welcome", choices=("default", "template", "off"),
                    help="welcome letter to new members")
    es.add_argument("--forward-outside", choices=("yes", "no"),
                    help="may members' rules forward mail outside the enterprise's domains")
    es.add_argument("--department-groups", choices=("yes", "no"),
                    help="give each new department its own mail group (yes also makes the "
                         "missing ones)")
    es.add_argument("--welcome-template-file",
                    help="the template ({name} {address} {enterprise} {nickname} {domain})")
    for role, what in (("member", "normal member"), ("vip", "VIP member"),
                       ("shared", "business mailbox")):
        es.add_argument(f"--{role}-quota", metavar="SIZE",
                        help=f"default quota of a new {what} (e.g. 2G, 0: unlimited, "
                             "default: the server's)")
    entpolicy.cli_arguments(es)

    dom = sub.add_parser("domain", help="hosted domains").add_subparsers(dest="cmd", required=True)
    da = dom.add_parser("add")
    da.add_argument("name")
    da.add_argument("--enterprise", help=_ENT_HELP)
    dom.add_parser("list").add_argument("--enterprise", help="only this enterprise's domains")
    dom.add_parser("check", help="check resolution: MX, SPF, ownership TXT").add_argument(
        "name")
    dom.add_parser("primary", help="make it its enterprise's primary domain").add_argument(
        "name")
    rm = dom.add_parser("remove")
    rm.add_argument("name")
    rm.add_argument("--with-accounts", action="store_true",
                    help="confirm: its accounts go to the recycle bin, its groups are deleted")

    usr = sub.add_parser("user", help="member accounts").add_subparsers(dest="cmd", required=True)
    add = usr.add_parser("add")
    add.add_argument("address")
    add.add_argument("--vip", action="store_true")
    add.add_argument("--name", help="display name")
    add.add_argument("--quota", help="mailbox quota, e.g. 2G, 0: unlimited (default: the role's, "
                     "[directory] member_quota_bytes / vip_quota_bytes)")
    add.add_argument("--dept", action="append", help="department path, e.g. Sales/East")
    add.add_argument("--enterprise", help=_ENT_HELP)
    for field in ("nickname", "phone", "title", "external-id"):
        add.add_argument(f"--{field}")
    add.add_argument("--gender", choices=("male", "female"))
    pwd = usr.add_parser("passwd")
    pwd.add_argument("--must-change", action="store_true",
                     help="admin reset: protocol logins refused until the member sets its own")
    for sp in (add, pwd):
        if sp is not add:
            sp.add_argument("address")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--password", help="the password (visible to other users: prefer stdin)")
        g.add_argument("--password-stdin", action="store_true", help="read one line from stdin")
    lst = usr.add_parser("list")
    lst.add_argument("domain", nargs="?")
    usr.add_parser("remove", help="move to the recycle bin").add_argument("address")
    usr.add_parser("show").add_argument("address")
    usr.add_parser("disable", help="no login, no new mail").add_argument("address")
    usr.add_parser("enable").add_argument("address")
    ren = usr.add_parser("rename", help="the one change of the address prefix")
    ren.add_argument("address")
    ren.add_argument("new_address")

    dep = sub.add_parser("dept", help="departments").add_subparsers(dest="cmd", required=True)
    for name, helptext in (("add", "PATH like Sales/East: the parent must exist"),
                           ("remove", "only an empty department")):
        sp = dep.add_parser(name, help=helptext)
        sp.add_argument("path")
        sp.add_argument("--enterprise", help=_ENT_HELP)
    dep.add_parser("list").add_argument("--enterprise", help=_ENT_HELP)
    mv = dep.add_parser("move", help="move PATH under PARENT ('/' for the top)")
    mv.add_argument("path")
    mv.add_argument("parent")
    mv.add_argument("--enterprise", help=_ENT_HELP)
    rn = dep.add_parser("rename")
    rn.add_argument("path")
    rn.add_argument("name")
    rn.add_argument("--enterprise", help=_ENT_HELP)
    di = dep.add_parser("import", help="CSV with a path column: adds the missing "
                        "departments (all rows or none)")
    di.add_argument("file", help="a CSV file, or - for stdin")
    di.add_argument("--enterprise", help=_ENT_HELP)
    dep.add_parser("export", help="CSV: path, members").add_argument(
        "--enterprise", help=_ENT_HELP)
    dg = dep.add_parser("group", help="a mail group whose members follow the department "
                        "(with its sub-departments)")
    dg.add_argument("path")
    dg.add_argument("address")
    dg.add_argument("--enterprise", help=_ENT_HELP)

    al = sub.add_parser("alias", help="member email aliases")
    al = al.add_subparsers(dest="cmd", required=True)
    aa = al.add_parser("add")
    aa.add_argument("alias")
    aa.add_argument("address")
    al.add_parser("remove").add_argument("alias")

    grp = sub.add_parser("group", help="mail groups (expanded at delivery)")
    grp = grp.add_subparsers(dest="cmd", required=True)
    ga = grp.add_parser("add")
    ga.add_argument("address")
    ga.add_argument("--name")
    ga.add_argument("--member", action="append", help="a member's address (repeat)")
    ga.add_argument("--dept", action="append", help="a department with its sub-departments")
    ga.add_argument("--group", action="append", dest="groups",
                    help="another group's address")
    ga.add_argument("--external", action="append", help="an outside address")
    ga.add_argument("--allow", default="anyone",
                    choices=("anyone", "enterprise", "members", "list"),
                    help="who may send to the group (default anyone)")
    ga.add_argument("--allow-address", action="append", help="a sender for --allow list")
    ga.add_argument("--representative", action="append",
                    help="a member who may send as the group (repeat)")
    ga.add_argument("--tag", action="append", help="members with this tag (repeat)")
    ga.add_argument("--all-staff", action="store_true",
                    help="every member of the enterprise, kept in step with the directory")
    ga.add_argument("--enterprise", help=_ENT_HELP)
    ge = grp.add_parser("edit")
    ge.add_argument("address")
    for opt in ("add-member", "add-group", "remove-member", "add-dept", "add-external",
                "add-representative", "remove-representative", "add-tag", "remove-tag"):
        ge.add_argument(f"--{opt}", action="append")
    ge.add_argument("--allow", choices=("anyone", "enterprise", "members", "list"))
    ge.add_argument("--name")
    ge.add_argument("--all-staff", action=argparse.BooleanOptionalAction, default=None,
                    help="reach (or stop reaching) every member of the enterprise")
    gl = grp.add_parser("list", help="groups: address, name, who may send, sources")
    gl.add_argument("--q", help="text in the address or name")
    gl.add_argument("--enterprise", help=_ENT_HELP)
    grp.add_parser("delete", help="delete a group for good").add_argument("address")
    gi = grp.add_parser("import", help="CSV (as group export): adds the groups, all rows "
                        "or none")
    gi.add_argument("file", help="a CSV file, or - for stdin")
    gi.add_argument("--enterprise", help=_ENT_HELP)
    grp.add_parser("export", help="CSV: address, name, allow, sources").add_argument(
        "--enterprise", help=_ENT_HELP)

    tg = sub.add_parser("tag", help="member tags").add_subparsers(dest="cmd", required=True)
    for name, text in (("add", "define a tag"), ("show", "its members, one a line"),
                       ("remove", "delete a tag (off every member and group)"),
                       ("rename", "rename a tag"), ("members", "tag or untag members")):
        tp = tg.add_parser(name, help=text)
        tp.add_argument("name")
        if name == "rename":
            tp.add_argument("new_name")
        if name == "members":
            tp.add_argument("--add", action="append", help="a member's address (repeat)")
            tp.add_argument("--remove", action="append", help="a member's address (repeat)")
        tp.add_argument("--enterprise", help=_ENT_HELP)
    tg.add_parser("list").add_argument("--enterprise", help=_ENT_HELP)
    grp.add_parser("show", help="the expanded recipients, one a line").add_argument("address")

    # Members as CSV (`import`/`export` at the top level move mail, cli_ops.py).
    im = usr.add_parser("import", help="CSV import of members (all rows or none); columns: "
                        "address,name,...,departments (a;b),vip")
    im.add_argument("file", help="a CSV file, or - for stdin")
    im.add_argument("--enterprise", help=_ENT_HELP)
    ex = usr.add_parser("export", help="CSV export of members")
    ex.add_argument("--enterprise", help=_ENT_HELP)

    rc = sub.add_parser("recycle", help="deleted members")
    rc = rc.add_subparsers(dest="cmd", required=True)
    rc.add_parser("list").add_argument("--enterprise", help=_ENT_HELP)
    rc.add_parser("restore").add_argument("address")
    rc.add_parser("purge", help="delete for good, with its mail").add_argument("address")
    rr = rc.add_parser("reassign", help="move its mail to a member, under Recycled/ADDRESS/")
    rr.add_argument("address")
    rr.add_argument("to")
    rx = rc.add_parser("export", help="its mail as a zip, one mbox per folder")
    rx.add_argument("address")
    rx.add_argument("file", help="the zip to write (must not exist)")

    sh = sub.add_parser("shared", help="business mailboxes (assigned to members)")
    sh = sh.add_subparsers(dest="cmd", required=True)
    sa_ = sh.add_parser("add")
    sa_.add_argument("address")
    sa_.add_argument("--assign", action="extend", nargs="+", metavar="ADDRESS",
                     help="members who may use it")
    sa_.add_argument("--dept", action="append", help="a department, with its sub-departments")
    sa_.add_argument("--name")
    sa_.add_argument("--quota", help="e.g. 2G (default: [directory] shared_quota_bytes)")
    sa_.add_argument("--enterprise", help=_ENT_HELP)
    sh.add_parser("show").add_argument("address")
    sh.add_parser("list").add_argument("--enterprise", help=_ENT_HELP)
    for verb in ("assign", "unassign"):
        sx = sh.add_parser(verb)
        sx.add_argument("address")
        sx.add_argument("member", nargs="*", help="members' addresses")
        sx.add_argument("--dept", action="append", help="a department")
    for verb in ("disable", "enable"):
        sh.add_parser(verb).add_argument("address")
    sh.add_parser("remove", help="recall to the recycle bin").add_argument("address")

    adm = sub.add_parser("admin", help="administrators")
    adm = adm.add_subparsers(dest="cmd", required=True)
    ad = adm.add_parser("add")
    ad.add_argument("address")
    ad.add_argument("--role", required=True, choices=("creator", "super", "graded"))
    ad.add_argument("--dept", action="append", help="a graded admin's department (repeat)")
    ad.add_argument("--function", action="append",
                    help="a graded admin's function: members, departments, domains, log")
    ad.add_argument("--enterprise", help=_ENT_HELP)
    adm.add_parser("list")
    adm.add_parser("remove").add_argument("address")

    tok = sub.add_parser("token", help="admin API tokens")
    tok = tok.add_subparsers(dest="cmd", required=True)
    tc = tok.add_parser("create", help="prints only the token")
    tc.add_argument("--enterprise", help=_ENT_HELP)
    tc.add_argument("--name")
    tok.add_parser("list")
    tok.add_parser("revoke").add_argument("id", type=int)

    lg = sub.add_parser("log", help="the operation log")
    lg = lg.add_subparsers(dest="cmd", required=True)
    ll = lg.add_parser("list")
    ll.add_argument("--enterprise", help=_ENT_HELP)
    ll.add_argument("--action", help="only actions starting with this, e.g. member.")
    ll.add_argument("--limit", type=int, default=50)

    bl = sub.add_parser("blobs", help="message blob store")
    bl = bl.add_subparsers(dest="cmd", required=True)
    bl.add_parser("compact", help="reclaim space of deleted mail")
    mg = bl.add_parser("migrate", help="move stored message contents to the other backend",
                       description="Move every stored content into the database "
                                   "(--to postgresql) or into segment files (--to segments); "
                                   "safe beside running daemons, resumable (docs/blobs.md).")
    mg.add_argument("--to", required=True, choices=("postgresql", "segments"))

    qu = sub.add_parser("queue", help="outbound mail queue")
    qu = qu.add_subparsers(dest="cmd", required=True)
    ql = qu.add_parser("list", help="messages waiting for delivery (like mailq)")
    ql.add_argument("--all", action="store_true",
                    help="also finished messages kept for delivery status")
    qu.add_parser("show", help="envelope, recipient status and header").add_argument("queue_id")
    qu.add_parser("retry", help="try a message again now").add_argument("queue_id")
    qu.add_parser("delete", help="remove a message without a DSN").add_argument("queue_id")
    qu.add_parser("flush", help="try every waiting message now")

    se = sub.add_parser("search", help="whole-text search index")
    se = se.add_subparsers(dest="cmd", required=True)
    ri = se.add_parser("reindex", help="index stored mail that has no search text yet")
    ri.add_argument("--rebuild", action="store_true",
                    help="redo every message (e.g. after changing [search] max_text_chars)")
    ri.add_argument("--batch", type=int, default=200, help="messages per transaction")

    # -- backup, restore, import, export (exmaild/cli_ops.py) --
    from exmaild import cli_ops

    _COMMANDS.update(cli_ops.add_parsers(sub))

    dkim_cli.add_parsers(sub, command)
    from exmaild.queue import tlsrpt_cli

    tlsrpt_cli.add_parsers(sub, command)
    from exmaild.auth import cli as auth_cli

    auth_cli.add_parsers(sub, usr, lg, command)
    from exmaild.mailstore import mail_log_cli

    mail_log_cli.add_parsers(lg, command)

    from exmaild.exmail_api import cli as exmail_api_cli

    exmail_api_cli.add_parsers(sub, command)

    from exmaild.sieve import cli as sieve_cli

    sieve_cli.add_parsers(sub, command)
    from exmaild.sieve import member_cli

    member_cli.add_parsers(usr, command)
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
    passwords.configure(cfg.auth)
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
    from exmaild import cli_ops

    plain = cli_ops.run_plain(cfg, args)  # backup/restore: without opening the store
    if plain is not None:
        return plain
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
        except (CLIError, DirectoryError, ServiceError, schema.SchemaError) as e:
            line = " ".join(str(e).split())  # one line, whatever the message holds
            sys.stderr.write(f"exmailctl: {line}\n")
            result["rc"] = 1

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit:
        pass
    return result["rc"]


if __name__ == "__main__":
    sys.exit(main())
