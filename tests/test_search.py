"""IMAP SEARCH evaluated in the database (exmaild/store/search.py), on SQLite
and, when configured, PostgreSQL."""

from __future__ import annotations

import base64
import calendar
import contextlib
import datetime
import itertools
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.protocols.imap.parser import parse_bytes
from exmaild.protocols.imap.search_parser import (
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
)
from exmaild.protocols.imap.sequence import SeqRange, SequenceSet
from exmaild.store import flags as F
from exmaild.store import search as search_module
from exmaild.store.connector import Store
from exmaild.store.directory import DirectoryError
from exmaild.store.search import SearchResult, build_query, search_uids

_accounts = itertools.count(1)


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s))


def ew(text: str, charset: str = "UTF-8") -> str:
    """An RFC 2047 B encoded-word."""
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


def mail(
    subject: str = "hello",
    body: str = "Hi there.\r\n",
    *,
    headers: str = "",
    date: str | None = "Fri, 01 Mar 2024 10:00:00 +0000",
    encoding: str = "utf-8",
) -> bytes:
    head = "From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    head += f"Subject: {subject}\r\n{headers}"
    return (head + "\r\n" + body).encode(encoding)


def key(criteria: str | bytes) -> Any:
    """The parsed tree of ``UID SEARCH <criteria>``, as the IMAP server gets it."""
    if isinstance(criteria, str):
        criteria = criteria.encode()
    return parse_bytes(b"a1 UID SEARCH " + criteria + b"\r\n").args.key


class Box:
    """A fresh mailbox in its own account, and shortcuts to fill and search it."""

    def __init__(self, store: Store, account_id: int, mailbox_id: int) -> None:
        self.store = store
        self.account_id = account_id
        self.id = mailbox_id

    @classmethod
    async def new(cls, store: Store) -> Box:
        if await store.directory.get_domain("example.test") is None:
            with contextlib.suppress(DirectoryError):  # a concurrent example made it
                await store.directory.add_domain("example.test")
        acct = await store.directory.add_account(f"u{next(_accounts)}@example.test", None)
        inbox = await store.mailboxes.get(acct.id, "INBOX")
        assert inbox is not None
        return cls(store, acct.id, inbox.id)

    async def add(
        self,
        raw: bytes,
        flags: int = 0,
        keywords: tuple[str, ...] = (),
        internal_date: int | None = None,
    ) -> int:
        res = await self.store.ingestor.ingest(
            IngestRequest(
                raw,
                [Target(self.account_id, self.id, flags, keywords)],
                internal_date=internal_date or ts(2024, 3, 1, 12),
            )
        )
        return res.delivered[0].uid

    async def add_many(self, raws: list[bytes], **kw: Any) -> list[int]:
        return await self.add_all([(raw, kw) for raw in raws])

    async def add_all(self, items: list[tuple[bytes, dict[str, Any]]]) -> list[int]:
        """One ingest after another, so that UIDs ascend in list order
        (concurrent requests are committed in no promised order)."""
        return [await self.add(raw, **kw) for raw, kw in items]

    async def uids(self) -> list[int]:
        return [e.uid for e in await self.store.mailboxes.messages([self.id])]

    async def search(
        self, k: Any, view: list[int] | None = None, recent: frozenset[int] = frozenset()
    ) -> list[int]:
        return (await self.result(k, view, recent)).uids

    async def result(
        self, k: Any, view: list[int] | None = None, recent: frozenset[int] = frozenset()
    ) -> SearchResult:
        if isinstance(k, str | bytes):
            k = key(k)
        view = await self.uids() if view is None else view
        return await search_uids(self.store, self.id, k, view_uids=view, recent=recent)


# -- basics, view and sets ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_all_is_restricted_to_the_view(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many([mail(f"m{i}") for i in range(6)])
    assert await box.search("ALL") == u
    # A message delivered after the session's view is not visible to it.
    assert await box.search("ALL", view=u[:4]) == u[:4]
    assert await box.search("ALL", view=[u[0], u[2], u[5]]) == [u[0], u[2], u[5]]
    # Expunged by another session but still in this one's view: gone anyway.
    entries = await store.mailboxes.messages([box.id])
    await store.mailboxes.expunge_ids([entries[1].id])
    assert await box.search("ALL", view=u) == [u[0], *u[2:]]
    assert await box.result("ALL", view=[]) == SearchResult([], None)
    # Another mailbox's messages never leak in.
    other = await Box.new(store)
    v = await other.add_many([mail("other")])
    assert await box.search("ALL", view=sorted(u + v)) == [u[0], *u[2:]]


@pytest_twisted.ensureDeferred
async def test_sequence_numbers_follow_the_view(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many([mail(f"m{i}") for i in range(9)])
    view = [u[0], u[1], u[3], u[6], u[8]]  # seq 1..5
    cases = {
        "1": [u[0]],
        "2:3": [u[1], u[3]],
        "3:2": [u[1], u[3]],
        "*": [u[8]],
        "4:*": [u[6], u[8]],
        "*:4": [u[6], u[8]],
        "1,3,5": [u[0], u[3], u[8]],
        "1:2,5": [u[0], u[1], u[8]],
        "1:*": view,
        "9:*": [u[8]],  # n:* with n beyond the end still names the last
        "7": [],
        "NOT 2:4": [u[0], u[8]],
        "NOT 1:*": [],
    }
    for criteria, expected in cases.items():
        assert await box.search(criteria, view=view) == expected, criteria


@pytest_twisted.ensureDeferred
async def test_uid_sets(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many([mail(f"m{i}") for i in range(8)])
    view = u[:6]  # u[6], u[7] arrived after the view was taken
    assert await box.search(f"UID {u[2]}:{u[4]}", view=view) == u[2:5]
    assert await box.search("UID *", view=view) == [u[5]]  # largest UID in view
    assert await box.search(f"UID {u[4]}:*", view=view) == [u[4], u[5]]
    assert await box.search(f"UID {u[7]}", view=view) == []
    assert await box.search(f"UID {u[7] + 100}:*", view=view) == [u[5]]
    assert await box.search(f"UID {u[0]},{u[3]}:{u[3]},{u[7]}", view=view) == [u[0], u[3]]
    assert await box.search(f"NOT UID {u[1]}:{u[4]}", view=view) == [u[0], u[5]]
    # A gap in the view inside a range: the invisible UID stays out.
    assert await box.search(f"UID {u[1]}:{u[4]}", view=[u[1], u[2], u[4]]) == [u[1], u[2], u[4]]


@pytest_twisted.ensureDeferred
async def test_large_sets_and_wide_trees(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many([mail(f"m{i}") for i in range(120)])
    odd_seqs = ",".join(str(n) for n in range(1, 121, 2))  # 60 ranges: a UID list
    assert await box.search(odd_seqs) == u[::2]
    assert await box.search(f"NOT {odd_seqs}") == u[1::2]
    odd_uids = ",".join(str(x) for x in u[::2])
    assert await box.search(f"UID {odd_uids}") == u[::2]
    assert await box.search(f"OR UID {odd_uids} 120") == [*u[:-1:2], u[-1]]
    view = u[10:]
    assert await box.search(odd_seqs, view=view) == view[::2]
    # 1,200 distinct keys in one AND: the SQL must stay shallow (SQLite's
    # expression depth limit is 1000); repeated keys are built once.
    many = [f"NOT UID {x}" for x in u[:100]] + [f"SMALLER {10**6 + i}" for i in range(1100)]
    assert await box.search(" ".join(many + ["UNSEEN"] * 3000)) == u[100:]
    deep = "ALL " + " ".join(["OR SEEN"] * 30) + " ALL"
    assert await box.search(deep) == u


# -- flags and keywords -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_system_flags_and_recent(store: Store) -> None:
    box = await Box.new(store)
    combos = [0, F.SEEN, F.ANSWERED | F.SEEN, F.FLAGGED, F.DELETED | F.DRAFT, 31]
    u = [await box.add(mail(f"m{i}"), flags=f) for i, f in enumerate(combos)]
    by_flag = {
        "SEEN": F.SEEN,
        "ANSWERED": F.ANSWERED,
        "FLAGGED": F.FLAGGED,
        "DELETED": F.DELETED,
        "DRAFT": F.DRAFT,
    }
    for name, bit in by_flag.items():
        having = [x for x, f in zip(u, combos, strict=True) if f & bit]
        assert await box.search(name) == having, name
        assert await box.search("UN" + name) == [x for x in u if x not in having]
    recent = frozenset({u[0], u[1], u[4]})
    assert await box.search("RECENT", recent=recent) == [u[0], u[1], u[4]]
    assert await box.search("OLD", recent=recent) == [u[2], u[3], u[5]]
    assert await box.search("NEW", recent=recent) == [u[0], u[4]]  # RECENT UNSEEN
    assert await box.search("RECENT") == []
    assert await box.search("OLD") == u
    # \Recent for UIDs outside the view, and a big \Recent set (scanned, not bisected).
    assert await box.search("RECENT", view=u[1:], recent=recent | {999}) == [u[1], u[4]]
    assert await box.search("RECENT", recent=frozenset(u)) == u
    assert await box.search("SEEN FLAGGED") == [u[5]]
    assert await box.search("OR DELETED ANSWERED") == [u[2], u[4], u[5]]


@pytest_twisted.ensureDeferred
async def test_keywords_match_whole_words(store: Store) -> None:
    box = await Box.new(store)
    kws = [("$Work",), ("$Workflow",), ("$Work", "$Later"), (), ("a_b",), ("axb", "100%")]
    u = [await box.add(mail(f"m{i}"), keywords=k) for i, k in enumerate(kws)]
    assert await box.search("KEYWORD $Work") == [u[0], u[2]]
    assert await box.search("KEYWORD $work") == [u[0], u[2]]  # case-insensitive
    assert await box.search("KEYWORD $Later") == [u[2]]
    assert await box.search("KEYWORD $Wor") == []
    assert await box.search("UNKEYWORD $Work") == [u[1], u[3], u[4], u[5]]
    assert await box.search("KEYWORD a_b") == [u[4]]  # "_" is no wildcard
    assert await box.search(SearchFlag("100%")) == [u[5]]
    assert await box.search(SearchFlag("100")) == []
    assert await box.search(SearchFlag("\\Unknown")) == []
    assert await box.search(SearchFlag("\\Unknown", present=False)) == u


# -- sizes and dates ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sizes_are_strict(store: Store) -> None:
    box = await Box.new(store)
    raws = [mail("s", "x" * n) for n in (10, 500, 5000)]
    u = await box.add_many(raws)
    small, mid, big = (len(r) for r in raws)
    assert await box.search(f"LARGER {mid}") == [u[2]]
    assert await box.search(f"LARGER {mid - 1}") == [u[1], u[2]]
    assert await box.search(f"SMALLER {mid}") == [u[0]]
    assert await box.search(f"SMALLER {mid + 1}") == [u[0], u[1]]
    assert await box.search(f"LARGER {small} SMALLER {big}") == [u[1]]
    assert await box.search("LARGER 4294967295") == []


@pytest_twisted.ensureDeferred
async def test_internal_date_boundaries(store: Store) -> None:
    box = await Box.new(store)
    dates = [
        ts(2024, 2, 29, 23, 59, 59),
        ts(2024, 3, 1, 0, 0, 0),
        ts(2024, 3, 1, 23, 59, 59),
        ts(2024, 3, 2, 0, 0, 0),
    ]
    u = [await box.add(mail(f"d{i}"), internal_date=d) for i, d in enumerate(dates)]
    assert await box.search("BEFORE 1-Mar-2024") == [u[0]]
    assert await box.search("ON 1-Mar-2024") == [u[1], u[2]]
    assert await box.search("SINCE 1-Mar-2024") == u[1:]
    assert await box.search("SINCE 2-Mar-2024") == [u[3]]
    assert await box.search("ON 29-Feb-2024") == [u[0]]
    assert await box.search("NOT ON 1-Mar-2024") == [u[0], u[3]]
    assert await box.search("SINCE 1-Mar-2024 BEFORE 2-Mar-2024") == [u[1], u[2]]


@pytest_twisted.ensureDeferred
async def test_sent_dates(store: Store) -> None:
    box = await Box.new(store)
    u = [
        await box.add(mail("a", date="Thu, 29 Feb 2024 23:59:59 +0000")),
        await box.add(mail("b", date="Fri, 01 Mar 2024 00:00:00 +0000")),
        # 07:00 in Beijing is 23:00 UTC the day before: the day as written counts.
        await box.add(mail("c", date="Sat, 02 Mar 2024 07:00:00 +0800")),
        await box.add(mail("d", date="Fri, 01 Mar 2024 20:00:00 -0500")),  # 2 Mar UTC
        # No Date: header: the internal date stands in.
        await box.add(mail("e", date=None), internal_date=ts(2024, 3, 1, 5)),
    ]
    assert await box.search("SENTBEFORE 1-Mar-2024") == [u[0]]
    assert await box.search("SENTON 1-Mar-2024") == [u[1], u[3], u[4]]
    assert await box.search("SENTSINCE 2-Mar-2024") == [u[2]]
    assert await box.search("NOT SENTON 1-Mar-2024") == [u[0], u[2]]
    assert await box.search("SENTSINCE 1-Mar-2024 SENTBEFORE 2-Mar-2024") == [u[1], u[3], u[4]]


@pytest_twisted.ensureDeferred
async def test_sent_dates_in_the_headers_own_zone(store: Store) -> None:
    box = await Box.new(store)
    u = [
        await box.add(mail("rfc", date="Sun, 25 Mar 2007 00:00:00 +0200")),  # 24 Mar UTC
        await box.add(mail("east", date="Sat, 02 Mar 2024 00:30:00 +1400")),  # 1 Mar UTC
        await box.add(mail("west", date="Fri, 01 Mar 2024 23:00:00 -1200")),  # 2 Mar UTC
        await box.add(mail("nozone", date="Fri, 01 Mar 2024 23:30:00")),  # read as UTC
        await box.add(mail("minus0", date="Fri, 01 Mar 2024 23:30:00 -0000")),
    ]
    assert await box.search("SENTON 25-Mar-2007") == [u[0]]
    assert await box.search("SENTON 24-Mar-2007") == []
    assert await box.search("SENTBEFORE 25-Mar-2007") == []
    assert await box.search("SENTSINCE 25-Mar-2007") == u
    assert await box.search("SENTON 2-Mar-2024") == [u[1]]
    assert await box.search("SENTON 1-Mar-2024") == [u[2], u[3], u[4]]
    assert await box.search("SENTBEFORE 2-Mar-2024") == [u[0], u[2], u[3], u[4]]
    assert await box.search("SENTSINCE 2-Mar-2024") == [u[1]]
    assert await box.search("NOT SENTON 1-Mar-2024 SENTSINCE 1-Mar-2024") == [u[1]]

    # A content stored before sent_day existed (not backfilled): its UTC day.
    def forget(conn: sa.Connection) -> None:
        conn.execute(sa.update(search_module.m.contents).values(sent_day=None))

    await store.pool.transaction(forget)
    assert await box.search("SENTON 24-Mar-2007") == [u[0]]
    assert await box.search("SENTON 1-Mar-2024") == [u[1], u[3], u[4]]
    assert await box.search("SENTON 2-Mar-2024") == [u[2]]


# -- text ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chinese_subjects_in_every_encoding(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many(
        [
            mail(ew("关于季度报告的通知", "GB2312")),
            mail(ew("回复：第三季度报告（初稿）")),
            mail("转发：季度报告 raw 8-bit"),  # raw UTF-8 header
            mail("季度报告 in GBK, raw", encoding="gbk"),
            mail(ew("季度总结")),
            mail("quarterly report", "正文里有季度报告\r\n"),
        ]
    )
    hits = u[:4]
    assert await box.search('CHARSET UTF-8 SUBJECT "季度报告"'.encode()) == hits
    utf8 = "季度报告".encode()
    assert await box.search(b"CHARSET UTF-8 SUBJECT {%d}\r\n" % len(utf8) + utf8) == hits
    gb = "季度报告".encode("gb2312")
    assert await box.search(b"CHARSET GB2312 SUBJECT {%d}\r\n" % len(gb) + gb) == hits
    assert await box.search(SearchHeader("SUBJECT", "季度")) == u[:5]
    assert await box.search(SearchText("BODY", "季度报告")) == [u[5]]
    assert await box.search(SearchText("TEXT", "季度报告")) == [*hits, u[5]]
    assert await box.search(SearchNot(SearchHeader("SUBJECT", "季度报告"))) == u[4:]


@pytest_twisted.ensureDeferred
async def test_like_wildcards_are_literal(store: Store) -> None:
    box = await Box.new(store)
    subjects = ["100% done", "1000 done", "a_b", "axb", "back\\slash", "backslash", "50%_off"]
    u = await box.add_many([mail(s) for s in subjects])
    cases = {
        "100%": [u[0]],
        "a_b": [u[2]],
        "k\\s": [u[4]],
        "\\": [u[4]],
        "%": [u[0], u[6]],
        "_": [u[2], u[6]],
        "%_": [u[6]],
        "backslash": [u[5]],
    }
    for needle, expected in cases.items():
        assert await box.search(SearchHeader("SUBJECT", needle)) == expected, needle
    assert await box.search('SUBJECT "100%"') == [u[0]]
    assert await box.search('SUBJECT "k\\\\s"') == [u[4]]  # quoted-string escape
    assert await box.search(SearchText("TEXT", "a_b")) == [u[2]]
    assert await box.search(SearchHeader("X-NONE", "%")) == []


@pytest_twisted.ensureDeferred
async def test_address_fields(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many(
        [
            mail("one", headers=f"Cc: {ew('王伟', 'GB2312')} <wang.wei@huaxin.example>\r\n"),
            mail("two", headers="Cc: Carol <carol@x.example>\r\nBcc: dave@y.example\r\n"),
            (
                b"From: Zed <zed@z.example>\r\nTo: Team <team@example.test>\r\n"
                b"Subject: three\r\n\r\nbody\r\n"
            ),
        ]
    )
    assert await box.search("FROM alice@example.test") == u[:2]
    assert await box.search("FROM ALICE") == u[:2]  # ASCII case-insensitive
    assert await box.search('FROM "zed <zed@"') == [u[2]]
    assert await box.search("TO bob@") == u[:2]
    assert await box.search("TO team") == [u[2]]
    assert await box.search("CC carol") == [u[1]]
    assert await box.search('CHARSET UTF-8 CC "王伟"'.encode()) == [u[0]]
    assert await box.search("CC wang.wei@huaxin") == [u[0]]
    assert await box.search("BCC dave") == [u[1]]
    assert await box.search("BCC carol") == []
    # An empty string: the header is present.
    assert await box.search('CC ""') == u[:2]
    assert await box.search('BCC ""') == [u[1]]
    assert await box.search('NOT CC ""') == [u[2]]


@pytest_twisted.ensureDeferred
async def test_header_matches_within_one_field(store: Store) -> None:
    box = await Box.new(store)
    u = await box.add_many(
        [
            mail("a", headers="X-Spam: yes_maybe\r\nX-Other: needle\r\n"),
            mail("b", headers="X-Spam: needle here\r\n"),
            mail("c", headers="x-spam: NEEDLE\r\nX-Spam-Score: 5\r\n"),
            mail("d", headers=f"X-Name: {ew('Élan Vital')}\r\nX-List: a\r\n b\r\n"),
            mail("e", headers="X_Spam: needle\r\n"),
        ]
    )
    assert await box.search("HEADER X-Spam needle") == [u[1], u[2]]
    assert await box.search("HEADER x-spam NEEDLE") == [u[1], u[2]]
    assert await box.search("HEADER X-Spam yes_") == [u[0]]
    assert await box.search("HEADER X-Spam yesxmaybe") == []
    assert await box.search('HEADER X-Spam ""') == u[:3]
    assert await box.search('HEADER X-Spam-Score ""') == [u[2]]
    assert await box.search("HEADER X-Other needle") == [u[0]]
    assert await box.search("NOT HEADER X-Spam needle") == [u[0], u[3], u[4]]
    assert await box.search('CHARSET UTF-8 HEADER X-Name "élan"'.encode()) == [u[3]]
    assert await box.search('CHARSET UTF-8 HEADER X-Name "ÉLAN VITAL"'.encode()) == [u[3]]
    assert await box.search('CHARSET UTF-8 HEADER X-List "élan"'.encode()) == []
    assert await box.search('HEADER X-List "a b"') == [u[3]]  # unfolded
    assert await box.search("HEADER X_Spam needle") == [u[4]]  # "_" is literal
    assert await box.search('HEADER Subject "b"') == [u[1]]  # decoded column
    assert await box.search('SUBJECT ""') == u


@pytest_twisted.ensureDeferred
async def test_body_text_and_attachment_names(store: Store) -> None:
    box = await Box.new(store)
    attached = (
        b"From: a@example.test\r\nTo: b@example.test\r\nSubject: report\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n"
        b"--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename*=UTF-8''%E5%AD%A3%E5%BA%A6.pdf\r\n\r\n"
        b"JVBERi0xLjUK\r\n--XX--\r\n"
    )
    u = await box.add_many(
        [
            mail("plain", "The budget was Approved yesterday.\r\n"),
            mail("budget talk", "nothing here\r\n"),
            attached,
            mail("html", "<p>x</p>\r\n", headers="Content-Type: text/html\r\n"),
            mail("übers", "Grüße aus ÜBERLINGEN\r\n"),
        ]
    )
    assert await box.search("BODY budget") == [u[0]]
    assert await box.search("BODY APPROVED") == [u[0]]
    assert await box.search("TEXT budget") == [u[0], u[1]]
    assert await box.search("TEXT Subject") == u  # header lines are text too
    assert await box.search('CHARSET UTF-8 TEXT "季度"'.encode()) == [u[2]]
    assert await box.search('CHARSET UTF-8 BODY "季度"'.encode()) == []
    assert await box.search("BODY attached") == [u[2]]
    assert await box.search("BODY <p>") == []  # HTML is searched as text
    assert await box.search('BODY ""') == u
    # Case folding beyond ASCII.
    assert await box.search('CHARSET UTF-8 BODY "überlingen"'.encode()) == [u[4]]
    assert await box.search('CHARSET UTF-8 BODY "GRÜ"'.encode()) == [u[4]]
    assert await box.search('CHARSET UTF-8 SUBJECT "ÜBERS"'.encode()) == [u[4]]
    assert await box.search('CHARSET UTF-8 TEXT "ÜBERS"'.encode()) == [u[4]]


# -- combinations and MODSEQ --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_boolean_nesting(store: Store) -> None:
    box = await Box.new(store)
    specs = [  # subject, flags, body size
        ("alpha", F.SEEN, 10),
        ("beta", F.FLAGGED, 2000),
        ("alpha beta", 0, 10),
        ("gamma", F.SEEN | F.FLAGGED, 2000),
        ("delta", F.DELETED, 10),
    ]
    u = [await box.add(mail(s, "x" * n), flags=f) for s, f, n in specs]
    cases = {
        "OR SEEN FLAGGED": [u[0], u[1], u[3]],
        "NOT OR SEEN FLAGGED": [u[2], u[4]],
        "OR (SEEN FLAGGED) SUBJECT alpha": [u[0], u[2], u[3]],
        "SUBJECT alpha NOT SUBJECT beta": [u[0]],
        "OR SUBJECT delta (LARGER 1500 NOT FLAGGED)": [u[4]],
        "NOT (UNSEEN LARGER 1500)": [u[0], u[2], u[3], u[4]],
        "OR OR SEEN DELETED OR SUBJECT beta UID 1:*": u,
        "NOT NOT NOT SEEN": [u[1], u[2], u[4]],
        "(OR SUBJECT gamma SUBJECT delta) UNDELETED": [u[3]],
        "OR 1 5 NOT SMALLER 100": [u[0], u[4]],
        "OR 1 5 LARGER 1500": [],
        "OR 2 LARGER 1500 SEEN": [u[3]],
    }
    for criteria, expected in cases.items():
        assert await box.search(criteria) == expected, criteria


@pytest_twisted.ensureDeferred
async def test_modseq_and_highest_modseq(store: Store) -> None:
    box = await Box.new(store)
    u = [await box.add(mail(f"m{i}")) for i in range(5)]  # separate batches
    await store.mailboxes.set_flags(box.id, [u[1]], add=F.SEEN)
    modseq = {e.uid: e.modseq for e in await store.mailboxes.messages([box.id])}
    assert len(set(modseq.values())) == 5
    top = max(modseq.values())
    assert top == modseq[u[1]]
    third = sorted(modseq.values())[2]
    res = await box.result(f"MODSEQ {third}")
    assert res.uids == sorted(x for x in u if modseq[x] >= third)
    assert res.highest_modseq == top
    res = await box.result(f"MODSEQ {third} UNSEEN")
    assert res.highest_modseq == max(modseq[x] for x in res.uids)
    assert res.highest_modseq < top
    # Only visible matches count.
    res = await box.result("MODSEQ 1", view=[u[0], u[4]])
    assert res == SearchResult([u[0], u[4]], max(modseq[u[0]], modseq[u[4]]))
    res = await box.result('MODSEQ "/flags/\\\\Seen" all 1')
    assert res == SearchResult(u, top)
    assert await box.result(f"MODSEQ {top + 1}") == SearchResult([], None)
    assert await box.result("SEEN") == SearchResult([u[1]], None)  # no MODSEQ key
    res = await box.result(f"OR SEEN NOT MODSEQ {third}")
    assert res.highest_modseq == top
    assert res.uids == sorted({u[1]} | {x for x in u if modseq[x] < third})


# -- the query itself ---------------------------------------------------------


def test_query_selects_the_mailbox_through_its_uid_index(store: Store) -> None:
    if not store.pool.is_sqlite:
        pytest.skip("query plans are checked on SQLite")
    with store.engine.connect() as conn:
        index = next(
            row[1]
            for row in conn.exec_driver_sql("PRAGMA index_list(messages)")
            if [c[2] for c in conn.exec_driver_sql(f"PRAGMA index_info('{row[1]}')")]
            == ["mailbox_id", "uid"]
        )
        for criteria in (
            'CHARSET UTF-8 SUBJECT "季度报告"',
            "UNSEEN",
            "TEXT x 1:5",
            "SENTON 1-Mar-2024",
        ):
            query, _ = build_query("sqlite", 7, key(criteria.encode()), [1, 2, 3, 5, 8])
            sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
            plan = " | ".join(r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
            assert f"SEARCH messages USING INDEX {index} (mailbox_id=? AND uid>? AND uid<?)" in (
                plan
            ), plan
            if "contents" in sql:
                assert "SEARCH contents USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
            assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    # Flag-only searches leave contents alone.
    query, _ = build_query("sqlite", 7, key("SEEN LARGER 5"), [1, 2])
    assert "contents" not in str(query)


# -- property: the database agrees with a plain Python evaluation -----------------

_SYSTEM = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"]
_KEYWORDS = ["$A", "$a", "$AB", "x_y", "xzy"]
_TEXT = "aAb%_\\中"
_SIZE = 200  # messages are 200..208 bytes, so size keys hit the boundaries
# Date: headers and the day each was written on (in its own zone).
_DATES = [
    ("Fri, 01 Mar 2024 00:30:00 +1400", datetime.date(2024, 3, 1)),
    ("Thu, 29 Feb 2024 23:00:00 -1200", datetime.date(2024, 2, 29)),
    ("Fri, 01 Mar 2024 07:00:00 +0800", datetime.date(2024, 3, 1)),
    ("Sat, 02 Mar 2024 00:00:00", datetime.date(2024, 3, 2)),
    ("Sat, 02 Mar 2024 23:59:59 +0000", datetime.date(2024, 3, 2)),
]


def _seqsets() -> st.SearchStrategy[SequenceSet]:
    bound = st.one_of(st.none(), st.integers(1, 14))
    rng = st.builds(SeqRange, bound, bound)
    return st.lists(rng, min_size=1, max_size=4).map(lambda r: SequenceSet(tuple(r)))


_leaves = st.one_of(
    st.builds(
        SearchFlag, st.sampled_from([*_SYSTEM, "\\Recent", "\\Bogus", *_KEYWORDS]), st.booleans()
    ),
    st.builds(
        SearchSize, st.sampled_from(["LARGER", "SMALLER"]), st.integers(_SIZE - 1, _SIZE + 9)
    ),
    st.builds(SearchUid, _seqsets()),
    st.builds(SearchSequence, _seqsets()),
    st.builds(SearchModSeq, st.integers(0, 12)),
    st.builds(SearchHeader, st.just("SUBJECT"), st.text(_TEXT, max_size=3)),
    st.builds(SearchText, st.sampled_from(["BODY", "TEXT"]), st.text(_TEXT, max_size=4)),
    st.builds(
        SearchDate, st.just("SENT"), st.sampled_from(["BEFORE", "ON", "SINCE"]),
        st.sampled_from(sorted({d for _, d in _DATES})),
    ),
    st.just(SearchAll()),
)
_keys = st.recursive(
    _leaves,
    lambda sub: st.one_of(
        st.builds(SearchAnd, st.lists(sub, min_size=1, max_size=3).map(tuple)),
        st.builds(SearchOr, sub, sub),
        st.builds(SearchNot, sub),
    ),
    max_leaves=6,
)


@dataclass
class _Msg:
    uid: int
    flags: int
    keywords: str
    size: int
    modseq: int
    subject: str
    headers: str = ""
    body: str = ""  # the decoded body text
    sent_day: datetime.date | None = None  # the Date: header's day as written


def _in_set(seq: SequenceSet, n: int, star: int) -> bool:
    for r in seq.ranges:
        a = star if r.first is None else r.first
        b = star if r.last is None else r.last
        if min(a, b) <= n <= max(a, b):
            return True
    return False


def _py_eval(k: Any, msg: _Msg, seqno: int, view: list[int], recent: frozenset[int]) -> bool:
    match k:
        case SearchAll():
            return True
        case SearchAnd(keys=keys):
            return all(_py_eval(x, msg, seqno, view, recent) for x in keys)
        case SearchOr(left=a, right=b):
            return _py_eval(a, msg, seqno, view, recent) or _py_eval(b, msg, seqno, view, recent)
        case SearchNot(key=x):
            return not _py_eval(x, msg, seqno, view, recent)
        case SearchFlag(flag=flag, present=present):
            if flag == "\\Recent":
                has = msg.uid in recent
            elif flag in _SYSTEM:
                has = bool(msg.flags & F.BY_NAME[flag.lower()])
            elif flag.startswith("\\"):
                has = False
            else:
                has = flag.lower() in msg.keywords.lower().split()
            return has == present
        case SearchSize(op=op, size=size):
            return msg.size > size if op == "LARGER" else msg.size < size
        case SearchUid(sequence_set=seq):
            return _in_set(seq, msg.uid, view[-1])
        case SearchSequence(sequence_set=seq):
            return _in_set(seq, seqno, len(view))
        case SearchModSeq(modseq=modseq):
            return msg.modseq >= modseq
        case SearchDate(op=op, date=day):  # SENT: the day in the header's own zone
            assert msg.sent_day is not None
            return {"BEFORE": msg.sent_day < day, "ON": msg.sent_day == day,
                    "SINCE": msg.sent_day >= day}[op]
        case SearchHeader(value=value):
            return value.lower() in msg.subject.lower()  # every message has a Subject
        case SearchText(scope=scope, value=value):
            # The whole body, however long (no attachment names here).
            texts = [msg.body] if scope == "BODY" else [msg.headers, msg.body]
            return any(value.lower() in t.lower() for t in texts)
    raise AssertionError(k)


@st.composite
def _mailboxes(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 8))
    specs = [
        (
            draw(st.integers(0, 31)),
            tuple(draw(st.lists(st.sampled_from(_KEYWORDS), max_size=2, unique=True))),
            draw(st.integers(0, 8)),
            draw(st.text(_TEXT, max_size=4)),
            # Body text, at the start or past 16,384 characters of filler.
            draw(st.text(_TEXT, max_size=5)),
            draw(st.sampled_from([False, False, False, True])),
            draw(st.integers(0, len(_DATES) - 1)),
        )
        for _ in range(n)
    ]
    flag_changes = draw(st.lists(st.tuples(st.sets(st.integers(0, 6)), st.integers(0, 31))))
    mostly = st.sampled_from([True, True, True, False])
    view_pick = draw(st.lists(mostly, min_size=n + 2, max_size=n + 2))
    recent_pick = draw(st.lists(st.booleans(), min_size=n + 2, max_size=n + 2))
    return {
        "specs": specs,
        "changes": flag_changes[:3],
        "view": view_pick,
        "recent": recent_pick,
        "keys": draw(st.lists(_keys, min_size=1, max_size=5)),
        "list_sets": draw(st.booleans()),
        "fts": draw(st.booleans()),  # text keys through the FTS5 index, or scanning
    }


def _sized_mail(
    subject: str, size: int, text: str = "", deep: bool = False, date: int = 0
) -> bytes:
    """``size`` bytes (unless ``deep``: then ``text`` follows 17,000 characters)."""
    head = mail(subject, "y" * 17_000 * deep + text, date=_DATES[date][0])
    return head + b"b" * (size - len(head))


def _body_of(raw: bytes) -> str:
    return raw.split(b"\r\n\r\n", 1)[1].decode().replace("\r\n", "\n").strip()


async def _check_property(store: Store, case: dict[str, Any]) -> None:
    box = await Box.new(store)
    raws = [
        _sized_mail(subject or "-", _SIZE + extra, text, deep, date)
        for _, _, extra, subject, text, deep, date in case["specs"]
    ]
    uids = await box.add_all(
        [
            (raw, {"flags": flags, "keywords": kws})
            for raw, (flags, kws, *_) in zip(raws, case["specs"], strict=True)
        ]
    )
    bodies = dict(zip(uids, map(_body_of, raws), strict=True))
    days = {u: _DATES[spec[6]][1] for u, spec in zip(uids, case["specs"], strict=True)}
    for picks, bits in case["changes"]:  # spreads the modseqs
        chosen = [uids[i] for i in picks if i < len(uids)]
        await store.mailboxes.set_flags(box.id, chosen, add=bits & 5, remove=bits & 26)

    def read(conn: sa.Connection) -> list[_Msg]:
        msgs, cnt = search_module.m.messages.c, search_module.m.contents.c
        q = (
            sa.select(
                msgs.uid, msgs.flags, msgs.keywords, msgs.size, msgs.modseq, cnt.subject,
                cnt.headers_text,
            )
            .join_from(search_module.m.messages, search_module.m.contents)
            .where(msgs.mailbox_id == box.id)
        )
        return [_Msg(*r, body=bodies[r.uid], sent_day=days[r.uid]) for r in conn.execute(q)]

    msgs = {x.uid: x for x in await store.pool.do(read)}
    # The view may hold UIDs expunged meanwhile (past the end) and miss new ones.
    candidates = [*uids, *(max(uids, default=0) + i for i in (1, 2))]
    view = [x for x, keep in zip(candidates, case["view"], strict=True) if keep]
    recent = frozenset(x for x, keep in zip(candidates, case["recent"], strict=True) if keep)
    limit, scan_max = search_module._MAX_RANGES, search_module._SCAN_MAX
    if case["list_sets"]:  # every set and \\Recent as a UID list
        search_module._MAX_RANGES = 0
    search_module._SCAN_MAX = 0 if case["fts"] else 10**9
    try:
        # Every subtree, so that a wrong leaf cannot hide behind an OR.
        for k in dict.fromkeys(sub for tree in case["keys"] for sub in _subtrees(tree)):
            got = await search_uids(store, box.id, k, view_uids=view, recent=recent)
            expected = [
                x
                for seqno, x in enumerate(view, 1)
                if x in msgs and _py_eval(k, msgs[x], seqno, view, recent)
            ]
            assert got.uids == expected, k
            if search_module.uses_modseq(k) and expected:
                assert got.highest_modseq == max(msgs[x].modseq for x in expected)
            else:
                assert got.highest_modseq is None
    finally:
        search_module._MAX_RANGES, search_module._SCAN_MAX = limit, scan_max


def _subtrees(k: Any) -> list[Any]:
    out = [k]
    for child in (
        k.keys
        if isinstance(k, SearchAnd)
        else (k.left, k.right)
        if isinstance(k, SearchOr)
        else (k.key,)
        if isinstance(k, SearchNot)
        else ()
    ):
        out.extend(_subtrees(child))
    return list(dict.fromkeys(out))


def _property_test(backend: str) -> Any:
    # One test function per backend: pytest-twisted wraps a hypothesis test's
    # inner function in place, which breaks when one function object is run
    # for several parametrisations.
    @pytest.mark.parametrize("cfg", [backend], indirect=True)
    @settings(
        max_examples=50,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=_mailboxes())
    @pytest_twisted.ensureDeferred
    async def test(store: Store, case: dict[str, Any]) -> None:
        await _check_property(store, case)

    return test


test_database_agrees_with_python_sqlite = _property_test("sqlite")
test_database_agrees_with_python_postgresql = _property_test("postgresql")


@pytest.mark.parametrize("needle", ["ÄBC", "äbc", "Äbc"])
def test_non_ascii_needles_fold_in_python_on_sqlite(needle: str) -> None:
    query, functions = build_query("sqlite", 1, SearchText("BODY", needle), [1])
    assert "exm_icontains" in functions
    engine = sa.create_engine("sqlite://")
    search_module.m.metadata.create_all(engine)
    with engine.connect() as conn:
        fn = functions["exm_icontains"][1]
        conn.connection.driver_connection.create_function("exm_icontains", 2, fn)
        assert conn.execute(sa.select(sa.func.exm_icontains("xxäBCyy", needle.casefold()))).scalar()
    _, plain = build_query("sqlite", 1, SearchText("BODY", "季度abc"), [1])
    assert plain == {}


def test_uncased_needles_use_plain_like() -> None:
    def sql(dialect: str, needle: str) -> str:
        query = build_query(dialect, 1, SearchHeader("SUBJECT", needle), [1])[0]
        return str(query.compile(dialect=sa.dialects.registry.load(dialect)()))

    assert " LIKE " in sql("postgresql", "季度报告") and "ILIKE" not in sql(
        "postgresql", "季度报告"
    )
    assert " LIKE " in sql("postgresql", "100%") and "ILIKE" not in sql("postgresql", "100%")
    assert "ILIKE" in sql("postgresql", "Report")
    assert "exm_icontains" not in sql("sqlite", "季度报告") + sql("sqlite", "report")
    assert "exm_icontains" in sql("sqlite", "Ärger")


def test_migration_fills_sent_day_from_the_date_header(cfg: Any) -> None:
    """Contents stored before sent_day existed get it from their Date: line
    when that line is the stored sent_date; others stay NULL (UTC fallback)."""
    from exmaild.store import model as m
    from exmaild.store import schema
    from exmaild.store.pool import make_engine

    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.database_url, 2)
    schema.upgrade(engine, "0006")
    rows = [
        ("Subject: a\nDate: Sun, 25 Mar 2007 00:00:00 +0200", ts(2007, 3, 24, 22)),
        ("Date: Sat, 02 Mar 2024 00:30:00 +1400\nSubject: b", ts(2024, 3, 1, 10, 30)),
        ("Date: Fri, 01 Mar 2024 23:30:00", ts(2024, 3, 1, 23, 30)),
        ("Date: Fri, 01 Mar 2024 23:30:00 +0000", ts(2024, 3, 2)),  # not the stored one
        ("Date: garbage", ts(2024, 3, 2)),
        ("Subject: no date", None),
    ]
    with engine.begin() as c:
        for i, (headers, sent) in enumerate(rows, 1):
            c.execute(sa.insert(m.contents).values(
                id=i, digest=f"{i:064d}", segment="s", offset=0, size=1, refcount=1,
                header_len=0, sent_date=sent, subject="", from_addr="", to_addr="", cc_addr="",
                bcc_addr="", message_id="", attachment_names="", envelope=b"",
                bodystructure=b"", body=b"", headers_text=headers, excerpt=""))
    schema.upgrade(engine)
    epoch = datetime.date(1970, 1, 1).toordinal()
    with engine.begin() as c:
        got = [r[0] for r in c.execute(sa.select(m.contents.c.sent_day).order_by(m.contents.c.id))]
    engine.dispose()
    assert got == [
        datetime.date(2007, 3, 25).toordinal() - epoch,
        datetime.date(2024, 3, 2).toordinal() - epoch,
        datetime.date(2024, 3, 1).toordinal() - epoch,
        None, None, None,
    ]
