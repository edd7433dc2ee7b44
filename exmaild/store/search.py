"""IMAP SEARCH (RFC 3501 §6.4.4, RFC 7162 MODSEQ) evaluated in the database.

The protocol-neutral key tree (``exmaild.searchquery``, which the IMAP parser
builds) becomes one SQLAlchemy Core query over ``messages`` (joined to
``contents`` only when a key needs parsed text or the sent date), selected
through the ``(mailbox_id, uid)`` unique index. Python only maps sequence numbers and
``\\Recent`` onto UIDs and restricts the answer to the session's view. No
message is walked in Python and no body is read.

Semantics chosen here:

- Sequence numbers and ``*`` refer to ``view_uids``; in a UID set ``*`` is the
  largest UID in view. A set becomes ``uid BETWEEN`` ranges over runs of
  consecutive *visible* UIDs (rows outside the view are dropped afterwards,
  so a range may span them); beyond ``_MAX_RANGES`` ranges the visible UIDs
  are passed as one list (``json_each`` / ``= ANY(array)``).
- Text keys are case-insensitive substring matches. SUBJECT/FROM/TO/CC/BCC use
  the decoded ``contents`` columns; BODY the whole decoded text of the
  message's text parts (``content_text``, up to [search] max_text_chars),
  or for a content stored before that table existed and not yet reindexed
  its ``excerpt`` (the first 16,384 characters); TEXT the decoded header
  lines, that text and the attachment names. HEADER <field> matches within one
  ``field: value`` line of ``headers_text``; an empty string (also for
  SUBJECT ""...) means "the header is present". LIKE wildcards are escaped.
  A needle without cased letters (CJK, digits) is matched with plain LIKE.
  Otherwise PostgreSQL uses ILIKE / ``~*`` (Unicode case folding under the
  database's LC_CTYPE, e.g. C.UTF-8; a plain "C" database folds ASCII only).
  SQLite's LIKE folds ASCII only, which is exact for ASCII needles; a needle
  with cased non-ASCII letters ("Äbc", Cyrillic) is matched by a Python
  function registered on the connection, with full ``str.casefold``.
- BODY/TEXT use the substring index (store/textindex.py). On SQLite the FTS5
  trigram table finds the contents holding a needle of 3+ characters (for
  views above ``_SCAN_MAX`` messages; smaller ones are cheaper to scan); it
  folds case itself (Unicode simple folding), and a needle with cased
  non-ASCII letters is then checked exactly. Shorter needles, and databases
  without FTS5, scan the text. On PostgreSQL the LIKE/ILIKE on the text is
  an uncorrelated IN for such views (one pg_trgm GIN bitmap scan, or a
  sequential scan when the needle is common, hashed for the rows) and a
  correlated EXISTS otherwise.
- Internal dates compare calendar days in UTC (the zone stored dates are
  kept in): BEFORE d is ``< d 00:00``, ON d is ``[d 00:00, d+1 00:00)``,
  SINCE d is ``>= d 00:00``. SENT* compare the Date: header's day as written,
  in its own zone (``contents.sent_day``; RFC 3501 §6.4.4: ``00:00 +0200``
  on 25 March is SENTON 25-Mar); a missing zone counts as UTC. A message
  without a usable Date: uses its internal date's UTC day, and a content
  whose sent_day is unknown (stored before it existed, not backfilled) the
  UTC day of its Date:.
- Keywords match whole words of ``messages.keywords``, ASCII case-insensitive;
  an unknown ``\\System`` flag is never set. MODSEQ ignores the optional
  entry name (one modseq per message) and means ``modseq >= value``.
"""

from __future__ import annotations

import calendar
import json
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from exmaild.searchquery import (
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SearchUid,
    SequenceSet,
    any_key,
)
from exmaild.store import flags as F
from exmaild.store import model as m
from exmaild.store import textindex

if TYPE_CHECKING:
    from exmaild.store.connector import Store

__all__ = ["SearchResult", "build_query", "run_search", "search_uids"]

M = m.messages.c
C = m.contents.c
T = m.content_text.c

# Ranges per set written out as BETWEENs; larger sets become one UID list.
_MAX_RANGES = 32
# Views of at most this many messages scan their text instead of asking the
# (store-wide) FTS5 index: a few hundred texts are read in well under a
# millisecond or two, while a common word's index entries can be long.
_SCAN_MAX = 256
# Trigram index: shorter needles have no trigram to look up.
_MIN_INDEXED = 3
_DAY = 86400
# Decoded columns for the address/subject keys.
_FIELD_COLUMNS = {
    "SUBJECT": C.subject,
    "FROM": C.from_addr,
    "TO": C.to_addr,
    "CC": C.cc_addr,
    "BCC": C.bcc_addr,
}


@dataclass(frozen=True)
class SearchResult:
    uids: list[int]  # matching UIDs, ascending
    # Max modseq of the matches when the key used MODSEQ (RFC 7162 §3.1.5);
    # None otherwise, and when nothing matched (no MODSEQ item is sent then).
    highest_modseq: int | None


async def search_uids(
    store: Store,
    mailbox_id: int,
    key: Any,
    *,
    view_uids: Sequence[int],
    recent: frozenset[int] = frozenset(),
) -> SearchResult:
    """UIDs of the messages in ``view_uids`` (ascending) that match ``key``."""
    if not view_uids:
        return SearchResult([], None)
    view = tuple(view_uids)  # the session may change its view while we run

    def thd(conn: sa.Connection) -> SearchResult:
        return run_search(conn, mailbox_id, key, view, recent)

    return await store.pool.do(thd)


def run_search(
    conn: sa.Connection,
    mailbox_id: int,
    key: Any,
    view_uids: Sequence[int],
    recent: frozenset[int] = frozenset(),
) -> SearchResult:
    """``search_uids`` on a connection (a DB thread); ``view_uids`` non-empty."""
    with_modseq = uses_modseq(key)
    dialect = conn.dialect.name
    query, functions = build_query(
        dialect, mailbox_id, key, view_uids, recent, with_modseq=with_modseq,
        fts=dialect == "sqlite" and uses_text(key) and textindex.has_fts(conn),
    )
    register_functions(conn, functions)
    rows = conn.execute(query).all()
    first, last = view_uids[0], view_uids[-1]
    if last - first + 1 != len(view_uids):  # gaps: rows between may be invisible
        visible = set(view_uids)
        rows = [r for r in rows if r[0] in visible]
    highest = max((r[1] for r in rows), default=None) if with_modseq else None
    return SearchResult([r[0] for r in rows], highest)


def uses_modseq(key: Any) -> bool:
    return any_key(key, lambda k: isinstance(k, SearchModSeq))


def uses_text(key: Any) -> bool:
    return any_key(key, lambda k: isinstance(k, SearchText))


SqlFunctions = dict[str, tuple[int, Callable[..., Any]]]


def build_query(
    dialect: str,
    mailbox_id: int,
    key: Any,
    view_uids: Sequence[int],
    recent: frozenset[int] = frozenset(),
    *,
    with_modseq: bool = False,
    fts: bool = False,
) -> tuple[sa.Select[Any], SqlFunctions]:
    """The SELECT for ``key`` (uid[, modseq] ordered by uid) and the Python
    functions a SQLite connection must have registered to run it. ``fts``:
    the SQLite database has the FTS5 table (textindex.has_fts)."""
    cond, with_contents, functions = build_condition(dialect, key, view_uids, recent, fts=fts)
    source: Any = m.messages
    if with_contents:
        source = m.messages.join(m.contents, C.id == M.content_id)
    cols = [M.uid, M.modseq] if with_modseq else [M.uid]
    query = (
        sa.select(*cols)
        .select_from(source)
        .where(M.mailbox_id == mailbox_id, M.uid.between(view_uids[0], view_uids[-1]), cond)
        .order_by(M.uid)
    )
    return query, functions


def build_condition(
    dialect: str,
    key: Any,
    view_uids: Sequence[int],
    recent: frozenset[int] = frozenset(),
    *,
    fts: bool = False,
) -> tuple[ColumnElement[bool], bool, SqlFunctions]:
    """The WHERE term for ``key`` over ``messages``, whether it needs
    ``contents`` joined, and the SQLite functions it calls (SORT / THREAD
    build their own SELECT around it)."""
    builder = _Builder(dialect, view_uids, recent, fts=fts)
    cond = builder.build(key)
    return cond, builder.uses_contents, builder.functions


def register_functions(conn: sa.Connection, functions: SqlFunctions) -> None:
    """Put the Python functions a SQLite query calls on its connection."""
    if functions:
        raw = conn.connection.driver_connection
        for name, (nargs, fn) in functions.items():
            raw.create_function(name, nargs, fn, deterministic=True)


# -- SQL construction -----------------------------------------------------------


class _Parens(ColumnElement[bool]):
    """Parentheses SQLAlchemy keeps: it flattens nested AND/OR chains, and
    SQLite parses a flat chain of n terms into a tree n deep (limit 1000)."""

    inherit_cache = True
    type = sa.types.NullType()
    _traverse_internals = [("element", InternalTraversal.dp_clauseelement)]

    def __init__(self, element: ColumnElement[bool]) -> None:
        self.element = element


@compiles(_Parens)
def _compile_parens(element: _Parens, compiler: Any, **kw: Any) -> str:
    return f"({compiler.process(element.element, **kw)})"


def _combine(op: Callable[..., Any], terms: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """AND/OR of ``terms`` as a balanced tree of at most 8-term chains."""
    if len(terms) == 1:
        return terms[0]
    while len(terms) > 8:
        terms = [_Parens(op(*terms[i : i + 8])) for i in range(0, len(terms), 8)]
    return _Parens(op(*terms))


def _escape_like(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _escape_regex(s: str) -> str:
    """Literal text for a PostgreSQL ARE: backslash before ASCII punctuation
    (a backslash before a letter or digit would be an escape)."""
    return "".join("\\" + c if c.isascii() and not c.isalnum() else c for c in s)


def _has_cased_non_ascii(s: str) -> bool:
    return not s.isascii() and any(ord(c) > 127 and c.lower() != c.upper() for c in s)


def _icontains(haystack: str | None, needle: str) -> int:
    return int(haystack is not None and needle in haystack.casefold())


def _header_line_contains(text: str | None, field: str, needle: str) -> int:
    """``field: value`` line in ``text`` whose value holds ``needle``
    (``field`` lower-case, ``needle`` casefolded)."""
    for line in (text or "").split("\n"):
        name, sep, value = line.partition(": ")
        if sep and name.lower() == field and needle in value.casefold():
            return 1
    return 0


def _day_start(day: Any) -> int:
    return calendar.timegm((day.year, day.month, day.day, 0, 0, 0))


class _Builder:
    def __init__(
        self, dialect: str, view: Sequence[int], recent: frozenset[int], *, fts: bool = False
    ) -> None:
        self.sqlite = dialect == "sqlite"
        self.fts = fts
        self.view = view
        self.recent = recent
        self.uses_contents = False
        self.functions: SqlFunctions = {}
        self._memo: dict[Any, ColumnElement[bool]] = {}

    def build(self, key: Any) -> ColumnElement[bool]:
        # Keys are frozen dataclasses: a repeated subtree is built once.
        expr = self._memo.get(key)
        if expr is None:
            expr = self._memo[key] = self._build(key)
        return expr

    def _build(self, key: Any) -> ColumnElement[bool]:
        match key:
            case SearchAll():
                return sa.true()
            case SearchAnd(keys=keys):
                if not keys:
                    return sa.true()
                return _combine(sa.and_, [self.build(k) for k in dict.fromkeys(keys)])
            case SearchOr(left=left, right=right):
                if left == right:
                    return self.build(left)
                return _Parens(sa.or_(self.build(left), self.build(right)))
            case SearchNot(key=inner):
                return sa.not_(self.build(inner))
            case SearchFlag():
                return self._flag(key)
            case SearchSequence(sequence_set=seq):
                spans = [(lo - 1, hi - 1) for lo, hi in seq.intervals(len(self.view))]
                return self._spans(spans)
            case SearchUid(sequence_set=seq):
                return self._spans(self._uid_spans(seq))
            case SearchDate():
                return self._date(key)
            case SearchAge(op=op, seconds=seconds):
                # RFC 5032: relative to now, to the second.
                limit = int(time.time()) - seconds
                return M.internal_date < limit if op == "OLDER" else M.internal_date >= limit
            case SearchSize(op=op, size=size):
                return M.size > size if op == "LARGER" else M.size < size
            case SearchHeader(field=field, value=value):
                return self._header(field.upper(), value)
            case SearchText(scope=scope, value=value):
                self.uses_contents = True
                if scope == "BODY":
                    return self._body(value)
                # The body first: an indexed match spares the header scan.
                terms = [self._body(value), self._contains(C.headers_text, value),
                         self._contains(C.attachment_names, value)]
                return _combine(sa.or_, terms)
            case SearchModSeq(modseq=modseq):
                return M.modseq >= modseq
        raise TypeError(f"unknown search key {key!r}")

    # -- flags ---------------------------------------------------------------
    def _flag(self, key: SearchFlag) -> ColumnElement[bool]:
        name = key.flag
        if name.lower() == "\\recent":
            expr = self._spans(self._recent_spans())
        elif name.lower() in F.BY_NAME:
            expr = M.flags.op("&")(F.BY_NAME[name.lower()]) != 0
        elif name.startswith("\\"):
            expr = sa.false()  # no such system flag is ever stored
        else:
            pattern = "% " + _escape_like(name) + " %"
            padded = sa.literal(" ") + M.keywords + sa.literal(" ")
            expr = self._like(padded, pattern)
        return expr if key.present else sa.not_(expr)

    # -- sets ----------------------------------------------------------------
    def _uid_spans(self, seq: SequenceSet) -> list[tuple[int, int]]:
        view = self.view
        spans: list[tuple[int, int]] = []
        for lo, hi in seq.intervals(view[-1]):
            a, b = bisect_left(view, lo), bisect_right(view, hi) - 1
            if a > b:
                continue
            if spans and a <= spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], max(b, spans[-1][1]))
            else:
                spans.append((a, b))
        return spans

    def _recent_spans(self) -> list[tuple[int, int]]:
        view, recent = self.view, self.recent
        if not recent:
            return []
        positions: Iterable[int]
        if len(recent) * 16 < len(view):  # few: look each up
            positions = [
                i
                for u in sorted(recent)
                if (i := bisect_left(view, u)) < len(view) and view[i] == u
            ]
        else:
            positions = (i for i, u in enumerate(view) if u in recent)
        spans: list[tuple[int, int]] = []
        for i in positions:
            if spans and i == spans[-1][1] + 1:
                spans[-1] = (spans[-1][0], i)
            else:
                spans.append((i, i))
        return spans

    def _spans(self, spans: list[tuple[int, int]]) -> ColumnElement[bool]:
        """Rows whose UID is at the given (inclusive) positions of the view."""
        view = self.view
        if not spans:
            return sa.false()
        if spans == [(0, len(view) - 1)]:
            return sa.true()  # the whole view: the base restriction says it all
        if len(spans) > _MAX_RANGES:
            return self._uid_in([u for a, b in spans for u in view[a : b + 1]])
        terms = [M.uid == view[a] if a == b else M.uid.between(view[a], view[b]) for a, b in spans]
        return _combine(sa.or_, terms)

    def _uid_in(self, uids: list[int]) -> ColumnElement[bool]:
        if self.sqlite:
            values = sa.func.json_each(sa.literal(json.dumps(uids), sa.Text)).table_valued("value")
            return M.uid.in_(sa.select(values.c.value))
        return M.uid == sa.any_(sa.literal(uids, postgresql.ARRAY(sa.BigInteger)))

    # -- dates ---------------------------------------------------------------
    def _date(self, key: SearchDate) -> ColumnElement[bool]:
        if key.field == "SAVED":  # RFC 8514: the day it entered the mailbox, UTC
            return self._day_range(M.added, key)
        if key.field != "SENT":
            return self._day_range(M.internal_date, key)
        self.uses_contents = True
        # The day as written in the Date: header; a content stored before
        # sent_day existed and not backfilled falls back to UTC days.
        day = _day_start(key.date) // _DAY
        cmp = {"BEFORE": C.sent_day < day, "ON": C.sent_day == day, "SINCE": C.sent_day >= day}
        fallback = self._day_range(sa.func.coalesce(C.sent_date, M.internal_date), key)
        return _Parens(sa.or_(
            _Parens(sa.and_(C.sent_day.is_not(None), cmp[key.op])),
            _Parens(sa.and_(C.sent_day.is_(None), fallback)),
        ))

    @staticmethod
    def _day_range(col: Any, key: SearchDate) -> ColumnElement[bool]:
        start = _day_start(key.date)
        if key.op == "BEFORE":
            return col < start
        if key.op == "ON":
            return _Parens(sa.and_(col >= start, col < start + _DAY))
        return col >= start

    # -- text ----------------------------------------------------------------
    def _like(self, col: Any, pattern: str) -> ColumnElement[bool]:
        if self.sqlite:  # LIKE folds ASCII case
            return col.like(pattern, escape="\\")
        return col.ilike(pattern, escape="\\")

    def _contains(self, col: Any, needle: str) -> ColumnElement[bool]:
        pattern = "%" + _escape_like(needle) + "%"
        if needle.lower() == needle.upper():  # nothing to fold (CJK, digits): plain LIKE,
            return col.like(pattern, escape="\\")  # much cheaper than ILIKE on PostgreSQL
        if self.sqlite and _has_cased_non_ascii(needle):
            self.functions["exm_icontains"] = (2, _icontains)
            return sa.func.exm_icontains(col, needle.casefold()) == 1
        return self._like(col, pattern)

    def _body(self, needle: str) -> ColumnElement[bool]:
        """The message's decoded text holds ``needle``. A content without a
        ``content_text`` row (stored before it existed, not reindexed) still
        has its excerpt; indexed contents have an empty one."""
        if not needle:
            return sa.true()
        if "\x00" in needle:  # stored text never holds NUL
            return sa.false()
        return _Parens(sa.or_(self._text(needle), self._contains(C.excerpt, needle)))

    def _text(self, needle: str) -> ColumnElement[bool]:
        row = sa.select(sa.literal(1)).where(T.content_id == M.content_id)
        if len(needle) < _MIN_INDEXED or len(self.view) <= _SCAN_MAX:
            return row.where(self._contains(T.text, needle)).exists()  # row by row
        if not self.sqlite:
            # Uncorrelated: one GIN (pg_trgm) bitmap scan, hashed for the rows.
            return M.content_id.in_(sa.select(T.content_id).where(self._contains(T.text, needle)))
        if not self.fts:
            return row.where(self._contains(T.text, needle)).exists()
        fts = sa.table(textindex.FTS_TABLE, sa.column("rowid"))
        phrase = '"' + needle.replace('"', '""') + '"'
        match = sa.literal_column(textindex.FTS_TABLE).op("MATCH")(sa.literal(phrase))
        found = M.content_id.in_(sa.select(fts.c.rowid).where(match))
        if not _has_cased_non_ascii(needle):
            return found  # the trigram index folds ASCII case as LIKE does
        # Its simple case folding only narrows; str.casefold decides.
        return _Parens(sa.and_(found, row.where(self._contains(T.text, needle)).exists()))

    def _header(self, field: str, value: str) -> ColumnElement[bool]:
        self.uses_contents = True
        if value and field in _FIELD_COLUMNS:
            return self._contains(_FIELD_COLUMNS[field], value)
        lines = sa.literal("\n", sa.Text) + C.headers_text
        prefix = "%\n" + _escape_like(field) + ":"
        if not value:  # the header is present
            return self._like(lines, prefix + "%")
        # A LIKE narrows the rows, then the match is confined to one line.
        if self.sqlite:
            self.functions["exm_header_line"] = (3, _header_line_contains)
            exact = sa.func.exm_header_line(C.headers_text, field.lower(), value.casefold()) == 1
        else:
            regex = "\n" + _escape_regex(field) + ": [^\n]*" + _escape_regex(value)
            exact = lines.regexp_match(regex, flags="i")
        if not (self.sqlite and _has_cased_non_ascii(value)):
            prefix += " %" + _escape_like(value)
        return _Parens(sa.and_(self._like(lines, prefix + "%"), exact))
