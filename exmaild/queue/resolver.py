"""Where to connect for a destination: MX lookup with dnspython.

Threading: dnspython's resolver is blocking (its asyncio variant needs an
asyncio loop, which the daemon's epoll reactor is not), so every lookup runs
on a small thread pool of our own. A slow or silent name server then ties up
a DNS thread, never a database thread or the reactor. One `Resolver` object
(with its LRU cache, which honours TTLs) is shared by those threads; dnspython
only reads its configuration during a query.

Outcomes follow RFC 5321 §5.1 and Postfix:
- MX records sorted by preference, shuffled among equals; none at all (NOERROR,
  no answer): the domain's own A/AAAA records ("implicit MX");
- a null MX (`0 .`, RFC 7505): permanent failure 5.1.10;
- NXDOMAIN: permanent 5.4.4; SERVFAIL, timeouts, unreachable servers: 4.4.3;
- `[192.0.2.1]` / `[IPv6:2001:db8::1]` destinations are used as they are.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from exmaild.netutil import parse_hostport

MAX_ADDRESSES = 5  # Postfix smtp_mx_address_limit: addresses tried per delivery


@dataclass(frozen=True)
class Target:
    """One address to connect to, with the name it was found under."""

    host: str  # MX host name, relay host, or the address itself for literals
    address: str  # an IPv4 or IPv6 address
    port: int

    @property
    def label(self) -> str:
        """Postfix's `host[address]:port`, for logs and status."""
        return f"{self.host}[{self.address}]:{self.port}"

    @property
    def ipv6(self) -> bool:
        return ":" in self.address


class ResolveError(Exception):
    """The destination cannot be reached through DNS; `permanent` decides
    between a bounce and a retry."""

    def __init__(self, permanent: bool, status: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status  # RFC 3463 enhanced status code
        self.text = text


def ip_literal(domain: str) -> str | None:
    """The address inside an RFC 5321 address literal, or None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def order_mx(
    records: Sequence[tuple[int, str]], shuffle: Callable[[list[Any]], None] = random.shuffle
) -> list[str]:
    """MX host names by preference, equal preferences in random order (§5.1)."""
    by_pref: dict[int, list[str]] = {}
    for pref, host in records:
        hosts = by_pref.setdefault(pref, [])
        if host not in hosts:
            hosts.append(host)
    out: list[str] = []
    for pref in sorted(by_pref):
        group = by_pref[pref]
        shuffle(group)
        out.extend(group)
    return out


class _Failures:
    """Lookup failures seen while resolving; the worst decides the outcome."""

    def __init__(self) -> None:
        self.temporary: str | None = None
        self.permanent: str | None = None

    def error(self) -> ResolveError:
        if self.temporary:
            return ResolveError(False, "4.4.3", self.temporary)
        return ResolveError(True, "5.4.4", self.permanent or "Host or domain name not found")


def _name_error(name: str, rdtype: str, temporary: bool) -> str:
    suffix = "Host not found, try again" if temporary else "Host not found"
    return (
        "Host or domain name not found. "
        f"Name service error for name={name} type={rdtype}: {suffix}"
    )


class MXResolver:
    def __init__(
        self, reactor: Any, servers: Sequence[str] = (), timeout: float = 10.0, threads: int = 4,
        trust_ad: bool = False,
    ) -> None:
        self.reactor = reactor
        self.trust_ad = trust_ad
        if servers:
            res = dns.resolver.Resolver(configure=False)
            nameservers = []
            for s in servers:
                host, port, _ = parse_hostport(s, 53)
                nameservers.append(dns.nameserver.Do53Nameserver(host, port))
            res.nameservers = nameservers
        else:
            res = dns.resolver.Resolver()
        res.lifetime = timeout
        res.timeout = min(timeout, 3.0)
        res.cache = dns.resolver.LRUCache(10000)
        if trust_ad:  # ask for the AD bit (RFC 6840 §5.7): DANE needs validated answers
            res.flags = dns.flags.RD | dns.flags.AD
        self._res = res
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="exmaild-dns")
        self._running = False
        self._stopped = False  # a stopped ThreadPool cannot start again

    def start(self) -> None:
        if self._stopped:
            raise ResolveError(False, "4.3.2", "the daemon is shutting down")
        if not self._running:
            self._pool.start()
            self._running = True

    def stop(self) -> None:
        self._stopped = True
        if self._running:
            self._running = False
            self._pool.stop()

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.start()
        return await threads.deferToThreadPool(self.reactor, self._pool, fn, *args)

    async def for_domain(self, domain: str, port: int) -> list[Target]:
        """Addresses for mail to `domain` (MX, else A/AAAA), best first."""
        literal = ip_literal(domain)
        if literal is not None:
            return [Target(literal, literal, port)]
        if domain.startswith("["):
            raise ResolveError(True, "5.1.2", f"bad address literal {domain}")
        return await self._run(self._mx_targets, domain, port)

    async def for_host(self, host: str, port: int) -> list[Target]:
        """Addresses of one host (a bracketed relay host): A/AAAA, no MX."""
        if is_ip(host):
            return [Target(host, host, port)]
        return await self._run(self._host_targets, host, port)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run another blocking network call (an MTA-STS policy fetch) on the DNS threads."""
        return await self._run(fn, *args)

    async def txt(self, name: str) -> list[str] | None:
        """The TXT strings of `name` (each record's strings joined); None when it
        has none or does not exist; ResolveError (temporary) on trouble."""
        return await self._run(self._txt, name)

    async def tlsa(self, host: str, port: int) -> list[Any] | None:
        """The TLSA records of `_port._tcp.host` when the answer is DNSSEC-validated
        (AD from a trusted resolver), else None (RFC 7672 §2.2: insecure means no DANE)."""
        return await self._run(self._tlsa, host, port)

    # -- on a DNS thread ---------------------------------------------------
    def _txt(self, name: str) -> list[str] | None:
        try:
            records = self._query(name, "TXT")
        except ResolveError as e:
            if e.permanent:
                return None
            raise
        return [b"".join(r.strings).decode("utf-8", "replace") for r in records or ()]

    def _tlsa(self, host: str, port: int) -> list[Any] | None:
        if not self.trust_ad:
            return None
        name = f"_{port}._tcp.{host}"
        try:
            answer = self._res.resolve(dns.name.from_text(name), "TLSA", search=False,
                                       raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.DNSException, OSError):
            raise ResolveError(False, "4.4.3", _name_error(name, "TLSA", True)) from None
        if answer.rrset is None or not answer.response.flags & dns.flags.AD:
            return None
        return list(answer.rrset)

    def _query(self, name: str, rdtype: str) -> list[Any] | None:
        """Answer records; None for "the name exists but has no such records".

        Raises ResolveError for NXDOMAIN (permanent) or trouble (temporary).
        """
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError) as e:
            raise ResolveError(True, "5.1.2", f"bad destination domain {name!r}: {e}") from None
        try:
            answer = self._res.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            raise ResolveError(True, "5.4.4", _name_error(name, rdtype, False)) from None
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.YXDOMAIN,
                dns.exception.DNSException, OSError):
            raise ResolveError(False, "4.4.3", _name_error(name, rdtype, True)) from None
        if answer.rrset is None:
            return None
        return list(answer.rrset)

    def _addresses(self, host: str, failures: _Failures) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            try:
                records = self._query(host, rdtype)
            except ResolveError as e:
                if e.permanent:
                    failures.permanent = failures.permanent or e.text
                    break  # NXDOMAIN for A: no point asking for AAAA
                failures.temporary = failures.temporary or e.text
                continue
            out.extend(r.address for r in records or ())
        if not out and failures.permanent is None and failures.temporary is None:
            failures.permanent = _name_error(host, "A", False)
        return out

    def _host_targets(self, host: str, port: int) -> list[Target]:
        failures = _Failures()
        addrs = self._addresses(host, failures)
        if not addrs:
            raise failures.error()
        return [Target(host, a, port) for a in addrs[:MAX_ADDRESSES]]

    def _mx_targets(self, domain: str, port: int) -> list[Target]:
        records = self._query(domain, "MX")
        if records is None:  # no MX: the domain itself (RFC 5321 §5.1 implicit MX)
            return self._host_targets(domain, port)
        mx = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in records]
        real = [(p, h) for p, h in mx if h not in ("", ".")]
        if not real:  # RFC 7505 null MX
            raise ResolveError(
                True, "5.1.10", f"Domain {domain} does not accept mail (nullMX)"
            )
        failures = _Failures()
        targets: list[Target] = []
        for host in order_mx(real):
            if is_ip(host):  # an address where a name belongs: tolerate, as resolvers do
                targets.append(Target(host, host, port))
            else:
                targets.extend(Target(host, a, port) for a in self._addresses(host, failures))
            if len(targets) >= MAX_ADDRESSES:
                break
        if not targets:
            raise failures.error()
        return targets[:MAX_ADDRESSES]
