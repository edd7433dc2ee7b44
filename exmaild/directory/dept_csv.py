"""Departments as CSV (manual §4.3.3): export the tree, import paths.

One column, `path` (`Sales/East`), one department a line, parents before
children (the export's order, depth first by position). An import adds every
path that does not exist yet, parents included ("Sales/East/North" also makes
"Sales/East" if needed), in one transaction with the line number of the first
bad row and nothing applied; a path that exists already is left as it is, so
the same file can be imported twice. The depth limit and a graded admin's
scope apply as to `dept add`.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.dept_autogroup import auto_group
from exmaild.directory.errors import Forbidden, Invalid, ServiceError
from exmaild.directory.progress import APPLYING, CHECKING, NoProgress, Progress, count_rows
from exmaild.directory.tree import DeptTree, check_name, split_path
from exmaild.store import model as m

DEPT_COLUMNS = ("path", "members")


class DepartmentCSV:
    """Mixed into DirectoryService: uses its checks (`_enterprise`, `_log` ...)."""

    pool: Any
    cfg: Any

    async def export_departments(self, actor: Actor, enterprise: str | None = None) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(DEPT_COLUMNS)
        for d in await self.list_departments(actor, enterprise):  # type: ignore[attr-defined]
            w.writerow((d["path"], d["members"]))
        return out.getvalue()

    async def import_departments(self, actor: Actor, text: str, enterprise: str | None = None,
                                 progress: Progress | None = None) -> dict[str, Any]:
        self._need(actor, "departments")  # type: ignore[attr-defined]
        progress = progress or NoProgress()
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        if "path" not in header:
            raise Invalid("line 1: the header needs a path column")
        unknown = [c for c in header if c not in DEPT_COLUMNS]
        if unknown:
            raise Invalid(f"line 1: unknown column(s) {', '.join(unknown)}")
        rows: list[tuple[int, list[str]]] = []
        progress.begin(CHECKING, count_rows(text))
        for rec in reader:
            if len(rows) >= self.cfg.import_max_rows:
                raise Invalid(f"line {reader.line_num}: more than "
                              f"{self.cfg.import_max_rows} rows")
            try:
                if None in rec:
                    raise Invalid("more fields than the header has")
                rows.append((reader.line_num,
                             [check_name(p) for p in split_path(rec.get("path") or "")]))
            except ServiceError as e:
                raise type(e)(f"line {reader.line_num}: {e.message}") from None
            await progress.checked()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            progress.begin(APPLYING, len(rows))
            ent = self._enterprise(conn, actor, enterprise)  # type: ignore[attr-defined]
            added = 0
            for line, parts in rows:
                try:
                    added += self._add_path(conn, actor, ent.id, parts)
                except ServiceError as e:
                    raise type(e)(f"line {line}: {e.message}") from None
                progress.applied()
            self._log(conn, actor, ent.id, "department.import",  # type: ignore[attr-defined]
                      f"{added} departments", after={"rows": len(rows), "added": added})
            return {"rows": len(rows), "added": added}

        return await self.pool.transaction(thd)

    def _add_path(self, conn: sa.Connection, actor: Actor, ent_id: int,
                  parts: list[str]) -> int:
        """Add the missing departments of one path; how many were added."""
        if len(parts) > self.cfg.max_department_depth:
            raise Invalid(f"departments nest at most {self.cfg.max_department_depth} levels")
        added = 0
        parent: int | None = None
        for i in range(len(parts)):
            tree = DeptTree.load(conn, ent_id)
            existing = next((d for d in tree.children.get(parent, [])
                             if d.name == parts[i]), None)
            if existing is not None:
                parent = existing.id
                continue
            scope = self._scope(actor, tree)  # type: ignore[attr-defined]
            if scope is not None and parent not in scope:
                raise Forbidden("a graded administrator adds departments only inside its own")
            pos = max((s.position for s in tree.children.get(parent, [])), default=-1) + 1
            parent = conn.execute(m.departments.insert().values(
                enterprise_id=ent_id, parent_id=parent, name=parts[i], position=pos,
            )).inserted_primary_key[0]
            assert parent is not None
            auto_group(self, conn, actor, ent_id, parent)  # when the enterprise wants one
            added += 1
        return added
