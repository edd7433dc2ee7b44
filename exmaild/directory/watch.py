"""Directory changes made elsewhere (exmailctl, the API, another node) reach
this daemon's lookup caches within `[directory] change_poll_interval` seconds,
and on PostgreSQL at once: the operation log's trigger raises a notification
that store/pgnotify.py hands to `check`.

Every change writes an operation log row in its own transaction, so the log's
highest id is a change counter: one indexed `max(id)` per interval, and the
subscribers (the SMTP lookup cache) drop what they hold when it moves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from exmaild.store import model as m

log = Logger()


class DirectoryWatch(service.Service):
    name = "directory-watch"

    def __init__(self, store: Any, reactor: Any, interval: float) -> None:
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self.subscribers: list[Callable[[], None]] = []
        self._last: int | None = None
        self._loop: task.LoopingCall | None = None

    def subscribe(self, fn: Callable[[], None]) -> None:
        self.subscribers.append(fn)

    async def check(self) -> bool:
        """Look once; True (and the subscribers told) if the directory changed."""
        counter = await self.store.pool.do(
            lambda conn: conn.execute(sa.select(sa.func.max(m.operation_log.c.id))).scalar() or 0
        )
        changed = self._last is not None and counter != self._last
        self._last = counter
        if changed:
            for fn in self.subscribers:
                fn()
        return changed

    def startService(self) -> None:
        super().startService()

        async def run() -> None:
            try:
                await self.check()
            except Exception:
                log.failure("directory change check failed")

        relay = getattr(self.store, "relay", None)
        if relay is not None:
            relay.directory_hooks.append(lambda: defer.Deferred.fromCoroutine(run()))
        self._loop = task.LoopingCall(lambda: defer.Deferred.fromCoroutine(run()))
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True)

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        super().stopService()
