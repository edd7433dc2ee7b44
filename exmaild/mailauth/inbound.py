"""The checks of mail arriving on the MX, and what follows from them.

`start()` at MAIL FROM begins SPF (MAIL FROM and HELO) and the client's
reverse DNS on the DNS threads, so they run while the client sends RCPT and
DATA; `InboundChecks.finish()` at the end of DATA adds DKIM and DMARC and
returns a `Verdict`: the Authentication-Results field to prepend, where the
copy goes (INBOX or Junk), or the refusal to send instead of storing it.

Policy ([mailauth]):
- our own domains (the fake-boss rule): a message whose envelope sender or
  From: domain we host, from a client that did not authenticate, is refused
  (550 5.7.1) unless SPF passes for that domain or a DKIM signature aligned
  with it passes, or the client is one of `trusted_relays`;
- DMARC: p=reject failures -> `dmarc_reject_action` (reject: 550 5.7.1, or
  junk); p=quarantine -> `dmarc_quarantine_action` (junk);
- SPF "fail" (-all), unless DMARC passed -> `spf_fail_action` (junk);
- a From: display name equal to a member's, on mail from outside ->
  `X-Exmaild-Impersonation:` and `impersonation_action` (junk).
A temporary DNS failure never refuses for good: where it decides, 451 4.7.1.
"""

from __future__ import annotations

import ipaddress
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from exmaild.mailauth import authresults, checks
from exmaild.mailauth.checks import ARCResult, DKIMResult, IPRevResult, SPFResult
from exmaild.mailauth.dmarc import DMARCResult, aligned, evaluate
from exmaild.mailauth.entpolicy import Policy
from exmaild.mailauth.headers import domain_of, from_addresses, split_message
from exmaild.mailauth.resolver import AuthResolver, DNSTemporaryError

log = Logger(namespace="exmaild.mailauth")

IMPERSONATION = b"X-Exmaild-Impersonation"
NAMES_TTL = 300.0  # seconds the members' display names are cached
_SPACE = re.compile(r"\s+")


def _name_key(name: str) -> str:
    return _SPACE.sub(" ", name.replace('"', "").replace("'", "")).strip().casefold()


class AuthContext:
    """Per store: the resolver, the relay allow-list and a display-name cache."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cfg = app.cfg.mailauth
        q = app.cfg.queue
        self.hostname = app.cfg.server.hostname
        self.resolver = AuthResolver(app.reactor, q.dns_servers, q.dns_timeout,
                                     threads=self.cfg.dns_threads,
                                     check_timeout=self.cfg.check_timeout)
        app.reactor.addSystemEventTrigger("before", "shutdown", self.resolver.stop)
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in self.cfg.trusted_relays]
        self.arc_sealers = frozenset(d.lower().rstrip(".") for d in self.cfg.arc_trusted_sealers)
        self._names: tuple[float, dict[str, str]] | None = None

    def trusted_relay(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        addr = getattr(addr, "ipv4_mapped", None) or addr
        return any(addr in n for n in self.trusted)

    async def member_names(self) -> dict[str, str]:
        """Normalised display name -> address, for every member with a name."""
        now = time.monotonic()
        if self._names is not None and now < self._names[0]:
            return self._names[1]
        names: dict[str, str] = {}
        directory = self.app.store.directory
        for d in await directory.list_domains():
            for acct in await directory.list_accounts(d.name):
                key = _name_key(acct.display_name or "")
                if len(key) >= 3:
                    names.setdefault(key, acct.address)
        self._names = (now + NAMES_TTL, names)
        return names


_contexts: weakref.WeakKeyDictionary[Any, AuthContext] = weakref.WeakKeyDictionary()


def context_for(app: Any) -> AuthContext:
    ctx = _contexts.get(app.store)
    if ctx is None or ctx.cfg is not app.cfg.mailauth:
        ctx = _contexts[app.store] = AuthContext(app)
    return ctx


@dataclass
class Verdict:
    header: bytes  # Authentication-Results (and impersonation) fields to prepend
    junk: bool = False
    refusal: tuple[int, str, str] | None = None  # (code, enhanced, text)
    results: dict[str, str] = field(default_factory=dict)  # for the mail log
    reasons: list[str] = field(default_factory=list)
    authserv_id: str = ""
    # Fields only we may write, removed from the incoming header (exmaild/spam adds X-Spam*).
    strip: tuple[bytes, ...] = (IMPERSONATION,)
    # Recipients whose enterprise's policy files the message in Junk (when
    # `junk` is not already set for everyone).
    junk_accounts: set[int] = field(default_factory=set)

    def apply(self, message: bytes) -> bytes:
        """The message with forged A-R (and impersonation) fields removed and ours added."""
        header, rest = split_message(message)
        header, dropped = authresults.strip_forged(header, self.authserv_id, self.strip)
        if dropped:
            self.results["removed"] = str(dropped)
        return self.header + header + rest

    @property
    def log_fields(self) -> dict[str, str]:
        out = dict(self.results)
        out["action"] = ("reject" if self.refusal else "junk" if self.junk
                         else "junk(some)" if self.junk_accounts else "inbox")
        if self.reasons:
            out["reason"] = "; ".join(self.reasons)
        return out


def start(app: Any, session: Any, sender: str) -> InboundChecks | None:
    """Checks for this transaction, or None (not the MX, authenticated, or off)."""
    if not app.cfg.mailauth.enabled or session.account is not None:
        return None
    if session.flavour.service != "smtp":
        return None
    return InboundChecks(context_for(app), session.ip, session.helo or "", sender)


async def _safe_spf(ctx: AuthContext, ip: str, sender: str,
                    helo: str) -> tuple[SPFResult, SPFResult]:
    try:
        return await ctx.resolver.run(checks.check_spf, ip, sender, helo, ctx.resolver.timeout)
    except Exception as e:
        t = SPFResult("temperror", "mailfrom", domain_of(sender), sender, str(e)[:100])
        return t, SPFResult("temperror", "helo", helo.lower(), helo)


async def _safe_iprev(ctx: AuthContext, ip: str) -> IPRevResult:
    try:
        return await ctx.resolver.run(checks.check_iprev, ip, ctx.resolver)
    except Exception:
        return IPRevResult("temperror", ip)


class InboundChecks:
    def __init__(self, ctx: AuthContext, ip: str, helo: str, sender: str) -> None:
        self.ctx = ctx
        self.ip = ip
        self.helo = helo
        self.sender = sender
        # Started now, awaited at the end of DATA; they never fail.
        self._spf = defer.Deferred.fromCoroutine(_safe_spf(ctx, ip, sender, helo))
        self._iprev = defer.Deferred.fromCoroutine(_safe_iprev(ctx, ip))

    async def _dkim_dmarc(self, message: bytes, from_domain: str, spf: SPFResult
                          ) -> tuple[list[DKIMResult], DMARCResult, ARCResult]:
        res = self.ctx.resolver

        def all_three() -> tuple[list[DKIMResult], DMARCResult, ARCResult]:
            dk = checks.verify_dkim(message, res, res.timeout)
            return dk, evaluate(res, from_domain, spf, dk), checks.verify_arc(
                message, res, res.timeout)

        try:
            return await res.run(all_three)
        except DNSTemporaryError as e:
            return ([], DMARCResult("temperror", from_domain, "none", comment=str(e)[:100]),
                    ARCResult("temperror"))

    async def finish(self, message: bytes, local_domains: frozenset[str],
                     policies: dict[int, Policy] | None = None) -> Verdict:
        """The verdict; `policies`: each local recipient's enterprise policy
        (None: the [mailauth] keys for all)."""
        ctx, cfg = self.ctx, self.ctx.cfg
        spf, helo = await self._spf
        iprev = await self._iprev
        header, _ = split_message(message)
        authors = from_addresses(header)
        from_domains = {domain_of(a) for _, a in authors}
        from_domain = next(iter(from_domains)) if len(from_domains) == 1 else ""
        dkims, dmarc, arc = await self._dkim_dmarc(message, from_domain, spf)
        v = Verdict(b"", authserv_id=ctx.hostname)
        v.results = {"spf": spf.result, "dkim": _dkim_summary(dkims), "dmarc": dmarc.result,
                     "arc": arc.result, "iprev": iprev.result}
        if dmarc.result == "fail":
            v.results["dmarc_policy"] = dmarc.policy
            if arc.result == "pass" and arc.sealer in ctx.arc_sealers:
                # RFC 7489 §6.7 local policy / RFC 8617 §7.2: a forwarder we trust
                # saw the mail authenticated before it changed it.
                v.reasons.append(f"DMARC policy overridden: ARC sealed by {arc.sealer}")
                v.results["dmarc_policy"] = "none (arc)"
                dmarc = DMARCResult(dmarc.result, dmarc.from_domain, "none", dmarc.published,
                                    f"arc override by {arc.sealer}")

        fields = authresults.build(ctx.hostname, spf=spf, helo=helo, dkims=dkims, dmarc=dmarc,
                                   iprev=iprev, arc=arc)
        if ctx.trusted_relay(self.ip):
            # The enterprise's own relay: results recorded, no policy applied.
            v.results["relay"] = "trusted"
            v.header = fields
            return v

        # The fake-boss rule: our own domains only from authenticated sources.
        env_domain = domain_of(self.sender) if "@" in self.sender else ""
        claimed = sorted(d for d in {env_domain, *from_domains} if d and d in local_domains)
        if claimed:
            unproven = [d for d in claimed if not _proven(d, spf, dkims)]
            if unproven:
                temp = spf.result == "temperror" or any(d.result == "temperror" for d in dkims)
                v.reasons.append(f"unauthenticated mail from our domain {unproven[0]}")
                if temp:
                    v.refusal = (451, "4.7.1", f"Sender domain {unproven[0]} could not be "
                                 "authenticated now; try again later")
                else:
                    v.refusal = (550, "5.7.1", f"Message claims to be from {unproven[0]}, which "
                                 "is hosted here, but is not authenticated (SPF or DKIM)")
        mark = await self._impersonation(v, authors, local_domains)
        v.header = fields + mark
        # The rest follows each recipient's enterprise's policy (entpolicy.py).
        by_account = policies or {}
        distinct = sorted(set(by_account.values()) or {Policy.of(cfg)}, key=repr)
        decided = {p: self._decide(p, spf, dmarc, bool(mark)) for p in distinct}
        first = decided[distinct[0]]
        v.reasons += first[2]
        if v.refusal is not None:
            return v
        if all(d[1] is not None for d in decided.values()):
            v.refusal = first[1]
        elif all(d[0] or d[1] is not None for d in decided.values()):
            v.junk = True  # a refusal SMTP cannot give for some recipients alone: Junk
        else:
            v.junk_accounts = {aid for aid, p in by_account.items()
                               if decided[p][0] or decided[p][1] is not None}
        return v

    def _decide(self, pol: Policy, spf: SPFResult, dmarc: DMARCResult, impersonated: bool
                ) -> tuple[bool, tuple[int, str, str] | None, list[str]]:
        """(Junk, refusal, reasons) under one enterprise's policy."""
        junk, refusal, reasons = False, None, []
        if dmarc.result == "fail" and dmarc.policy == "reject":
            reasons.append(f"DMARC p=reject of {dmarc.from_domain}")
            if pol.dmarc_reject_action == "reject":
                refusal = (550, "5.7.1", f"Message rejected by the DMARC policy of "
                           f"{dmarc.from_domain}")
            else:
                junk = True
        elif dmarc.result == "fail" and dmarc.policy == "quarantine":
            reasons.append(f"DMARC p=quarantine of {dmarc.from_domain}")
            junk = pol.dmarc_quarantine_action == "junk"
        if spf.result == "fail" and dmarc.result != "pass" and dmarc.comment[:3] != "arc":
            reasons.append(f"SPF fail for {spf.domain}")
            if pol.spf_fail_action == "reject" and refusal is None:
                refusal = (550, "5.7.1", f"SPF of {spf.domain} does not allow {self.ip} to "
                           "send its mail")
            elif pol.spf_fail_action == "junk":
                junk = True
        if impersonated and pol.impersonation_action == "junk":
            junk = True
        return junk, refusal, reasons

    async def _impersonation(self, v: Verdict, authors: list[tuple[str, str]],
                             local_domains: frozenset[str]) -> bytes:
        outside = [(n, a) for n, a in authors if n and domain_of(a) not in local_domains]
        if not outside:
            return b""
        try:
            names = await self.ctx.member_names()
        except Exception:
            log.failure("members' display names could not be read")
            return b""
        for name, addr in outside:
            member = names.get(_name_key(name))
            if member is not None and member.lower() != addr.lower():
                v.results["impersonation"] = "yes"
                v.reasons.append(f"display name of member {member}")
                text = re.sub(r"[\x00-\x1f\x7f]", " ", f'display name "{name}" of member '
                              f"<{member}> used by <{addr}>")
                return IMPERSONATION + b": " + text.encode("utf-8", "replace") + b"\r\n"
        return b""


def _proven(domain: str, spf: SPFResult, dkims: list[DKIMResult]) -> bool:
    if spf.result == "pass" and aligned(spf.domain, domain, strict=False):
        return True
    return any(d.result == "pass" and aligned(d.domain, domain, strict=False) for d in dkims)


def _dkim_summary(dkims: list[DKIMResult]) -> str:
    if not dkims:
        return "none"
    return ",".join(f"{d.result}" + (f"({d.domain})" if d.domain else "") for d in dkims)
