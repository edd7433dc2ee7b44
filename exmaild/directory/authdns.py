"""The mail-authentication part of a domain's DNS check: is the active DKIM
key published as stored, does SPF name this server, is a DMARC policy
published? Blocking (dnscheck.check's thread); each query is bounded by the
resolver's lifetime, and a timeout or SERVFAIL is the status `dns_error`."""

from __future__ import annotations

from typing import Any

import dns.exception
import dns.resolver

from exmaild.mailauth.keys import DKIMKey, parse_record


def _txt(res: dns.resolver.Resolver, name: str) -> list[str] | None:
    """TXT strings of `name` ([] none, None on a DNS failure)."""
    try:
        ans = res.resolve(name, "TXT", search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return []
    except (dns.exception.DNSException, OSError, ValueError):
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in (ans.rrset or [])]


def dkim_state(res: dns.resolver.Resolver, keys: list[DKIMKey]) -> dict[str, Any]:
    """Per active/standby key: ok | missing | mismatch | dns_error; the status
    is the active keys' worst (no_key when there is none)."""
    selectors = []
    for k in keys:
        texts = _txt(res, k.record_name.rstrip("."))
        if texts is None:
            status = "dns_error"
        else:
            tags = [t for t in (parse_record(x) for x in texts) if "p" in t]
            if not tags:
                status = "missing"
            elif any(t["p"] == k.public_key and t.get("k", "rsa") == k.algorithm
                     for t in tags):
                status = "ok"
            else:
                status = "mismatch"
        selectors.append({"selector": k.selector, "algorithm": k.algorithm,
                          "state": k.state, "status": status})
    active = [s["status"] for s in selectors if s["state"] == "active"]
    order = ("dns_error", "mismatch", "missing", "ok")
    status = next((o for o in order if o in active), "no_key")
    return {"status": status, "selectors": selectors}


def spf_state(spf_records: list[str], mx_host: str) -> dict[str, Any]:
    """ok (one record naming us: `mx` or include/a of our host) | not_us |
    missing | multiple (RFC 7208 §4.5: a permerror)."""
    if not spf_records:
        return {"status": "missing", "record": None}
    if len(spf_records) > 1:
        return {"status": "multiple", "record": spf_records[0]}
    rec = spf_records[0]
    terms = rec.lower().split()
    ours = mx_host.lower().rstrip(".")
    us = any(t.lstrip("+") in ("mx", f"include:{ours}", f"a:{ours}", f"mx:{ours}")
             for t in terms)
    return {"status": "ok" if us else "not_us", "record": rec}


def dmarc_state(res: dns.resolver.Resolver, domain: str) -> dict[str, Any]:
    """found (with its p=) | missing | dns_error, at _dmarc.<domain>."""
    texts = _txt(res, f"_dmarc.{domain}")
    if texts is None:
        return {"status": "dns_error", "policy": None, "record": None}
    recs = [t for t in texts if t.replace(" ", "").lower().startswith("v=dmarc1")]
    if not recs:
        return {"status": "missing", "policy": None, "record": None}
    tags = dict((k.strip().lower(), v.strip()) for k, _, v in
                (p.partition("=") for p in recs[0].split(";")) if k.strip())
    return {"status": "found", "policy": tags.get("p", "none").lower(), "record": recs[0]}


def auth_state(res: dns.resolver.Resolver, domain: str, mx_host: str,
               spf_records: list[str], keys: list[DKIMKey]) -> dict[str, Any]:
    return {"dkim": dkim_state(res, keys), "spf": spf_state(spf_records, mx_host),
            "dmarc": dmarc_state(res, domain)}


def cli_lines(auth: dict[str, Any] | None) -> list[str]:
    """`exmailctl domain check`'s lines for it."""
    if not auth:
        return []
    dk = auth["dkim"]
    sels = ", ".join(f"{s['selector']}({s['state']}): {s['status']}" for s in dk["selectors"])
    dm = auth["dmarc"]
    return [f"dkim\t{dk['status']}" + (f"\t{sels}" if sels else ""),
            f"spf\t{auth['spf']['status']}",
            f"dmarc\t{dm['status']}" + (f"\tp={dm['policy']}" if dm["policy"] else "")]
