"""The queue runner: the daemon's outbound delivery service.

Every `scan_interval` seconds, and whenever `kick()` is called (the SMTP
server does after queueing mail; on PostgreSQL so does a queue kick from
another node or exmailctl, store/pgnotify.py), it leases due recipients
from the database (work.claim), files them under their route — the
recipient domain, or the relayhost — and lets up to `max_connections`
sessions per route work through them, each connection reused (RSET) for the
route's next message. Each attempt's outcome is written back in one
transaction per message together with any DSN it causes (through the one
ingest path), then logged the Postfix way. `exmailctl queue flush|retry`
only move `next_attempt` (and, on PostgreSQL, kick every node); the scan
that follows picks that up.

A runner that holds CLAIM_LIMIT recipients and is asked to scan by its own
node (mail queued here, or its timer) asks the other nodes to scan instead
(announce_queue); a kick from elsewhere never makes it ask, so two full
nodes cannot kick each other in turn. A claim whose node died is free once
its lease (`claim_lease`) runs out: the periodic scan takes it, whatever
else this runner is doing.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from exmaild.config import Config
from exmaild.logsetup import maillog
from exmaild.mailauth.dkimsign import Signer
from exmaild.mailstore.mail_log import writer_of
from exmaild.mailstore.service import MailStore
from exmaild.queue import work
from exmaild.queue.client import LocalReadError, SMTPClientError
from exmaild.queue.delivery import (
    BOUNCE,
    DEFER,
    SENT,
    Batch,
    Connector,
    DestinationError,
    Outcome,
    Route,
    Session,
    route_for,
)
from exmaild.queue.notify import Notifier, mail_text, plan_outcomes
from exmaild.queue.records import EXPIRED
from exmaild.queue.resolver import MXResolver
from exmaild.queue.tlspolicy import TLSPolicy

log = Logger()

CLAIM_LIMIT = 2000  # recipients one node holds at most
PER_CONNECTION = 5  # open another connection to a route per this many waiting messages
READ_CHUNK = 256 * 1024
PURGE_EVERY = 3600


@dataclass
class _RouteState:
    route: Route
    pending: deque[Batch] = field(default_factory=deque)
    active: int = 0
    sessions: set[Session] = field(default_factory=set)


class QueueRunner(service.Service):
    name = "queue"

    def __init__(self, cfg: Config, store: MailStore, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.cfg = cfg
        self.q = cfg.queue
        if self.q.tls_ca_file:  # relative to the config file, like every path
            self.q = replace(self.q, tls_ca_file=str(cfg.resolve(self.q.tls_ca_file)))
        self.store = store
        self.reactor = reactor
        self.node = cfg.server.node_id
        self.resolver = MXResolver(reactor, self.q.dns_servers, self.q.dns_timeout,
                                   trust_ad=self.q.dns_trust_ad)
        helo = self.q.helo_name or cfg.server.hostname
        self.connector = Connector(self.q, helo, self.resolver, reactor)
        if self.q.mta_sts or self.q.dane:
            self.connector.policy = TLSPolicy(self.q, self.resolver, store, self.connector._ca)
        self.notifier = Notifier(cfg, store, self)
        self._routes: dict[str, _RouteState] = {}
        self._held: set[int] = set()
        self._tasks: set[defer.Deferred[Any]] = set()
        self._active_total = 0
        self._scanning = False
        self._rescan = False
        self._ready = False
        self._stopping = False
        self._loops: list[task.LoopingCall] = []
        self._relay: Any = None  # store/pgnotify.py's relay: queue kicks in and out
        self._announce = False  # a scan asked for by this node: may kick the others
        self._full = False  # at CLAIM_LIMIT (logged once per episode)
        self._last_purge = 0.0
        self._eight_bit: dict[int, bool] = {}
        self.signer = Signer(store, reactor, cfg.server.hostname, arc_seal=cfg.mailauth.enabled)
        self.ready: defer.Deferred[None] = defer.Deferred()

    # -- service -----------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.resolver.start()
        if self.connector.helo_problem is not None:
            log.warn("queue: {problem}", problem=self.connector.helo_problem)
        self._track(defer.Deferred.fromCoroutine(self._start()))
        self._relay = getattr(self.store, "relay", None)
        if self._relay is not None:
            self._relay.queue_hooks.append(self._kicked_from_elsewhere)

    async def _start(self) -> None:
        while not self._stopping:
            try:
                freed = await self.store.pool.transaction(
                    lambda c: work.release_node(c, self.node))
                break
            except Exception:
                log.failure("queue: cannot reach the database; trying again")
                await task.deferLater(self.reactor, self.q.scan_interval, lambda: None)
        else:
            return
        if freed:
            log.info("queue: took back {n} recipient(s) this node held before it stopped", n=freed)
        self._ready = True
        renew = lambda: defer.Deferred.fromCoroutine(self._renew())  # noqa: E731
        for seconds, fn in ((self.q.scan_interval, self.kick), (self.q.claim_lease / 3, renew)):
            loop = task.LoopingCall(fn)
            loop.clock = self.reactor
            loop.start(seconds, now=False).addErrback(
                lambda f: log.failure("queue loop failed", f))
            self._loops.append(loop)
        self.kick()
        self.ready.callback(None)

    def stopService(self) -> None:
        """Stop scanning and drop connections; what was claimed stays claimed by
        this node, which frees it when it starts again (or its lease runs out)."""
        self._stopping = True
        if self._relay is not None and self._kicked_from_elsewhere in self._relay.queue_hooks:
            self._relay.queue_hooks.remove(self._kicked_from_elsewhere)
        self._relay = None
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        for state in self._routes.values():
            state.pending.clear()
            for s in list(state.sessions):
                s.client.abort("queue runner stopping")
        self.resolver.stop()
        super().stopService()

    def _track(self, d: defer.Deferred[Any]) -> None:
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, defer.Failure) and not self._stopping:
                log.failure("queue task failed", result)

        d.addBoth(done)

    # -- scanning ----------------------------------------------------------------------
    def kick(self, *, from_elsewhere: bool = False) -> None:
        """Look for due recipients now (called after mail was queued)."""
        if not self._ready or self._stopping:
            return
        if not from_elsewhere:
            self._announce = True
        if self._scanning:
            self._rescan = True
            return
        self._scanning = True
        self._track(defer.Deferred.fromCoroutine(self._scan_loop()))

    async def run_once(self) -> None:
        """Scan now and wait until every delivery started meanwhile has ended."""
        if not self._ready:
            await self.ready
        self.kick()
        while self._tasks:
            await defer.DeferredList(list(self._tasks), consumeErrors=True)
        if self.connector.policy is not None:
            await self.connector.policy.flush()

    def _kicked_from_elsewhere(self) -> None:
        self.kick(from_elsewhere=True)

    async def _scan_loop(self) -> None:
        try:
            while True:
                self._rescan = False
                announce, self._announce = self._announce, False
                await self._scan_once(announce)
                if not self._rescan or self._stopping:
                    break
        finally:
            self._scanning = False

    async def _scan_once(self, announce: bool = False) -> None:
        now = int(time.time())
        if now - self._last_purge > PURGE_EVERY:
            self._last_purge = now
            n = await self.purge(now - self.q.status_retention)
            if n:
                log.info("queue: forgot {n} finished message(s)", n=n)
        room = CLAIM_LIMIT - len(self._held)
        if room <= 0:
            self._no_room(announce)
            return
        claimed = await self.store.pool.transaction(
            lambda c: work.claim(c, now=now, node=self.node, lease=self.q.claim_lease, limit=room)
        )
        if self._stopping:
            return
        if sum(len(cl.batch.rcpts) for cl in claimed) >= room:
            self._rescan = True
            self._no_room(announce)
        else:
            self._full = False
        for cl in claimed:
            b = cl.batch
            self._held.update(r.id for r in b.rcpts)
            maillog(b.queue_id, **{"from": b.sender, "size": b.size,
                                   "nrcpt": f"{len(b.rcpts)} (queue active)"})
            by_route: dict[str, tuple[Route, list[Any]]] = {}
            for r in b.rcpts:
                route = route_for(cl.domains[r.id], self.q)
                by_route.setdefault(route.key, (route, []))[1].append(r)
            for key, (route, rcpts) in by_route.items():
                state = self._routes.get(key)
                if state is None:
                    state = self._routes[key] = _RouteState(route)
                n = self.q.recipient_limit
                for i in range(0, len(rcpts), n):
                    state.pending.append(replace(b, rcpts=rcpts[i : i + n]))
        self._spawn_all()

    def _no_room(self, announce: bool) -> None:
        """This node holds all it may: due mail is for the other nodes."""
        if not self._full:
            self._full = True
            log.info("queue: holding {n} recipients, the most one node takes; the rest "
                     "waits for room here or for another node", n=len(self._held))
        if announce and self._relay is not None:
            self._relay.announce_queue()

    async def purge(self, before: int) -> int:
        """Forget finished messages older than `before`, a bounded batch per
        transaction so the writer is never held for long."""
        limit = self.cfg.database.maintenance_batch
        total = 0
        while not self._stopping:
            n = await self.store.pool.transaction(
                lambda c: work.purge_finished(c, before, limit))
            total += n
            if n < limit:
                break
        return total

    async def _renew(self) -> None:
        """Extend the leases of what this node still works on (and only that:
        a claim whose outcome could not be recorded is left to run out)."""
        held = list(self._held)
        if not held:
            return
        until = int(time.time()) + self.q.claim_lease
        try:
            await self.store.pool.transaction(lambda c: work.renew(c, self.node, held, until))
        except Exception:
            log.failure("queue: renewing claims failed")

    # -- sessions ------------------------------------------------------------------------
    def _spawn_all(self) -> None:
        for state in list(self._routes.values()):
            while (
                state.pending
                and state.active < self.q.max_connections
                and self._active_total < self.q.max_total_connections
                and (state.active == 0 or len(state.pending) >= PER_CONNECTION * state.active)
            ):
                state.active += 1
                self._active_total += 1
                self._track(defer.Deferred.fromCoroutine(self._work(state)))

    async def _work(self, state: _RouteState) -> None:
        session: Session | None = None
        try:
            while state.pending and not self._stopping:
                batch = state.pending.popleft()
                if session is not None and not await session.reset():
                    state.sessions.discard(session)
                    await session.close()
                    session = None
                if session is None:
                    try:
                        session = await self.connector.open(state.route)
                    except DestinationError as e:
                        # Nothing of this route can go now: settle everything waiting.
                        batches = [batch, *state.pending]
                        state.pending.clear()
                        action = BOUNCE if e.permanent else DEFER
                        for b in batches:
                            await self._finish(b, [
                                Outcome(r.id, action, e.status, e.text, e.relay)
                                for r in b.rcpts
                            ])
                        break
                    state.sessions.add(session)
                await self._deliver(session, batch)
                if not session.usable:
                    state.sessions.discard(session)
                    session = None
        finally:
            if session is not None:
                state.sessions.discard(session)
                await session.close()
            state.active -= 1
            self._active_total -= 1
            if not state.active and not state.pending:
                self._routes.pop(state.route.key, None)
            if not self._stopping:
                self._spawn_all()

    async def _deliver(self, session: Session, batch: Batch) -> None:
        try:
            await self._sign(batch)
            outcomes = await session.deliver(batch, self._body, self._is_eight_bit)
        except LocalReadError as e:
            outcomes = [Outcome(r.id, DEFER, "4.3.0", f"local error: {e.why}", session.relay)
                        for r in batch.rcpts]
        except SMTPClientError as e:
            outcomes = [Outcome(r.id, DEFER, "4.4.2", str(e), session.relay, session.target.host)
                        for r in batch.rcpts]
        await self._finish(batch, outcomes)

    async def _sign(self, batch: Batch) -> None:
        """DKIM-sign the batch's message (exmaild/mailauth/dkimsign.py) when its
        domain has a key: the signature fields go out first and count in SIZE=."""
        async def read() -> bytes:
            return (await self.store.read_message(batch.content_id))[batch.body_offset:]

        try:
            batch.prefix = await self.signer.signature_for(
                batch.content_id, batch.body_offset, batch.sender, read, batch.account_id)
        except Exception as e:
            raise LocalReadError("signing the message", f"DKIM signing failed ({e})") from e
        batch.prefix += batch.trace  # not signed: a trace field added on the way
        batch.size += len(batch.prefix)

    async def _body(self, batch: Batch) -> Any:
        """The stored message from body_offset on, in large chunks, off the reactor."""
        store = self.store
        if batch.prefix:
            yield batch.prefix
        for attempt in (0, 1):  # compaction may have just moved the blob
            ref = (await store.blob_refs([batch.content_id])).get(batch.content_id)
            if ref is None:
                raise LookupError("the message is no longer stored (deleted?)")
            try:
                first = await store.pool.call(store.blobs.read, ref, batch.body_offset,
                                              READ_CHUNK)
                break
            except FileNotFoundError:
                if attempt:
                    raise
        pos = batch.body_offset + len(first)
        yield first
        while pos < ref.size:
            chunk = await store.pool.call(store.blobs.read, ref, pos, READ_CHUNK)
            if not chunk:
                raise OSError("short read from the blob store")
            pos += len(chunk)
            yield chunk

    async def _is_eight_bit(self, batch: Batch) -> bool:
        """Whether the message has octets > 127 (for BODY=8BITMIME); cached."""
        cid = batch.content_id
        if cid not in self._eight_bit:
            ref = (await self.store.blob_refs([cid])).get(cid)
            if ref is None:
                return False

            def scan() -> bool:
                return any(not c.isascii() for c in self.store.blobs.iter_chunks(ref))

            if len(self._eight_bit) > 10000:
                self._eight_bit.clear()
            self._eight_bit[cid] = await self.store.pool.call(scan)
        return self._eight_bit[cid]

    # -- outcomes ------------------------------------------------------------------------
    async def _finish(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Record one attempt for a batch (with its DSN, if any), then log it."""
        if self._stopping:
            return
        now = int(time.time())
        plan = plan_outcomes(batch, outcomes, now, self.q)
        try:
            recorded = await self.notifier.record(batch, plan, now)
        finally:
            self._held.difference_update(r.id for r in batch.rcpts)
        by_id = {r.id: r for r in batch.rcpts}
        delay = _delay(time.time() - batch.created)
        metrics = self.store.metrics
        for o, u in zip(outcomes, plan.updates, strict=True):
            r = by_id[o.rid]
            if o.action == SENT:
                metrics.delivered_remote.inc()
            elif o.action == BOUNCE:
                metrics.bounced_rejected.inc()
            elif u.status == EXPIRED:
                metrics.bounced_expired.inc()
            else:
                metrics.deferred_remote.inc()
            orig = r.orcpt.partition(";")[2].strip() if r.orcpt else None
            word = {SENT: "sent", BOUNCE: "bounced"}.get(o.action, u.status)
            maillog(batch.queue_id, to=r.address,
                    orig_to=orig if orig and orig.lower() != r.address.lower() else None,
                    relay=o.relay or "none", delay=delay, dsn=o.status,
                    status=f"{word} ({o.text})")
            writer_of(self.store).outcome(
                queue_id=batch.queue_id, recipient=r.address, sender=batch.sender,
                size=batch.size, status={SENT: "delivered", BOUNCE: "bounced"}.get(
                    o.action, "bounced" if u.status == EXPIRED else "deferred"))
        for line in recorded.logs:
            line()
        if recorded.removed:
            mail_text(batch.queue_id, "removed")


def _delay(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.2f}".rstrip("0").rstrip(".") if seconds < 100 else str(int(seconds))
