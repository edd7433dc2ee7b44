"""The store service: engine, DB thread pool, blob segments and components.

Started first and stopped last by the daemon's MultiService. `open()` is
synchronous so the daemon can refuse to start (e.g. an out-of-date schema)
before any listener binds.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from exmaild.config import Config
from exmaild.metrics import Metrics
from exmaild.store import schema
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.changes import ChangeNotifier
from exmaild.store.compaction import CompactionStats, compact
from exmaild.store.contents import blob_refs
from exmaild.store.dbblobs import Blobs, DatabaseBlobs
from exmaild.store.directory import Directory
from exmaild.store.leases import Leases
from exmaild.store.mailboxes import Mailboxes
from exmaild.store.pgnotify import PgNotifyRelay
from exmaild.store.pool import DBThreadPool, make_engine
from exmaild.store.segmentlease import SegmentLeases

log = Logger()


class Store(service.Service):
    name = "store"

    def __init__(self, cfg: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.cfg = cfg
        self.reactor = reactor
        # This store's (so this daemon's) counters and gauges, served at /metrics.
        self.metrics = Metrics()
        self.engine: sa.Engine = make_engine(
            cfg.database_url, cfg.database.pool_size, sqlite_mmap_size=cfg.database.sqlite_mmap_size
        )
        self.pool = DBThreadPool(self.engine, reactor, cfg.database.pool_size,
                                 shared_writer=cfg.server.workers > 1)
        self.segments = SegmentStore(
            cfg.data_dir / "blobs", cfg.server.node_id, cfg.blobs.segment_size,
            SegmentLeases(self.pool), lease_seconds=cfg.blobs.segment_lease,
            max_open=cfg.blobs.max_open_segments,
        )
        # Reads go through `blobs`, which holds both kinds of location: after
        # a switch of [blobs] backend contents stay where they were written
        # until `exmailctl blobs migrate` moves them.
        self.blobs = Blobs(self.segments, DatabaseBlobs(self.engine))
        self.blobs_in_database = cfg.blobs.backend == "postgresql"
        self._lease_timer: task.LoopingCall | None = None
        self.notifier = ChangeNotifier()
        self.directory = Directory(self.pool)
        self.mailboxes = Mailboxes(self.pool)
        self.mail_log: Any = None  # mailstore/mail_log.py's writer, made at first use
        self.leases = Leases(self, cfg.server.lock_lease)
        # Relays this process's mailbox changes to the others and back: PgNotifyRelay
        # on PostgreSQL; on SQLite under `[server] workers`, what this makes
        # (exmaild/workers/channel.py), given the notifier.
        self.relay: Any = None
        self.relay_factory: Any = None
        self._opened = False

    def open(self, *, create_schema: bool = True) -> str:
        """Check (or create) the schema and open the blob store; blocking."""
        if self.cfg.database_url.startswith("sqlite"):
            self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if create_schema:
            state = schema.ensure_schema(self.engine)
        else:
            state = "unchecked"
        self.segments.open()
        self._opened = True
        return state

    def startService(self) -> None:
        if not self._opened:
            self.open()
        self.pool.start()
        if self.engine.dialect.name == "postgresql":
            self.relay = PgNotifyRelay(self.cfg.database_url, self.notifier, self.reactor)
            self.relay.start()
        elif self.relay_factory is not None:
            self.relay = self.relay_factory(self.notifier)
            self.relay.start()
        # Keeps an idle writer's segment lease and frees descriptors of
        # segments other processes removed.
        self._lease_timer = task.LoopingCall(self._tend_segments)
        self._lease_timer.clock = self.reactor
        self._lease_timer.start(max(1.0, self.cfg.blobs.segment_lease / 5), now=False)
        super().startService()

    async def _tend_segments_async(self) -> None:
        try:
            await self.pool.call(self.segments.renew)
            await self.pool.call(self.segments.drop_unlinked)
        except Exception:
            log.failure("renewing the blob segment lease failed")

    def _tend_segments(self) -> defer.Deferred[None]:
        return defer.Deferred.fromCoroutine(self._tend_segments_async())

    def stopService(self) -> None:
        super().stopService()
        if self._lease_timer is not None and self._lease_timer.running:
            self._lease_timer.stop()
        self.leases.release_all_sync()
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.mail_log is not None:  # its buffered rows, while the pool still runs
            self.mail_log.flush_sync(self.pool.transaction_sync)
        # Sealed (or removed, if empty) while the database is still there.
        self.segments.close()
        self.pool.stop()

    # -- blobs -----------------------------------------------------------
    async def blob_refs(self, content_ids: list[int]) -> dict[int, BlobRef]:
        return await self.pool.do(lambda conn: blob_refs(conn, content_ids))

    async def read_message(self, content_id: int) -> bytes:
        """A whole stored message; retries once if compaction just moved it."""
        for attempt in (0, 1):
            ref = (await self.blob_refs([content_id]))[content_id]
            try:
                return await self.pool.call(self.blobs.read, ref)
            except FileNotFoundError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def compact(self) -> CompactionStats:
        return await self.pool.call(
            compact, self.pool, self.segments, self.cfg.blobs.compact_ratio
        )

    # -- health ----------------------------------------------------------
    def health_sync(self) -> dict[str, Any]:
        out: dict[str, Any] = {"database": False, "schema_current": False}
        try:
            out["schema_revision"] = schema.current_revision(self.engine)
            out["database"] = True
            out["schema_current"] = out["schema_revision"] == schema.head_revision()
        except Exception as e:
            out["error"] = str(e)
        return out

    async def health(self) -> dict[str, Any]:
        return await self.pool.call(self.health_sync)
