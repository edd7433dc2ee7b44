"""Mailbox change notifications, for IDLE and for sessions sharing a mailbox.

Published on the reactor thread after the change is committed. Within one
process this is a dict of callbacks; on PostgreSQL, store/pgnotify.py relays
every publication to the other processes and nodes through LISTEN/NOTIFY and
publishes theirs here (`publish_local`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from twisted.logger import Logger

log = Logger()


@dataclass(frozen=True)
class MailboxChange:
    mailbox_id: int
    kind: str  # "exists" | "expunge" | "flags" | "deleted"
    uids: tuple[int, ...]
    modseq: int
    origin: object | None = None  # the session that made it, so it can skip its own


Listener = Callable[[MailboxChange], None]


class ChangeNotifier:
    def __init__(self) -> None:
        self._listeners: dict[int, list[Listener]] = defaultdict(list)
        # Sends a change to the other processes (store/pgnotify.py), if any.
        self.relay: Callable[[MailboxChange], None] | None = None

    def subscribe(self, mailbox_id: int, fn: Listener) -> Callable[[], None]:
        self._listeners[mailbox_id].append(fn)

        def unsubscribe() -> None:
            fns = self._listeners.get(mailbox_id)
            if fns and fn in fns:
                fns.remove(fn)
                if not fns:
                    del self._listeners[mailbox_id]

        return unsubscribe

    def watched(self) -> list[int]:
        """Mailboxes someone in this process listens to."""
        return list(self._listeners)

    def publish(self, change: MailboxChange) -> None:
        self.publish_local(change)
        if self.relay is not None:
            self.relay(change)

    def publish_local(self, change: MailboxChange) -> None:
        for fn in list(self._listeners.get(change.mailbox_id, ())):
            try:
                fn(change)
            except Exception:
                log.failure("mailbox listener failed", mailbox_id=change.mailbox_id)


def call_hooks(hooks: list[Callable[[], object]], what: str) -> None:
    """Run each hook; one that fails is logged and the others still run."""
    for fn in list(hooks):
        try:
            fn()
        except Exception:
            log.failure("{what} hook failed", what=what)
