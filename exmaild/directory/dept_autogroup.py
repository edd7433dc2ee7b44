"""Department groups made automatically (manual §4.4.2.2: "sync a department
as a group ... an account prefixed with the pinyin of the department name").

With the enterprise setting `department_groups` on, every department made
(API, exmailctl, CSV import, Exmail's /cgi-bin/department/create) gets its
own group (dept_groups.py) in the same transaction, at an address derived
from its name in the enterprise's primary domain; setting it to true (again)
makes the groups of the departments that have none. A rename keeps the
address (the group's name follows); deleting the department deletes it.
Off by default, so an upgrade adds no addresses nobody asked for.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.dept_groups import make_department_group
from exmaild.directory.settings import enterprise_settings
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m

A = m.accounts.c
D = m.domains.c
MG = m.mail_groups.c
_HAN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_MAX_LOCAL = 48  # leaves room for a suffix within the 64 of a local part


def address_prefix(name: str) -> str:
    """`销售部` -> `xiaoshoubu`, `Sales East` -> `sales-east`, `研发 R&D` ->
    `yanfa-r-d`: pinyin of Chinese characters, lower-case ASCII letters and
    digits, a dash between words; `dept` when nothing is left."""
    from pypinyin import lazy_pinyin  # only when a group is made

    words: list[str] = []
    for i, part in enumerate(_HAN.split(name)):
        if i % 2:  # a run of Chinese characters: pinyin, as one word
            # (a character without a reading is left as it is: drop it)
            words.append("".join(re.findall(r"[a-z0-9]+", "".join(lazy_pinyin(part)).lower())))
            continue
        plain = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
        words += re.findall(r"[a-z0-9]+", plain.lower())
    prefix = "-".join(w for w in words if w)[:_MAX_LOCAL].strip("-")
    return prefix or "dept"


def _taken(conn: sa.Connection, address: str) -> bool:
    return (conn.execute(sa.select(A.id).where(A.address == address)).first() is not None
            or conn.execute(sa.select(m.aliases.c.id).where(
                m.aliases.c.address == address)).first() is not None)


def free_address(conn: sa.Connection, prefix: str, domain: str) -> str:
    """prefix@domain, or prefix-2@domain, -3 ... when taken (by any account,
    alias or group, in the bin too)."""
    n = 1
    while True:
        local = prefix if n == 1 else f"{prefix}-{n}"
        if not _taken(conn, f"{local}@{domain}"):
            return f"{local}@{domain}"
        n += 1


def _primary_domain(conn: sa.Connection, ent_id: int) -> Any:
    return conn.execute(sa.select(D.id, D.name).where(D.enterprise_id == ent_id).order_by(
        D.is_primary.desc(), D.id).limit(1)).first()


def auto_group(svc: Any, conn: sa.Connection, actor: Actor, ent_id: int, dept_id: int,
               *, force: bool = False) -> str | None:
    """Make the department's group when the enterprise wants them (and the
    department has none); its address, or None."""
    if not force and not enterprise_settings(conn, ent_id)["department_groups"]:
        return None
    if conn.execute(sa.select(MG.account_id).where(MG.department_id == dept_id)).first():
        return None
    domain = _primary_domain(conn, ent_id)
    if domain is None:
        return None  # no domain yet: turning the setting on again makes them
    tree = DeptTree.load(conn, ent_id)
    name = tree.get(dept_id).name
    address = free_address(conn, address_prefix(name), domain.name)
    make_department_group(conn, domain.id, address, dept_id, name)
    svc._log(conn, actor, ent_id, "group.add", address,
             after={"department": tree.path(dept_id), "synced": True, "automatic": True})
    return address


def sync_all(svc: Any, conn: sa.Connection, actor: Actor, ent_id: int) -> list[str]:
    """The groups of every department that has none (the setting turned on)."""
    tree = DeptTree.load(conn, ent_id)
    made = []
    for dept in tree.ordered():
        address = auto_group(svc, conn, actor, ent_id, dept.id, force=True)
        if address:
            made.append(address)
    return made
