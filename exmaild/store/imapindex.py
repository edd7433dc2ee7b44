"""A compact, shared, in-memory index of one mailbox for IMAP sessions.

SELECT and ``UID FETCH 1:* (UID FLAGS)`` on a 100,000-message mailbox must not
load 100,000 rows per command. Every session that has a mailbox selected
shares one ``MailboxIndex`` of it: UIDs, flag bits, modseqs, internal dates
and sizes in parallel arrays (about 25 bytes a message), plus the rare
keywords in a dict.

Freshness: every change to a mailbox's messages bumps its ``highestmodseq``
(ingest, copy, flag changes, expunge). ``refresh()`` reads that one value and
returns at once when it is unchanged. Otherwise it loads only what changed:
UIDs at or above the old UIDNEXT are new; rows whose modseq passed the old
highest modseq changed. When in-process change notifications explain every
modseq step, the changed UIDs are known and fetched directly; otherwise the
mailbox's rows are scanned for modseq, and a count tells whether anything was
expunged behind our back (another node, a path that did not publish), in
which case the index is reloaded. So the index is correct whatever happened,
and cheap in the common case.

Sessions keep their own view (sequence numbers, what the client was told)
and catch up through ``log``: entries of (version, kind, uids).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from exmaild.store.changes import MailboxChange
from exmaild.store.contents import chunked
from exmaild.store.rawsql import raw_rows

if TYPE_CHECKING:
    from exmaild.store.connector import Store
    from exmaild.store.imapcache import IndexCache

log = Logger()

LOG_LIMIT = 512  # log entries kept; a view further behind does a full diff


@dataclass(frozen=True)
class MailboxState:
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    recent_uid: int = 0  # \Recent claimed up to here (mailboxes.recent_uid)


@dataclass(frozen=True)
class Delta:
    """What ``refresh`` read: rows are (uid, flags, keywords, modseq, date, size)."""

    state: MailboxState | None  # None: the mailbox is gone
    rows: list[tuple[int, int, str, int, int, int]]
    count: int | None  # messages in the mailbox, when checked
    full: bool  # rows are the whole mailbox


_STATE = "SELECT uidvalidity, uidnext, highestmodseq, recent_uid FROM mailboxes WHERE id = ?"


def read_state(conn: sa.Connection, mailbox_id: int) -> MailboxState | None:
    rows = raw_rows(conn, _STATE, (mailbox_id,))
    return MailboxState(*rows[0]) if rows else None


_FULL = (
    "SELECT uid, flags, keywords, modseq, internal_date, size FROM messages "
    "WHERE mailbox_id = ? ORDER BY uid"
)


_ROWS_OF = (
    "SELECT uid, flags, keywords, modseq, internal_date, size FROM messages WHERE mailbox_id = ?"
)
_NEW = _ROWS_OF + " AND uid >= ? ORDER BY uid"
_CHANGED = _ROWS_OF + " AND uid < ? AND modseq > ?"
_COUNT = "SELECT count(*) FROM messages WHERE mailbox_id = ?"


def read_full(conn: sa.Connection, mailbox_id: int) -> Delta:
    state = read_state(conn, mailbox_id)
    if state is None:
        return Delta(None, [], 0, True)
    rows = raw_rows(conn, _FULL, (mailbox_id,))
    return Delta(state, rows, len(rows), True)


def read_delta(
    conn: sa.Connection,
    mailbox_id: int,
    known: MailboxState,
    hinted: tuple[int, set[int]] | None,
) -> Delta:
    """Rows that changed since ``known``. ``hinted`` is (modseq, uids) when
    notifications explained every modseq step up to that modseq: the UIDs
    below ``known.uidnext`` that changed meanwhile."""
    state = read_state(conn, mailbox_id)
    if state is None:
        return Delta(None, [], 0, False)
    if state.uidvalidity != known.uidvalidity:
        return read_full(conn, mailbox_id)
    if state.highestmodseq == known.highestmodseq and state.uidnext == known.uidnext:
        return Delta(state, [], None, False)
    changed_uids = None
    if hinted is not None and state.highestmodseq <= hinted[0]:
        changed_uids = hinted[1]
    # Plain SQL on the driver's cursor: this runs before most commands of
    # every session, and SQLAlchemy's statement building cost more than the query.
    rows = raw_rows(conn, _NEW, (mailbox_id, known.uidnext))
    count = None
    if changed_uids is None:
        rows += raw_rows(conn, _CHANGED, (mailbox_id, known.uidnext, known.highestmodseq))
        count = raw_rows(conn, _COUNT, (mailbox_id,))[0][0]
    elif changed_uids:
        for part in chunked(sorted(changed_uids)):
            marks = ",".join("?" * len(part))
            rows += raw_rows(conn, f"{_ROWS_OF} AND uid IN ({marks})", (mailbox_id, *part))
    return Delta(state, rows, count, False)


class MailboxIndex:
    """UIDs ascending and, at the same positions, flags, modseqs, dates, sizes."""

    def __init__(self, store: Store, mailbox_id: int) -> None:
        self.store = store
        self.mailbox_id = mailbox_id
        self.state = MailboxState(0, 1, 0)
        self.uids = array("I")
        self.flags = bytearray()
        self.modseqs = array("q")
        self.dates = array("q")
        self.sizes = array("q")
        self.keywords: dict[int, str] = {}
        # Every keyword name seen in the mailbox since loading; the epoch
        # grows when a new one appears, so sessions can announce it with
        # FLAGS before a FETCH shows it (RFC 3501 §7.2.6) at O(1) per check.
        self.keyword_set: set[str] = set()
        self.keyword_epoch = 0
        # Rendered "* n FETCH (UID u FLAGS (...))" lines by position, kept by
        # the IMAP layer for the resync every client sends; b"" marks one stale,
        # and positions past the end are not rendered yet.
        self.lines: list[bytes] = []
        # uid -> the FETCH row (imapmessages.fetch_rows) of messages fetched
        # lately: what ENVELOPE / BODYSTRUCTURE / a body section need besides
        # the blob, so repeated fetches skip the database. Messages never
        # change (flags live above); a compaction that moves a blob makes the
        # read fail, and the row is then read again.
        self.rows: dict[int, tuple[Any, ...]] = {}
        self.rows_bytes = 0
        self.cache: IndexCache | None = None  # set by the IndexCache holding it
        self.loaded = False
        self.gone = False  # the mailbox was deleted
        self.version = 0
        self.log: list[tuple[int, str, tuple[int, ...]]] = []
        self.log_floor = 0  # views at versions below this must do a full diff
        # \Recent (RFC 3501): UIDs up to here are known to be claimed (in the
        # database, by a session of this or another process); it only grows.
        self.recent_mark = 0
        self.listeners: set[Callable[[], None]] = set()
        # modseq -> (kind, uids) from in-process notifications, to skip scans.
        self._hints: dict[int, tuple[str, tuple[int, ...]]] = {}
        # Callers waiting for the next refresh; one refresh runs at a time.
        self._waiting: list[defer.Deferred[None]] = []
        self._refreshing = False
        self._unsubscribe = store.notifier.subscribe(mailbox_id, self._on_change)

    # -- lookups -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uids)

    def position(self, uid: int) -> int:
        """Index of ``uid`` or -1."""
        i = bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else -1

    def _note_keywords(self, kw: str) -> None:
        for k in kw.split():
            if k not in self.keyword_set:
                self.keyword_set.add(k)
                self.keyword_epoch += 1

    def keyword_names(self) -> list[str]:
        names: dict[str, None] = {}
        for kw in self.keywords.values():
            for k in kw.split():
                names.setdefault(k, None)
        return list(names)

    # -- notifications --------------------------------------------------------
    def _on_change(self, change: MailboxChange) -> None:
        if change.kind == "deleted":
            self._mark_gone()
            return
        if change.modseq:
            self._hints[change.modseq] = (change.kind, change.uids)
            if len(self._hints) > 4096:
                self._hints.clear()
        if change.kind == "expunge" and self.loaded:
            self._remove(set(change.uids))
        if self.listeners:
            # Someone is idling: fetch what changed now, then tell them.
            defer.Deferred.fromCoroutine(self.refresh_and_notify())

    async def refresh_and_notify(self) -> None:
        try:
            await self.refresh()
        except Exception:
            log.failure("mailbox index refresh failed", mailbox_id=self.mailbox_id)
            return
        self.notify()

    def notify(self) -> None:
        for fn in list(self.listeners):
            try:
                fn()
            except Exception:
                log.failure("mailbox index listener failed", mailbox_id=self.mailbox_id)

    def _mark_gone(self) -> None:
        if not self.gone:
            self.gone = True
            self._append_log("reset", ())
            if self.cache is not None:
                self.cache.forget(self)

    # -- refreshing -----------------------------------------------------------
    async def refresh(self) -> None:
        """Bring the index up to date with the database (coalesced: the
        callers that ask while a refresh runs share the next one)."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        if not self._refreshing:
            self._refreshing = True
            defer.Deferred.fromCoroutine(self._refresh_loop())
        await d

    async def _refresh_loop(self) -> None:
        # The callers of one refresh are woken from this loop, one after the
        # other. Handing the turn from caller to caller instead (a
        # DeferredLock, each release waking the next waiter) nests every
        # wake-up inside the previous one: with a few hundred sessions
        # selecting one mailbox at once that passed the recursion limit, the
        # lock holder died of RecursionError and its lock was never released.
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await self._refresh_once()
                except BaseException:  # whatever it was, no caller is left waiting
                    failure = Failure()
                    for d in batch:
                        if not d.called:
                            d.errback(failure)
                else:
                    for d in batch:
                        if not d.called:
                            d.callback(None)
        finally:
            self._refreshing = False

    async def _refresh_once(self) -> None:
        mid = self.mailbox_id
        pool = self.store.pool
        if not self.loaded:
            delta = await pool.do(lambda conn: read_full(conn, mid))
        else:
            known = self.state
            hinted = self._explained(known)
            delta = await pool.do(lambda conn: read_delta(conn, mid, known, hinted))
        self._apply(delta)
        if delta.count is not None and delta.count != len(self.uids) and not delta.full:
            # Something vanished without a notification we could use: reload.
            self._apply(await pool.do(lambda conn: read_full(conn, mid)))

    def _explained(self, known: MailboxState) -> tuple[int, set[int]] | None:
        """(modseq, UIDs changed up to it) when notifications account for every
        modseq step since ``known``; None means scan."""
        hints = self._hints
        uids: set[int] = set()
        ms = known.highestmodseq + 1
        while (hint := hints.get(ms)) is not None:
            if hint[0] == "flags":
                uids.update(hint[1])
            ms += 1
        return (ms - 1, uids) if ms - 1 > known.highestmodseq else None

    def _apply(self, delta: Delta) -> None:
        if delta.state is None:
            self._mark_gone()
            return
        for ms in [k for k in self._hints if k <= delta.state.highestmodseq]:
            del self._hints[ms]
        self.recent_mark = max(self.recent_mark, delta.state.recent_uid)
        if delta.full:
            self._load(delta)
            return
        if not delta.rows:
            self.state = delta.state
            return
        last = self.uids[-1] if self.uids else 0
        new: list[tuple[int, int, str, int, int, int]] = []
        changed: list[int] = []
        for row in delta.rows:
            uid = row[0]
            if uid > last:
                new.append(row)
                continue
            i = self.position(uid)
            if i < 0:
                continue  # expunged meanwhile
            if row[3] < self.modseqs[i]:
                continue  # read before a change we already applied: stale
            self.flags[i] = row[1]
            self.modseqs[i] = row[3]
            if i < len(self.lines):
                self.lines[i] = b""
            if row[2]:
                self.keywords[uid] = row[2]
                self._note_keywords(row[2])
            else:
                self.keywords.pop(uid, None)
            changed.append(uid)
        new.sort()
        for uid, fl, kw, ms, date, size in new:
            if self.uids and uid <= self.uids[-1]:
                continue
            self.uids.append(uid)
            self.flags.append(fl)
            self.modseqs.append(ms)
            self.dates.append(date)
            self.sizes.append(size)
            if kw:
                self.keywords[uid] = kw
                self._note_keywords(kw)
        self.state = delta.state
        if changed:
            self._append_log("flags", tuple(changed))
        if new:
            self._append_log("exists", tuple(r[0] for r in new))

    def _load(self, delta: Delta) -> None:
        assert delta.state is not None
        rows = delta.rows
        cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * 6
        self.uids = array("I", cols[0])
        self.flags = bytearray(cols[1])
        self.keywords = {r[0]: r[2] for r in rows if r[2]}
        for kw in set(self.keywords.values()):
            self._note_keywords(kw)
        self.modseqs = array("q", cols[3])
        self.dates = array("q", cols[4])
        self.sizes = array("q", cols[5])
        self.lines.clear()
        self.drop_rows()
        self.state = delta.state
        self.loaded = True
        self._append_log("reset", ())

    def _remove(self, gone: set[int]) -> None:
        if not gone:
            return
        if len(gone) < 64:
            at = sorted((i for i in map(self.position, gone) if i >= 0), reverse=True)
            if not at:
                return
            removed = tuple(self.uids[i] for i in reversed(at))
            del self.lines[at[-1] :]  # sequence numbers after the first shift
            for i in at:
                del self.uids[i], self.flags[i], self.modseqs[i], self.dates[i], self.sizes[i]
            for u in removed:
                self.keywords.pop(u, None)
            self.drop_rows(removed)
            self._append_log("expunge", removed)
            return
        keep = [i for i, u in enumerate(self.uids) if u not in gone]
        if len(keep) == len(self.uids):
            return
        removed = tuple(u for u in self.uids if u in gone)
        first = next(i for i, u in enumerate(self.uids) if u in gone)
        del self.lines[first:]
        self.uids = array("I", [self.uids[i] for i in keep])
        self.flags = bytearray([self.flags[i] for i in keep])
        self.modseqs = array("q", [self.modseqs[i] for i in keep])
        self.dates = array("q", [self.dates[i] for i in keep])
        self.sizes = array("q", [self.sizes[i] for i in keep])
        for u in removed:
            self.keywords.pop(u, None)
        self.drop_rows(removed)
        self._append_log("expunge", removed)

    def _append_log(self, kind: str, uids: tuple[int, ...]) -> None:
        self.version += 1
        self.log.append((self.version, kind, uids))
        if len(self.log) > LOG_LIMIT:
            drop = len(self.log) - LOG_LIMIT // 2
            self.log_floor = self.log[drop - 1][0]
            del self.log[:drop]

    def entries_since(self, version: int) -> list[tuple[int, str, tuple[int, ...]]] | None:
        """Log entries after ``version``; None when the log no longer reaches
        back that far (or a reset happened): the caller diffs everything."""
        if version >= self.version:
            return []
        if version < self.log_floor:
            return None
        start = bisect_left(self.log, (version + 1,))
        entries = self.log[start:]
        if any(kind == "reset" for _, kind, _ in entries):
            return None
        return entries

    # -- local updates ---------------------------------------------------------
    def apply_flags(self, rows: Iterable[tuple[int, int, str, int]]) -> None:
        """Our own committed flag change (uid, flags, keywords, modseq): visible
        at once to this process's sessions; ``refresh`` re-reads it anyway."""
        changed = []
        for uid, fl, kw, ms in rows:
            i = self.position(uid)
            if i < 0 or ms < self.modseqs[i]:
                # Gone, or a later change is applied already (its result
                # reached the reactor first): a modseq never goes back.
                continue
            self.flags[i] = fl
            self.modseqs[i] = ms
            if i < len(self.lines):
                self.lines[i] = b""
            if kw:
                self.keywords[uid] = kw
                self._note_keywords(kw)
            else:
                self.keywords.pop(uid, None)
            changed.append(uid)
        if changed:
            self._append_log("flags", tuple(changed))

    # -- cached FETCH rows ------------------------------------------------------
    def add_rows(self, rows: dict[int, tuple[Any, ...]]) -> None:
        added = 0
        for uid, row in rows.items():
            if uid not in self.rows and self.position(uid) >= 0:
                self.rows[uid] = row
                added += row_bytes(row)
        self.rows_bytes += added
        if self.cache is not None and added:
            self.cache.rows_grew(self, added)

    def drop_rows(self, uids: Iterable[int] | None = None) -> None:
        if uids is None:
            freed, self.rows, self.rows_bytes = self.rows_bytes, {}, 0
        else:
            freed = 0
            for uid in uids:
                row = self.rows.pop(uid, None)
                if row is not None:
                    freed += row_bytes(row)
            self.rows_bytes -= freed
        if self.cache is not None and freed:
            self.cache.rows_grew(self, -freed)

    def close(self) -> None:
        self.drop_rows()
        self._unsubscribe()
        self.listeners.clear()


def row_bytes(row: tuple[Any, ...]) -> int:
    """Rough memory a cached FETCH row costs."""
    return 120 + sum(len(v) for v in row[4:] if isinstance(v, bytes | str))
