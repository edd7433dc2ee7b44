"""DNS for the authentication checks, shared by dkimpy, pyspf and our DMARC.

Those libraries are blocking, so each check runs whole on a small thread pool
of its own (never a database thread, never the reactor), with a bounded wait:
dnspython's lifetime bounds each query and `run()` stops waiting for a check
after `check_timeout` (the thread finishes its query and is dropped). The
name servers and timeout are the queue's (`[queue] dns_servers`,
`dns_timeout`), so tests and split-horizon set-ups configure DNS once. The
answers are cached by dnspython's LRU cache, which honours each record's TTL.

pyspf looks names up through its module-level `DNSLookup`; it is pointed once
at `_spf_lookup`, which uses the resolver of the calling thread (set by
`AuthResolver` around each check) and pyspf's own dnspython lookup otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
import dns.reversename
import spf
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from exmaild.netutil import parse_hostport


class DNSTemporaryError(Exception):
    """SERVFAIL, a timeout or an unreachable server: the answer is unknown."""


_local = threading.local()
_spf_default = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[Any]:
    res: AuthResolver | None = getattr(_local, "resolver", None)
    if res is None:
        return _spf_default(name, qtype, strict, timeout)
    return res.spf_records(name, qtype)


spf.DNSLookup = _spf_lookup


MAX_CACHE_SECONDS = 300.0


class _ShortCache(dns.resolver.LRUCache):
    """dnspython's LRU cache, but nothing is kept longer than MAX_CACHE_SECONDS
    (a negative answer without a SOA would otherwise be kept for a day)."""

    def put(self, key: Any, value: Any) -> None:
        value.expiration = min(value.expiration, time.time() + MAX_CACHE_SECONDS)
        super().put(key, value)


class AuthResolver:
    def __init__(self, reactor: Any, servers: Sequence[str] = (), timeout: float = 10.0,
                 threads: int = 4, check_timeout: float | None = None) -> None:
        self.reactor = reactor
        if servers:
            res = dns.resolver.Resolver(configure=False)
            res.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_hostport(s, 53)[:2]) for s in servers
            ]
        else:
            res = dns.resolver.Resolver()
        res.lifetime = timeout
        res.timeout = min(timeout, 3.0)
        res.cache = _ShortCache(10000)
        self._res = res
        self.timeout = timeout
        # A check makes several queries (SPF up to 10 + includes); bound the whole.
        self.check_timeout = check_timeout or 2 * timeout
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="exmaild-authdns")
        self._running = False
        # Checks queued or running at most: a client looping MAIL/RSET must not
        # grow the pool's queue without bound. Past it a check is a temperror.
        self.max_pending = threads * 64
        self.pending = 0

    def start(self) -> None:
        if not self._running:
            self._pool.start()
            self._running = True

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._pool.stop()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) on a DNS thread, with this resolver for pyspf; raises
        DNSTemporaryError when it takes longer than check_timeout."""
        self.start()
        if self.pending >= self.max_pending:
            raise DNSTemporaryError(f"{self.pending} DNS checks already waiting")

        def job() -> Any:
            _local.resolver = self
            try:
                return fn(*args)
            finally:
                _local.resolver = None

        d = threads.deferToThreadPool(self.reactor, self._pool, job)
        self.pending += 1

        def done(result: Any) -> Any:
            self.pending -= 1
            return result

        d.addBoth(done)  # when the thread finishes, also after a timeout below
        waiting: defer.Deferred[Any] = defer.Deferred()
        d.chainDeferred(waiting)
        waiting.addTimeout(self.check_timeout, self.reactor)
        try:
            return await waiting
        except defer.TimeoutError:
            raise DNSTemporaryError(f"DNS checks took longer than {self.check_timeout}s") from None

    # -- blocking, on a DNS thread ------------------------------------------------
    def query(self, name: str, rdtype: str) -> list[Any]:
        """Records of `name`; [] for NXDOMAIN or no such records."""
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return []
        try:
            answer = self._res.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as e:
            raise DNSTemporaryError(f"{name}/{rdtype}: {e}") from None
        return list(answer.rrset) if answer.rrset is not None else []

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record with its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.query(name, "TXT")]

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's `dnsfunc`: the key record, None when there is none."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        records = self.txt(name)
        return records[0] if records else None

    def spf_records(self, name: str, qtype: str) -> list[Any]:
        """pyspf's DNSLookup: [((name, type), value)] as its dnspython lookup returns."""
        out: list[Any] = []
        try:
            records = self.query(name, qtype)
        except DNSTemporaryError as e:
            raise spf.TempError(f"DNS {e}") from None
        for r in records:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), r.address))
            elif qtype == "MX":
                out.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), r.strings))
        return out

    def reverse(self, ip: str) -> list[str]:
        """PTR names of an address (lower case, no final dot)."""
        name = dns.reversename.from_address(ip).to_text()
        return [r.target.to_text(omit_final_dot=True).lower() for r in self.query(name, "PTR")]

    def addresses(self, host: str) -> list[str]:
        out: list[str] = []
        for rdtype in ("A", "AAAA"):
            out.extend(r.address for r in self.query(host, rdtype))
        return out
