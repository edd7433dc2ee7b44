"""Output flow control shared by the protocols.

An `OutputGate` is the push producer a connection registers with its
transport for its whole life: Twisted pauses it when more than `[limits]
output_buffer` bytes wait to be sent to the client (see exmaild/eagertcp.py)
and resumes it once they have gone. A protocol takes no further command (and
reads no further input) while its gate is paused, so a client that sends
commands but never reads the answers makes us hold one response and that
buffer, not everything it asked for. Long responses `await gate.wait()`
between pieces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class ConnectionGone(Exception):
    """The client went away while we were writing to it."""


@implementer(IPushProducer)
class OutputGate:
    """Twisted tells it when to stop writing; writers `await gate.wait()` and
    `on_change` (if set) hears of every pause and resume."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.paused = False
        self.stopped = False
        self.on_change = on_change
        self._transport: Any = None
        self._waiters: list[defer.Deferred[None]] = []

    # -- registration -----------------------------------------------------------
    def attach(self, transport: Any) -> None:
        """Register with `transport` (again, after a producer of its own, e.g. FETCH's)."""
        if self._transport is None and not self.stopped:
            self._transport = transport
            transport.registerProducer(self, True)

    def detach(self) -> None:
        """Unregister: before loseConnection() (a paused streaming producer would
        be resumed instead of the connection closed) or before another producer."""
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.unregisterProducer()
        if self.paused:
            self.paused = False
            self._wake()

    # -- IPushProducer ----------------------------------------------------------
    def pauseProducing(self) -> None:
        self.paused = True
        if self.on_change is not None:
            self.on_change()

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()
        if self.on_change is not None:
            self.on_change()

    def stopProducing(self) -> None:
        self.stopped = True
        self._transport = None
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    async def wait(self) -> None:
        """Return once writing may go on; raise ConnectionGone if it never will."""
        while self.paused and not self.stopped:
            d: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(d)
            await d
        if self.stopped:
            raise ConnectionGone()
