"""DMARC evaluation (RFC 7489) over the SPF and DKIM results.

The policy record is TXT at _dmarc.<From domain>, else at _dmarc.<its
organizational domain> (the public suffix list, bundled with the
`publicsuffixlist` package: nothing is fetched). Identifier alignment is
relaxed (same organizational domain) or strict (same name) per adkim/aspf.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from exmaild.mailauth.checks import DKIMResult, SPFResult
from exmaild.mailauth.resolver import AuthResolver, DNSTemporaryError

_psl = PublicSuffixList()


def org_domain(domain: str) -> str:
    """The organizational domain (RFC 7489 §3.2): public suffix plus one label."""
    domain = domain.lower().rstrip(".")
    return _psl.privatesuffix(domain) or domain


def aligned(a: str, b: str, strict: bool) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if strict else org_domain(a) == org_domain(b)


@dataclass(frozen=True)
class Record:
    p: str  # none | quarantine | reject
    sp: str
    adkim_strict: bool
    aspf_strict: bool
    pct: int
    domain: str  # where it was found


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass fail none temperror permerror
    from_domain: str
    policy: str  # the policy to apply: none | quarantine | reject
    published: str = ""  # p= (or sp=) as published, for the header
    comment: str = ""


def parse_record(text: str, domain: str) -> Record | None:
    tags: dict[str, str] = {}
    for part in text.split(";"):
        k, eq, v = part.partition("=")
        if eq:
            tags.setdefault(k.strip().lower(), v.strip())
    if tags.get("v") != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    if p not in ("none", "quarantine", "reject"):
        # §6.6.3: a record without a valid p= counts as p=none if it has rua=.
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    if sp not in ("none", "quarantine", "reject"):
        sp = p
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return Record(p, sp, tags.get("adkim", "r").lower() == "s",
                  tags.get("aspf", "r").lower() == "s", pct, domain)


def find_record(resolver: AuthResolver, from_domain: str) -> Record | None:
    """The applicable record; raises DNSTemporaryError when DNS cannot say."""
    org = org_domain(from_domain)
    for name in dict.fromkeys((from_domain, org)):
        found = [r for r in (parse_record(t.decode("utf-8", "replace"), name)
                             for t in resolver.txt(f"_dmarc.{name}")) if r is not None]
        if len(found) == 1:  # §6.6.3: several records are no record
            return found[0]
        if found:
            return None
    return None


def evaluate(resolver: AuthResolver, from_domain: str, spf: SPFResult,
             dkims: list[DKIMResult], rng: random.Random | None = None) -> DMARCResult:
    """Blocking (DNS); run on an AuthResolver thread."""
    if not from_domain:
        return DMARCResult("none", "", "none", comment="no single From: domain")
    try:
        rec = find_record(resolver, from_domain)
    except DNSTemporaryError as e:
        return DMARCResult("temperror", from_domain, "none", comment=str(e)[:200])
    if rec is None:
        return DMARCResult("none", from_domain, "none")
    published = rec.p if rec.domain == from_domain else rec.sp
    dkim_ok = any(d.result == "pass" and aligned(d.domain, from_domain, rec.adkim_strict)
                  for d in dkims)
    spf_ok = spf.result == "pass" and aligned(spf.domain, from_domain, rec.aspf_strict)
    if dkim_ok or spf_ok:
        return DMARCResult("pass", from_domain, "none", published)
    if spf.result == "temperror" or any(d.result == "temperror" for d in dkims):
        # A pass may have been missed: apply no policy on a DNS hiccup.
        return DMARCResult("temperror", from_domain, "none", published, "SPF or DKIM temperror")
    policy = published
    if rec.pct < 100 and (rng or random).randrange(100) >= rec.pct:
        # §6.6.4: outside the sample, the next less strict policy applies.
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return DMARCResult("fail", from_domain, policy, published)
