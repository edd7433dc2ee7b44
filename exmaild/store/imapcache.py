"""The in-process cache of mailbox indexes (store/imapindex.py) sessions
share, and the memory budget of the FETCH rows they keep.

An index lives while a session has its mailbox selected and a while after
(the next SELECT of it costs one query instead of a reload); all indexes'
cached FETCH rows together stay within ROW_CACHE_BYTES.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from exmaild.store.imapindex import MailboxIndex, row_bytes

if TYPE_CHECKING:
    from exmaild.store.connector import Store

CACHE_IDLE = 32  # indexes kept with no session attached
ROW_CACHE_BYTES = 64 << 20  # all indexes' cached FETCH rows together


class IndexCache:
    """Indexes of the mailboxes sessions have selected, plus a few recent ones."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._active: dict[int, tuple[MailboxIndex, int]] = {}
        self._idle: OrderedDict[int, MailboxIndex] = OrderedDict()
        self.row_bytes = 0
        self._row_users: OrderedDict[MailboxIndex, None] = OrderedDict()

    def rows_grew(self, idx: MailboxIndex, delta: int) -> None:
        """Keep every index's cached rows within ROW_CACHE_BYTES, dropping the
        rows of the index that cached least recently first."""
        self.row_bytes += delta
        if delta > 0:
            self._row_users[idx] = None
            self._row_users.move_to_end(idx)
        elif not idx.rows:
            self._row_users.pop(idx, None)
        while self.row_bytes > ROW_CACHE_BYTES and self._row_users:
            victim, _ = self._row_users.popitem(last=False)
            if victim is idx:
                # The one growing is alone over budget: keep its newest half.
                keep = list(idx.rows.items())[len(idx.rows) // 2 :]
                idx.rows = dict(keep)
                kept = sum(row_bytes(r) for _, r in keep)
                self.row_bytes -= idx.rows_bytes - kept
                idx.rows_bytes = kept
                self._row_users[idx] = None
                break
            self.row_bytes -= victim.rows_bytes
            victim.rows, victim.rows_bytes = {}, 0

    def acquire(self, mailbox_id: int) -> MailboxIndex:
        entry = self._active.get(mailbox_id)
        if entry is not None and not entry[0].gone:
            idx, n = entry
            self._active[mailbox_id] = (idx, n + 1)
            return idx
        # A gone index still held by sessions of the deleted mailbox is theirs
        # alone (each closes it at release); this id gets a fresh one.
        idx = self._idle.pop(mailbox_id, None)
        if idx is None or idx.gone:
            if idx is not None:
                idx.close()
            idx = MailboxIndex(self.store, mailbox_id)
            idx.cache = self
        self._active[mailbox_id] = (idx, 1)
        return idx

    def release(self, idx: MailboxIndex) -> None:
        entry = self._active.get(idx.mailbox_id)
        if entry is None or entry[0] is not idx:
            idx.close()
            return
        if entry[1] > 1:
            self._active[idx.mailbox_id] = (idx, entry[1] - 1)
            return
        del self._active[idx.mailbox_id]
        if idx.gone:
            idx.close()
            return
        self._idle[idx.mailbox_id] = idx
        while len(self._idle) > CACHE_IDLE:
            _, old = self._idle.popitem(last=False)
            old.close()

    def peek(self, mailbox_id: int) -> MailboxIndex | None:
        """A cached index of the mailbox, without attaching to it."""
        entry = self._active.get(mailbox_id)
        idx = entry[0] if entry is not None else self._idle.get(mailbox_id)
        return None if idx is None or idx.gone else idx

    def forget(self, idx: MailboxIndex) -> None:
        """``idx``'s mailbox was deleted or renamed: nothing may answer for
        its id from this cache any more (even were the id handed out again)."""
        if self._idle.get(idx.mailbox_id) is idx:
            del self._idle[idx.mailbox_id]
            idx.close()


_CACHES: weakref.WeakKeyDictionary[Any, IndexCache] = weakref.WeakKeyDictionary()


def index_cache(store: Store) -> IndexCache:
    cache = _CACHES.get(store)
    if cache is None:
        cache = _CACHES[store] = IndexCache(store)
    return cache
