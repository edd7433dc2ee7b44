"""The pipes between the supervisor and a worker, and what they carry.

Each worker gets two pipes: its stdin (supervisor -> worker) and descriptor
3 (worker -> supervisor). They carry newline-ended JSON lines:

- on SQLite, the mailbox change notices store/pgnotify.py sends through
  PostgreSQL on a cluster (the same payloads): a worker sends what it
  committed, the supervisor hands it to every other worker, and they publish
  it to their IDLE sessions and caches (`publish_local`);
- `{"ready":1}` (worker -> supervisor): it serves, and handles SIGHUP and
  SIGUSR1, which the supervisor passes on only to workers that said so;
- `{"gap":1}`: notices were dropped (a pipe was full), so every mailbox
  someone watches re-reads itself from the database (and the queue runner
  scans);
- `{"o":…,"q":1}`: a queue kick, as on PostgreSQL's `exmaild_queue`
  channel: a worker's runner holds its maximum and asks the others to scan.

End of file on stdin means the supervisor is gone: the worker stops (drains)
instead of serving on as an orphan no one supervises.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from exmaild.store.changes import ChangeNotifier, MailboxChange, call_hooks
from exmaild.store.pgnotify import decode, encode

log = Logger(namespace="exmaild.workers")

MAX_LINE = 16 * 1024  # a notice is at most ~7.9 KB (pgnotify.MAX_PAYLOAD)
GAP = b'{"gap":1}'
READY = b'{"ready":1}'


class LineSplitter:
    """Newline framing with a bound: a longer line is dropped whole."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    if not self._skipping:
                        self.dropped += 1
                    self._skipping = True
                return out
            line = bytes(self._buf[:i])
            del self._buf[:i + 1]
            if self._skipping:
                self._skipping = False
            elif line:
                out.append(line)


@implementer(IPushProducer)
class GapProducer:
    """One end of a pipe that drops lines while the pipe is full and sends
    a GAP once it drains: memory stays bounded whatever the other end does.
    `_write` puts a line on the pipe; `send` decides whether it may."""

    paused = False
    gap = False

    def _write(self, line: bytes) -> None:
        raise NotImplementedError

    def _closed(self) -> bool:
        return False

    def send(self, line: bytes) -> None:
        if self._closed():
            return
        if self.paused:
            self.gap = True
            return
        self._write(line + b"\n")

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self.gap:
            self.gap = False
            self.send(GAP)

    def stopProducing(self) -> None:
        self.paused = True


class ParentLink(GapProducer, protocol.Protocol):
    """The worker's end of the pipes (a StandardIO on stdin and descriptor 3).

    Writes are dropped, and a gap announced later, while the pipe to the
    supervisor is full: the worker's memory stays bounded whatever it does."""

    def __init__(self, on_lost: Callable[[], object]) -> None:
        self.split = LineSplitter()
        self.receivers: list[Callable[[bytes], None]] = []
        self.on_lost = on_lost

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for line in self.split.feed(data):
            for fn in list(self.receivers):
                fn(line)

    def _closed(self) -> bool:
        return self.transport is None or not self.connected

    def _write(self, line: bytes) -> None:
        self.transport.write(line)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.connected = False
        self.on_lost()


class LocalNotifyRelay:
    """store/pgnotify.py's counterpart on SQLite: this worker's mailbox
    changes go to the other workers through the supervisor, theirs come back."""

    def __init__(self, link: ParentLink, notifier: ChangeNotifier, reactor: Any) -> None:
        self.link = link
        self.notifier = notifier
        self.reactor = reactor
        self.origin = secrets.token_hex(8)
        # Directory changes reach the workers through their own polls
        # ([directory] change_poll_interval); kept for Store's interface.
        self.directory_hooks: list[Callable[[], object]] = []
        self.queue_hooks: list[Callable[[], object]] = []  # queue runners: scan now

    def start(self) -> None:
        self.notifier.relay = self.send
        self.link.receivers.append(self._received)

    def stop(self) -> None:
        self.notifier.relay = None
        if self._received in self.link.receivers:
            self.link.receivers.remove(self._received)

    def send(self, change: MailboxChange) -> None:
        self.link.send(encode(change, self.origin).encode())

    def announce_queue(self) -> None:
        """Ask the other workers' queue runners to scan now."""
        self.link.send(b'{"o":"%s","q":1}' % self.origin.encode())

    def _queue_due(self) -> None:
        call_hooks(self.queue_hooks, "queue kick")

    def _received(self, line: bytes) -> None:
        if line == GAP:
            for mid in self.notifier.watched():
                self.notifier.publish_local(MailboxChange(mid, "exists", (), 0))
            self._queue_due()
            return
        if line.endswith(b',"q":1}'):
            if not line.startswith(b'{"o":"%s"' % self.origin.encode()):
                self._queue_due()
            return
        try:
            origin, change = decode(line.decode())
        except (ValueError, KeyError, TypeError):
            log.warn("ignoring a malformed change notice from the supervisor: {line!r}",
                     line=line[:200])
            return
        if origin != self.origin:
            self.notifier.publish_local(change)


def is_notice(line: bytes) -> bool:
    """What the supervisor passes on: a JSON object (it does not parse further)."""
    return line.startswith(b"{") and line.endswith(b"}")

