"""Domain "check resolution" (manual §1.3): what DNS says about a domain's MX,
SPF (TXT) and ownership-token TXT records, what to set, and a status.

Queries run on a thread with dnspython against `[queue] dns_servers` (or the
system resolver), each bounded by `[queue] dns_timeout`: a timeout or SERVFAIL
gives the status `dns_error` with the reason, never a hang.
"""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from exmaild.directory.authdns import auth_state
from exmaild.netutil import parse_hostport

TOKEN_PREFIX = "exmaild-verify="
STATUSES = ("verified", "pending", "mx_elsewhere", "no_domain", "dns_error")


def _resolver(servers: tuple[str, ...], timeout: float) -> dns.resolver.Resolver:
    if servers:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(*parse_hostport(s, 53)[:2])
                           for s in servers]
    else:
        res = dns.resolver.Resolver()
    res.lifetime = timeout
    res.timeout = min(timeout, 3.0)
    return res


def check(domain: str, *, mx_host: str, token: str, servers: tuple[str, ...],
          timeout: float, dkim_keys: list[Any] | None = None) -> dict[str, Any]:
    """Blocking: run it on a thread. `auth` (authdns.py) is the DKIM, SPF and
    DMARC state; None when the domain's own lookups failed."""
    res = _resolver(servers, timeout)
    want = {"mx": [f"10 {mx_host}."], "spf": f"v=spf1 mx include:{mx_host} ~all",
            "txt": TOKEN_PREFIX + token}
    found: dict[str, Any] = {"mx": [], "spf": [], "token": False}
    out: dict[str, Any] = {"domain": domain, "required": want, "found": found, "error": None,
                           "auth": None}
    try:
        name = dns.name.from_text(domain)
        mx = res.resolve(name, "MX", search=False, raise_on_no_answer=False)
        found["mx"] = sorted(r.to_text() for r in (mx.rrset or []))
        txt = res.resolve(name, "TXT", search=False, raise_on_no_answer=False)
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in (txt.rrset or [])]
    except dns.resolver.NXDOMAIN:
        out["status"] = "no_domain"
        out["error"] = f"{domain} does not exist in DNS (NXDOMAIN)"
        return out
    except dns.exception.Timeout:
        out["status"] = "dns_error"
        out["error"] = f"DNS timed out after {timeout:g} s"
        return out
    except (dns.resolver.NoNameservers, dns.exception.DNSException, OSError, ValueError) as e:
        out["status"] = "dns_error"
        out["error"] = f"DNS failure (e.g. SERVFAIL): {str(e)[:300]}"
        return out
    found["spf"] = [t for t in texts if t.lower().startswith("v=spf1")]
    found["token"] = want["txt"] in texts
    ours = mx_host.lower().rstrip(".")
    mx_ours = any(r.split()[-1].lower().rstrip(".") == ours for r in found["mx"])
    found["mx_ok"] = mx_ours
    found["spf_ok"] = any(("include:" + ours) in t.lower() or " mx" in t.lower()
                          for t in found["spf"])
    out["auth"] = auth_state(res, domain, mx_host, found["spf"], dkim_keys or [])
    if found["mx"] and not mx_ours:
        out["status"] = "mx_elsewhere"
    elif found["token"] and mx_ours:
        out["status"] = "verified"
    else:
        out["status"] = "pending"
    return out
