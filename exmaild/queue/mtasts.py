"""MTA-STS (RFC 8461): a receiving domain's published demand for TLS.

`_mta-sts.<domain>` TXT says a policy exists and its id; the policy itself
is fetched from `https://mta-sts.<domain>/.well-known/mta-sts.txt` (a
certificate valid for that name, no redirects, at most 64 KiB, bounded in
time) on the resolver's threads, the name resolved through `[queue]
dns_servers` like every other lookup. Policies are kept in the database
(`mta_sts_policies`) until their max_age runs out, so every node shares
them and a restart forgets nothing; a new id in the TXT record makes us
fetch again. A failed fetch or lookup keeps the cached policy (§5.1): an
attacker who blocks DNS or HTTPS cannot turn enforcement off.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger

from exmaild.queue.resolver import MXResolver, ResolveError
from exmaild.store import model as m

log = Logger(namespace="exmaild.mtasts")

MAX_POLICY = 64 * 1024  # RFC 8461 §3.3 suggests 64 KiB
MAX_AGE = 31557600  # §3.2: max_age is at most one year
FETCH_TIMEOUT = 30.0  # seconds for the whole fetch (connect, handshake, reply)
WELL_KNOWN = "/.well-known/mta-sts.txt"


class PolicyError(Exception):
    """The policy could not be fetched or does not parse."""


@dataclass(frozen=True)
class Policy:
    domain: str
    id: str
    mode: str  # enforce | testing | none
    mx: tuple[str, ...]
    max_age: int
    expires: int

    def matches(self, host: str) -> bool:
        """§4.1: an MX host name against the mx: patterns (a leading `*.`
        stands for exactly one label)."""
        host = host.lower().rstrip(".")
        for pattern in self.mx:
            p = pattern.lower().rstrip(".")
            if p.startswith("*."):
                label, _, rest = host.partition(".")
                if label and rest == p[2:]:
                    return True
            elif host == p:
                return True
        return False

    @property
    def text(self) -> str:
        return f"{self.mode}, mx: {', '.join(self.mx)}"


def txt_id(records: list[str] | None) -> str | None:
    """The id of the one `v=STSv1` TXT record (§3.1); None when there is not exactly one."""
    found = [r for r in records or () if r.replace(" ", "").startswith("v=STSv1;")
             or r.strip() == "v=STSv1"]
    if len(found) != 1:
        return None
    fields = dict(
        (k.strip(), v.strip()) for k, _, v in
        (f.partition("=") for f in found[0].split(";") if f.strip()))
    pid = fields.get("id", "")
    if not (1 <= len(pid) <= 32 and pid.isalnum() and pid.isascii()):
        return None
    return pid


def parse_policy(text: str) -> tuple[str, tuple[str, ...], int]:
    """(mode, mx patterns, max_age) of a policy body (§3.2)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError("version is not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"bad mode {mode!r}")
    age = (fields.get("max_age") or [""])[0]
    if not age.isdigit() or len(age) > 10:
        raise PolicyError(f"bad max_age {age!r}")
    mx = tuple(x for x in fields.get("mx", []) if x)
    if mode != "none" and not mx:
        raise PolicyError("no mx patterns")
    return mode, mx, min(int(age), MAX_AGE)


class _Connection(http.client.HTTPSConnection):
    """HTTPS to a given address, the certificate checked for `host`."""

    def __init__(self, host: str, address: str, port: int, context: ssl.SSLContext,
                 timeout: float) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def fetch(domain: str, addresses: list[str], port: int, ca_pem: bytes | None,
          timeout: float = FETCH_TIMEOUT) -> str:
    """The policy text of `domain` (blocking, for a thread)."""
    host = f"mta-sts.{domain}"
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii") if ca_pem else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    deadline = time.monotonic() + timeout
    last = "no address"
    for address in addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn = _Connection(host, address, port, ctx, min(left, 10.0))
        try:
            conn.request("GET", WELL_KNOWN, headers={"User-Agent": "exmaild"})
            resp = conn.getresponse()
            if resp.status != 200:  # §3.3: redirects are not followed
                raise PolicyError(f"HTTP {resp.status} from {host}[{address}]")
            ctype = resp.getheader("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "text/plain":
                raise PolicyError(f"Content-Type {ctype!r} from {host}")
            body = b""
            while len(body) <= MAX_POLICY and time.monotonic() < deadline:
                chunk = resp.read(8192)
                if not chunk:
                    break
                body += chunk
            if len(body) > MAX_POLICY:
                raise PolicyError(f"policy of {domain} larger than {MAX_POLICY} octets")
            if time.monotonic() >= deadline:
                raise PolicyError(f"fetching the policy of {domain} took too long")
            return body.decode("utf-8", "replace")
        except PolicyError:
            raise
        except (OSError, http.client.HTTPException, ssl.SSLError) as e:
            last = f"{host}[{address}]:{port}: {e}"
        finally:
            conn.close()
    raise PolicyError(f"cannot fetch the policy of {domain}: {last}")


def _cached(conn: sa.Connection, domain: str) -> Policy | None:
    t = m.mta_sts_policies
    row = conn.execute(sa.select(t).where(t.c.domain == domain)).first()
    if row is None:
        return None
    return Policy(domain, row.policy_id, row.mode, tuple(x for x in row.mx.split("\n") if x),
                  row.max_age, row.expires)


def _store(conn: sa.Connection, p: Policy, now: int) -> None:
    t = m.mta_sts_policies
    conn.execute(t.delete().where(t.c.domain == p.domain))
    conn.execute(t.insert().values(domain=p.domain, policy_id=p.id, mode=p.mode,
                                   mx="\n".join(p.mx), max_age=p.max_age, fetched=now,
                                   expires=p.expires))


class MTASTS:
    """Policies of destination domains, from the database or freshly fetched."""

    def __init__(self, resolver: MXResolver, store: Any, port: int = 443,
                 ca_pem: bytes | None = None) -> None:
        self.resolver = resolver
        self.store = store
        self.port = port
        self.ca_pem = ca_pem
        self._inflight: dict[str, list[defer.Deferred[Policy | None]]] = {}

    async def policy_for(self, domain: str) -> Policy | None:
        """The policy in force for mail to `domain`, or None. Connections
        opened at once to one domain share one lookup (and fetch)."""
        domain = domain.lower().rstrip(".")
        waiting = self._inflight.get(domain)
        if waiting is not None:
            d: defer.Deferred[Policy | None] = defer.Deferred()
            waiting.append(d)
            return await d
        self._inflight[domain] = []
        try:
            result = await self._policy_for(domain)
        except Exception as e:
            for d in self._inflight.pop(domain, []):
                d.errback(e)
            raise
        for d in self._inflight.pop(domain, []):
            d.callback(result)
        return result

    async def _policy_for(self, domain: str) -> Policy | None:
        now = int(time.time())
        cached = await self.store.pool.do(lambda c: _cached(c, domain))
        if cached is not None and cached.expires <= now:
            cached = None
        try:
            pid = txt_id(await self.resolver.txt(f"_mta-sts.{domain}"))
        except ResolveError:
            return cached  # §5.1: a lookup failure keeps what we know
        if pid is None or (cached is not None and cached.id == pid):
            return cached
        try:
            targets = await self.resolver.for_host(f"mta-sts.{domain}", self.port)
            text = await self.resolver.call(fetch, domain, [t.address for t in targets],
                                            self.port, self.ca_pem)
            mode, mx, age = parse_policy(text)
        except (PolicyError, ResolveError) as e:
            log.warn("MTA-STS: policy of {domain} (id {id}) not fetched: {error}{keep}",
                     domain=domain, id=pid, error=str(e),
                     keep="; keeping the cached one" if cached else "")
            return cached
        policy = Policy(domain, pid, mode, mx, age, now + age)
        try:
            await self.store.pool.transaction(lambda c: _store(c, policy, now))
        except Exception:  # another node stored it at the same moment: theirs is as good
            log.failure("MTA-STS: policy of {domain} not cached", domain=domain)
        log.info("MTA-STS: policy of {domain} (id {id}): {policy}, max_age {age}",
                 domain=domain, id=pid, policy=policy.text, age=age)
        return policy
