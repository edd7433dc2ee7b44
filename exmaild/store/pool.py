"""Every database call runs on a thread pool, never on the reactor thread.

Buildbot's pattern: a component writes a `thd(conn)` function and awaits
`pool.do(thd)` (reads) or `pool.transaction(thd)` (writes, in one transaction,
retried on transient errors such as SQLite's "database is locked" or a
PostgreSQL serialization failure). SQLite takes one writer at a time, so
writes are serialised in-process instead of spinning on SQLITE_BUSY.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from twisted.internet import threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")
log = Logger()

_RETRIES = 8
# PostgreSQL SQLSTATEs worth retrying: serialization failure, deadlock.
_PG_TRANSIENT = {"40001", "40P01"}


def is_transient(exc: BaseException) -> bool:
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.DBAPIError):
        return False
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in _PG_TRANSIENT:
        return True
    msg = str(orig).lower()
    return "database is locked" in msg or "database is busy" in msg


class DBThreadPool:
    def __init__(self, engine: sa.Engine, reactor: Any, size: int, *,
                 shared_writer: bool = False) -> None:
        self.engine = engine
        self.reactor = reactor
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._write_lock = threading.Lock() if self.is_sqlite else None
        # SQLite with several processes writing ([server] workers): they also
        # queue on flock(2) of `<database>-writer`, which hands the writer's
        # turn over the moment it is free. SQLite's own busy handler polls
        # with sleeps of up to 100 ms, idling the database while a commit waits.
        self._writer_file: str | None = None
        self._writer_fd = -1
        db = engine.url.database
        if self.is_sqlite and shared_writer and db and db != ":memory:":
            self._writer_file = f"{db}-writer"
        self.size = size
        self._pool = ThreadPool(minthreads=1, maxthreads=size, name="exmaild-db")
        self._running = False

    def stats(self) -> tuple[int, int]:
        """(work items waiting for a thread, threads working): for /metrics."""
        return self._pool._queue.qsize(), len(self._pool.working)

    def start(self) -> None:
        if not self._running:
            self._pool.start()
            self._running = True
            self._trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self.stop
            )

    def stop(self) -> None:
        if self._running:
            self._running = False
            self._pool.stop()
            self.engine.dispose()
            if self._writer_fd >= 0:
                os.close(self._writer_fd)
                self._writer_fd = -1

    def _run_read(self, fn: Callable[[sa.Connection], T]) -> T:
        with self.engine.connect() as conn:
            result = fn(conn)
            conn.rollback()
            return result

    def _run_transaction(self, fn: Callable[[sa.Connection], T], durable: bool = True) -> T:
        for attempt in range(_RETRIES):
            try:
                if self._write_lock is not None:
                    with self._write_lock, self._writer_turn():
                        if not durable:
                            return self._run_unsynced(fn)
                        with self.engine.begin() as conn:
                            return fn(conn)
                with self.engine.begin() as conn:
                    return fn(conn)
            except sa.exc.DBAPIError as e:
                if not is_transient(e) or attempt == _RETRIES - 1:
                    raise
                log.info("transient database error, retrying: {error}", error=str(e.orig))
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """This process's turn at the SQLite writer among the processes
        sharing it (called under the in-process write lock)."""
        if self._writer_file is None:
            yield
            return
        if self._writer_fd < 0:
            self._writer_fd = os.open(self._writer_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                      0o600)
        fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def _run_unsynced(self, fn: Callable[[sa.Connection], T]) -> T:
        """SQLite, under the write lock: commit without an fsync of the WAL.

        With WAL, synchronous=NORMAL still commits atomically and survives a
        crash of the daemon; only a power loss or OS crash can roll back such a
        commit, together with the ones after it, up to the next FULL commit
        (which syncs the whole WAL before it, these frames included)."""
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            raw.execute("PRAGMA synchronous=NORMAL")  # outside any transaction
            try:
                with conn.begin():
                    return fn(conn)
            finally:
                try:
                    raw.execute("PRAGMA synchronous=FULL")
                except Exception:
                    # Never hand a NORMAL connection back to durable writers.
                    conn.invalidate()
                    raise

    async def do(self, fn: Callable[[sa.Connection], T]) -> T:
        """Run a read-only `fn(conn)` on the pool."""
        return await threads.deferToThreadPool(self.reactor, self._pool, self._run_read, fn)

    async def transaction(self, fn: Callable[[sa.Connection], T], *, durable: bool = True) -> T:
        """Run `fn(conn)` in one transaction on the pool, retrying transient failures.

        ``durable=False`` (flag changes, which lose no mail if lost): on SQLite the
        commit skips its fsync, as Dovecot's ``mail_fsync = optimized`` does not
        sync flag changes; the next durable commit syncs it too. PostgreSQL
        commits as always (its own synchronous_commit applies)."""
        return await threads.deferToThreadPool(
            self.reactor, self._pool, self._run_transaction, fn, durable
        )

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run any blocking function (file I/O) on the pool."""
        return await threads.deferToThreadPool(self.reactor, self._pool, fn, *args)

    # Synchronous variants for the CLI and start-up, which run off the reactor.
    def do_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        return self._run_read(fn)

    def transaction_sync(self, fn: Callable[[sa.Connection], T]) -> T:
        return self._run_transaction(fn)


def make_engine(url: str, pool_size: int, *, sqlite_mmap_size: int = 0) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size + 1,
            max_overflow=4,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers run beside the writer; FULL makes each commit
            # durable (group commit keeps that to one fsync per batch).
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # Reads of the file through mmap: a scan (SEARCH) without a read(2)
            # per page. The trade: an I/O error on a mapped page is a SIGBUS
            # rather than an error return (SQLite's own caveat).
            cur.execute(f"PRAGMA mmap_size={int(sqlite_mmap_size)}")
            cur.close()

        return engine
    return sa.create_engine(url, pool_size=pool_size + 1, max_overflow=4, pool_pre_ping=True)
