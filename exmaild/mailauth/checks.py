"""The blocking checks, each run whole on an AuthResolver thread: SPF
(pyspf, RFC 7208), DKIM verification (dkimpy, RFC 6376/8463) and the
client's forward-confirmed reverse DNS (iprev, RFC 8601 §3)."""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

import dkim
import spf

from exmaild.mailauth.headers import split_message
from exmaild.mailauth.resolver import AuthResolver, DNSTemporaryError

# dkimpy logs every failed signature at ERROR through `logging`; the verdict
# is ours to report (Authentication-Results, the mail log), so it stays quiet.
QUIET = logging.getLogger("exmaild.mailauth.dkimpy")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False
QUIET.setLevel(logging.CRITICAL + 1)

MAX_SIGNATURES = 10  # DKIM signatures verified per message; more are "policy" (ignored)
MAX_PTR = 10  # PTR names tried for iprev
_DOMAIN = re.compile(r"(?i)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+")


@dataclass(frozen=True)
class SPFResult:
    result: str  # pass fail softfail neutral none permerror temperror
    identity: str  # "mailfrom" | "helo"
    domain: str  # the domain whose policy was evaluated ("" when none)
    subject: str  # smtp.mailfrom / smtp.helo value
    comment: str = ""


@dataclass(frozen=True)
class DKIMResult:
    result: str  # pass fail neutral permerror temperror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    comment: str = ""


@dataclass(frozen=True)
class ARCResult:
    result: str  # pass fail none temperror
    instances: int = 0
    sealer: str = ""  # d= of the newest ARC-Seal
    selector: str = ""
    comment: str = ""


@dataclass(frozen=True)
class IPRevResult:
    result: str  # pass fail temperror
    ip: str
    name: str = ""  # the confirmed name


def _spf_one(ip: str, sender: str, helo: str, identity: str, timeout: float) -> SPFResult:
    subject = sender if identity == "mailfrom" else helo
    domain = sender.rpartition("@")[2].lower() if identity == "mailfrom" else helo.lower()
    try:
        q = spf.query(i=ip, s=sender, h=helo, timeout=timeout, querytime=timeout)
        result, _code, explanation = q.check()
    except spf.TempError as e:
        return SPFResult("temperror", identity, domain, subject, str(e))
    except Exception as e:  # pyspf raises on odd input; RFC 7208 §4.6: permerror
        return SPFResult("permerror", identity, domain, subject, str(e)[:200])
    return SPFResult(result, identity, domain, subject, explanation if result != "pass" else "")


def check_spf(ip: str, sender: str, helo: str, timeout: float) -> tuple[SPFResult, SPFResult]:
    """(MAIL FROM result, HELO result). With the null sender the MAIL FROM
    identity is postmaster@HELO (RFC 7208 §2.4)."""
    helo_ok = bool(_DOMAIN.fullmatch(helo or ""))
    if helo_ok:
        by_helo = _spf_one(ip, f"postmaster@{helo}", helo, "helo", timeout)
    else:
        by_helo = SPFResult("none", "helo", "", helo or "", "HELO is not a domain name")
    if not sender:
        if not helo_ok:
            return SPFResult("none", "mailfrom", "", "<>", "null sender"), by_helo
        r = by_helo
        return SPFResult(r.result, "mailfrom", r.domain, f"postmaster@{helo}", r.comment), by_helo
    domain = sender.rpartition("@")[2]
    if not _DOMAIN.fullmatch(domain):
        return SPFResult("none", "mailfrom", "", sender, "not a domain name"), by_helo
    return _spf_one(ip, sender, helo or domain, "mailfrom", timeout), by_helo


def verify_dkim(message: bytes, resolver: AuthResolver, timeout: float) -> list[DKIMResult]:
    """One result per DKIM-Signature field (the first MAX_SIGNATURES)."""
    if b"dkim-signature" not in split_message(message)[0].lower():
        return []  # most mail: no need to have dkimpy parse it
    try:
        d = dkim.DKIM(message, logger=QUIET, timeout=int(max(1, timeout)))
    except Exception as e:
        return [DKIMResult("permerror", "", "", "", f"unparsable message ({e})")]
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    out = []
    for idx in range(min(count, MAX_SIGNATURES)):
        lookup: dict[str, str] = {}

        def dnsfunc(name: bytes, timeout: float = 5, lookup: dict[str, str] = lookup) -> bytes:
            try:
                found = resolver.dkim_txt(name)
            except DNSTemporaryError as e:
                lookup["temp"] = str(e)
                return b""
            if found is None:
                lookup["missing"] = "no key for signature"
                return b""
            return found

        verifier = dkim.DKIM(message, logger=QUIET, timeout=int(max(1, timeout)))
        try:
            ok = verifier.verify(idx, dnsfunc=dnsfunc)
            why = ""
        except dkim.DKIMException as e:
            ok, why = False, str(e)
        fields = getattr(verifier, "signature_fields", {}) or {}
        dom = fields.get(b"d", b"").decode("ascii", "replace").lower()
        sel = fields.get(b"s", b"").decode("ascii", "replace")
        alg = fields.get(b"a", b"").decode("ascii", "replace")
        if ok:
            out.append(DKIMResult("pass", dom, sel, alg))
        elif "temp" in lookup:
            out.append(DKIMResult("temperror", dom, sel, alg, "key lookup failed"))
        elif "missing" in lookup:
            out.append(DKIMResult("permerror", dom, sel, alg, "no key for signature"))
        elif why and not dom:
            out.append(DKIMResult("permerror", dom, sel, alg, why[:200]))
        else:
            out.append(DKIMResult("fail", dom, sel, alg, (why or "signature did not verify")
                                  [:200]))
    return out


def verify_arc(message: bytes, resolver: AuthResolver, timeout: float) -> ARCResult:
    """The ARC chain's validation status (RFC 8617 §5.2), with dkimpy."""
    if b"arc-seal" not in split_message(message)[0].lower():
        return ARCResult("none")
    lookup: dict[str, str] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        try:
            return resolver.dkim_txt(name) or b""
        except DNSTemporaryError as e:
            lookup["temp"] = str(e)
            return b""

    try:
        cv, data, why = dkim.arc_verify(message, logger=QUIET, dnsfunc=dnsfunc,
                                        timeout=int(max(1, timeout)))
    except Exception as e:
        return ARCResult("fail", comment=str(e)[:200])
    if cv == dkim.CV_None:
        return ARCResult("none")
    newest = data[0] if data else {}
    sealer = newest.get("as-domain", b"").decode("ascii", "replace").lower()
    selector = newest.get("as-selector", b"").decode("ascii", "replace")
    if cv == dkim.CV_Pass:
        return ARCResult("pass", len(data), sealer, selector)
    if "temp" in lookup:
        return ARCResult("temperror", len(data), sealer, selector, "key lookup failed")
    return ARCResult("fail", len(data), sealer, selector, str(why)[:200])


def check_iprev(ip: str, resolver: AuthResolver) -> IPRevResult:
    """Forward-confirmed reverse DNS: a PTR name whose A/AAAA includes the address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return IPRevResult("fail", ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    text = str(mapped or addr)
    try:
        names = resolver.reverse(text)
        for name in names[:MAX_PTR]:
            if text in (str(ipaddress.ip_address(a)) for a in resolver.addresses(name)):
                return IPRevResult("pass", text, name)
    except DNSTemporaryError:
        return IPRevResult("temperror", text)
    return IPRevResult("fail", text)
