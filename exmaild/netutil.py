"""Small network helpers shared by config, the protocol servers and the queue."""

from __future__ import annotations

import ipaddress


def parse_hostport(value: str, default_port: int) -> tuple[str, int, bool]:
    """`host`, `host:port`, `[host]:port`, `[2001:db8::1]:port` -> (host, port, bracketed).

    Brackets mean "this host itself, no MX lookup", as in Postfix's relayhost.
    """
    value = value.strip()
    if not value:
        raise ValueError("empty host")
    bracketed = value.startswith("[")
    if bracketed:
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("expected [host] or [host]:port")
        port_text = rest[1:]
    elif value.count(":") > 1:  # a bare IPv6 address
        host, port_text = value, ""
    else:
        host, _, port_text = value.partition(":")
    port = default_port
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port {port_text!r}")
        port = int(port_text)
    if not host:
        raise ValueError("empty host")
    return host.removeprefix("IPv6:").removeprefix("ipv6:"), port, bracketed


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or an IPv4-mapped loopback; False for anything else,
    including what is not an IP address."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def hostname_problem(name: str) -> str | None:
    """Why `name` cannot stand for this server to other mail servers (EHLO,
    greeting), or None when it is a fully qualified domain name."""
    n = name.strip().rstrip(".").lower()
    if not n:
        return "is empty"
    if n == "localhost" or n.endswith((".localhost", ".localdomain")) or n == "localdomain":
        return "is a name for this machine only (localhost)"
    if "." not in n:
        return "has no dot (not a fully qualified domain name)"
    try:
        ipaddress.ip_address(n)
    except ValueError:
        return None
    return "is an IP address, not a domain name"
