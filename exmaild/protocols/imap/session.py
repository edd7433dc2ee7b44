"""Per-connection IMAP state: login state, the account, and the selected
mailbox's *view* — the message sequence numbers and flags as this client
knows them.

The view lags the shared ``MailboxIndex`` on purpose: expunges reach the
client only when RFC 3501 §7.4.1 allows an EXPUNGE response (never during
FETCH, STORE or SEARCH), so until then the expunged message keeps its
sequence number here. ``View.sync`` turns what changed in the index into the
untagged EXPUNGE / EXISTS / RECENT / FETCH responses that bring the client up
to date, and skips changes the client was already told about (its own STORE).
"""

from __future__ import annotations

import enum
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from exmaild.store import flags as fl
from exmaild.store.imapindex import MailboxIndex
from exmaild.store.records import FETCH_WINDOWS, Account, Mailbox

from . import responses as r
from .encode import compress_sequence_set
from .sequence import SequenceSet


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


def fetch_cutoff(account: Account, now: float | None = None) -> int:
    """Oldest internal date IMAP shows under the account's fetch window (§6.2.2)."""
    days = FETCH_WINDOWS.get(account.setting("fetch_window"), 0)
    if not days:
        return 0
    return int((now if now is not None else time.time()) - days * 86400)


SEEN_TABLE = bytes((1 if b & fl.SEEN else 0) for b in range(256))


class View:
    """What one session shows of a mailbox: seq n <-> ``uids[n-1]``."""

    def __init__(
        self, index: MailboxIndex, *, cutoff: int = 0, claim_recent: bool = True,
        rev2: bool = False,
    ) -> None:
        self.index = index
        # IMAP4rev2 enabled (RFC 9051): no \Recent at all, so this session
        # neither claims nor shows it (IMAP4rev1 sessions still get theirs).
        self.rev2 = rev2
        self.cutoff = cutoff
        self.claim_recent = claim_recent
        if cutoff:
            keep = [i for i, d in enumerate(index.dates) if d >= cutoff]
            self.uids = array("I", [index.uids[i] for i in keep])
            self.flags = bytearray([index.flags[i] for i in keep])
        else:
            self.uids = array("I", index.uids)
            self.flags = bytearray(index.flags)
        if cutoff:
            self.keywords = {u: k for u, k in index.keywords.items() if self.has(u)}
        else:
            self.keywords = dict(index.keywords)
        self.seen_uid = index.uids[-1] if index.uids else 0  # highest index UID considered
        self.version = index.version
        self.readonly = not claim_recent
        # Keyword names the client was given in FLAGS, and the index's
        # keyword epoch when it was.
        self.announced: set[str] = set()
        self.keyword_epoch = -1
        self.pending_expunge: set[int] = set()
        # QRESYNC enabled: expunges go out as one ``* VANISHED`` (RFC 7162).
        self.qresync = False
        # \Recent: UIDs this session claimed (in the database, see
        # ``claim_wanted``); ranges claimed but not in the view yet.
        self.recent: set[int] = set()
        self.claimed_top = 0
        self._recent_ranges: list[tuple[int, int]] = []
        if self.readonly and not rev2:
            # Read-only sessions claim nothing and see as \Recent what nobody
            # claimed (RFC 3501 §2.3.2: later sessions see it \Recent too).
            self.recent.update(self.uids[bisect_right(self.uids, index.recent_mark) :])

    # -- lookups ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.uids)

    def position(self, uid: int) -> int:
        i = bisect_left(self.uids, uid)
        return i if i < len(self.uids) and self.uids[i] == uid else -1

    def has(self, uid: int) -> bool:
        return self.position(uid) >= 0

    def first_unseen(self) -> int:
        """Sequence number of the first message without \\Seen, or 0."""
        i = self.flags.translate(SEEN_TABLE).find(0)
        return i + 1 if i >= 0 else 0

    def resolve(self, seqset: SequenceSet, uid: bool) -> list[int] | None:
        """Positions (0-based, ascending) the set names; None for a sequence
        number beyond the mailbox (BAD)."""
        n = len(self.uids)
        if not uid:
            if not seqset.uses_star and seqset.highest_explicit() > n:
                return None
            return [p for lo, hi in seqset.intervals(n) for p in range(lo - 1, hi)]
        if not n:
            return []
        out: list[int] = []
        for lo, hi in seqset.intervals(self.uids[-1]):
            a = bisect_left(self.uids, lo)
            b = bisect_right(self.uids, hi)
            out.extend(range(a, b))
        return out

    def flags_of(self, pos: int) -> tuple[int, str]:
        """Current flags: the index's, or the last known for an expunged one."""
        uid = self.uids[pos]
        i = self.index.position(uid)
        if i >= 0:
            return self.index.flags[i], self.index.keywords.get(uid, "")
        return self.flags[pos], self.keywords.get(uid, "")

    def modseq_of(self, uid: int) -> int:
        i = self.index.position(uid)
        return self.index.modseqs[i] if i >= 0 else self.index.state.highestmodseq

    def remember(self, pos: int, mask: int, keywords: str) -> None:
        """The client has now been told these flags."""
        self.flags[pos] = mask
        uid = self.uids[pos]
        if keywords:
            self.keywords[uid] = keywords
        else:
            self.keywords.pop(uid, None)

    # -- \Recent ------------------------------------------------------------------
    def claim_wanted(self) -> int:
        """The UID up to which this session should claim \\Recent before it
        next syncs (the caller does, in the database), or 0: read-only, or
        nothing above what someone has claimed already."""
        if self.readonly or self.rev2:
            return 0
        idx = self.index
        top = idx.uids[-1] if idx.uids else 0
        if top <= self.claimed_top:
            return 0
        if top <= idx.recent_mark:
            self.claimed_top = top
            return 0
        return top

    def claimed(self, mark: int, top: int) -> None:
        """The claim came back: this session alone has (mark, top] as \\Recent."""
        self.claimed_top = max(self.claimed_top, top)
        self.index.recent_mark = max(self.index.recent_mark, top)
        if top <= mark:
            return
        uids = self.uids
        self.recent.update(uids[bisect_right(uids, mark) : bisect_right(uids, top)])
        if top > self.seen_uid:
            self._recent_ranges.append((max(mark, self.seen_uid), top))

    # -- catching up -----------------------------------------------------------
    def announce_flags(self) -> list[bytes]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` naming every keyword
        now in use (SELECT), remembered as told."""
        names = self.index.keyword_names()
        self.announced = set(names)
        self.keyword_epoch = self.index.keyword_epoch
        return self._flags_lines(names)

    def new_keywords(self) -> list[bytes]:
        """FLAGS and PERMANENTFLAGS again when the mailbox has keywords the
        client was not told of: before any FETCH shows one (RFC 3501 §7.2.6)."""
        idx = self.index
        if idx.keyword_epoch == self.keyword_epoch:
            return []
        self.keyword_epoch = idx.keyword_epoch
        fresh = [k for k in idx.keyword_set if k not in self.announced]
        if not fresh:
            return []
        names = [*sorted(self.announced), *sorted(fresh)]
        self.announced.update(fresh)
        return self._flags_lines(names)

    def _flags_lines(self, keywords: list[str]) -> list[bytes]:
        names = [*r.SYSTEM_FLAGS, *keywords]
        permanent = [] if self.readonly else [*names, r.PERMANENT_EXTRA]
        return [
            b"* FLAGS " + r.flags_list(names) + b"\r\n",
            r.untagged_ok("Flags permitted", "PERMANENTFLAGS " + r.flags_list(permanent).decode()),
        ]

    def sync(self, *, allow_expunge: bool, condstore: bool) -> list[bytes]:
        """Untagged responses telling the client what changed since last time."""
        idx = self.index
        out: list[bytes] = []
        entries = idx.entries_since(self.version)
        flag_uids: set[int] | None = set()
        if entries is None:
            present = set(idx.uids)
            self.pending_expunge.update(u for u in self.uids if u not in present)
            flag_uids = None
        else:
            for _, kind, uids in entries:
                if kind == "expunge":
                    self.pending_expunge.update(u for u in uids if self.has(u))
                elif kind == "flags" and flag_uids is not None:
                    flag_uids.update(uids)
        self.version = idx.version
        out.extend(self.new_keywords())
        if allow_expunge and self.pending_expunge:
            out.extend(self.expunge(self.pending_expunge))
        out.extend(self._new_messages())
        out.extend(self._flag_changes(flag_uids, condstore))
        return out

    def expunge(self, uids: Iterable[int]) -> list[bytes]:
        """Remove ``uids`` from the view; EXPUNGE responses, highest first."""
        gone = set(uids)
        self.pending_expunge -= gone
        at = sorted((p for p in map(self.position, gone) if p >= 0), reverse=True)
        if not at:
            return []
        if self.qresync:
            told = sorted(self.uids[p] for p in at)
            out = [b"* VANISHED " + compress_sequence_set(told) + b"\r\n"]
        else:
            out = [r.expunge(p + 1) for p in at]
        if len(at) < 64:
            for p in at:
                uid = self.uids[p]
                del self.uids[p], self.flags[p]
                self.keywords.pop(uid, None)
                self.recent.discard(uid)
        else:
            drop = set(at)
            keep = [i for i in range(len(self.uids)) if i not in drop]
            removed = {self.uids[p] for p in at}
            self.uids = array("I", [self.uids[i] for i in keep])
            self.flags = bytearray([self.flags[i] for i in keep])
            for uid in removed:
                self.keywords.pop(uid, None)
            self.recent -= removed
        return out

    def _new_messages(self) -> list[bytes]:
        idx = self.index
        start = bisect_right(idx.uids, self.seen_uid)
        if start >= len(idx.uids):
            return []
        added = []
        for i in range(start, len(idx.uids)):
            if idx.dates[i] >= self.cutoff:
                uid = idx.uids[i]
                self.uids.append(uid)
                self.flags.append(idx.flags[i])
                kw = idx.keywords.get(uid)
                if kw:
                    self.keywords[uid] = kw
                added.append(uid)
        self.seen_uid = idx.uids[-1]
        if self.readonly and not self.rev2:
            self.recent.update(u for u in added if u > idx.recent_mark)
        elif self._recent_ranges:
            ranges = self._recent_ranges
            self.recent.update(u for u in added if any(lo < u <= hi for lo, hi in ranges))
            self._recent_ranges = [(lo, hi) for lo, hi in ranges if hi > self.seen_uid]
        if not added:
            return []
        if self.rev2:
            return [r.exists(len(self.uids))]
        return [r.exists(len(self.uids)), r.recent(len(self.recent))]

    def start_rev2(self) -> None:
        """ENABLE IMAP4rev2 with this view selected: \\Recent is gone from here on."""
        self.rev2 = True
        self.recent.clear()
        self._recent_ranges = []

    def _flag_changes(self, flag_uids: set[int] | None, condstore: bool) -> list[bytes]:
        idx = self.index
        out: list[bytes] = []
        if flag_uids is None:
            candidates: Iterable[int] = list(self.uids)
        else:
            candidates = sorted(flag_uids)
        for uid in candidates:
            pos = self.position(uid)
            if pos < 0:
                continue
            i = idx.position(uid)
            if i < 0:
                continue
            mask, kw = idx.flags[i], idx.keywords.get(uid, "")
            if mask == self.flags[pos] and kw == self.keywords.get(uid, ""):
                continue
            self.remember(pos, mask, kw)
            out.append(self.flag_fetch(pos, mask, kw, condstore, idx.modseqs[i]))
        return out

    def flag_fetch(self, pos: int, mask: int, kw: str, condstore: bool, modseq: int) -> bytes:
        uid = self.uids[pos]
        flags = r.format_flags(mask, kw, uid in self.recent)
        if condstore:
            return b"* %d FETCH (UID %d FLAGS %b MODSEQ (%d))\r\n" % (pos + 1, uid, flags, modseq)
        return b"* %d FETCH (UID %d FLAGS %b)\r\n" % (pos + 1, uid, flags)


@dataclass
class Selected:
    mailbox: Mailbox
    index: MailboxIndex
    view: View
    readonly: bool
    # RFC 5182: UIDs of the last SEARCH RETURN (SAVE), ``$``; gone with the
    # selection (SELECT, EXAMINE, CLOSE, UNSELECT make a new one or none).
    saved: list[int] = field(default_factory=list)


@dataclass
class Session:
    state: State = State.NOT_AUTHENTICATED
    account: Account | None = None
    selected: Selected | None = None
    condstore: bool = False  # RFC 7162 enabled (ENABLE, SELECT (CONDSTORE), implicit)
    qresync: bool = False  # ENABLE QRESYNC (implies condstore)
    utf8: bool = False  # mailbox names in UTF-8: UTF8=ACCEPT or IMAP4rev2 enabled
    utf8_accept: bool = False  # ENABLE UTF8=ACCEPT (RFC 6855): also no SEARCH CHARSET
    rev2: bool = False  # ENABLE IMAP4rev2 (RFC 9051; see rev2.py)
    notify: Any = None  # notify.Watch: what NOTIFY SET asked for (RFC 5465)
    client_id: dict[str, str | None] = field(default_factory=dict)
    user: str | None = None  # as typed at login, for logs

    @property
    def account_id(self) -> int:
        assert self.account is not None
        return self.account.id
