"""DNS block lists (RFC 5782): is the client's address listed in a zone?

The lookup starts when the client sends its first MAIL FROM, on the mailauth
DNS threads (bounded like every check there), and is awaited at RCPT
(`dnsbl_action = "reject"`: `554 5.7.1 ... blocked using ZONE`, Postfix's
wording) or at the end of DATA (`"junk"`). A DNS failure never refuses."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from exmaild.mailauth.resolver import AuthResolver, DNSTemporaryError

log = Logger(namespace="exmaild.spam")

# 127.255.255.0/24: the list refuses the query (Spamhaus: public resolver,
# over quota), it does not list the address.
_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True)
class Listing:
    result: str  # "listed" | "clean" | "temperror" | "none" (not asked)
    zone: str = ""
    answer: str = ""  # the A record the zone answered

    @property
    def listed(self) -> bool:
        return self.result == "listed"


def query_name(ip: str, zone: str) -> str | None:
    """`2.0.0.127.zone` for IPv4, the nibbles for IPv6 (RFC 5782 §2.1, §2.4)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    addr = getattr(addr, "ipv4_mapped", None) or addr
    if addr.version == 4:
        rev = ".".join(reversed(str(addr).split(".")))
    else:
        rev = ".".join(reversed(addr.exploded.replace(":", "")))
    return f"{rev}.{zone.strip('.')}"


def lookup(resolver: AuthResolver, ip: str, zones: tuple[str, ...]) -> Listing:
    """Blocking: the first zone listing `ip` (on a DNS thread)."""
    temp = ""
    for zone in zones:
        name = query_name(ip, zone)
        if name is None:
            return Listing("none")
        try:
            answers = [r.address for r in resolver.query(name, "A")]
        except DNSTemporaryError as e:
            temp = str(e)
            continue
        for a in answers:
            try:
                addr = ipaddress.ip_address(a)
            except ValueError:
                continue
            if addr in _LOOPBACK and addr not in _REFUSED:
                return Listing("listed", zone.strip("."), a)
    return Listing("temperror", answer=temp[:100]) if temp else Listing("clean")


def start(resolver: AuthResolver, ip: str, zones: tuple[str, ...]) -> defer.Deferred[Listing]:
    """The lookup, begun now; the Deferred never fails."""

    async def run() -> Listing:
        try:
            return await resolver.run(lookup, resolver, ip, zones)
        except Exception as e:
            log.warn("DNSBL lookup of {ip} failed: {error}", ip=ip, error=str(e)[:200])
            return Listing("temperror")

    return defer.Deferred.fromCoroutine(run())


def refusal_text(ip: str, listing: Listing) -> str:
    return f"Service unavailable; client [{ip}] blocked using {listing.zone}"


async def wait(d: Any) -> Listing:
    """The listing, leaving the shared Deferred usable by the next awaiter."""
    result: Listing = await _copy(d)
    return result


def _copy(d: defer.Deferred[Listing]) -> defer.Deferred[Listing]:
    out: defer.Deferred[Listing] = defer.Deferred()

    def got(v: Listing) -> Listing:
        out.callback(v)
        return v

    d.addCallback(got)
    return out
