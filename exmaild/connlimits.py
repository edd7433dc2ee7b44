"""Connection admission: caps for all listeners together, per listener, per
source address and for connections that have not logged in yet.

Every connection holds a descriptor, so the caps are derived from the
descriptor limit (raised from the soft to the hard limit at start-up), less a
reserve for the database, blob segments, logs and outbound delivery. Each
listener may take at most three quarters of the total and its pre-login connections
at most an equal share of it, so idle unauthenticated IMAP connections cannot
lock SMTP (or anything else) out. Loopback is not exempt. A refused client
gets its protocol's temporary refusal (written by the factory's protocol)
and the refusal is logged with the address and the limit.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from exmaild.config import LimitsConfig

log = Logger(namespace="exmaild.limits")

# Default total cap. An idle logged-in IMAP session measured ~10 KB of RSS
# (300 sessions with INBOX selected, in IDLE), so memory is not what limits.
MAX_DERIVED = 25_000
PER_IP_DEFAULT = 100
REFUSE_GRACE = 10  # seconds a refused client may take to read its refusal
LOG_EVERY = 1.0  # seconds between refusal log lines per listener and limit


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; (old soft, new soft)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def somaxconn() -> int | None:
    """The kernel's cap on a listen(2) backlog (Linux), or None if unknown."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Caps:
    total: int
    per_listener: int
    per_ip: int
    preauth: int
    descriptors: int


def derive(limits: LimitsConfig, descriptors: int, listeners: int) -> Caps:
    """The caps: configured values, else derived from the descriptor limit."""
    reserve = max(64, descriptors // 8)
    total = limits.max_connections or max(8, min(MAX_DERIVED, descriptors - reserve))
    per_listener = limits.max_connections_per_listener or max(1, total - total // 4)
    preauth = limits.max_preauth_connections or max(1, total // max(1, listeners))
    per_ip = limits.max_connections_per_ip or max(1, min(PER_IP_DEFAULT, preauth))
    return Caps(total, per_listener, per_ip, preauth, descriptors)


class Ticket:
    """One admitted connection's place in the counts."""

    def __init__(self, listener: ListenerAdmission | None = None, ip: str = "") -> None:
        self._listener = listener
        self.ip = ip
        self.preauth = listener is not None
        self.released = listener is None

    def authenticated(self) -> None:
        """The client logged in: it no longer counts as pre-login."""
        if self.preauth and not self.released:
            self.preauth = False
            assert self._listener is not None
            self._listener.preauth -= 1

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        assert self._listener is not None
        self._listener.closed(self)


@dataclass(frozen=True)
class Refused:
    limit: str  # the config key of the limit that was reached


class Admission:
    """The counts shared by every listener of the daemon."""

    def __init__(self, caps: Caps, clock: Callable[[], float]) -> None:
        self.caps = caps
        self.clock = clock
        self.count = 0
        self.listeners: list[ListenerAdmission] = []

    def listener(self, service: str) -> ListenerAdmission:
        la = ListenerAdmission(self, service)
        self.listeners.append(la)
        return la

    def open_counts(self) -> dict[str, int]:
        """Open connections per listener (for /metrics)."""
        return {la.service: la.count for la in self.listeners}


class ListenerAdmission:
    def __init__(self, shared: Admission, service: str) -> None:
        self.shared = shared
        self.service = service
        self.count = 0
        self.preauth = 0
        self.per_ip: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def admit(self, ip: str) -> Ticket | Refused:
        caps = self.shared.caps
        if self.per_ip[ip] >= caps.per_ip:
            return self._refuse(ip, "max_connections_per_ip", caps.per_ip)
        if self.preauth >= caps.preauth:
            return self._refuse(ip, "max_preauth_connections", caps.preauth)
        if self.count >= caps.per_listener:
            return self._refuse(ip, "max_connections_per_listener", caps.per_listener)
        if self.shared.count >= caps.total:
            return self._refuse(ip, "max_connections", caps.total)
        self.shared.count += 1
        self.count += 1
        self.preauth += 1
        self.per_ip[ip] += 1
        return Ticket(self, ip)

    def closed(self, ticket: Ticket) -> None:
        self.shared.count -= 1
        self.count -= 1
        if ticket.preauth:
            self.preauth -= 1
        self.per_ip[ticket.ip] -= 1
        if self.per_ip[ticket.ip] <= 0:
            del self.per_ip[ticket.ip]

    def _refuse(self, ip: str, limit: str, value: int) -> Refused:
        # A flood of refusals makes one line a second per limit, with a count.
        now = self.shared.clock()
        if now - self._logged.get(limit, -LOG_EVERY) < LOG_EVERY:
            self._suppressed[limit] += 1
        else:
            self._logged[limit] = now
            more = self._suppressed.pop(limit, 0)
            log.warn("{service}: refused connection from {ip}: limits.{limit} ({value}) "
                     "reached{more}", service=self.service, ip=ip, limit=limit, value=value,
                     more=f" ({more} more refused since the last line)" if more else "")
        return Refused(limit)


class Refusal(protocol.Protocol):
    """Says `line` and hangs up (TLS listeners: after the handshake)."""

    def __init__(self, line: bytes, reactor: Any) -> None:
        self.line = line
        self.reactor = reactor
        self._abort: Any = None

    def connectionMade(self) -> None:
        self.transport.write(self.line)
        self.transport.loseConnection()
        self._abort = self.reactor.callLater(REFUSE_GRACE, self.transport.abortConnection)

    def connectionLost(self, reason: Any = None) -> None:
        if self._abort is not None and self._abort.active():
            self._abort.cancel()


def admit(factory: Any, addr: Any, refusal: bytes, listener: str) -> Ticket | Refusal:
    """For a factory's buildProtocol: a ticket, or the protocol that refuses.
    `listener` is the factory's [listen] key, the label of its metrics."""
    metrics = factory.app.store.metrics
    admission: ListenerAdmission | None = getattr(factory, "admission", None)
    if admission is None:
        metrics.connection(listener)
        return Ticket()
    got = admission.admit(str(getattr(addr, "host", addr)))
    if isinstance(got, Refused):
        metrics.refused.labels(listener, got.limit).inc()
        return Refusal(refusal, factory.app.reactor)
    metrics.connection(listener)
    return got
