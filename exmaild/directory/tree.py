"""The department tree of one enterprise, loaded whole (hundreds of rows, not
millions): paths, depths, subtrees and cycle checks are walks in memory."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from exmaild.directory.errors import Invalid, NotFound
from exmaild.store import model as m


@dataclass(frozen=True)
class Dept:
    id: int
    name: str
    parent_id: int | None
    position: int


class DeptTree:
    def __init__(self, depts: list[Dept]) -> None:
        self.by_id = {d.id: d for d in depts}
        self.children: dict[int | None, list[Dept]] = {}
        for d in depts:
            self.children.setdefault(d.parent_id, []).append(d)
        for kids in self.children.values():
            kids.sort(key=lambda d: (d.position, d.name, d.id))

    @classmethod
    def load(cls, conn: sa.Connection, enterprise_id: int) -> DeptTree:
        d = m.departments.c
        rows = conn.execute(
            sa.select(d.id, d.name, d.parent_id, d.position).where(d.enterprise_id == enterprise_id)
        )
        return cls([Dept(r.id, r.name, r.parent_id, r.position) for r in rows])

    def get(self, dept_id: int) -> Dept:
        try:
            return self.by_id[dept_id]
        except KeyError:
            raise NotFound(f"unknown department {dept_id}") from None

    def ancestors(self, dept_id: int) -> list[Dept]:
        """From the root down to `dept_id` itself."""
        chain: list[Dept] = []
        cur: int | None = dept_id
        while cur is not None and len(chain) <= len(self.by_id):
            d = self.by_id[cur]
            chain.append(d)
            cur = d.parent_id
        return list(reversed(chain))

    def path(self, dept_id: int) -> str:
        return "/".join(d.name for d in self.ancestors(dept_id))

    def depth(self, dept_id: int | None) -> int:
        """1 for a top-level department; 0 for "no parent"."""
        return 0 if dept_id is None else len(self.ancestors(dept_id))

    def height(self, dept_id: int) -> int:
        """Levels in the subtree rooted at `dept_id` (1 for a leaf)."""
        kids = self.children.get(dept_id, [])
        return 1 + max((self.height(k.id) for k in kids), default=0)

    def subtree(self, roots: set[int] | frozenset[int]) -> set[int]:
        out: set[int] = set()
        stack = [r for r in roots if r in self.by_id]
        while stack:
            cur = stack.pop()
            if cur not in out:
                out.add(cur)
                stack.extend(k.id for k in self.children.get(cur, []))
        return out

    def by_path(self, path: str) -> Dept:
        parts = split_path(path)
        parent: int | None = None
        found: Dept | None = None
        for i, name in enumerate(parts):
            found = next((d for d in self.children.get(parent, []) if d.name == name), None)
            if found is None:
                raise NotFound(f"unknown department {'/'.join(parts[: i + 1])}")
            parent = found.id
        assert found is not None
        return found

    def ordered(self) -> list[Dept]:
        """Depth-first, siblings in their order: how an org chart reads."""
        out: list[Dept] = []

        def walk(parent: int | None) -> None:
            for d in self.children.get(parent, []):
                out.append(d)
                walk(d.id)

        walk(None)
        return out


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 200:
        raise Invalid("a department name must be 1 to 200 characters")
    if "/" in name:
        raise Invalid("a department name cannot contain '/'")
    if any(ord(c) < 32 for c in name):
        raise Invalid("a department name cannot contain control characters")
    return name


def split_path(path: str) -> list[str]:
    parts = [p.strip() for p in path.strip().strip("/").split("/")]
    if not parts or not all(parts):
        raise Invalid(f"malformed department path {path!r}")
    return parts
