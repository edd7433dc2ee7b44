"""Mailbox change notifications, for IDLE and for sessions sharing a mailbox.

Published on the reactor thread after the change is committed. Within one
process this is a dict of callbacks; nodes sharing PostgreSQL can relay the
same events through LISTEN/NOTIFY.
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

    def subscribe(self, mailbox_id: int, fn: Listener) -> Callable[[], None]:
        self._listeners[mailbox_id].append(fn)

        def unsubscribe() -> None:
            fns = self._listeners.get(mailbox_id)
            if fns and fn in fns:
                fns.remove(fn)
                if not fns:
                    del self._listeners[mailbox_id]

        return unsubscribe

    def publish(self, change: MailboxChange) -> None:
        for fn in list(self._listeners.get(change.mailbox_id, ())):
            try:
                fn(change)
            except Exception:
                log.failure("mailbox listener failed", mailbox_id=change.mailbox_id)
