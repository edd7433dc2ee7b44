"""What TLS a destination demands: DANE (TLSA records, RFC 7672) for an MX
host, else the domain's MTA-STS policy (RFC 8461), else nothing beyond the
opportunistic default. delivery.Connector asks `demand()` for each server
before it connects; a demand that cannot be met defers the mail (4.7.5),
except an MTA-STS policy in `testing` mode, which is only logged. Every
outcome is counted for TLS-RPT (tlsrpt.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger

from exmaild.queue import tlsrpt
from exmaild.queue.mtasts import MTASTS, Policy
from exmaild.queue.resolver import MXResolver, ResolveError, Target, ip_literal, is_ip

if TYPE_CHECKING:
    from exmaild.config import QueueConfig
    from exmaild.queue.delivery import Route

log = Logger(namespace="exmaild.tlspolicy")


@dataclass(frozen=True)
class Demand:
    kind: str  # tlsrpt policy type: "tlsa" | "sts"
    route: Any  # the route to connect with: STARTTLS required, maybe verified
    tlsa: list[Any] | None  # DANE: records the certificate must match
    enforce: bool  # False: MTA-STS testing, failures only logged
    why: str  # "MTA-STS policy of example.com (enforce)", for reasons


class TLSPolicy:
    def __init__(self, q: QueueConfig, resolver: MXResolver, store: Any,
                 ca_pem: bytes | None) -> None:
        self.resolver = resolver
        self.store = store
        self.dane = q.dane and q.dns_trust_ad
        self.sts = MTASTS(resolver, store, q.mta_sts_port, ca_pem) if q.mta_sts else None
        self._pending: set[defer.Deferred[None]] = set()

    async def sts_for(self, route: Route) -> Policy | None:
        """The MTA-STS policy of a route's domain (MX routes only: a smarthost
        is the administrator's choice)."""
        if self.sts is None or route.host is not None or ip_literal(route.domain):
            return None
        try:
            return await self.sts.policy_for(route.domain)
        except Exception as e:  # the database: wait rather than risk ignoring a policy
            from exmaild.queue.delivery import DestinationError

            log.failure("MTA-STS: looking up the policy of {domain} failed", domain=route.domain)
            raise DestinationError(False, "4.3.0", f"local error looking up the MTA-STS policy"
                                   f" of {route.domain}: {e.__class__.__name__}") from None

    async def demand(self, route: Route, policy: Policy | None, target: Target) -> Demand | None:
        """What connecting to `target` must achieve; DestinationError when it
        must not be used at all (a TLSA lookup failing, an MX outside the policy)."""
        mx_route = route.host is None
        if self.dane and mx_route and not is_ip(target.host):
            try:
                records = await self.resolver.tlsa(target.host, target.port)
            except ResolveError as e:  # a validating resolver failing: maybe bogus (§2.2)
                from exmaild.queue.delivery import DestinationError

                self.count(route.domain, "tlsa", target.host, "dnssec-invalid")
                raise DestinationError(False, "4.7.5", f"TLSA lookup of {target.host} failed:"
                                       f" {e.text}", target.label) from None
            if records:
                return Demand("tlsa", dataclasses.replace(route, tls="starttls", verify=False),
                              records, True, f"DANE TLSA of {target.host}")
        if policy is None or policy.mode == "none":
            return None
        enforce = policy.mode == "enforce"
        why = f"MTA-STS policy of {policy.domain} ({policy.mode})"
        if not policy.matches(target.host):
            self.count(route.domain, "sts", target.host, "validation-failure")
            text = f"{why}: MX host {target.host} is not one of mx: {', '.join(policy.mx)}"
            if enforce:
                from exmaild.queue.delivery import DestinationError

                raise DestinationError(False, "4.7.5", text, target.label)
            log.warn("{text}; testing mode, delivering anyway", text=text)
            return None
        return Demand("sts", dataclasses.replace(route, tls="starttls", verify=True), None,
                      enforce, why)

    def count(self, domain: str, policy_type: str, mx: str, result: str) -> None:
        """One TLS-RPT session outcome, written in the background (a report
        is statistics: never holds up delivery)."""
        d = defer.Deferred.fromCoroutine(tlsrpt.count(self.store, domain, policy_type, mx,
                                                      result))
        d.addErrback(lambda f: log.failure("TLS-RPT count not recorded", f))
        self._pending.add(d)
        d.addBoth(lambda _: self._pending.discard(d))

    async def flush(self) -> None:
        """Wait for the counts being written (tests; the runner's run_once)."""
        while self._pending:
            await defer.DeferredList(list(self._pending))


def failure_type(e: Exception) -> str:
    """The RFC 8460 §4.3 result type of a failed demand."""
    status = getattr(e, "status", "")
    text = str(e)
    if status == "4.7.4":
        return "starttls-not-supported"
    if "TLSA record" in text:
        return "validation-failure"
    if "certificate verify failed" in text or "handshake" in text.lower():
        return "certificate-not-trusted"
    return "validation-failure"
