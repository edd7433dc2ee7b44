"""Mail backup rules (manual §4.4.6.1 邮件备份): an enterprise's full
administrators name sources (members or business mailboxes, departments with
their sub-departments, or everyone), a direction (mail the sources sent,
received, or both), keywords that must all appear in the subject or the body
(none: every message) and a destination member and folder. A copy of each
matching message is placed in that folder (made when missing) by the same
ingest request that stores the message (one blob, one transaction):

- received: delivered over SMTP to a source (directly, through an alias or a
  mail group, or as a domain's catch-all);
- sent: submitted over SMTP by a source (authenticated submission).

Only mail from the moment a rule exists is copied, as the manual says.
Delivery reads the rules from a cache kept `[smtp] lookup_cache_ttl` seconds
(dropped at once by a change through the daemon's API).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from twisted.logger import Logger

from exmaild.directory.actor import Actor
from exmaild.directory.errors import Invalid, NotFound
from exmaild.directory.tree import DeptTree
from exmaild.mailstore.ingest import Target
from exmaild.store import model as m

log = Logger(namespace="exmaild.sieve")
T = m.backup_rules
DIRECTIONS = ("sent", "received", "both")
MAX_KEYWORDS = 20
MAX_KEYWORD = 100


@dataclass(frozen=True)
class Loaded:
    """A rule as delivery uses it: sources expanded to account ids."""

    id: int
    accounts: frozenset[int]
    direction: str
    keywords: tuple[str, ...]  # case-folded
    dest: int
    folder: str

    def matches(self, subject: str, body: Callable[[], str]) -> bool:
        if not self.keywords:
            return True
        s = subject.casefold()
        text: str | None = None
        for k in self.keywords:
            if k in s:
                continue
            if text is None:
                text = body().casefold()
            if k not in text:
                return False
        return True


def parse_keywords(value: str | Iterable[str]) -> list[str]:
    """Keywords from "a;b" (the manual's form, `；` too) or a list; each one
    stripped, empty ones dropped."""
    items = value.replace("；", ";").split(";") if isinstance(value, str) else list(value)
    out = [str(k).strip() for k in items if str(k).strip()]
    if len(out) > MAX_KEYWORDS or any(len(k) > MAX_KEYWORD for k in out):
        raise Invalid(f"at most {MAX_KEYWORDS} keywords of at most {MAX_KEYWORD} characters")
    return list(dict.fromkeys(out))


def _load_all(conn: sa.Connection) -> list[Loaded]:
    rows = conn.execute(sa.select(T).order_by(T.c.id)).all()
    if not rows:
        return []
    a, d, ad = m.accounts.c, m.domains.c, m.account_departments.c
    out: list[Loaded] = []
    trees: dict[int, DeptTree] = {}
    for r in rows:
        members: set[int] = set()
        depts: set[int] = set()
        everyone = False
        for s in r.sources or []:
            if s.get("all"):
                everyone = True
            elif "member" in s:
                members.add(int(s["member"]))
            elif "department" in s:
                depts.add(int(s["department"]))
        live = a.deleted_at.is_(None)
        if everyone:
            members |= set(conn.execute(sa.select(a.id).join(m.domains, d.id == a.domain_id)
                                        .where(d.enterprise_id == r.enterprise_id, live))
                           .scalars())
        elif depts:
            if r.enterprise_id not in trees:
                trees[r.enterprise_id] = DeptTree.load(conn, r.enterprise_id)
            ids = sorted(trees[r.enterprise_id].subtree(depts))
            for i in range(0, len(ids), 500):
                members |= set(conn.execute(sa.select(ad.account_id).where(
                    ad.department_id.in_(ids[i:i + 500]))).scalars())
        out.append(Loaded(r.id, frozenset(members), r.direction,
                          tuple(k.casefold() for k in r.keywords or []),
                          r.dest_account_id, r.folder))
    return out


class BackupCache:
    def __init__(self, store: Any, clock: Callable[[], float], ttl: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._rules: tuple[float, list[Loaded]] | None = None

    def forget(self) -> None:
        self._rules = None

    async def rules(self) -> list[Loaded]:
        now = self.clock()
        if self._rules is not None and now < self._rules[0]:
            return self._rules[1]
        got = await self.store.pool.do(_load_all)
        self._rules = (now + self.ttl, got)
        return got


def cache_of(app: Any) -> BackupCache:
    c = getattr(app, "_backup_rules", None)
    if c is None:
        c = app._backup_rules = BackupCache(app.store, app.reactor.seconds,
                                            app.cfg.smtp.lookup_cache_ttl)
    return c


async def targets(d: Any, message: Any, head: bytes, start: int) -> list[Target]:
    """The backup copies of the SMTP delivery `d` (exmaild/protocols/smtp/
    delivery.py): one optional target per destination and folder whose rule
    matches, the folders made first. A fault here costs the backup copy only
    (logged), never the message."""
    try:
        rules = await cache_of(d.app).rules()
        if not rules:
            return []
        txn = d.txn
        received = {r.account_id for r in txn.local if r.account_id is not None and not r.group}
        received |= d.group_members
        sender = d.session.account.id if d.session.account is not None else None
        hit = [r for r in rules
               if (r.direction != "sent" and received & r.accounts)
               or (r.direction != "received" and sender is not None and sender in r.accounts)]
        if not hit:
            return []
        subject, body = _text(message, head, start, txn.sender) \
            if any(r.keywords for r in hit) else ("", lambda: "")
        out: list[Target] = []
        from exmaild.sieve.catchall import ensure_folder

        for r in hit:
            if (r.dest, r.folder) in {(t.account_id, t.mailbox) for t in out}:
                continue
            if r.matches(subject, body):
                await ensure_folder(d.app.store, r.dest, r.folder)
                out.append(Target(r.dest, r.folder, optional=True))
        if out:
            from exmaild.protocols.smtp.delivery import mail_line

            mail_line(txn.queue_id, "backup to " + ", ".join(
                f"{t.account_id}:{t.mailbox}" for t in out))
        return out
    except Exception:
        log.failure("{queue_id}: backup rules failed; no backup copy", queue_id=d.txn.queue_id)
        return []


def _text(message: Any, head: bytes, start: int, sender: str) -> tuple[str, Callable[[], str]]:
    from exmaild.mailstore.spool import SpooledMessage
    from exmaild.sieve.message import MessageContext

    data = message.buffer() if isinstance(message, SpooledMessage) else message
    ctx = MessageContext.from_bytes(data, envelope_from=sender, envelope_to="", head=head,
                                    start=start)
    return " ".join(ctx.headers("subject")), ctx.body_text


class BackupRules:
    """Listing, adding and removing rules: full administrators only."""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    def _out(self, conn: sa.Connection, r: Any) -> dict[str, Any]:
        a = m.accounts.c
        tree = DeptTree.load(conn, r.enterprise_id)
        sources: list[str] = []
        for s in r.sources or []:
            if s.get("all"):
                sources.append("all")
            elif "member" in s:
                addr = conn.execute(sa.select(a.address).where(a.id == s["member"])).scalar()
                sources.append(addr or f"#{s['member']}")
            elif "department" in s:
                sources.append("dept:" + (tree.path(s["department"])
                                          if s["department"] in tree.by_id else "?"))
        dest = conn.execute(sa.select(a.address).where(a.id == r.dest_account_id)).scalar()
        return {"id": r.id, "sources": sources, "direction": r.direction,
                "keywords": list(r.keywords or []), "destination": dest, "folder": r.folder}

    async def list(self, actor: Actor, enterprise: str | None = None) -> list[dict[str, Any]]:
        def thd(conn: sa.Connection) -> list[dict[str, Any]]:
            ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            rows = conn.execute(sa.select(T).where(T.c.enterprise_id == ent.id)
                                .order_by(T.c.id)).all()
            return [self._out(conn, r) for r in rows]

        return await self.svc.pool.do(thd)

    async def add(self, actor: Actor, *, sources: list[str], direction: str,
                  keywords: str | list[str], destination: str, folder: str,
                  enterprise: str | None = None) -> dict[str, Any]:
        """sources: addresses, "dept:PATH" or "all"."""
        if direction not in DIRECTIONS:
            raise Invalid(f"direction must be one of {', '.join(DIRECTIONS)}")
        words = parse_keywords(keywords)
        from exmaild.protocols.imap import folders as imapnames

        folder = imapnames.canonical(folder.strip())
        if not folder or folder.upper() == "INBOX" or imapnames.check_new_name(folder):
            raise Invalid(f"not a folder name for a backup: {folder!r}")
        if not sources:
            raise Invalid("name at least one source (an address, dept:PATH or all)")

        def thd(conn: sa.Connection) -> dict[str, Any]:
            ent = self.svc._ent_for(conn, actor, destination, enterprise)
            self.svc._need(actor, "admins")
            dest = self._account(conn, ent.id, destination)
            tree = DeptTree.load(conn, ent.id)
            stored: list[dict[str, Any]] = []
            for s in sources:
                s = s.strip()
                if s.lower() == "all":
                    stored.append({"all": True})
                elif s.lower().startswith("dept:"):
                    stored.append({"department": tree.by_path(s[5:]).id})
                else:
                    stored.append({"member": self._account(conn, ent.id, s)})
            rid = conn.execute(T.insert().values(
                enterprise_id=ent.id, sources=stored, direction=direction, keywords=words,
                dest_account_id=dest, folder=folder, created=int(time.time()))
            ).inserted_primary_key[0]
            row = conn.execute(sa.select(T).where(T.c.id == rid)).one()
            out = self._out(conn, row)
            self.svc._log(conn, actor, ent.id, "backup.add", str(rid), after=out)
            return out

        return await self.svc.pool.transaction(thd)

    @staticmethod
    def _account(conn: sa.Connection, enterprise_id: int, address: str) -> int:
        a = m.accounts.c
        row = conn.execute(sa.select(a.id, a.kind).join(m.domains, m.domains.c.id == a.domain_id)
                           .where(a.address == address.strip().lower(),
                                  a.deleted_at.is_(None),
                                  m.domains.c.enterprise_id == enterprise_id)).first()
        if row is None:
            raise NotFound(f"no member or business mailbox {address} in this enterprise")
        if row.kind not in ("member", "shared"):
            raise Invalid(f"{address} is a {row.kind}, not a member or business mailbox")
        return int(row.id)

    async def remove(self, actor: Actor, rule_id: int, enterprise: str | None = None) -> None:
        def thd(conn: sa.Connection) -> None:
            if actor.enterprise_id is None and not enterprise:
                eid = conn.execute(sa.select(T.c.enterprise_id).where(T.c.id == rule_id)).scalar()
                if eid is None:
                    raise NotFound(f"no backup rule {rule_id}")
                ent = conn.execute(sa.select(m.enterprises).where(
                    m.enterprises.c.id == eid)).one()
            else:
                ent = self.svc._enterprise(conn, actor, enterprise)
            self.svc._need(actor, "admins")
            if not conn.execute(T.delete().where(T.c.id == rule_id,
                                                 T.c.enterprise_id == ent.id)).rowcount:
                raise NotFound(f"no backup rule {rule_id}")
            self.svc._log(conn, actor, ent.id, "backup.remove", str(rule_id))

        await self.svc.pool.transaction(thd)
