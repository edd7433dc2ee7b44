"""Periodic jobs inside the daemon: retention sweeps and blob compaction.

Every process sharing the database runs the timers, but each run first takes
the job's cluster lock (store/leases.py) for most of a period: one process in
the cluster does each job per period, and when that one dies another takes
the job over at its next turn after the lock lapsed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from exmaild.mailstore import retention
from exmaild.store.connector import Store

log = Logger()

SWEEP_EVERY = 24 * 3600
COMPACT_EVERY = 6 * 3600


class Maintenance(service.Service):
    name = "maintenance"

    def __init__(self, store: Store, reactor: Any) -> None:
        self.store = store
        self.reactor = reactor
        self._loops: list[task.LoopingCall] = []

    def _every(self, seconds: int, job: Callable[[], Awaitable[Any]], what: str,
               key: str) -> None:
        loop = task.LoopingCall(
            lambda: defer.Deferred.fromCoroutine(self.run_job(seconds, job, what, key)))
        loop.clock = self.reactor
        # The first run waits a full period so start-up stays quick.
        loop.start(seconds, now=False)
        self._loops.append(loop)

    async def run_job(self, seconds: int, job: Callable[[], Awaitable[Any]], what: str,
                      key: str) -> bool:
        """One turn of a job; False when another process has it this period."""
        try:
            # Held for 9/10 of a period, so this process's own next turn finds it free.
            if not await self.store.leases.acquire(f"maintenance:{key}",
                                                   ttl=max(1, seconds * 9 // 10)):
                log.debug("{what}: another process runs it this time", what=what)
                return False
        except Exception:
            log.failure("{what}: cannot take its cluster lock; skipped", what=what)
            return False
        try:
            result = await job()
            log.info("{what} done: {result}", what=what, result=result)
        except Exception:
            log.failure("{what} failed", what=what)
        return True

    def startService(self) -> None:
        super().startService()
        self._every(SWEEP_EVERY, self._sweep, "retention sweep of Deleted and Junk", "retention")
        self._every(COMPACT_EVERY, self.store.compact, "blob compaction", "compaction")
        self._every(SWEEP_EVERY, self._recycle, "recycle bin sweep", "recycle")
        self._every(SWEEP_EVERY, self._logins, "login log sweep", "login-log")
        self._every(SWEEP_EVERY, self._mail_log, "mail log sweep", "mail-log")

    async def _sweep(self) -> str:
        n = await retention.sweep(self.store)
        return f"{n} message(s) expunged"

    async def _recycle(self) -> str:
        from exmaild.directory.actor import Actor
        from exmaild.directory.service import DirectoryService

        svc = DirectoryService(self.store, self.store.cfg.directory)
        n = await svc.sweep_recycle_bin(Actor("maintenance", ip="local"))
        return f"{n} account(s) purged"

    async def _logins(self) -> str:
        return await sweep_logins(self.store)

    async def _mail_log(self) -> str:
        return await sweep_mail_log(self.store)

    def stopService(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        super().stopService()


async def sweep_logins(store: Store, now: int | None = None) -> str:
    """Login log rows older than [auth] login_log_days, and stale throttle counts."""
    import time

    from exmaild.auth import loginlog, throttle

    cfg = store.cfg.auth
    t = int(time.time()) if now is None else now

    def thd(conn: Any) -> tuple[int, int]:
        return (loginlog.sweep(conn, t - cfg.login_log_days * 86400),
                throttle.sweep(conn, t, cfg.throttle_window))

    logs, counts = await store.pool.transaction(thd)
    return f"{logs} login(s) and {counts} throttle count(s) removed"


async def sweep_mail_log(store: Store, now: int | None = None) -> str:
    """Mail log rows older than [log] mail_retention_days, a batch of
    [database] maintenance_batch per transaction so writers are not held up."""
    import time

    from exmaild.mailstore import mail_log

    t = int(time.time()) if now is None else now
    before = t - store.cfg.log.mail_retention_days * 86400
    batch = store.cfg.database.maintenance_batch
    total = 0
    while True:
        n = await store.pool.transaction(lambda conn: mail_log.sweep(conn, before, batch))
        total += n
        if n < batch:
            return f"{total} mail log row(s) removed"
