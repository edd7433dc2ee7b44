"""Who may send what to whom: hosted domains, local users, relaying, send-as, quota.

RCPT checks ask the directory for two things: which domains we host and which
account an address reaches. Both answers are cached for `[smtp]
lookup_cache_ttl` seconds (each node its own small cache), so a busy MX asks
the database once per recipient address every few seconds instead of once per
RCPT, and a cached answer costs no trip to the database thread at all. The
cost is that a domain or account added (or removed) is seen by RCPT up to that
many seconds late; quota is checked again, authoritatively, when the message
is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.commands import Address
from exmaild.protocols.smtp.relay import classify_recipient
from exmaild.protocols.smtp.replies import Reply
from exmaild.store.records import Account

MAX_CACHED = 20_000  # addresses; the cache is simply emptied when it grows past this


@dataclass(frozen=True)
class Accepted:
    """A recipient we take: `account` None means a remote address (relayed)."""

    address: str  # canonical RFC 5321 text, domain lower-cased
    account: Account | None
    catchall: bool = False  # an unknown address the domain's catch-all takes


MISS = object()  # not in the cache (or expired): look it up


class DirectoryCache:
    """Hosted domains and address -> account, kept `ttl` seconds (0: not kept).

    `peek_*` answer from the cache alone (MISS or None when they cannot), so a
    RCPT whose answers are cached is decided without leaving the reactor thread.
    """

    def __init__(self, store: Any, clock: Callable[[], float], ttl: float) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._domains: tuple[float, frozenset[str]] | None = None
        self._accounts: dict[str, tuple[float, Account | None]] = {}
        from exmaild.sieve.catchall import CatchAllCache

        self.catchall = CatchAllCache(store, clock, ttl)  # manual §4.4.4.3

    def peek_domains(self) -> frozenset[str] | None:
        if self._domains is not None and self.clock() < self._domains[0]:
            return self._domains[1]
        return None

    def peek_account(self, address: str) -> Any:
        hit = self._accounts.get(address)
        if hit is not None and self.clock() < hit[0]:
            return hit[1]
        return MISS

    async def domains(self) -> frozenset[str]:
        now = self.clock()
        if self._domains is not None and now < self._domains[0]:
            return self._domains[1]
        names = frozenset(d.name for d in await self.store.directory.list_domains())
        if self.ttl > 0:
            self._domains = (now + self.ttl, names)
        return names

    async def account(self, address: str) -> Account | None:
        now = self.clock()
        hit = self._accounts.get(address)
        if hit is not None and now < hit[0]:
            return hit[1]
        acct = await self.store.directory.get_account(address)
        if self.ttl > 0:
            if len(self._accounts) >= MAX_CACHED:
                self._accounts.clear()
            self._accounts[address] = (now + self.ttl, acct)
        return acct

    def forget(self) -> None:
        self._domains = None
        self._accounts.clear()
        self.catchall.forget()


def mailbox_key(addr: Address) -> str | None:
    """The directory's form of an address (lower case, A-label domain), or None
    for one the directory cannot hold (UTF-8 local part, address literal)."""
    if not addr.local.isascii() or addr.is_literal or not addr.domain:
        return None
    return f"{addr.local.lower()}@{addr.domain_ascii}"


def postmaster_domain(hostname: str, domains: frozenset[str]) -> str | None:
    """Where the bare <postmaster> (RFC 5321 §4.5.1) goes: the domain of our
    host name if we host it, else the host name itself, else the first hosted
    domain."""
    hostname = hostname.lower().rstrip(".")
    parent = hostname.partition(".")[2]
    for name in (parent, hostname):
        if name in domains:
            return name
    return min(domains) if domains else None


class Policy:
    def __init__(self, cache: DirectoryCache, hostname: str, srs: Any = None) -> None:
        self.cache = cache
        self.hostname = hostname
        # exmaild.sieve.srs.SRS: bounces to the SRS senders of redirected mail
        # are relayed back to the original sender.
        self.srs = srs

    async def check_recipient(
        self, addr: Address, *, relay_permitted: bool, size: int | None
    ) -> Accepted | Reply:
        """Accept a RCPT address or say why not (relay, unknown user, disabled, full)."""
        decided = self.check_cached(addr, relay_permitted=relay_permitted, size=size)
        if decided is not MISS:
            return decided  # type: ignore[return-value]
        domains = await self.cache.domains()
        cls = classify_recipient(addr, domains.__contains__)
        refusal = cls.refusal(relay_permitted=relay_permitted)
        if refusal is not None:
            return refusal
        if not cls.local:
            return Accepted(cls.address.text, None)
        if self.srs is not None and (back := self.srs.reverse(cls.address.local)) is not None:
            if back.rpartition("@")[2].lower() not in domains:
                return Accepted(back, None)
            # An original sender of a domain hosted here (since): delivered locally.
            return _judge(back, await self.cache.account(back.lower()), size)
        key = self._key(cls.address, domains)
        acct = await self.cache.account(key) if key else None
        if acct is None and key:
            caught = await self.cache.catchall.lookup(key)
            if caught is not None:
                return _caught(cls.address.text, caught, size)
        return _judge(cls.address.text, acct, size)

    def check_cached(self, addr: Address, *, relay_permitted: bool, size: int | None) -> Any:
        """check_recipient's answer if the cache holds all it needs, else MISS."""
        domains = self.cache.peek_domains()
        if domains is None:
            return MISS
        cls = classify_recipient(addr, domains.__contains__)
        refusal = cls.refusal(relay_permitted=relay_permitted)
        if refusal is not None:
            return refusal
        if not cls.local:
            return Accepted(cls.address.text, None)
        if self.srs is not None and (back := self.srs.reverse(cls.address.local)) is not None:
            if back.rpartition("@")[2].lower() not in domains:
                return Accepted(back, None)
            got = self.cache.peek_account(back.lower())
            return MISS if got is MISS else _judge(back, got, size)
        key = self._key(cls.address, domains)
        acct = self.cache.peek_account(key) if key else None
        if acct is MISS:
            return MISS
        if acct is None and key:
            caught = self.cache.catchall.peek(key)
            if caught is MISS:
                return MISS
            if caught is not None:
                return _caught(cls.address.text, caught, size)
        return _judge(cls.address.text, acct, size)

    def _key(self, address: Address, domains: frozenset[str]) -> str | None:
        if address.domain:
            return mailbox_key(address)
        domain = postmaster_domain(self.hostname, domains)
        return f"postmaster@{domain}" if domain else None


def _judge(text: str, acct: Account | None, size: int | None) -> Accepted | Reply:
    prefix = f"<{text}>:"
    if acct is None:
        return R.USER_UNKNOWN.prefixed(prefix)
    if not acct.enabled:
        return R.MAILBOX_DISABLED.prefixed(prefix)
    # The declared SIZE, or at least one octet: a mailbox at its quota takes nothing.
    if acct.quota_bytes and acct.used_bytes + max(size or 0, 1) > acct.quota_bytes:
        return R.MAILBOX_FULL.prefixed(prefix)
    return Accepted(text, acct)


def _caught(text: str, acct: Account, size: int | None) -> Accepted | Reply:
    got = _judge(text, acct, size)
    return dataclasses.replace(got, catchall=True) if isinstance(got, Accepted) else got


def check_sender(sender: Address | None, owned: frozenset[str], username: str) -> Reply | None:
    """An authenticated member may send as their own address or an alias (groups
    and delegation come later); never as the null sender, which is for bounces."""
    key = mailbox_key(sender) if sender is not None else None
    if key is not None and key in owned:
        return None
    shown = sender.text if sender is not None else ""
    return R.SENDER_NOT_OWNED.with_text(f"<{shown}>: {R.SENDER_NOT_OWNED.text} {username}")
