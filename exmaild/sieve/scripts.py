"""Sieve scripts per account in the database: the one place PUTSCRIPT,
`exmailctl sieve` and delivery read and write them.

Every script stored has been parsed and checked first, so the active script
found at delivery normally parses; if it does not (a newer server wrote it)
delivery falls back to implicit keep.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from exmaild.config import SieveConfig
from exmaild.sieve.errors import SieveError
from exmaild.sieve.parser import Script, parse
from exmaild.store import model as m
from exmaild.store.pool import DBThreadPool

T = m.sieve_scripts
# RFC 5804 §1.6: no control characters, not empty; we also keep it short.
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f\u0080-\u009f\u2028\u2029]")


class ScriptError(Exception):
    """A refused script operation; `code` is the ManageSieve response code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ScriptInfo:
    name: str
    active: bool
    size: int


def check_name(name: str) -> None:
    if not name or len(name) > 255 or _BAD_NAME.search(name):
        raise ScriptError(f"invalid script name {name!r}")


def check_script(text: str, cfg: SieveConfig) -> Script:
    """Parse and check a script as PUTSCRIPT does; ScriptError says why not."""
    if len(text.encode("utf-8", "surrogatepass")) > cfg.max_script_size:
        raise ScriptError(f"script larger than {cfg.max_script_size} octets", "QUOTA/MAXSIZE")
    try:
        return parse(text)
    except SieveError as e:
        raise ScriptError(str(e)) from e


class ScriptStore:
    def __init__(self, pool: DBThreadPool, cfg: SieveConfig, ttl: float = 0.0) -> None:
        self.pool = pool
        self.cfg = cfg
        # Parsed scripts by their text: delivery parses each active script once.
        self._parsed: dict[str, Script] = {}
        # Accounts with an active script or sender lists, so that delivery to
        # everyone else costs no query (one took 0.7 ms of CPU, a third of a
        # message's). Dropped by every change made through this store (so
        # ManageSieve changes count at the next delivery) and reloaded at
        # most `ttl` seconds after the last load, for changes made by other
        # processes (exmailctl, other nodes), like [smtp] lookup_cache_ttl.
        self.ttl = ttl
        self._with_rules: frozenset[int] | None = None
        self._loaded_at = 0.0
        # account id -> (loaded at, (script, address) or None, sender list,
        # its enterprise's filters)
        self._rules: dict[int, tuple[float, tuple[str, str] | None, list[Any], list[Any]]] = {}

    def invalidate(self, account_id: int | None = None) -> None:
        self._with_rules = None
        if account_id is None:
            self._rules.clear()
        else:
            self._rules.pop(account_id, None)

    async def rules_for(self, ids: list[int]) -> tuple[dict[int, tuple[str, str]],
                                                      dict[int, list[Any]],
                                                      dict[int, list[Any]]]:
        """(active script and address, sender list entries, enterprise
        filters) of the accounts `ids`, kept like the set above: a member's
        rules cost one query per `ttl` seconds, not one per message."""
        from exmaild.sieve import entfilters
        from exmaild.sieve.senders import load as load_lists

        now = time.monotonic()
        stale = [i for i in ids
                 if (e := self._rules.get(i)) is None or now - e[0] >= self.ttl]
        if stale:
            def thd(conn: sa.Connection) -> tuple[dict[int, tuple[str, str]],
                                                   dict[int, list[Any]],
                                                   dict[int, list[Any]]]:
                return (self.active_scripts(conn, stale), load_lists(conn, stale),
                        entfilters.load(conn, stale))

            active, lists, ents = await self.pool.do(thd)
            if len(self._rules) > 100_000:
                self._rules.clear()
            for i in stale:
                self._rules[i] = (now, active.get(i), lists.get(i, []), ents.get(i, []))
        scripts: dict[int, tuple[str, str]] = {}
        entries: dict[int, list[Any]] = {}
        filters: dict[int, list[Any]] = {}
        for i in ids:
            _, script, lst, ent = self._rules.get(i) or (0.0, None, [], [])
            if script is not None:
                scripts[i] = script
            if lst:
                entries[i] = lst
            if ent:
                filters[i] = ent
        return scripts, entries, filters

    async def accounts_with_rules(self) -> frozenset[int]:
        now = time.monotonic()
        if self._with_rules is None or now - self._loaded_at >= self.ttl:
            self._loaded_at = now
            self._with_rules = await self.pool.do(_with_rules)
        return self._with_rules

    async def list(self, account_id: int) -> list[ScriptInfo]:
        def thd(conn: sa.Connection) -> list[ScriptInfo]:
            rows = conn.execute(
                sa.select(T.c.name, T.c.active, sa.func.length(T.c.script))
                .where(T.c.account_id == account_id).order_by(T.c.name))
            return [ScriptInfo(r[0], bool(r[1]), int(r[2] or 0)) for r in rows]

        return await self.pool.do(thd)

    async def get(self, account_id: int, name: str) -> str | None:
        return await self.pool.do(lambda conn: conn.execute(
            sa.select(T.c.script).where(T.c.account_id == account_id, T.c.name == name)
        ).scalar())

    def space_problem(self, conn: sa.Connection, account_id: int, name: str,
                      size: int) -> str | None:
        if size > self.cfg.max_script_size:
            return f"script larger than {self.cfg.max_script_size} octets"
        names = set(conn.execute(sa.select(T.c.name).where(T.c.account_id == account_id))
                    .scalars())
        if name not in names and len(names) >= self.cfg.max_scripts:
            return f"at most {self.cfg.max_scripts} scripts per account"
        return None

    async def have_space(self, account_id: int, name: str, size: int) -> str | None:
        """None when a script of `size` octets named `name` would fit, else why not."""
        return await self.pool.do(lambda conn: self.space_problem(conn, account_id, name, size))

    async def put(self, account_id: int, name: str, text: str) -> None:
        check_name(name)
        check_script(text, self.cfg)

        def thd(conn: sa.Connection) -> None:
            problem = self.space_problem(conn, account_id, name, len(text.encode()))
            if problem:
                raise ScriptError(problem, "QUOTA/MAXSCRIPTS")
            now = int(time.time())
            done = conn.execute(T.update().where(T.c.account_id == account_id, T.c.name == name)
                                .values(script=text, updated=now)).rowcount
            if not done:
                conn.execute(T.insert().values(account_id=account_id, name=name, script=text,
                                               active=False, updated=now))

        await self.pool.transaction(thd)
        self.invalidate(account_id)

    async def activate(self, account_id: int, name: str) -> None:
        """Make `name` the active script; "" deactivates all (RFC 5804 §2.8)."""

        def thd(conn: sa.Connection) -> None:
            if name:
                found = conn.execute(sa.select(T.c.id).where(
                    T.c.account_id == account_id, T.c.name == name)).scalar()
                if found is None:
                    raise ScriptError(f"no script named {name!r}", "NONEXISTENT")
            conn.execute(T.update().where(T.c.account_id == account_id, T.c.active)
                         .values(active=False))
            if name:
                conn.execute(T.update().where(T.c.id == found).values(active=True))

        await self.pool.transaction(thd)
        self.invalidate(account_id)

    async def delete(self, account_id: int, name: str) -> None:
        def thd(conn: sa.Connection) -> None:
            row = conn.execute(sa.select(T.c.id, T.c.active).where(
                T.c.account_id == account_id, T.c.name == name)).first()
            if row is None:
                raise ScriptError(f"no script named {name!r}", "NONEXISTENT")
            if row[1]:
                raise ScriptError("the active script cannot be deleted", "ACTIVE")
            conn.execute(T.delete().where(T.c.id == row[0]))

        await self.pool.transaction(thd)
        self.invalidate(account_id)

    async def rename(self, account_id: int, old: str, new: str) -> None:
        check_name(new)

        def thd(conn: sa.Connection) -> None:
            if conn.execute(sa.select(T.c.id).where(
                    T.c.account_id == account_id, T.c.name == new)).first():
                raise ScriptError(f"a script named {new!r} exists", "ALREADYEXISTS")
            if not conn.execute(T.update().where(T.c.account_id == account_id, T.c.name == old)
                                .values(name=new)).rowcount:
                raise ScriptError(f"no script named {old!r}", "NONEXISTENT")

        await self.pool.transaction(thd)
        self.invalidate(account_id)

    def active_scripts(self, conn: sa.Connection,
                       account_ids: list[int]) -> dict[int, tuple[str, str]]:
        """account id -> (text of its active script, its address), one query for all."""
        a = m.accounts
        out: dict[int, tuple[str, str]] = {}
        for i in range(0, len(account_ids), 500):  # a big group: bounded IN lists
            rows = conn.execute(sa.select(T.c.account_id, T.c.script, a.c.address)
                                .join(a, a.c.id == T.c.account_id)
                                .where(T.c.account_id.in_(account_ids[i : i + 500]),
                                       T.c.active))
            out.update((r[0], (r[1], r[2])) for r in rows)
        return out

    def parsed(self, text: str) -> Script:
        """The parsed script, cached by its text; raises SieveError."""
        got = self._parsed.get(text)
        if got is None:
            if len(self._parsed) > 10000:
                self._parsed.clear()
            got = self._parsed[text] = parse(text)
        return got


def _with_rules(conn: sa.Connection) -> frozenset[int]:
    from exmaild.sieve.entfilters import accounts_with_filters

    q = sa.union(sa.select(T.c.account_id).where(T.c.active),
                 sa.select(m.member_filters.c.account_id), accounts_with_filters())
    return frozenset(conn.execute(q).scalars())
