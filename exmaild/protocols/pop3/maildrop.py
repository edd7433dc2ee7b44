"""The POP3 maildrop: what one session sees, changes and commits at QUIT.

What is in it follows the account's client settings (manual §6.2.2):

- INBOX only, or, with `pop_include_folders`, INBOX plus the member's own
  folders. "Own folders" means every folder except the system ones that hold
  the member's drafts, sent mail, deleted mail and junk (SPECIAL-USE \\Drafts,
  \\Sent, \\Trash, \\Junk), which a POP client would otherwise download again
  as if it were new mail.
- `fetch_window`: all mail, or only mail whose internal date (arrival) is
  within the last 2 years / 1 year / 3 months / 30 days.
- Messages a POP client already "deleted" under `pop_no_delete` are hidden.

The list is fixed at login (RFC 1939: message numbers do not change during a
session). DELE only marks; `commit()` at QUIT removes the marked messages in
one database transaction, or, under `pop_no_delete`, hides them from later
POP sessions and leaves them on the server. A session that ends without QUIT
removes nothing; the \\Seen flags of what it retrieved are still saved, as
Dovecot saves them.

UIDLs are "<mailbox id>.<uidvalidity>.<uid>" in hex: the triple never
names a second message, because UIDs are never reused inside one UIDVALIDITY,
so a UIDL stays the same across sessions and is never reused, even when a
mailbox is emptied and refilled.

One session per account at a time: `SessionRegistry` is the in-process lock
(one node). Nodes sharing PostgreSQL would need the lock in the database
instead, e.g. a session-level `pg_try_advisory_lock(account_id)` held on a
connection for the life of the POP session.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from exmaild.store import flags
from exmaild.store.blobs import BlobRef
from exmaild.store.changes import MailboxChange
from exmaild.store.records import FETCH_WINDOWS, Account, Mailbox, MessageEntry

# System folders a POP client never sees, even with "include my folders".
EXCLUDED_SPECIAL_USE = frozenset({"\\Drafts", "\\Sent", "\\Trash", "\\Junk"})
DAY = 86400


def uidl(entry: MessageEntry, uidvalidity: int) -> str:
    return f"{entry.mailbox_id:x}.{uidvalidity:x}.{entry.uid:x}"


def pop_mailboxes(account: Account, mailboxes: list[Mailbox]) -> list[Mailbox]:
    """The folders an account's POP sessions see, INBOX first."""
    inbox = [mb for mb in mailboxes if mb.name == "INBOX"]
    if not account.setting("pop_include_folders"):
        return inbox
    own = sorted(
        (mb for mb in mailboxes
         if mb.name != "INBOX" and mb.special_use not in EXCLUDED_SPECIAL_USE),
        key=lambda mb: mb.id,
    )
    return inbox + own


def window_start(account: Account, now: float) -> int:
    """The earliest internal date POP shows (0: no limit)."""
    days = FETCH_WINDOWS.get(account.setting("fetch_window"), 0)
    return int(now) - days * DAY if days else 0


@dataclass
class Maildrop:
    account: Account
    entries: list[MessageEntry]
    uidls: list[str]
    refs: dict[int, BlobRef]  # content id -> where its bytes are
    deleted: set[int] = field(default_factory=set)  # 0-based indexes marked by DELE
    retrieved: set[int] = field(default_factory=set)  # 0-based indexes sent by RETR
    expunged: set[int] = field(default_factory=set)  # removed from the store at QUIT
    total_size: int = 0
    _listings: dict[str, bytes] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.total_size = sum(e.size for e in self.entries)

    # -- what the client sees -----------------------------------------------
    @property
    def count(self) -> int:
        return len(self.entries) - len(self.deleted)

    @property
    def size(self) -> int:
        return self.total_size - sum(self.entries[i].size for i in self.deleted)

    def index(self, number: int) -> int | None:
        """0-based index of message `number`, or None when there is no such message."""
        if 1 <= number <= len(self.entries):
            return number - 1
        return None

    def live(self) -> list[int]:
        return [i for i in range(len(self.entries)) if i not in self.deleted]

    def delete(self, i: int) -> None:
        self.deleted.add(i)
        self._listings.clear()

    def reset(self) -> None:
        """RSET: unmark deletions; like Dovecot, forget pending \\Seen changes too."""
        self.deleted.clear()
        self.retrieved.clear()
        self._listings.clear()

    def listing(self, kind: str) -> bytes:
        """The body of LIST ("size") or UIDL ("uidl") with its ".": built once per state."""
        out = self._listings.get(kind)
        if out is None:
            if kind == "size":
                lines = [f"{i + 1} {self.entries[i].size}\r\n" for i in self.live()]
            else:
                lines = [f"{i + 1} {self.uidls[i]}\r\n" for i in self.live()]
            lines.append(".\r\n")
            out = self._listings[kind] = "".join(lines).encode()
        return out

    # -- QUIT ---------------------------------------------------------------
    def seen_changes(self) -> dict[int, list[int]]:
        """{mailbox id: [uids]} of retrieved messages still stored and not yet \\Seen."""
        out: dict[int, list[int]] = defaultdict(list)
        for i in sorted(self.retrieved - self.expunged):
            e = self.entries[i]
            if not e.flags & flags.SEEN:
                out[e.mailbox_id].append(e.uid)
        return dict(out)

    async def save_seen(self, store: Any, origin: object = None) -> int:
        changes = self.seen_changes()
        n = 0
        for mbox, uids in changes.items():
            changed = await store.mailboxes.set_flags(mbox, uids, add=flags.SEEN)
            if changed:
                n += len(changed)
                store.notifier.publish(MailboxChange(
                    mbox, "flags", tuple(e.uid for e in changed),
                    max(e.modseq for e in changed), origin,
                ))
        self.retrieved.clear()
        return n

    async def commit(self, store: Any, origin: object = None) -> int:
        """Apply DELEs in one transaction, then save \\Seen; returns how many were deleted.

        Raises when the deletions could not be applied (then none were).
        """
        ids = [self.entries[i].id for i in sorted(self.deleted)]
        if ids:
            if self.account.setting("pop_no_delete"):
                await store.mailboxes.hide_from_pop(ids)
            else:
                gone = await store.mailboxes.expunge_ids(ids)
                self.expunged = set(self.deleted)
                for mbox, uids in gone.items():
                    box = await store.mailboxes.get_by_id(mbox)
                    store.notifier.publish(MailboxChange(
                        mbox, "expunge", tuple(uids), box.highestmodseq if box else 0, origin,
                    ))
        return len(ids)


async def load_maildrop(store: Any, account: Account, now: float) -> Maildrop:
    """The maildrop of `account` as its settings define it, read in three queries."""
    boxes = pop_mailboxes(account, await store.mailboxes.list(account.id))
    if not boxes:
        return Maildrop(account, [], [], {})
    validity = {mb.id: mb.uidvalidity for mb in boxes}
    entries = await store.mailboxes.messages(
        [mb.id for mb in boxes], since=window_start(account, now), include_pop_hidden=False
    )
    order = {mb.id: i for i, mb in enumerate(boxes)}
    entries.sort(key=lambda e: (order[e.mailbox_id], e.uid))
    refs = await store.blob_refs([e.content_id for e in entries]) if entries else {}
    # A message expunged between the two queries has no content row left.
    entries = [e for e in entries if e.content_id in refs]
    uidls = [uidl(e, validity[e.mailbox_id]) for e in entries]
    drop = Maildrop(account, entries, uidls, refs)
    # Clients LIST and UIDL right after login: have both ready.
    drop.listing("size")
    drop.listing("uidl")
    return drop


class SessionRegistry:
    """Which accounts have a POP session on this node, and when they last logged in."""

    def __init__(self) -> None:
        self._owners: dict[int, object] = {}
        self._last_login: dict[int, float] = {}

    def acquire(self, account_id: int, owner: object) -> bool:
        if account_id in self._owners:
            return False
        self._owners[account_id] = owner
        return True

    def release(self, account_id: int, owner: object) -> None:
        if self._owners.get(account_id) is owner:
            del self._owners[account_id]

    def holder(self, account_id: int) -> object | None:
        return self._owners.get(account_id)

    def login_wait(self, account_id: int, delay: int, now: float) -> int:
        """Seconds until `account_id` may log in again under a LOGIN-DELAY of `delay`."""
        last = self._last_login.get(account_id)
        if not delay or last is None:
            return 0
        return max(0, int(last + delay - now + 0.999))

    def logged_in(self, account_id: int, now: float) -> None:
        self._last_login[account_id] = now


_registries: weakref.WeakKeyDictionary[Any, SessionRegistry] = weakref.WeakKeyDictionary()


def registry_for(store: Any) -> SessionRegistry:
    """The registry shared by every POP listener (pop3 and pop3s) on one store."""
    reg = _registries.get(store)
    if reg is None:
        reg = _registries[store] = SessionRegistry()
    return reg
