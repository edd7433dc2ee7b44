"""The PROXY protocol (HAProxy's, versions 1 and 2) on listeners behind a load balancer.

A balancer in TCP mode hides the client: every connection seems to come from
the balancer. With `[proxy] listeners` naming a listener, each connection to
it must start with a PROXY header, and the daemon sees the address the header
carries everywhere it looks at the peer: connection admission (per-address
caps), logs, the login throttle and IP rules, `Received:` fields.

Twisted ships a PROXY wrapper, but it connects the wrapped protocol before the
header has arrived, so a mail server's greeting, its "connect from" log line
and its per-address admission would all see the balancer. Here the protocol
the listener serves is built only once the header is parsed, with the real
address, and bytes after the header are handed on untouched (an implicit-TLS
listener's handshake included: the header comes before TLS).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import address, protocol
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import Logger
from zope.interface import directlyProvides, providedBy

log = Logger(namespace="exmaild.proxy")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_MAX_TLVS = 4096  # octets of v2 TLVs (SSL details, unique ids) we are willing to hold


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY header we accept (the reason is the message)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said. `source` None: a LOCAL (v2) or UNKNOWN (v1)
    connection, the balancer's own health check: the socket's peer counts."""

    source: address.IPv4Address | address.IPv6Address | None
    destination: address.IPv4Address | address.IPv6Address | None
    version: int
    length: int  # octets the header took


def _ip_address(kind: str, host: str, port: int) -> address.IPv4Address | address.IPv6Address:
    if kind == "TCP4":
        return address.IPv4Address("TCP", host, port)
    return address.IPv6Address("TCP", host, port)


def _v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("v1 header longer than 107 octets")
        return None
    try:
        parts = data[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, None, 1, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header is not 'PROXY TCP4|TCP6 src dst sport dport'")
    kind, src, dst, sport, dport = parts[1:]
    want = ipaddress.IPv4Address if kind == "TCP4" else ipaddress.IPv6Address
    try:
        if not (isinstance(ipaddress.ip_address(src), want)
                and isinstance(ipaddress.ip_address(dst), want)):
            raise ValueError
        ports = [int(p) for p in (sport, dport)]
        # Leading zeros and signs are not in the grammar.
        if any(not p.isdigit() or (len(p) > 1 and p[0] == "0") for p in (sport, dport)):
            raise ValueError
        if not all(0 <= p <= 65535 for p in ports):
            raise ValueError
    except ValueError:
        raise ProxyHeaderError(f"v1 header has a bad {kind} address or port") from None
    return ProxyHeader(_ip_address(kind, src, ports[0]), _ip_address(kind, dst, ports[1]), 1,
                       end + 2)


def _v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2:
        raise ProxyHeaderError(f"v2 header of version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"v2 header with unknown command {command}")
    if length > 216 + V2_MAX_TLVS:  # 216: the largest address block (two unix paths)
        raise ProxyHeaderError(f"v2 header of {length} octets")
    if len(data) < 16 + length:
        return None
    body = data[16:16 + length]
    total = 16 + length
    if command == 0:  # LOCAL: the balancer itself (health checks)
        return ProxyHeader(None, None, 2, total)
    family, transport = fam >> 4, fam & 0x0F
    if transport != 1 or family not in (1, 2):  # not TCP over IPv4/IPv6: no address we use
        return ProxyHeader(None, None, 2, total)
    if family == 1:
        if length < 12:
            raise ProxyHeaderError("v2 TCP4 header too short for its addresses")
        src = str(ipaddress.IPv4Address(body[0:4]))
        dst = str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
        return ProxyHeader(_ip_address("TCP4", src, sport), _ip_address("TCP4", dst, dport), 2,
                           total)
    if length < 36:
        raise ProxyHeaderError("v2 TCP6 header too short for its addresses")
    src6 = ipaddress.IPv6Address(body[0:16])
    dst6 = ipaddress.IPv6Address(body[16:32])
    sport, dport = struct.unpack("!HH", body[32:36])
    # An IPv4 client reaching an IPv6 balancer arrives as ::ffff:a.b.c.d.
    if src6.ipv4_mapped is not None:
        return ProxyHeader(_ip_address("TCP4", str(src6.ipv4_mapped), sport),
                           _ip_address("TCP6", str(dst6), dport), 2, total)
    return ProxyHeader(_ip_address("TCP6", str(src6), sport), _ip_address("TCP6", str(dst6), dport),
                       2, total)


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`; None while more octets are needed."""
    if data[:len(V2_SIGNATURE)] == V2_SIGNATURE[:len(data)]:
        return _v2(data) if len(data) >= len(V2_SIGNATURE) else None
    if b"PROXY "[:len(data)] == data[:6]:
        return _v1(data) if len(data) >= 6 else None
    raise ProxyHeaderError("the connection did not start with a PROXY header")


class ProxiedTransport:
    """The connection as the served protocol sees it: the header's addresses,
    everything else the real transport's (writes, TLS, producers, closing)."""

    def __init__(self, transport: Any, peer: Any, host: Any) -> None:
        self._transport = transport
        self._peer = peer
        self._host = host
        directlyProvides(self, providedBy(transport))

    def getPeer(self) -> Any:
        return self._peer

    def getHost(self) -> Any:
        return self._host

    def __getattr__(self, name: str) -> Any:
        # Looked up at each use: startTLS() replaces getHandle on the real transport.
        return getattr(self._transport, name)


class ProxyHeaderProtocol(protocol.Protocol):
    """Reads the header, then builds and connects the listener's own protocol."""

    def __init__(self, factory: ProxyHeaderFactory, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self.inner: protocol.Protocol | None = None
        self._buf = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        peer = ipaddress.ip_address(self.addr.host)
        if not any(peer in net for net in self.factory.trusted):
            log.warn("{listener}: connection from {ip} closed: not in proxy.trusted_networks, "
                     "and the listener takes only PROXY connections from there",
                     listener=self.factory.listener, ip=self.addr.host)
            self.transport.abortConnection()
            return
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.warn("{listener}: no PROXY header from {ip} within {timeout} s; connection closed",
                 listener=self.factory.listener, ip=self.addr.host, timeout=self.factory.timeout)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        self._buf += data
        try:
            header = parse(self._buf)
        except ProxyHeaderError as e:
            self._stop_timer()
            log.warn("{listener}: bad PROXY header from {ip}: {reason}; connection closed",
                     listener=self.factory.listener, ip=self.addr.host, reason=str(e))
            self.transport.abortConnection()
            return
        if header is None:
            return
        self._stop_timer()
        rest, self._buf = self._buf[header.length:], b""
        peer = header.source or self.transport.getPeer()
        host = header.destination or self.transport.getHost()
        inner = self.factory.wrapped.buildProtocol(peer)
        if inner is None:
            self.transport.loseConnection()
            return
        self.inner = inner
        inner.makeConnection(ProxiedTransport(self.transport, peer, host))
        if rest:
            inner.dataReceived(rest)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._stop_timer()
        if self.inner is not None:
            self.inner.connectionLost(reason)


class ProxyHeaderFactory(protocol.Factory):
    """Wraps a listener's factory (TLS wrapper included) so each connection
    starts with a PROXY header from one of the trusted networks."""

    noisy = False

    def __init__(self, wrapped: IProtocolFactory, *, listener: str, reactor: Any,
                 trusted: Sequence[str], timeout: float) -> None:
        self.wrapped = wrapped
        self.listener = listener
        self.reactor = reactor
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted]
        self.timeout = timeout

    def logPrefix(self) -> str:
        inner = getattr(self.wrapped, "logPrefix", None)
        return f"{inner() if inner else type(self.wrapped).__name__} (PROXY)"

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def buildProtocol(self, addr: Any) -> ProxyHeaderProtocol:
        return ProxyHeaderProtocol(self, addr)
