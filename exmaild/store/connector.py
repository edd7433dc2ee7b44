"""The store service: engine, DB thread pool, blob segments and components.

Started first and stopped last by the daemon's MultiService. `open()` is
synchronous so the daemon can refuse to start (e.g. an out-of-date schema)
before any listener binds.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from twisted.application import service
from twisted.logger import Logger

from exmaild.config import Config
from exmaild.mailstore.ingest import Ingestor
from exmaild.mailstore.notify import ChangeNotifier
from exmaild.store import schema
from exmaild.store.blobs import BlobRef, SegmentStore
from exmaild.store.compaction import CompactionStats, compact
from exmaild.store.contents import blob_refs
from exmaild.store.directory import Directory
from exmaild.store.mailboxes import Mailboxes
from exmaild.store.pool import DBThreadPool, make_engine

log = Logger()


class Store(service.Service):
    name = "store"

    def __init__(self, cfg: Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.cfg = cfg
        self.reactor = reactor
        self.engine: sa.Engine = make_engine(
            cfg.database_url, cfg.database.pool_size, sqlite_mmap_size=cfg.database.sqlite_mmap_size
        )
        self.pool = DBThreadPool(self.engine, reactor, cfg.database.pool_size)
        self.segments = SegmentStore(
            cfg.data_dir / "blobs", cfg.server.node_id, cfg.blobs.segment_size
        )
        self.notifier = ChangeNotifier()
        self.directory = Directory(self.pool)
        self.mailboxes = Mailboxes(self.pool)
        self.ingestor = Ingestor(
            self.pool, self.segments, self.notifier, text_chars=cfg.search.max_text_chars
        )
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
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()
        self.segments.close()

    # -- blobs -----------------------------------------------------------
    async def blob_refs(self, content_ids: list[int]) -> dict[int, BlobRef]:
        return await self.pool.do(lambda conn: blob_refs(conn, content_ids))

    async def read_message(self, content_id: int) -> bytes:
        """A whole stored message; retries once if compaction just moved it."""
        for attempt in (0, 1):
            ref = (await self.blob_refs([content_id]))[content_id]
            try:
                return await self.pool.call(self.segments.read, ref)
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
