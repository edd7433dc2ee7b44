"""SORT / THREAD keys (RFC 5256, RFC 5957) and the queries ordered by them.

The keys of a content are derived once from what the store already keeps
decoded (``contents.subject``, the stored ENVELOPE, ``headers_text``) into a
``content_sort`` row: the base subject, the first From/To/Cc mailbox, the
display names, Message-ID and parent ids. ``make_missing`` makes the missing
rows of a mailbox (the first SORT of a mailbox pays for it, later ones find
every row there); ``sorted_uids`` then lets the database order the
mailbox's matching messages, and ``thread_rows`` returns the few columns
THREAD needs, in date order.

Strings are compared as i;ascii-casemap (RFC 4790): ASCII letters are
upper-cased when the key is made, the rest compares by octets (``COLLATE
"C"`` on PostgreSQL, SQLite's BINARY). The DATE key is the Date: header's
instant in UTC, or the internal date when it has none (RFC 5256 §2.2).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect

from exmaild.mailstore.textdecode import decode_bytes, decode_header
from exmaild.store import model as m
from exmaild.store import textindex
from exmaild.store.search import build_condition, register_functions, uses_text

M = m.messages.c
C = m.contents.c
S = m.content_sort.c

_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}
_BLOB = r"\[[^\[\]]*\]\s*"
_REFWD = re.compile(rf"(?:{_BLOB})*(?:re|fwd?)\s*(?:{_BLOB})?:", re.IGNORECASE)
_BLOB_RE = re.compile(_BLOB)
_MSGID = re.compile(r"<[^<>\s]+>")
# The first such line of headers_text ("Name: decoded value" per field).
_REFERENCES = re.compile(r"^references[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_IN_REPLY_TO = re.compile(r"^in-reply-to[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_BATCH = 500

SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)


def casemap(s: str) -> str:
    """i;ascii-casemap: ASCII letters upper-cased, everything else as is."""
    return s.translate(_UPPER)


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 §2.1 base subject (not yet case-mapped), and whether the
    subject marked a reply or forward (a leader, a "(fwd)" trailer or a
    "[fwd: ...]" wrapper was removed)."""
    s = " ".join(subject.split())
    reply = False
    while True:
        while True:  # (2) trailers: "(fwd)" and white space
            s = s.rstrip()
            if not s.lower().endswith("(fwd)"):
                break
            s, reply = s[:-5], True
        while True:  # (3)-(5) leaders and blobs, until nothing changes
            before = s
            s = s.lstrip()
            found = _REFWD.match(s)
            if found:
                s, reply = s[found.end() :], True
                continue
            blob = _BLOB_RE.match(s)
            if blob and s[blob.end() :].strip():
                s = s[blob.end() :]
            if s == before:
                break
        if s[:5].lower() == "[fwd:" and s.endswith("]"):  # (6)
            s, reply = s[5:-1], True
            continue
        return s.strip(), reply


# -- the stored ENVELOPE ------------------------------------------------------------------
_TOKEN = re.compile(rb' *(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}\r\n|([^ ()]+))', re.S)
_UNQUOTE = re.compile(rb"\\(.)", re.S)


def _parse_list(data: bytes) -> Any:
    """The IMAP value at the start of ``data`` (the stored ENVELOPE): nested
    lists of bytes, None for NIL."""
    if b"{" not in data:  # no literal: tokenise in one go (the usual case)
        return _parse_tokens(_TOKEN.findall(data))
    stack: list[list[Any]] = [[]]
    pos = 0
    while True:
        tok = _TOKEN.match(data, pos)
        if tok is None:
            raise ValueError("bad envelope")
        pos = tok.end()
        opened, closed, quoted, size, atom = tok.groups()
        if opened:
            stack.append([])
            continue
        if closed:
            if len(stack) < 2:
                raise ValueError("bad envelope")
            value: Any = stack.pop()
        elif quoted is not None:
            value = _UNQUOTE.sub(rb"\1", quoted) if b"\\" in quoted else quoted
        elif size is not None:
            value, pos = data[pos : pos + int(size)], pos + int(size)
        else:
            value = None if atom.upper() == b"NIL" else atom
        stack[-1].append(value)
        if len(stack) == 1:
            return value


def _parse_tokens(tokens: list[tuple[bytes, ...]]) -> Any:
    stack: list[list[Any]] = [[]]
    for opened, closed, quoted, _size, atom in tokens:
        if opened:
            stack.append([])
            continue
        if closed:
            if len(stack) < 2:
                raise ValueError("bad envelope")
            value: Any = stack.pop()
        elif atom:
            value = None if atom == b"NIL" else atom
        else:
            value = _UNQUOTE.sub(rb"\1", quoted) if b"\\" in quoted else quoted
        stack[-1].append(value)
        if len(stack) == 1:
            return value
    raise ValueError("bad envelope")


def _first_address(addrs: Any) -> tuple[str, str, str]:
    """(decoded display name, mailbox, mailbox@host) of the first address
    of an envelope address list (group markers skipped), or empty strings."""
    for addr in addrs or ():
        if not isinstance(addr, list) or len(addr) != 4 or addr[3] is None:
            continue
        name, _adl, mailbox, host = addr
        box = decode_bytes(mailbox or b"")
        spec = f"{box}@{decode_bytes(host)}" if box else ""
        display = " ".join(decode_header(name).split()) if name else ""
        return display, box, spec
    return "", "", ""


def _header_ids(headers: str, field: re.Pattern[str]) -> list[str]:
    found = field.search(headers)
    return _MSGID.findall(found.group(1)) if found else []


def make_keys(
    subject: str, envelope: bytes, message_id: str, headers: str
) -> dict[str, Any]:
    """The ``content_sort`` row (without content_id) of one content."""
    base, reply = base_subject(subject)
    try:
        env = _parse_list(envelope)
    except ValueError:
        env = []
    env = env if isinstance(env, list) and len(env) == 10 else [None] * 10
    from_name, from_box, from_spec = _first_address(env[2])
    to_name, to_box, to_spec = _first_address(env[5])
    _, cc_box, _ = _first_address(env[6])
    ids = _MSGID.findall(message_id)
    refs = _header_ids(headers, _REFERENCES) or _header_ids(headers, _IN_REPLY_TO)[:1]
    return {
        "base_subject": casemap(base),
        "is_reply": reply,
        "from_key": casemap(from_box),
        "to_key": casemap(to_box),
        "cc_key": casemap(cc_box),
        "display_from": casemap(from_name or from_spec),
        "display_to": casemap(to_name or to_spec),
        "msgid": ids[0] if ids else "",
        "refs": " ".join(refs),
    }


def missing_keys(conn: sa.Connection, mailbox_id: int, limit: int = _BATCH) -> list[dict[str, Any]]:
    """Keys of up to ``limit`` of the mailbox's contents that have none yet
    (read only: computed outside any write transaction)."""
    lacking = (
        sa.select(M.content_id)
        .select_from(m.messages.outerjoin(m.content_sort, S.content_id == M.content_id))
        .where(M.mailbox_id == mailbox_id, S.content_id.is_(None))
        .limit(limit)
    )
    rows = conn.execute(
        sa.select(C.id, C.subject, C.envelope, C.message_id, C.headers_text).where(
            C.id.in_(lacking.scalar_subquery())
        )
    ).all()
    return [
        {"content_id": r.id, **make_keys(r.subject, r.envelope, r.message_id, r.headers_text)}
        for r in rows
    ]


def insert_keys(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    """Store keys made by ``missing_keys`` (a row made meanwhile is kept)."""
    if not rows:
        return
    insert: Any = (
        sqlite_dialect.insert(m.content_sort)
        if conn.dialect.name == "sqlite"
        else postgresql.insert(m.content_sort)
    ).on_conflict_do_nothing(index_elements=["content_id"])
    conn.execute(insert, rows)


def ensure_keys(conn: sa.Connection, mailbox_id: int) -> int:
    """Make every missing key row of the mailbox on one connection (tools,
    tests); returns how many were made."""
    made = 0
    while rows := missing_keys(conn, mailbox_id):
        insert_keys(conn, rows)
        made += len(rows)
    return made


# Per shared mailbox index: its version when every message had keys. The
# index changes version with every new message, so an unchanged version
# spares the check (a database scan of the mailbox) on the next SORT.
_complete: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


async def make_missing(store: Any, mailbox_id: int, index: Any) -> None:
    """Make the mailbox's missing keys, in batches: each computed on a
    read connection, then written in a short transaction (so a first SORT of
    a large mailbox never holds SQLite's write lock for long)."""
    version = index.version
    if _complete.get(index) == version:
        return
    while rows := await store.pool.do(lambda conn: missing_keys(conn, mailbox_id)):
        await store.pool.transaction(lambda conn, batch=rows: insert_keys(conn, batch))
    _complete[index] = version


# -- queries ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SortKey:
    name: str  # one of SORT_KEYS
    reverse: bool = False


def _text(col: Any, dialect: str) -> Any:
    # A message whose keys are missing (outer join) sorts as the empty string.
    col = sa.func.coalesce(col, "")
    return col.collate("C") if dialect == "postgresql" else col


def _order_column(name: str, dialect: str) -> Any:
    return {
        "ARRIVAL": M.internal_date,
        "DATE": sa.func.coalesce(C.sent_date, M.internal_date),
        "SIZE": M.size,
        "SUBJECT": _text(S.base_subject, dialect),
        "FROM": _text(S.from_key, dialect),
        "TO": _text(S.to_key, dialect),
        "CC": _text(S.cc_key, dialect),
        "DISPLAYFROM": _text(S.display_from, dialect),
        "DISPLAYTO": _text(S.display_to, dialect),
    }[name]


def _matching(
    conn: sa.Connection, mailbox_id: int, key: Any, view_uids: Sequence[int],
    recent: frozenset[int], columns: list[Any],
) -> sa.Select[Any]:
    dialect = conn.dialect.name
    fts = dialect == "sqlite" and uses_text(key) and textindex.has_fts(conn)
    cond, _, functions = build_condition(dialect, key, view_uids, recent, fts=fts)
    register_functions(conn, functions)
    # Outer: a message is never left out for want of its keys (made just
    # before by make_missing; one committed meanwhile could lack them).
    source = m.messages.join(m.contents, C.id == M.content_id).outerjoin(
        m.content_sort, S.content_id == M.content_id
    )
    return (
        sa.select(*columns)
        .select_from(source)
        .where(M.mailbox_id == mailbox_id, M.uid.between(view_uids[0], view_uids[-1]), cond)
    )


def _visible(rows: list[Any], view_uids: Sequence[int]) -> list[Any]:
    if view_uids[-1] - view_uids[0] + 1 == len(view_uids):
        return rows
    visible = set(view_uids)
    return [r for r in rows if r[0] in visible]


def sorted_uids(
    conn: sa.Connection, mailbox_id: int, sort: Sequence[SortKey], key: Any,
    view_uids: Sequence[int], recent: frozenset[int] = frozenset(),
) -> list[int]:
    """UIDs of the view's messages matching ``key``, in ``sort`` order (ties
    by UID, which is sequence order). The mailbox's keys must exist."""
    if not view_uids:
        return []
    dialect = conn.dialect.name
    order = []
    for k in sort:
        col = _order_column(k.name, dialect)
        order.append(col.desc() if k.reverse else col.asc())
    query = _matching(conn, mailbox_id, key, view_uids, recent, [M.uid]).order_by(*order, M.uid)
    return [r[0] for r in _visible(conn.execute(query).all(), view_uids)]


@dataclass(frozen=True)
class ThreadRow:
    uid: int
    date: int
    subject: str
    reply: bool
    msgid: str
    refs: str


def thread_rows(
    conn: sa.Connection, mailbox_id: int, key: Any, view_uids: Sequence[int],
    recent: frozenset[int] = frozenset(),
) -> list[ThreadRow]:
    """The matching messages' threading columns, in (date, uid) order."""
    if not view_uids:
        return []
    date = sa.func.coalesce(C.sent_date, M.internal_date)
    columns = [M.uid, date, S.base_subject, S.is_reply, S.msgid, S.refs]
    query = _matching(conn, mailbox_id, key, view_uids, recent, columns).order_by(date, M.uid)
    return [
        ThreadRow(r[0], r[1], r[2] or "", bool(r[3]), r[4] or "", r[5] or "")
        for r in _visible(conn.execute(query).all(), view_uids)
    ]
