"""Members in and out as CSV (the columns of `CSV_COLUMNS`): import all
or nothing, export what the caller may see."""

from __future__ import annotations

import csv
import io
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.base import (
    _FLAGS,
    CSV_COLUMNS,
    MEMBER_FIELDS,
    DirectoryBase,
)
from exmaild.directory.errors import (
    Invalid,
    ServiceError,
)
from exmaild.directory.progress import APPLYING, CHECKING, NoProgress, Progress, count_rows
from exmaild.directory.tree import DeptTree


class MemberCSV(DirectoryBase):
    async def import_members(self, actor: Actor, text: str, enterprise: str | None = None,
                             progress: Progress | None = None) -> dict[str, Any]:
        """Members from CSV (columns of `CSV_COLUMNS`, `address` required,
        `departments` as paths separated by ';', optional `password`), all in
        one transaction: a bad row is reported with its line number and reason,
        and nothing of the import is applied."""
        self._need(actor, "members")
        progress = progress or NoProgress()
        parsed = []
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in (*CSV_COLUMNS, "password")]
        if "address" not in header:
            raise Invalid("line 1: the header needs an address column")
        if unknown:
            raise Invalid(f"line 1: unknown column(s) {', '.join(unknown)}")
        progress.begin(CHECKING, count_rows(text))
        for rec in reader:
            line = reader.line_num
            if len(parsed) >= self.cfg.import_max_rows:
                raise Invalid(f"line {line}: more than {self.cfg.import_max_rows} rows")
            try:
                if None in rec:
                    raise Invalid("more fields than the header has")
                address, _l, domain = self._address(rec.get("address") or "")
                profile: dict[str, Any] = {k: rec[k] for k in MEMBER_FIELDS if rec.get(k)}
                if rec.get("vip"):
                    flag = rec["vip"].strip().lower()
                    if flag not in _FLAGS:
                        raise Invalid(f"vip is yes or no, not {rec['vip']!r}")
                    profile["vip"] = _FLAGS[flag]
                if rec.get("quota_bytes"):
                    if not rec["quota_bytes"].strip().isdigit():
                        raise Invalid("quota_bytes is a whole number of bytes")
                    profile["quota_bytes"] = int(rec["quota_bytes"])
                cols = self._check_profile(profile)
                depts = [p for p in (rec.get("departments") or "").split(";") if p.strip()]
                pw_hash = await self._hash(rec.get("password") or None, address)
            except ServiceError as e:
                raise type(e)(f"line {line}: {e.message}") from None
            parsed.append((line, address, domain, pw_hash, cols, depts))
            await progress.checked()

        def thd(conn: sa.Connection) -> dict[str, Any]:
            progress.begin(APPLYING, len(parsed))  # again on a retry
            ent = self._enterprise(conn, actor, enterprise)
            tree = DeptTree.load(conn, ent.id)
            for line, address, domain, pw_hash, cols, depts in parsed:
                try:
                    self._insert_member(conn, actor, ent, tree, address, domain, pw_hash, cols,
                                        depts)
                except ServiceError as e:
                    raise type(e)(f"line {line}: {e.message}") from None
                progress.applied()
            self._log(conn, actor, ent.id, "member.import", f"{len(parsed)} members")
            return {"imported": len(parsed)}

        out = await self.pool.transaction(thd)
        await self._welcome([address for _, address, *_ in parsed])
        return out

    async def export_members(self, actor: Actor, enterprise: str | None = None) -> str:
        """The enterprise's members (those the caller may see) as CSV, the
        columns `import_members` reads."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(CSV_COLUMNS)
        offset: int | None = 0
        while offset is not None:
            page = await self.list_members(actor, enterprise=enterprise, offset=offset,
                                           limit=self.cfg.api_page_limit)
            for m_ in page["items"]:
                w.writerow([
                    m_["address"], m_["name"], m_["nickname"], m_["phone"], m_["title"],
                    m_["gender"], m_["external_id"] or "",
                    ";".join(d["path"] for d in m_["departments"]),
                    "yes" if m_["vip"] else "no", m_["quota_bytes"],
                ])
            offset = page["next_offset"]
        return out.getvalue()
