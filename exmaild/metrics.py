"""Prometheus metrics: one registry per daemon (per store), scraped at
GET /metrics on the admin listener (exmaild/admin/metrics.py; docs/metrics.md).

Counters are bumped where the event is already logged, through children bound
once per label set, so the hot paths pay a dict lookup and a lock, no more.
What is cheaper to read than to track (queue size and age, blob store size,
thread-pool backlog, open connections) is read when scraped, by `refresh`.

The registry is not prometheus_client's global one: tests run several daemons
and in-process servers in one interpreter, and each must count its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from twisted.logger import Logger

from exmaild import __version__

log = Logger()

# Listener (config key under [listen]) -> protocol.
PROTOCOL_OF = {
    "smtp": "smtp", "submission": "smtp", "submissions": "smtp",
    "imap": "imap", "imaps": "imap", "pop3": "pop3", "pop3s": "pop3",
}
# Messages per ingest commit: MAX_BATCH (mailstore/ingest.py) is the top bucket's edge.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# From handing a message to the ingest path to its commit (fsync included).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0)
# The text format every Prometheus 2 and 3 reads; our names are plain ASCII, so
# generate_latest's output is the same in the 0.0.4 and 1.0.0 text formats.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Label values a command may take; anything else counts as "unknown", so a
# client cannot grow the label set (one series per distinct word it sends).
MAX_COMMAND_LEN = 16


class Metrics:
    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)  # process_cpu_seconds_total, RSS, open fds
        Gauge("exmaild_build_info", "Version of the running exmaild (always 1)", ["version"],
              registry=reg).labels(__version__).set(1)
        self.connections = Counter(
            "exmaild_connections", "Client connections accepted", ["protocol", "listener"],
            registry=reg)
        self.refused = Counter(
            "exmaild_connections_refused", "Client connections refused by a connection limit",
            ["listener", "limit"], registry=reg)
        self.open = Gauge(
            "exmaild_connections_open", "Client connections open now", ["listener"],
            registry=reg)
        self.commands = Counter(
            "exmaild_commands", "Protocol commands received", ["protocol", "command"],
            registry=reg)
        self.logins = Counter(
            "exmaild_logins", "Login attempts by result (success, failure, refused: right "
            "password but the protocol is switched off or the maildrop is in use)",
            ["protocol", "result"], registry=reg)
        self.received = Counter(
            "exmaild_messages_received", "Messages accepted over SMTP (250 after DATA)",
            ["listener"], registry=reg)
        self.delivered = Counter(
            "exmaild_messages_delivered", "Recipients delivered: into a local mailbox or "
            "accepted by the remote server", ["destination"], registry=reg)
        self.deferred = Counter(
            "exmaild_messages_deferred", "Recipients deferred (temporary failure; retried "
            "by the queue or by the sending client)", ["destination"], registry=reg)
        self.bounced = Counter(
            "exmaild_messages_bounced", "Recipients given up on: rejected by the remote "
            "server or expired in the queue (a DSN is sent)", ["reason"], registry=reg)
        self.ingest_batch = Histogram(
            "exmaild_ingest_batch_size", "Messages committed together by the ingest path",
            buckets=BATCH_BUCKETS, registry=reg)
        self.ingest_latency = Histogram(
            "exmaild_ingest_latency_seconds", "Time from handing a message to the ingest "
            "path until it is durable", buckets=LATENCY_BUCKETS, registry=reg)
        self.queue_recipients = Gauge(
            "exmaild_queue_recipients", "Outbound queue recipients waiting, by status",
            ["status"], registry=reg)
        self.queue_messages = Gauge(
            "exmaild_queue_messages", "Outbound queue messages with a recipient waiting",
            registry=reg)
        self.queue_age = Gauge(
            "exmaild_queue_oldest_age_seconds", "Age of the oldest waiting queue message "
            "(0 when the queue is empty)", registry=reg)
        self.pool_queue = Gauge(
            "exmaild_db_pool_queue_depth", "Database thread-pool work items waiting for a "
            "thread", registry=reg)
        self.pool_busy = Gauge(
            "exmaild_db_pool_busy_threads", "Database thread-pool threads working",
            registry=reg)
        self.pool_size = Gauge(
            "exmaild_db_pool_threads_max", "Database thread-pool size ([database] pool_size)",
            registry=reg)
        self.blob_bytes = Gauge(
            "exmaild_blob_store_bytes", "Bytes in this node's blob segment files",
            registry=reg)
        self.blob_segments = Gauge(
            "exmaild_blob_segments", "Blob segment files of this node", registry=reg)
        self.blob_dead = Gauge(
            "exmaild_blob_dead_bytes", "Bytes of deleted messages in blob segments, not yet "
            "compacted away (all nodes)", registry=reg)
        self.database_up = Gauge(
            "exmaild_database_up", "1 if the last scrape could read the database, else 0",
            registry=reg)
        self._cmd: dict[tuple[str, str], Any] = {}
        self._conn: dict[str, Any] = {}
        self.delivered_local = self.delivered.labels("local")
        self.delivered_remote = self.delivered.labels("remote")
        self.deferred_local = self.deferred.labels("local")
        self.deferred_remote = self.deferred.labels("remote")
        self.bounced_rejected = self.bounced.labels("rejected")
        self.bounced_expired = self.bounced.labels("expired")
        # Set by the daemon: callables giving {listener: open connections}.
        self.open_sources: list[Callable[[], dict[str, int]]] = []

    # -- hot-path helpers ------------------------------------------------------
    def command(self, protocol: str, name: str, known: bool = True) -> None:
        key = (protocol, name if known and len(name) <= MAX_COMMAND_LEN else "unknown")
        child = self._cmd.get(key)
        if child is None:
            child = self._cmd[key] = self.commands.labels(*key)
        child.inc()

    def connection(self, listener: str) -> None:
        child = self._conn.get(listener)
        if child is None:
            child = self._conn[listener] = self.connections.labels(
                PROTOCOL_OF.get(listener, listener), listener)
        child.inc()

    def login(self, protocol: str, result: str) -> None:
        self.logins.labels(protocol, result).inc()

    # -- scrape ------------------------------------------------------------------
    async def refresh(self, store: Any) -> None:
        """Read the gauges that are read rather than tracked."""
        opened: dict[str, int] = {}
        for source in self.open_sources:
            for listener, n in source().items():
                opened[listener] = opened.get(listener, 0) + n
        for listener, n in opened.items():
            self.open.labels(listener).set(n)
        backlog, busy = store.pool.stats()
        self.pool_queue.set(backlog)
        self.pool_busy.set(busy)
        self.pool_size.set(store.pool.size)
        try:
            q, dead = await store.pool.do(_queue_and_dead_bytes)
            self.database_up.set(1)
        except Exception as e:
            log.warn("metrics: cannot read the queue from the database: {error}", error=str(e))
            self.database_up.set(0)
        else:
            by_status, messages, oldest = q
            for status in ("queued", "deferred"):
                self.queue_recipients.labels(status).set(by_status.get(status, 0))
            self.queue_messages.set(messages)
            self.queue_age.set(max(0, int(time.time()) - oldest) if oldest is not None else 0)
            self.blob_dead.set(dead)
        count, size = await store.pool.call(_segment_files, store.segments.root)
        self.blob_segments.set(count)
        self.blob_bytes.set(size)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _queue_and_dead_bytes(conn: sa.Connection) -> tuple[tuple[dict[str, int], int, int | None],
                                                         int]:
    from exmaild.store import model as m

    r, q = m.queue_recipients.c, m.queue_messages.c
    waiting = r.status.in_(("queued", "deferred"))
    by_status = {s: n for s, n in conn.execute(
        sa.select(r.status, sa.func.count()).where(waiting).group_by(r.status))}
    messages, oldest = conn.execute(
        sa.select(sa.func.count(sa.distinct(q.id)), sa.func.min(q.created))
        .select_from(m.queue_messages.join(m.queue_recipients, r.message_id == q.id))
        .where(waiting)
    ).one()
    dead = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(m.segments.c.dead_bytes), 0)))
    return (by_status, int(messages or 0), oldest), int(dead.scalar_one())


def _segment_files(root: Any) -> tuple[int, int]:
    """(segment files, their bytes) under the blob folder; one stat each."""
    count = size = 0
    try:
        entries = os.scandir(root)
    except FileNotFoundError:
        return 0, 0
    with entries:
        for e in entries:
            if e.name.endswith(".seg"):
                try:
                    size += e.stat().st_size
                except FileNotFoundError:  # compacted away meanwhile
                    continue
                count += 1
    return count, size
