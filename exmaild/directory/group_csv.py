"""Mail groups as CSV (manual §4.4.2.2 "batch import/export groups").

Columns: `address, name, allow, members, departments, groups, externals,
tags, representatives, all_staff`; a list column holds its items separated
by `;` (departments as paths, `Sales/East`, with their sub-departments).
An export lists every group of the enterprise by address; importing it into
an enterprise without those groups makes them again. An import adds new
groups only, in one transaction: groups may name each other in any order
(every group of the file is made before any source is added), the first bad
row is named by its line and nothing is applied. A department's own group
(dept_groups.py) is exported with its department as source and imports as
an ordinary group.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Forbidden, Invalid, ServiceError
from exmaild.directory.groups import ALLOW
from exmaild.directory.progress import APPLYING, CHECKING, NoProgress, Progress, count_rows
from exmaild.directory.tree import DeptTree
from exmaild.store import model as m
from exmaild.store.directory import insert_account

A = m.accounts.c
G = m.group_members.c
MG = m.mail_groups.c
D = m.domains.c

GROUP_COLUMNS = ("address", "name", "allow", "members", "departments", "groups", "externals",
                 "tags", "representatives", "all_staff")
_LISTS = ("members", "departments", "groups", "externals", "tags", "representatives")


def _split(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(";") if x.strip()]


class GroupCSV:
    """Mixed into DirectoryService: uses its checks (`_enterprise`, `_log` ...)."""

    pool: Any
    cfg: Any

    def _groups_admin(self, actor: Actor) -> None:
        self._need(actor, "members")  # type: ignore[attr-defined]
        if actor.graded:
            raise Forbidden("only creator and super administrators manage mail groups")

    async def export_groups(self, actor: Actor, enterprise: str | None = None) -> str:
        self._groups_admin(actor)

        def thd(conn: sa.Connection) -> str:
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            groups = conn.execute(sa.select(A.id, A.address, A.display_name, MG.allow).select_from(
                m.accounts.join(m.domains, D.id == A.domain_id)
                .join(m.mail_groups, MG.account_id == A.id)).where(
                D.enterprise_id == ent.id, A.kind == "group", A.deleted_at.is_(None))
                .order_by(A.address)).all()
            member = m.accounts.alias("member")
            src = conn.execute(sa.select(G.group_id, G.kind, G.department_id, G.address,
                                         member.c.address.label("member"),
                                         m.tags.c.name.label("tag")).select_from(
                m.group_members.outerjoin(member, member.c.id == G.account_id)
                .outerjoin(m.tags, m.tags.c.id == G.tag_id)).where(
                G.group_id.in_([g.id for g in groups])).order_by(G.id)).all()
            cols: dict[int, dict[str, list[str]]] = {
                g.id: {k: [] for k in (*_LISTS, "all")} for g in groups}
            for s in src:
                c = cols[s.group_id]
                if s.kind in ("member", "group", "representative"):
                    c[s.kind + "s"].append(s.member)
                elif s.kind == "department":
                    c["departments"].append(tree.path(s.department_id))
                elif s.kind == "external":
                    c["externals"].append(s.address)
                elif s.kind == "tag":
                    c["tags"].append(s.tag)
                elif s.kind == "all":
                    c["all"].append("yes")
            out = io.StringIO()
            w = csv.writer(out, lineterminator="\r\n")
            w.writerow(GROUP_COLUMNS)
            for g in groups:
                c = cols[g.id]
                w.writerow((g.address, g.display_name, g.allow,
                            *(";".join(c[k]) for k in _LISTS), "yes" if c["all"] else ""))
            return out.getvalue()

        return await self.pool.do(thd)

    async def import_groups(self, actor: Actor, text: str, enterprise: str | None = None,
                            progress: Progress | None = None) -> dict[str, Any]:
        self._groups_admin(actor)
        progress = progress or NoProgress()
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if "address" not in header:
            raise Invalid("line 1: the header needs an address column")
        unknown = [c for c in header if c not in GROUP_COLUMNS]
        if unknown:
            raise Invalid(f"line 1: unknown column(s) {', '.join(unknown)}")
        rows: list[tuple[int, str, dict[str, Any]]] = []
        seen: set[str] = set()
        progress.begin(CHECKING, count_rows(text))
        for rec in reader:
            line = reader.line_num
            try:
                if len(rows) >= self.cfg.import_max_rows:
                    raise Invalid(f"more than {self.cfg.import_max_rows} rows")
                if None in rec:
                    raise Invalid("more fields than the header has")
                address = self._address(rec.get("address") or "")[0]  # type: ignore[attr-defined]
                if address in seen:
                    raise Invalid(f"{address} appears twice")
                seen.add(address)
                allow = (rec.get("allow") or "anyone").strip()
                if allow not in ALLOW:
                    raise Invalid(f"allow is one of {', '.join(ALLOW)}")
                all_staff = (rec.get("all_staff") or "").strip().lower()
                if all_staff not in ("", "yes", "no"):
                    raise Invalid("all_staff is yes, no or empty")
                cols = self._check_profile(  # type: ignore[attr-defined]
                    {"name": rec.get("name") or ""})
                rows.append((line, address, {
                    "cols": cols, "allow": allow, "all_staff": all_staff == "yes",
                    **{k: _split(rec.get(k)) for k in _LISTS}}))
            except ServiceError as e:
                raise type(e)(f"line {line}: {e.message}") from None
            await progress.checked()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            progress.begin(APPLYING, len(rows))  # a row counts once its sources are in
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            tree = DeptTree.load(conn, ent.id)
            made: list[tuple[int, int, dict[str, Any]]] = []
            for line, address, r in rows:  # every group first: rows may name each other
                try:
                    did = self._domain_of(  # type: ignore[attr-defined]
                        conn, ent.id, address.rpartition("@")[2])
                    self._address_free(conn, address)  # type: ignore[attr-defined]
                    gid = insert_account(conn, did, address, None, kind="group", **r["cols"])
                    conn.execute(m.mail_groups.insert().values(
                        account_id=gid, allow=r["allow"], allow_list=[]))
                    made.append((line, gid, r))
                except ServiceError as e:
                    raise type(e)(f"line {line}: {e.message}") from None
            for line, gid, r in made:
                try:
                    src = self._group_sources(  # type: ignore[attr-defined]
                        conn, ent.id, tree, gid, members=r["members"], depts=r["departments"],
                        groups=r["groups"], externals=r["externals"],
                        representatives=r["representatives"], all_staff=r["all_staff"],
                        tags=r["tags"])
                except ServiceError as e:
                    raise type(e)(f"line {line}: {e.message}") from None
                if src:
                    conn.execute(m.group_members.insert(), [{"group_id": gid, **x} for x in src])
                progress.applied()
            self._log(conn, actor, ent.id, "group.import",  # type: ignore[attr-defined]
                      f"{len(made)} groups", after={"added": [a for _l, a, _r in rows]})
            return {"rows": len(rows), "added": len(made)}

        return await self.pool.transaction(thd)
