"""An enterprise's inbound filters (manual §4.4.4), set by its administrators
and applied at delivery before members' sender lists and Sieve scripts:

- `allow` (address or domain): the message skips the enterprise's other
  filters and the Junk decision; members' own lists and rules still run;
- `block` (address or domain) and `subject` (a keyword the decoded Subject
  contains, case-insensitively): the message is filed to Junk (action
  `junk`) or refused with `550 5.7.1` (action `refuse`; when other
  recipients take the message, Junk for these). Members' rules do not run.

The envelope sender and the From: address count, as for members' lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid, NotFound
from exmaild.sieve.senders import ACTIONS, FilterError, matches, normalise
from exmaild.store import model as m

T = m.enterprise_filters
KINDS = ("block", "allow", "subject")
MAX_KEYWORD = 200


@dataclass(frozen=True)
class Entry:
    kind: str
    pattern: str
    action: str


def check(kind: str, pattern: str, action: str) -> str:
    """The normalised pattern; FilterError says what is wrong."""
    if kind not in KINDS:
        raise FilterError(f"kind must be one of {', '.join(KINDS)}")
    if action not in ACTIONS:
        raise FilterError(f"action must be one of {', '.join(ACTIONS)}")
    if kind != "subject":
        return normalise(pattern)
    p = pattern.strip().casefold()
    if not p or len(p) > MAX_KEYWORD or any(ord(c) < 32 for c in p):
        raise FilterError(f"a subject keyword is 1 to {MAX_KEYWORD} printable characters")
    return p


def decide(entries: list[Entry], senders: list[str], subject: str) -> tuple[str, str] | None:
    """(verdict, why): verdict "allow", "junk" or "refuse"; None when no
    filter matches. An allow entry wins over everything else."""
    senders = [s for s in senders if s]
    hit = next((e for e in entries if e.kind == "allow"
                and any(matches(e.pattern, s) for s in senders)), None)
    if hit is not None:
        return "allow", f"allowed sender {hit.pattern}"
    for e in entries:
        if e.kind == "block" and any(matches(e.pattern, s) for s in senders):
            return e.action, f"blocked sender {e.pattern}"
    folded = subject.casefold()
    for e in entries:
        if e.kind == "subject" and e.pattern in folded:
            return e.action, f"subject keyword {e.pattern!r}"
    return None


def load(conn: sa.Connection, account_ids: list[int]) -> dict[int, list[Entry]]:
    """account id -> its enterprise's filters (accounts without any absent)."""
    a, d = m.accounts, m.domains
    out: dict[int, list[Entry]] = {}
    by_ent: dict[int, list[Entry]] = {}
    for i in range(0, len(account_ids), 500):
        rows = conn.execute(sa.select(a.c.id, d.c.enterprise_id).join(d, d.c.id == a.c.domain_id)
                            .where(a.c.id.in_(account_ids[i : i + 500]),
                                   d.c.enterprise_id.is_not(None)))
        for aid, eid in rows:
            if eid not in by_ent:
                by_ent[eid] = [Entry(r[0], r[1], r[2]) for r in conn.execute(
                    sa.select(T.c.kind, T.c.pattern, T.c.action)
                    .where(T.c.enterprise_id == eid).order_by(T.c.id))]
            if by_ent[eid]:
                out[aid] = by_ent[eid]
    return out


def accounts_with_filters() -> Any:
    """A query for the ids of accounts whose enterprise has filters."""
    a, d = m.accounts, m.domains
    return (sa.select(a.c.id).join(d, d.c.id == a.c.domain_id)
            .where(d.c.enterprise_id.in_(sa.select(T.c.enterprise_id))))


class EnterpriseFilters:
    """Listing and changing the filters, for exmailctl and the admin API:
    full administrators of the enterprise only (they bind every member)."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    async def list(self, actor: Actor, enterprise: str | None = None) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            rows = conn.execute(sa.select(T.c.kind, T.c.pattern, T.c.action)
                                .where(T.c.enterprise_id == ent.id)
                                .order_by(T.c.kind, T.c.pattern))
            return [{"kind": r[0], "pattern": r[1], "action": r[2]} for r in rows]

        return await self.svc.pool.do(thd)

    async def add(self, actor: Actor, kind: str, pattern: str, action: str = "junk",
                  enterprise: str | None = None) -> dict[str, Any]:
        try:
            p = check(kind, pattern, action)
        except FilterError as e:
            raise Invalid(str(e)) from None

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            key = sa.and_(T.c.enterprise_id == ent.id, T.c.kind == kind, T.c.pattern == p)
            if not conn.execute(T.update().where(key).values(action=action)).rowcount:
                conn.execute(T.insert().values(enterprise_id=ent.id, kind=kind, pattern=p,
                                               action=action, created=int(time.time())))
            self.svc._log(conn, actor, ent.id, "filter.add", f"{kind} {p}",
                          after={"action": action})
            return {"kind": kind, "pattern": p, "action": action}

        return await self.svc.pool.transaction(thd)

    async def remove(self, actor: Actor, kind: str, pattern: str,
                     enterprise: str | None = None) -> None:
        try:
            p = check(kind, pattern, "junk")
        except FilterError as e:
            raise NotFound(str(e)) from None

        def thd(conn: sa.Connection) -> None:
            ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            if not conn.execute(T.delete().where(T.c.enterprise_id == ent.id, T.c.kind == kind,
                                                 T.c.pattern == p)).rowcount:
                raise NotFound(f"no {kind} filter {p}")
            self.svc._log(conn, actor, ent.id, "filter.remove", f"{kind} {p}")

        await self.svc.pool.transaction(thd)
