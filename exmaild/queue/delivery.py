"""One delivery session: find the destination's servers, connect, and run
mail transactions on that connection, turning replies into per-recipient
outcomes. Nothing here touches the database; the runner records outcomes.

Postfix is the model for the choices the RFCs leave open: try at most five
addresses, skip servers that greet with 4xx/5xx, try the next server when
one cannot be reached, deliver in plaintext on the same server when an
opportunistic TLS handshake fails, treat a failed SASL login as temporary,
and write every reason as Postfix does ("host X said: ... (in reply to RCPT
TO command)") so people who know Postfix logs can read ours.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import endpoints, error
from twisted.logger import Logger

from exmaild.config import QueueConfig
from exmaild.netutil import hostname_problem, is_loopback, parse_hostport
from exmaild.queue import dane
from exmaild.queue.client import (
    ServerReply,
    SMTPClient,
    SMTPClientError,
    TLSHandshakeFailed,
    encode_xtext,
    tls_creator,
)
from exmaild.queue.resolver import MXResolver, ResolveError, Target

log = Logger()

SENT, DEFER, BOUNCE = "sent", "defer", "bounce"


@dataclass(frozen=True)
class Rcpt:
    id: int
    address: str
    orcpt: str | None
    notify: str | None
    attempts: int
    delay_notified: bool


@dataclass
class Batch:
    """One message's claimed recipients for one destination (≤ recipient_limit)."""

    message_id: int
    queue_id: str
    content_id: int
    body_offset: int
    size: int  # octets to send (stored size minus body_offset)
    sender: str
    envid: str | None
    ret: str | None
    created: int
    account_id: int | None
    rcpts: list[Rcpt]
    prefix: bytes = b""  # sent before the stored message: DKIM-Signature fields
    trace: bytes = b""  # then these (queue_messages.trace: a redirect's Delivered-To)


@dataclass(frozen=True)
class Outcome:
    rid: int
    action: str  # SENT | DEFER | BOUNCE
    status: str  # RFC 3463 code: 2.0.0, 4.4.1, 5.1.1 ...
    text: str  # Postfix-style reason or the remote's reply
    relay: str | None = None  # host[address]:port, None when no server was reached
    remote_mta: str | None = None  # host name, for the DSN's Remote-MTA
    diagnostic: str | None = None  # "smtp; 550 5.1.1 ..." when the remote said so
    remote_dsn: bool = False  # the remote took NOTIFY over (RFC 3461 DSN extension)


class DestinationError(Exception):
    """No server of the destination could take mail now (or ever)."""

    def __init__(self, permanent: bool, status: str, text: str, relay: str | None = None) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.status = status
        self.text = text
        self.relay = relay


@dataclass(frozen=True)
class Route:
    """Where mail for a destination goes and how (MX of a domain, or the relayhost)."""

    key: str
    domain: str  # mail domain (for logs); the relay host for a smarthost
    host: str | None  # relay host; None: MX lookup of `domain`
    port: int
    mx_lookup: bool
    tls: str  # none | may | starttls | tls
    verify: bool
    user: str = ""
    password: str = ""


def route_for(domain: str, q: QueueConfig) -> Route:
    if q.relayhost:
        host, port, bracketed = parse_hostport(q.relayhost, 25)
        tls = q.relayhost_tls
        if q.tls_verify and tls in ("none", "may"):
            tls = "starttls"
        return Route(f"relay:{q.relayhost}", host, host, port, not bracketed, tls, q.tls_verify,
                     q.relayhost_user, q.relayhost_password)
    return Route(domain, domain, None, q.remote_port, True,
                 "starttls" if q.tls_verify else "may", q.tls_verify)


BodyReader = Callable[[Batch], AsyncIterator[bytes]]


class Session:
    """An open SMTP connection to one server of a route."""

    def __init__(self, client: SMTPClient, target: Target, route: Route) -> None:
        self.client = client
        self.target = target
        self.route = route

    @property
    def relay(self) -> str:
        return self.target.label

    @property
    def usable(self) -> bool:
        return not self.client.closed

    def _said(self, reply: ServerReply, command: str) -> str:
        peer = f"{self.target.host}[{self.target.address}]"
        return f"host {peer} said: {reply} (in reply to {command})"

    def _outcome(self, rid: int, reply: ServerReply, command: str) -> Outcome:
        action = SENT if reply.code < 400 else DEFER if reply.transient else BOUNCE
        text = str(reply) if action == SENT else self._said(reply, command)
        return Outcome(rid, action, reply.status, text, self.relay, self.target.host,
                       f"smtp; {reply}", self.client.caps.has("DSN"))

    def _all(self, rcpts: list[Rcpt], action: str, status: str, text: str) -> list[Outcome]:
        return [Outcome(r.id, action, status, text, self.relay, self.target.host) for r in rcpts]

    async def deliver(self, batch: Batch, body: BodyReader, eight_bit: Callable[
            [Batch], Awaitable[bool]]) -> list[Outcome]:
        """One mail transaction; an outcome for every recipient of the batch."""
        caps = self.client.caps
        if caps.size_limit and batch.size > caps.size_limit:
            return self._all(batch.rcpts, BOUNCE, "5.3.4",
                             f"message size {batch.size} exceeds size limit {caps.size_limit}"
                             f" of server {self.target.host}[{self.target.address}]")
        addresses = [batch.sender] + [r.address for r in batch.rcpts]
        utf8 = not all(a.isascii() for a in addresses)
        if utf8 and not caps.has("SMTPUTF8"):
            return self._all(batch.rcpts, BOUNCE, "5.6.7",
                             f"SMTPUTF8 is required, but was not offered by host "
                             f"{self.target.host}[{self.target.address}]")
        params = []
        if caps.has("SIZE"):
            params.append(f"SIZE={batch.size}")
        if caps.has("8BITMIME") and await eight_bit(batch):
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        dsn = caps.has("DSN")
        if dsn and batch.ret:
            params.append(f"RET={batch.ret}")
        if dsn and batch.envid:
            params.append(f"ENVID={encode_xtext(batch.envid)}")
        mail_line = " ".join([f"MAIL FROM:<{batch.sender}>", *params])
        rcpt_lines = []
        for r in batch.rcpts:
            rparams = []
            if dsn and r.notify:
                rparams.append(f"NOTIFY={r.notify}")
            if dsn and r.orcpt:
                addr_type, _, addr = r.orcpt.partition(";")
                rparams.append(f"ORCPT={addr_type.strip()};{encode_xtext(addr.strip())}")
            rcpt_lines.append(" ".join([f"RCPT TO:<{r.address}>", *rparams]))
        if caps.has("PIPELINING"):
            # RFC 2920: MAIL, every RCPT and DATA in one write, replies in order.
            replies = await self.client.pipelined(
                [(mail_line, "MAIL FROM")] + [(x, "RCPT TO") for x in rcpt_lines]
                + [("DATA", "DATA")]
            )
            mail, rcpt_replies, data = replies[0], replies[1:-1], replies[-1]
        else:
            mail, rcpt_replies, data = await self.client.command(mail_line, "MAIL FROM"), [], None
            if mail.positive:
                for line in rcpt_lines:
                    rcpt_replies.append(await self.client.command(line, "RCPT TO"))
        if not mail.positive:
            if data is not None and data.code == 354:  # a lax server: end the empty message
                await self.client.command(".", "end of data")
            return [self._outcome(r.id, mail, "MAIL FROM command") for r in batch.rcpts]
        outcomes: dict[int, Outcome] = {}
        accepted: list[Rcpt] = []
        for r, reply in zip(batch.rcpts, rcpt_replies, strict=True):
            if reply.positive:
                accepted.append(r)
            else:
                outcomes[r.id] = self._outcome(r.id, reply, "RCPT TO command")
        if data is None and accepted:
            data = await self.client.command("DATA")
        if data is not None and data.code == 354 and not accepted:
            await self.client.command(".", "end of data")  # RFC 2920 §3.1
        elif data is not None and data.code != 354:
            for r in accepted:
                if data.positive:  # 2xx to DATA breaks the protocol: try again later
                    outcomes[r.id] = Outcome(r.id, DEFER, "4.5.0",
                                             self._said(data, "DATA command"), self.relay,
                                             self.target.host)
                else:
                    outcomes[r.id] = self._outcome(r.id, data, "DATA command")
        elif accepted:
            final = await self.client.send_data(body(batch))
            for r in accepted:
                outcomes[r.id] = self._outcome(r.id, final, "end of DATA command")
        return [outcomes[r.id] for r in batch.rcpts]

    async def reset(self) -> bool:
        """RSET before the connection is reused; False if it is no longer usable."""
        if not self.usable:
            return False
        try:
            reply = await self.client.command("RSET")
        except SMTPClientError:
            return False
        return reply.code == 250

    async def close(self) -> None:
        await self.client.quit()


class Connector:
    """Opens sessions: resolve, then try servers in order until one talks."""

    def __init__(self, q: QueueConfig, helo: str, resolver: MXResolver, reactor: Any) -> None:
        self.q = q
        self.helo = helo
        problem = hostname_problem(helo)
        self.helo_problem = None if problem is None else (
            f"outbound delivery held: the EHLO name {helo!r} {problem}; "
            "set [server] hostname (or [queue] helo_name)")
        self.resolver = resolver
        self.reactor = reactor
        self._ca: bytes | None = None
        if q.tls_ca_file:
            with open(q.tls_ca_file, "rb") as f:
                self._ca = f.read()
        self.policy: Any = None  # tlspolicy.TLSPolicy: DANE and MTA-STS, when configured

    async def targets(self, route: Route) -> list[Target]:
        try:
            if route.host is None:
                return await self.resolver.for_domain(route.domain, route.port)
            if route.mx_lookup:
                return await self.resolver.for_domain(route.host, route.port)
            return await self.resolver.for_host(route.host, route.port)
        except ResolveError as e:
            raise DestinationError(e.permanent, e.status, e.text) from None

    async def open(self, route: Route) -> Session:
        if self.helo_problem is not None:
            # Many servers reject `EHLO localhost`: the mail waits (4.3.5)
            # until the name is set and the daemon restarted, never bounces.
            raise DestinationError(False, "4.3.5", self.helo_problem)
        policy = await self.policy.sts_for(route) if self.policy is not None else None
        targets = await self.targets(route)
        last: DestinationError | None = None
        for target in targets:
            if self.policy is not None:
                try:
                    demand = await self.policy.demand(route, policy, target)
                except DestinationError as e:
                    last = e
                    continue
                if demand is not None:
                    try:
                        return await self._demanded(demand, target)
                    except DestinationError as e:
                        if demand.enforce or not e.status.startswith("4.7"):
                            last = e
                            continue
                        log.warn("{text}; testing mode, delivering anyway", text=e.text)
            try:
                session = await self._open_one(route, target, starttls=route.tls != "none")
                self._count(route, target, "no-policy-found", session)
                return session
            except TLSHandshakeFailed as e:
                if route.tls != "may":
                    last = DestinationError(False, "4.7.5", str(e), target.label)
                    continue
                log.info("{peer}: {error}; trying without TLS", peer=target.label, error=str(e))
                try:
                    return await self._open_one(route, target, starttls=False)
                except DestinationError as e2:
                    last = e2
            except DestinationError as e:
                last = e
        assert last is not None
        raise last

    async def _demanded(self, demand: Any, target: Target) -> Session:
        """A session meeting a DANE or MTA-STS demand, or DestinationError 4.7.x
        (never a fallback to plaintext here)."""
        from exmaild.queue.tlspolicy import failure_type

        assert self.policy is not None
        domain = demand.route.domain
        try:
            session = await self._open_one(demand.route, target, starttls=True, tlsa=demand.tlsa)
        except (TLSHandshakeFailed, DestinationError) as e:
            if isinstance(e, DestinationError) and not e.status.startswith("4.7"):
                raise  # not about TLS: refused, greeting, ...
            self.policy.count(domain, demand.kind, target.host, failure_type(e))
            raise DestinationError(False, "4.7.5", f"{demand.why}: {e}", target.label) from None
        self.policy.count(domain, demand.kind, target.host, "success")
        return session

    def _count(self, route: Route, target: Target, kind: str, session: Session) -> None:
        if self.policy is not None and route.host is None and session.client.tls:
            self.policy.count(route.domain, kind, target.host, "success")

    async def _connect(self, route: Route, target: Target) -> SMTPClient:
        peer = f"{target.host}[{target.address}]"
        client = SMTPClient(self.reactor, self.q.command_timeout, peer)
        cls = endpoints.TCP6ClientEndpoint if target.ipv6 else endpoints.TCP4ClientEndpoint
        ep: Any = cls(self.reactor, target.address, target.port, timeout=self.q.connect_timeout)
        if route.tls == "tls":
            ep = endpoints.wrapClientTLS(self._creator(route, target), ep)
        try:
            await endpoints.connectProtocol(ep, client)
        except error.ConnectError as e:
            reason = _connect_reason(e)
            raise DestinationError(False, "4.4.1", f"connect to {target.label}: {reason}") from None
        return client

    def _creator(self, route: Route, target: Target) -> Any:
        name = target.host if route.host is None else route.host
        return tls_creator(name, route.verify, self._ca)

    async def _open_one(self, route: Route, target: Target, starttls: bool,
                        tlsa: list[Any] | None = None) -> Session:
        client = await self._connect(route, target)
        peer = f"{target.host}[{target.address}]"
        try:
            greeting = await client.greeting
            if greeting.code != 220:
                raise DestinationError(
                    False, greeting.status if greeting.transient else "4.3.0",
                    f"host {peer} refused to talk to me: {greeting}", target.label)
            reply = await client.ehlo(self.helo)
            if reply.code != 250:
                raise DestinationError(False, "4.3.0", f"host {peer} refused to talk to me: "
                                       f"{reply} (in reply to HELO command)", target.label)
            required = route.tls == "starttls"
            if starttls and route.tls != "tls" and client.caps.has("STARTTLS"):
                reply = await client.starttls(self._creator(route, target), self.helo)
                if reply.code != 250 and (client.tls or required):
                    raise DestinationError(False, reply.status if reply.transient else "4.7.0",
                                           f"host {peer} said: {reply} (in reply to STARTTLS)",
                                           target.label)
            if required and not client.tls:
                raise DestinationError(False, "4.7.4",
                                       f"TLS is required, but was not offered by host {peer}",
                                       target.label)
            if tlsa is not None and client.tls:
                why = dane.check(tlsa, client.transport.getHandle().get_peer_cert_chain() or [],
                                 target.host)
                if why is not None:
                    raise DestinationError(False, "4.7.5", why, target.label)
            if client.tls or route.tls == "tls":
                log.info("{kind} TLS connection established to {peer}: {desc}",
                         kind="DANE-verified" if tlsa and dane.usable(tlsa) else
                         "Verified" if route.verify else "Anonymous",
                         peer=target.label, desc=client.tls_description())
            if route.user:
                await self._auth(client, route, target)
            return Session(client, target, route)
        except SMTPClientError as e:
            client.abort("giving up")
            if isinstance(e, TLSHandshakeFailed):
                raise
            raise DestinationError(False, "4.4.2", str(e), target.label) from None
        except DestinationError:
            await client.quit()
            raise

    async def _auth(self, client: SMTPClient, route: Route, target: Target) -> None:
        peer = f"{target.host}[{target.address}]"
        if not client.caps.auth_mechanisms & {"PLAIN", "LOGIN"}:
            log.warn("{peer} offers no AUTH PLAIN or LOGIN; sending without authentication",
                     peer=target.label)
            return
        secure = client.tls or route.tls == "tls" or is_loopback(target.address)
        if not secure:
            raise DestinationError(False, "4.7.0", f"not sending the password to {peer} "
                                   "without TLS (it offers no STARTTLS)", target.label)
        reply = await client.auth(route.user, route.password)
        if reply.code != 235:
            raise DestinationError(False, "4.7.0", f"SASL authentication failed; server {peer} "
                                   f"said: {reply}", target.label)


def _connect_reason(e: error.ConnectError) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(e, error.TimeoutError | error.TCPTimedOutError):
        return "Connection timed out"
    if isinstance(e, error.NoRouteError):
        return "No route to host"
    return e.osError if isinstance(getattr(e, "osError", None), str) else str(e).strip(".")
