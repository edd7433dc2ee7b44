"""IMAP4rev1 protocol parsing layer: framer, parser, search, encode helpers."""

from __future__ import annotations

import base64
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmaild.protocols.imap.commands import (
    AppendArgs,
    AppendMessage,
    AuthenticateArgs,
    CatPart,
    Command,
    CompressArgs,
    CopyArgs,
    EnableArgs,
    FetchArgs,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    QresyncParams,
    QuotaArgs,
    RenameArgs,
    SelectArgs,
    SequenceArgs,
    StatusArgs,
    StoreArgs,
    StoreMode,
)
from exmaild.protocols.imap.encode import (
    compress_sequence_set,
    encode_astring,
    encode_mailbox,
    encode_nstring,
    format_flag_list,
    format_internaldate,
    quote_or_literal,
)
from exmaild.protocols.imap.errors import BadCharsetError, ParseError
from exmaild.protocols.imap.fetch import FetchItem, Section
from exmaild.protocols.imap.framing import (
    CommandUnit,
    ContinuationRequest,
    Framer,
    FramerLimits,
    FramingError,
    FramingErrorKind,
    RawLine,
)
from exmaild.protocols.imap.parser import decode_sasl_response, parse_bytes, parse_command
from exmaild.protocols.imap.search_parser import (
    SearchAll,
    SearchAnd,
    SearchArgs,
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
from exmaild.protocols.imap.sequence import SeqRange, SequenceSet, parse_sequence_set
from exmaild.protocols.imap.tokens import decode_mailbox

S = parse_sequence_set
SUBJ_UTF8 = "中文主题".encode()  # 12 bytes
SUBJ_GB = "中文".encode("gb2312")  # 4 bytes
PLAIN_IR = base64.b64encode(b"\0alice@example.com\0Wonder1and")


def units(events: list) -> list[CommandUnit]:
    return [e for e in events if isinstance(e, CommandUnit)]


def feed_bytewise(framer: Framer, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        events.extend(framer.feed(data[i : i + 1]))
    return events


def fetch(seq: str, *items: FetchItem, changed: int | None = None) -> FetchArgs:
    return FetchArgs(S(seq), items, changed)


def body(
    text: str = "", part: tuple[int, ...] = (), fields: tuple[str, ...] = (), **kw
) -> FetchItem:
    return FetchItem("BODY", Section(part, text, fields), **kw)


# -- parser: valid commands ----------------------------------------------------

VALID = [
    # Exact commands of Foxmail, Outlook, Thunderbird and iOS Mail.
    (
        b"a1 UID FETCH 1:* (UID FLAGS)",
        Command("a1", "FETCH", True, fetch("1:*", FetchItem("UID"), FetchItem("FLAGS"))),
    ),
    (
        b"a2 UID FETCH 5:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])",
        Command(
            "a2",
            "FETCH",
            True,
            fetch(
                "5:*",
                FetchItem("UID"),
                FetchItem("FLAGS"),
                FetchItem("RFC822.SIZE"),
                body("HEADER", peek=True),
            ),
        ),
    ),
    (
        b"a3 UID FETCH 3 (UID RFC822.SIZE BODY.PEEK[]<0.393216>)",
        Command(
            "a3",
            "FETCH",
            True,
            fetch(
                "3",
                FetchItem("UID"),
                FetchItem("RFC822.SIZE"),
                body(peek=True, partial=(0, 393216)),
            ),
        ),
    ),
    (
        b"a4 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12)",
        Command("a4", "FETCH", True, fetch("1:*", FetchItem("FLAGS"), changed=12)),
    ),
    (
        b"a4v UID FETCH 1:* (FLAGS) (VANISHED CHANGEDSINCE 12)",
        Command("a4v", "FETCH", True, FetchArgs(S("1:*"), (FetchItem("FLAGS"),), 12, True)),
    ),
    (
        b"a5 SEARCH CHARSET UTF-8 SUBJECT {12}\r\n" + SUBJ_UTF8,
        Command("a5", "SEARCH", False, SearchArgs("UTF-8", SearchHeader("SUBJECT", "中文主题"))),
    ),
    (
        b"a6 UID SEARCH CHARSET GB2312 SUBJECT {4}\r\n" + SUBJ_GB,
        Command("a6", "SEARCH", True, SearchArgs("GB2312", SearchHeader("SUBJECT", "中文"))),
    ),
    (
        b'a7 ID ("name" "Foxmail" "version" "7.2")',
        Command("a7", "ID", False, IdArgs((("name", "Foxmail"), ("version", "7.2")))),
    ),
    (b'a8 XLIST "" "*"', Command("a8", "XLIST", False, ListArgs("", ("*",)))),
    (
        b'a9 LIST "" "*" RETURN (SPECIAL-USE)',
        Command("a9", "LIST", False, ListArgs("", ("*",), (), ("SPECIAL-USE",), (), True)),
    ),
    (
        b'b1 APPEND Sent (\\Seen) "27-Nov-2026 10:00:00 +0800" {10+}\r\nSubject: x',
        Command(
            "b1",
            "APPEND",
            False,
            AppendArgs(
                "Sent",
                ("\\Seen",),
                datetime(2026, 11, 27, 10, 0, tzinfo=timezone(timedelta(hours=8))),
                b"Subject: x",
            ),
        ),
    ),
    (
        b"b2 AUTHENTICATE PLAIN " + PLAIN_IR,
        Command(
            "b2",
            "AUTHENTICATE",
            False,
            AuthenticateArgs("PLAIN", b"\0alice@example.com\0Wonder1and"),
        ),
    ),
    (
        b'b3 UID MOVE 1:3 "Deleted Items"',
        Command("b3", "MOVE", True, CopyArgs(S("1:3"), "Deleted Items")),
    ),
    (
        b"b4 STORE 1 +FLAGS.SILENT (\\Deleted)",
        Command("b4", "STORE", False, StoreArgs(S("1"), StoreMode.ADD, True, ("\\Deleted",))),
    ),
    # RFC 7162: the store modifier comes *before* the flags item.
    (
        b"b5 UID STORE 1:* (UNCHANGEDSINCE 5) +FLAGS (\\Seen)",
        Command("b5", "STORE", True, StoreArgs(S("1:*"), StoreMode.ADD, False, ("\\Seen",), 5)),
    ),
    (
        # Thunderbird's header scan
        b"b6 uid fetch 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc "
        b"Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To "
        b"Content-Type Reply-To)])",
        Command(
            "b6",
            "FETCH",
            True,
            fetch(
                "1:*",
                FetchItem("UID"),
                FetchItem("RFC822.SIZE"),
                FetchItem("FLAGS"),
                body(
                    "HEADER.FIELDS",
                    fields=(
                        "FROM",
                        "TO",
                        "CC",
                        "BCC",
                        "SUBJECT",
                        "DATE",
                        "MESSAGE-ID",
                        "PRIORITY",
                        "X-PRIORITY",
                        "REFERENCES",
                        "NEWSGROUPS",
                        "IN-REPLY-TO",
                        "CONTENT-TYPE",
                        "REPLY-TO",
                    ),
                    peek=True,
                ),
            ),
        ),
    ),
    (
        b'b7 ID ("name" "iPhone Mail" "version" "20E252" "os" "iOS" '
        b'"os-version" "16.4.1 (20E252)")',  # iOS Mail
        Command(
            "b7",
            "ID",
            False,
            IdArgs(
                (
                    ("name", "iPhone Mail"),
                    ("version", "20E252"),
                    ("os", "iOS"),
                    ("os-version", "16.4.1 (20E252)"),
                )
            ),
        ),
    ),
    (b"b8 ID NIL", Command("b8", "ID", False, IdArgs(None))),
    (b'b9 ID ("x" NIL)', Command("b9", "ID", False, IdArgs((("x", None),)))),
    (b"c1 SELECT INBOX (CONDSTORE)", Command("c1", "SELECT", False, SelectArgs("INBOX", True))),
    (b'c2 examine "inbox"', Command("c2", "EXAMINE", False, SelectArgs("INBOX"))),
    (b"c3 SELECT &XfJT0ZAB-", Command("c3", "SELECT", False, SelectArgs("已发送"))),
    (
        b"c3q SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))",
        Command("c3q", "SELECT", False, SelectArgs("INBOX", False, QresyncParams(
            67890007, 20050715194045000, S("41,43:211,214:541")))),
    ),
    (
        b"c3r EXAMINE INBOX (CONDSTORE QRESYNC (5 9 1:* (1,5 2,9)))",
        Command("c3r", "EXAMINE", False, SelectArgs("INBOX", True, QresyncParams(
            5, 9, S("1:*"),
            (S("1,5"), S("2,9"))))),
    ),
    (
        b"c3s SELECT INBOX (QRESYNC (5 9 (3 7)))",
        Command("c3s", "SELECT", False, SelectArgs("INBOX", False, QresyncParams(
            5, 9, None, (S("3"), S("7"))))),
    ),
    (
        b'c4 LOGIN "alice@example.com" "p\\"w\\\\d"',
        Command("c4", "LOGIN", False, LoginArgs("alice@example.com", 'p"w\\d')),
    ),
    (
        b"c5 LOGIN {5}\r\nalice {6}\r\nsecret",
        Command("c5", "LOGIN", False, LoginArgs("alice", "secret")),
    ),
    (b"c6 CAPABILITY", Command("c6", "CAPABILITY")),
    (b"c7 noop", Command("c7", "NOOP")),
    (b"c8 IDLE", Command("c8", "IDLE")),
    (b"c9 NAMESPACE", Command("c9", "NAMESPACE")),
    (b"d1 UNSELECT", Command("d1", "UNSELECT")),
    (b"d2 EXPUNGE", Command("d2", "EXPUNGE")),
    (b"d3 UID EXPUNGE 3:5,9", Command("d3", "EXPUNGE", True, SequenceArgs(S("3:5,9")))),
    (
        b"d4 ENABLE CONDSTORE utf8=accept",
        Command("d4", "ENABLE", False, EnableArgs(("CONDSTORE", "UTF8=ACCEPT"))),
    ),
    (b'd5 GETQUOTA ""', Command("d5", "GETQUOTA", False, QuotaArgs(""))),
    (b"d6 GETQUOTAROOT INBOX", Command("d6", "GETQUOTAROOT", False, MailboxArgs("INBOX"))),
    (
        b"d7 STATUS Drafts (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ recent)",
        Command(
            "d7",
            "STATUS",
            False,
            StatusArgs(
                "Drafts",
                ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "RECENT"),
            ),
        ),
    ),
    (b'd8 CREATE "Work/2026"', Command("d8", "CREATE", False, MailboxArgs("Work/2026"))),
    (b"d9 DELETE Trash", Command("d9", "DELETE", False, MailboxArgs("Trash"))),
    (b"e1 RENAME Old &ZbB2hA-", Command("e1", "RENAME", False, RenameArgs("Old", "新的"))),
    (b"e2 SUBSCRIBE Sent", Command("e2", "SUBSCRIBE", False, MailboxArgs("Sent"))),
    (b"e3 UNSUBSCRIBE Sent", Command("e3", "UNSUBSCRIBE", False, MailboxArgs("Sent"))),
    (b'e4 LSUB "" %', Command("e4", "LSUB", False, ListArgs("", ("%",)))),
    (b'e0 LIST "" ""', Command("e0", "LIST", False, ListArgs("", ("",)))),
    (b'e5 LIST "" INBOX/*', Command("e5", "LIST", False, ListArgs("", ("INBOX/*",)))),
    (
        b'e6 LIST (SPECIAL-USE) "" ("*" %)',
        Command("e6", "LIST", False, ListArgs("", ("*", "%"), ("SPECIAL-USE",), (), (), True)),
    ),
    (
        b'e7 LIST "" "%" RETURN (CHILDREN STATUS (MESSAGES UNSEEN))',
        Command(
            "e7",
            "LIST",
            False,
            ListArgs("", ("%",), (), ("CHILDREN", "STATUS"), ("MESSAGES", "UNSEEN"), True),
        ),
    ),
    (
        b'e8 LIST (SUBSCRIBED RECURSIVEMATCH) "" "*" RETURN ()',
        Command(
            "e8",
            "LIST",
            False,
            ListArgs("", ("*",), ("SUBSCRIBED", "RECURSIVEMATCH"), (), (), True),
        ),
    ),
    (b"e9 COPY 2:4 Archive", Command("e9", "COPY", False, CopyArgs(S("2:4"), "Archive"))),
    (b"f1 UID COPY 1,3:5 {4}\r\nSpam", Command("f1", "COPY", True, CopyArgs(S("1,3:5"), "Spam"))),
    (b"f2 MOVE 1 INBOX", Command("f2", "MOVE", False, CopyArgs(S("1"), "INBOX"))),
    (
        b"f3 STORE 1:2 FLAGS ()",
        Command("f3", "STORE", False, StoreArgs(S("1:2"), StoreMode.REPLACE, False, ())),
    ),
    (
        b"f4 STORE 1 -flags \\seen $Forwarded",
        Command(
            "f4",
            "STORE",
            False,
            StoreArgs(S("1"), StoreMode.REMOVE, False, ("\\Seen", "$Forwarded")),
        ),
    ),
    (
        b"f5 STORE 1 FLAGS.SILENT (\\Seen \\Seen)",
        Command("f5", "STORE", False, StoreArgs(S("1"), StoreMode.REPLACE, True, ("\\Seen",))),
    ),
    (
        b"f6 FETCH 1 ALL",
        Command(
            "f6",
            "FETCH",
            False,
            fetch(
                "1", *(FetchItem(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"))
            ),
        ),
    ),
    (
        b"f7 FETCH 1 fast",
        Command(
            "f7",
            "FETCH",
            False,
            fetch("1", *(FetchItem(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE"))),
        ),
    ),
    (
        b"f8 FETCH 1 FULL",
        Command(
            "f8",
            "FETCH",
            False,
            fetch(
                "1",
                *(
                    FetchItem(n)
                    for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")
                ),
            ),
        ),
    ),
    (b"f9 FETCH 2 BODY[]", Command("f9", "FETCH", False, fetch("2", body()))),
    (b"g1 FETCH 2 body[1.2.MIME]", Command("g1", "FETCH", False, fetch("2", body("MIME", (1, 2))))),
    (
        b"g2 FETCH 2 BODY[1.2.3]<10.20>",
        Command("g2", "FETCH", False, fetch("2", body("", (1, 2, 3), partial=(10, 20)))),
    ),
    (b"g3 FETCH 2 BODY[2.TEXT]", Command("g3", "FETCH", False, fetch("2", body("TEXT", (2,))))),
    (
        b"g4 FETCH 2 BODY[HEADER.FIELDS.NOT (Received)]",
        Command("g4", "FETCH", False, fetch("2", body("HEADER.FIELDS.NOT", fields=("RECEIVED",)))),
    ),
    (
        b"g5 FETCH * (BODYSTRUCTURE ENVELOPE INTERNALDATE RFC822 RFC822.HEADER RFC822.TEXT "
        b"MODSEQ BODY)",
        Command(
            "g5",
            "FETCH",
            False,
            fetch(
                "*",
                *(
                    FetchItem(n)
                    for n in (
                        "BODYSTRUCTURE",
                        "ENVELOPE",
                        "INTERNALDATE",
                        "RFC822",
                        "RFC822.HEADER",
                        "RFC822.TEXT",
                        "MODSEQ",
                        "BODY",
                    )
                ),
            ),
        ),
    ),
    (
        b"g6 FETCH 1 (BODY[HEADER.FIELDS ({4}\r\nFrom)])",
        Command("g6", "FETCH", False, fetch("1", body("HEADER.FIELDS", fields=("FROM",)))),
    ),
    (
        b"g7 APPEND INBOX {3}\r\nabc",
        Command("g7", "APPEND", False, AppendArgs("INBOX", (), None, b"abc")),
    ),
    (
        b"g8 APPEND {4+}\r\nSent {0}\r\n\r\n",
        Command("g8", "APPEND", False, AppendArgs("Sent", (), None, b"")),
    ),
    (
        b'g9 APPEND Drafts (\\Draft $MDNSent) " 7-Jan-2026 23:59:59 -0130" {2}\r\nhi',
        Command(
            "g9",
            "APPEND",
            False,
            AppendArgs(
                "Drafts",
                ("\\Draft", "$MDNSent"),
                datetime(2026, 1, 7, 23, 59, 59, tzinfo=timezone(-timedelta(hours=1, minutes=30))),
                b"hi",
            ),
        ),
    ),
    (b"h1 AUTHENTICATE plain", Command("h1", "AUTHENTICATE", False, AuthenticateArgs("PLAIN"))),
    (
        b"h2 AUTHENTICATE XOAUTH2 =",
        Command("h2", "AUTHENTICATE", False, AuthenticateArgs("XOAUTH2", b"")),
    ),
    (b"h3 STARTTLS", Command("h3", "STARTTLS")),
    (b"h4 LOGOUT", Command("h4", "LOGOUT")),
    (b"h5 CHECK", Command("h5", "CHECK")),
    (b"h6 CLOSE", Command("h6", "CLOSE")),
    (
        b"h7 UID SEARCH 1:* NOT DELETED",
        Command(
            "h7",
            "SEARCH",
            True,
            SearchArgs(
                None, SearchAnd((SearchSequence(S("1:*")), SearchNot(SearchFlag("\\Deleted"))))
            ),
        ),
    ),
    (
        b"h8 SEARCH UNSEEN",
        Command("h8", "SEARCH", False, SearchArgs(None, SearchFlag("\\Seen", False))),
    ),
    (b"A.b-c]1 NOOP", Command("A.b-c]1", "NOOP")),
    (
        b'i1 SEARCH SUBJECT "caf\xc3\xa9"',
        Command("i1", "SEARCH", False, SearchArgs(None, SearchHeader("SUBJECT", "café"))),
    ),
    (b'i2 LIST "" Entw&APw-rfe', Command("i2", "LIST", False, ListArgs("", ("Entwürfe",)))),
    # issue 12 part B: MULTIAPPEND, literal8, UTF8, CATENATE, BINARY, COMPRESS
    (
        b"j1 APPEND INBOX (\\Seen) {1}\r\na ~{2}\r\nb\x00 UTF8 (~{1}\r\nc)",
        Command("j1", "APPEND", False, AppendArgs("INBOX", ("\\Seen",), None, b"a", (
            AppendMessage((), None, b"b\x00"), AppendMessage((), None, b"c")))),
    ),
    (
        b'j2 APPEND Drafts CATENATE (TEXT {2}\r\nhi URL "/INBOX/;UID=3" TEXT ~{1}\r\n!)',
        Command("j2", "APPEND", False, AppendArgs("Drafts", (), None, b"", (), (
            CatPart(text=b"hi"), CatPart(url="/INBOX/;UID=3"), CatPart(text=b"!")))),
    ),
    (
        b"j3 FETCH 1 (BINARY[1.2]<0.10> BINARY.PEEK[] BINARY.SIZE[3])",
        Command("j3", "FETCH", False, fetch(
            "1", FetchItem("BINARY", Section((1, 2)), False, (0, 10)),
            FetchItem("BINARY", Section(), True), FetchItem("BINARY.SIZE", Section((3,))))),
    ),
    (b"j4 COMPRESS deflate", Command("j4", "COMPRESS", False, CompressArgs("DEFLATE"))),
]


@pytest.mark.parametrize(("data", "expected"), VALID, ids=[v[1].tag for v in VALID])
def test_parse_valid(data: bytes, expected: Command) -> None:
    assert parse_bytes(data) == expected


INVALID = [
    # (data, tag in the error or None, a word of the message)
    (b"", None, "one complete command"),
    (b" NOOP", None, "tag"),
    (b"a+1 NOOP", None, "tag"),
    (b"a1", "a1", "space"),
    (b"a1 FROB", "a1", "Unknown command"),
    (b"a1 UID NOOP", "a1", "not a command"),
    (b"a1 NOOP extra", "a1", "extra"),
    (b"a1  NOOP", "a1", "command name"),
    (b"a1 LOGIN alice", "a1", "space"),
    (b'a1 LOGIN "unterminated', "a1", "quoted"),
    (b'a1 LOGIN "a\\x" b', "a1", "quoted"),
    (b"a1 SELECT", "a1", "space"),
    (b"a1 SELECT INBOX (XFOO)", "a1", "Unsupported"),
    (b"a1 SELECT INBOX (QRESYNC)", "a1", "space"),
    (b"a1 SELECT INBOX (QRESYNC (0 5))", "a1", "UIDVALIDITY"),
    (b"a1 SELECT INBOX (QRESYNC (1 5 1:3 2:4))", "a1", "match"),
    (b"a1 UID FETCH 1 FLAGS (VANISHED)", "a1", "modifier"),
    (b"a1 UID FETCH 1 FLAGS (CHANGEDSINCE 2 CHANGEDSINCE 3)", "a1", "repeated"),
    (b"a1 FETCH 0 FLAGS", "a1", "sequence"),
    (b"a1 FETCH 1, FLAGS", "a1", "sequence"),
    (b"a1 FETCH 4294967296 FLAGS", "a1", "sequence"),
    (b"a1 FETCH # FLAGS", "a1", "sequence"),
    (b"a1 FETCH 1 (FLAGS", "a1", ")"),
    (b"a1 FETCH 1 ()", "a1", "Empty"),
    (b"a1 FETCH 1 (ALL)", "a1", "inside a list"),
    (b"a1 FETCH 1 BODY.PEEK", "a1", "Unknown fetch"),
    (b"a1 FETCH 1 FLAGS[]", "a1", "section"),
    (b"a1 FETCH 1 BODY[MIME]", "a1", "MIME"),
    (b"a1 FETCH 1 BODY[0]", "a1", "part"),
    (b"a1 FETCH 1 BODY[1.]", "a1", "section"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS]", "a1", "space"),
    (b"a1 FETCH 1 BODY[HEADER.FIELDS ()]", "a1", "Empty"),
    (b"a1 FETCH 1 BODY[FOO]", "a1", "section"),
    (b"a1 FETCH 1 BODY[]<0.0>", "a1", "zero"),
    (b"a1 FETCH 1 BODY[]<5>", "a1", "length"),
    (b"a1 FETCH 1 FLAGS (VANISHED)", "a1", "modifier"),
    (b"a1 FETCH 1 FLAGS (CHANGEDSINCE x)", "a1", "mod-sequence"),
    (b"a1 FETCH 1 FLAGS (CHANGEDSINCE 9223372036854775808)", "a1", "range"),
    (b"a1 UID STORE 1:* +FLAGS (\\Seen) (UNCHANGEDSINCE 5)", "a1", "before the flags"),
    (b"a1 STORE 1 +FLAGS \\Seen (UNCHANGEDSINCE 5)", "a1", "before the flags"),
    (b"a1 STORE 1 FLAGS", "a1", "space"),
    (b"a1 STORE 1 XFLAGS (\\Seen)", "a1", "store item"),
    (b"a1 STORE 1 FLAGS (\\*)", "a1", "flag"),
    (b"a1 STORE 1 FLAGS (\\Seen", "a1", ")"),
    (b'a1 APPEND INBOX "hello"', "a1", "date-time"),
    (b"a1 APPEND INBOX (\\Seen) abc", "a1", "literal"),
    (b"a1 APPEND INBOX UTF8 ({1}\r\nx)", "a1", "literal8"),
    (b"a1 APPEND INBOX CATENATE ()", "a1", "Empty"),
    (b"a1 APPEND INBOX CATENATE (TEXT x)", "a1", "literal"),
    (b'a1 APPEND INBOX CATENATE (PART "x")', "a1", "CATENATE part"),
    (b"a1 FETCH 1 BINARY[1.TEXT]", "a1", "part numbers only"),
    (b"a1 FETCH 1 BINARY.SIZE[1]<0.1>", "a1", "extra"),
    (b"a1 COMPRESS GZIP", "a1", "compression mechanism"),
    (b'a1 APPEND INBOX "31-Feb-2026 10:00:00 +0000" {1}\r\nx', "a1", "date-time"),
    (b'a1 APPEND INBOX "1-Foo-2026 10:00:00 +0000" {1}\r\nx', "a1", "month"),
    (b'a1 APPEND INBOX "1-Jan-2026 10:00:00 +0075" {1}\r\nx', "a1", "zone"),
    (b"a1 APPEND INBOX {1}\r\nx INBOX {1}\r\ny", "a1", "literal"),  # not a MULTIAPPEND message
    (b"a1 AUTHENTICATE PLAIN ***", "a1", "initial response"),
    (b"a1 AUTHENTICATE PLAIN AB=C", "a1", "base64"),
    (b"a1 ID", "a1", "space"),
    (b'a1 ID ("name")', "a1", "pairs"),
    (b'a1 ID (NIL "x")', "a1", "NIL"),
    (b"a1 ID FOO", "a1", "NIL"),
    (b"a1 ENABLE", "a1", "at least one"),
    (b"a1 STATUS INBOX ()", "a1", "Empty"),
    (b"a1 STATUS INBOX (BIGNESS)", "a1", "Unsupported"),
    (b"a1 STATUS INBOX MESSAGES", "a1", "("),
    (b'a1 LIST (RECURSIVEMATCH) "" "*"', "a1", "RECURSIVEMATCH"),
    (b'a1 LIST (RECURSIVEMATCH REMOTE) "" "*"', "a1", "RECURSIVEMATCH"),
    (b'a1 LIST (REMOTE RECURSIVEMATCH) "" "*"', "a1", "RECURSIVEMATCH"),
    (b'a1 LIST (FOO) "" "*"', "a1", "Unsupported"),
    (b'a1 LIST "" "*" RETURN (FOO)', "a1", "Unsupported"),
    (b'a1 LIST "" "*" FOO (CHILDREN)', "a1", "RETURN"),
    (b'a1 LSUB (SUBSCRIBED) "" "*"', "a1", "mailbox"),
    (b'a1 LIST "" ()', "a1", "Empty"),
    (b"a1 EXPUNGE 1:3", "a1", "extra"),
    (b"a1 UID EXPUNGE", "a1", "space"),
    (b"a1 SEARCH", "a1", "space"),
    (b"a1 SEARCH FOO", "a1", "Unknown search key"),
    (b"a1 SEARCH OR SEEN", "a1", "space"),
    (b"a1 SEARCH ()", "a1", "Empty"),
    (b"a1 SEARCH (SEEN", "a1", ")"),
    (b"a1 SEARCH SINCE 1994-02-01", "a1", "date"),
    (b"a1 SEARCH SINCE 30-Feb-1994", "a1", "date"),
    (b"a1 SEARCH LARGER x", "a1", "size"),
    (b'a1 SEARCH MODSEQ "/flags/\\\\Seen" both 5', "a1", "entry type"),
    (b'a1 SEARCH MODSEQ "/flags/\\Seen" all 5', "a1", "quoted"),
    (b'a1 SEARCH MODSEQ "/meta/x" all 5', "a1", "entry name"),
    (b"a1 SEARCH CHARSET UTF-8 SUBJECT {2}\r\n\xff\xfe", "a1", "UTF-8"),
    (b"a1 SEARCH SUBJECT {2}\r\n\xff\xfe", "a1", "US-ASCII"),
    (b"a1 SEARCH " + b"(" * 40 + b"ALL" + b")" * 40, "a1", "nested"),
    (b"a1 SEARCH " + b"NOT " * 40 + b"ALL", "a1", "nested"),
    (b"a1 GETQUOTA {2}\r\n\xff\xfe", "a1", "UTF-8"),
]


@pytest.mark.parametrize(("data", "tag", "word"), INVALID)
def test_parse_invalid(data: bytes, tag: str | None, word: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_bytes(data)
    assert info.value.tag == tag
    assert word.lower() in info.value.message.lower()
    assert info.value.response().startswith(f"{tag or '*'} BAD ")


# A well-formed command naming a mailbox that cannot be decoded: NO (issue 12).
INVALID_NAMES = [
    (b"a1 SELECT a&b", "UTF-7"),
    (b"a1 SELECT &2D0-", "UTF-7"),
    (b"a1 SELECT {3}\r\na\x00b", "Control"),
    (b"a1 SELECT \xff\xfe", "UTF-8"),
]


@pytest.mark.parametrize(("data", "word"), INVALID_NAMES)
def test_invalid_mailbox_name_is_no(data: bytes, word: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_bytes(data)
    assert word.lower() in info.value.message.lower()
    assert info.value.response().startswith("a1 NO ")


# -- charsets ------------------------------------------------------------------

CHARSETS = [
    ("UTF-8", "邮件主题 ü"),
    ("utf-8", "Ünïcödé"),
    ("US-ASCII", "plain"),
    ("GB2312", "中文邮件"),
    ("GBK", "中文郵件"),  # 郵 is GBK, not GB2312
    ("GB18030", "中文邮件 𠀀"),
    ("BIG5", "中文郵件"),
    ("ISO-8859-1", "Grüße"),
    ("Shift_JIS", "日本語"),
    ("KOI8-R", "Привет"),
    ("windows-1252", "€uro"),
]


@pytest.mark.parametrize(("charset", "text"), CHARSETS)
def test_search_charsets_decode_literals(charset: str, text: str) -> None:
    raw = text.encode(charset)
    cmd = parse_bytes(b"t SEARCH CHARSET %s BODY {%d}\r\n%s" % (charset.encode(), len(raw), raw))
    assert cmd.args == SearchArgs(charset, SearchText("BODY", text))


def test_gbk_text_labelled_gb2312_is_decoded_via_superset() -> None:
    raw = "郵件".encode("gbk")  # not valid GB2312; clients mislabel GBK that way
    cmd = parse_bytes(b"t SEARCH CHARSET GB2312 TEXT {%d}\r\n%s" % (len(raw), raw))
    assert cmd.args == SearchArgs("GB2312", SearchText("TEXT", "郵件"))


@pytest.mark.parametrize(
    "charset",
    [b"X-UNKNOWN", b"base64", b"rot13", b"idna", b'""', b"{3}\r\nzip", b"{2}\r\n\xc3\xa9"],
)
def test_unknown_charset_is_a_distinct_no(charset: bytes) -> None:
    with pytest.raises(BadCharsetError) as info:
        parse_bytes(b"t7 SEARCH CHARSET " + charset + b" TEXT x")
    assert info.value.status == "NO"
    assert info.value.code == "BADCHARSET (UTF-8 US-ASCII GB18030 GBK GB2312)"
    assert info.value.response().startswith(
        "t7 NO [BADCHARSET (UTF-8 US-ASCII GB18030 GBK GB2312)] "
    )


# -- search trees --------------------------------------------------------------

SEARCHES = [
    (b"ALL", SearchAll()),
    (b"NEW", SearchAnd((SearchFlag("\\Recent"), SearchFlag("\\Seen", False)))),
    (b"OLD", SearchFlag("\\Recent", False)),
    (b"RECENT", SearchFlag("\\Recent")),
    (
        b"answered unanswered",
        SearchAnd((SearchFlag("\\Answered"), SearchFlag("\\Answered", False))),
    ),
    (
        b"DRAFT UNDRAFT FLAGGED UNFLAGGED",
        SearchAnd(
            (
                SearchFlag("\\Draft"),
                SearchFlag("\\Draft", False),
                SearchFlag("\\Flagged"),
                SearchFlag("\\Flagged", False),
            )
        ),
    ),
    (
        b"KEYWORD $Junk UNKEYWORD $NotJunk",
        SearchAnd((SearchFlag("$Junk"), SearchFlag("$NotJunk", False))),
    ),
    (b"OR FROM alice TO bob", SearchOr(SearchHeader("FROM", "alice"), SearchHeader("TO", "bob"))),
    (
        b"OR (SEEN FLAGGED) NOT (DELETED)",
        SearchOr(
            SearchAnd((SearchFlag("\\Seen"), SearchFlag("\\Flagged"))),
            SearchNot(SearchFlag("\\Deleted")),
        ),
    ),
    (
        b"OR OR CC a BCC b SUBJECT c",
        SearchOr(
            SearchOr(SearchHeader("CC", "a"), SearchHeader("BCC", "b")),
            SearchHeader("SUBJECT", "c"),
        ),
    ),
    (b'HEADER Message-ID "<x@y>"', SearchHeader("MESSAGE-ID", "<x@y>")),
    (b'HEADER X-Spam ""', SearchHeader("X-SPAM", "")),
    (
        b"BODY hello TEXT world",
        SearchAnd((SearchText("BODY", "hello"), SearchText("TEXT", "world"))),
    ),
    (
        b'SINCE 1-Feb-1994 BEFORE "01-mar-1994" ON 29-Feb-2024',
        SearchAnd(
            (
                SearchDate("INTERNAL", "SINCE", date(1994, 2, 1)),
                SearchDate("INTERNAL", "BEFORE", date(1994, 3, 1)),
                SearchDate("INTERNAL", "ON", date(2024, 2, 29)),
            )
        ),
    ),
    (
        b"SENTSINCE 1-Feb-1994 SENTBEFORE 2-Feb-1994 SENTON 3-Feb-1994",
        SearchAnd(
            (
                SearchDate("SENT", "SINCE", date(1994, 2, 1)),
                SearchDate("SENT", "BEFORE", date(1994, 2, 2)),
                SearchDate("SENT", "ON", date(1994, 2, 3)),
            )
        ),
    ),
    (
        b"LARGER 1024 SMALLER 4096",
        SearchAnd((SearchSize("LARGER", 1024), SearchSize("SMALLER", 4096))),
    ),
    (b"UID 1:5,7 2,4:*", SearchAnd((SearchUid(S("1:5,7")), SearchSequence(S("2,4:*"))))),
    (b"*", SearchSequence(S("*"))),
    (b"MODSEQ 620162338", SearchModSeq(620162338)),
    (b'MODSEQ "/flags/\\\\draft" all 620162338', SearchModSeq(620162338, "/flags/\\Draft", "all")),
    (b"((SEEN))", SearchFlag("\\Seen")),
    (b"NOT NOT SEEN", SearchNot(SearchNot(SearchFlag("\\Seen")))),
]


@pytest.mark.parametrize(("criteria", "key"), SEARCHES)
def test_search_keys(criteria: bytes, key: object) -> None:
    cmd = parse_bytes(b"s SEARCH " + criteria)
    assert cmd.args == SearchArgs(None, key)


def test_search_modseq_flag_and_charset_word_as_key() -> None:
    assert parse_bytes(b"s SEARCH MODSEQ 5").args.uses_modseq
    assert parse_bytes(b"s SEARCH OR SEEN NOT MODSEQ 5").args.uses_modseq
    assert not parse_bytes(b"s SEARCH SEEN").args.uses_modseq
    # "CHARSET" not followed by a space is not the charset clause
    with pytest.raises(ParseError, match="Unknown search key"):
        parse_bytes(b"s SEARCH CHARSET")


def test_search_depth_is_configurable() -> None:
    deep = b"s SEARCH " + b"(" * 10 + b"ALL" + b")" * 10
    assert parse_bytes(deep).args == SearchArgs(None, SearchAll())
    with pytest.raises(ParseError, match="nested"):
        parse_bytes(deep, max_depth=5)


# -- fetch items ---------------------------------------------------------------

RESPONSE_NAMES = [
    (b"BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)]", "BODY[HEADER.FIELDS (FROM SUBJECT)]"),
    (b"body.peek[header.fields (from subject)]", "BODY[HEADER.FIELDS (from subject)]"),
    (b"BODY.PEEK[HEADER.FIELDS (from from)]", "BODY[HEADER.FIELDS (from from)]"),
    (b"BODY.PEEK[]<0.393216>", "BODY[]<0>"),
    (b"BODY[]<100.50>", "BODY[]<100>"),
    (b"BODY[1.2.HEADER]", "BODY[1.2.HEADER]"),
    (b"BODY[1.MIME]", "BODY[1.MIME]"),
    (b"BODY[TEXT]<0.1>", "BODY[TEXT]<0>"),
    (b'BODY[HEADER.FIELDS.NOT ({10}\r\nX-Odd"Name)]', 'BODY[HEADER.FIELDS.NOT ("X-Odd\\"Name")]'),
    (b"RFC822.SIZE", "RFC822.SIZE"),
    (b"rfc822.header", "RFC822.HEADER"),
    (b"BODY", "BODY"),
    (b"MODSEQ", "MODSEQ"),
]


@pytest.mark.parametrize(("item", "name"), RESPONSE_NAMES)
def test_fetch_response_names(item: bytes, name: str) -> None:
    (parsed,) = parse_bytes(b"f FETCH 1 " + item).args.items
    assert parsed.response_name() == name


def test_fetch_item_helpers() -> None:
    item = body(peek=True, partial=(0, 393216))
    assert item.response_name(0) == "BODY[]<0>"
    assert item.response_name(5000) == "BODY[]<5000>"
    assert str(item) == "BODY.PEEK[]<0.393216>"
    assert not item.sets_seen
    assert body("TEXT").sets_seen
    assert FetchItem("RFC822").sets_seen and FetchItem("RFC822.TEXT").sets_seen
    assert not FetchItem("RFC822.HEADER").sets_seen
    items = parse_bytes(b"f FETCH 1 (FLAGS UID FLAGS)").args.items
    assert items == (FetchItem("FLAGS"), FetchItem("UID"))


# -- sequence sets -------------------------------------------------------------

SEQUENCES = [
    ("1:*", 5, [1, 2, 3, 4, 5]),
    ("*:4", 6, [4, 5, 6]),
    ("1,3:5,7", 10, [1, 3, 4, 5, 7]),
    ("5:2", 10, [2, 3, 4, 5]),
    ("*", 3, [3]),
    ("7:*", 5, [5]),  # beyond the max, n:* still names the highest
    ("7:9", 5, []),
    ("1:*", 0, []),
    ("2,2,1:3", 9, [1, 2, 3]),
    ("4294967295", 3, []),
]


@pytest.mark.parametrize(("text", "max_value", "numbers"), SEQUENCES)
def test_sequence_set_resolution(text: str, max_value: int, numbers: list[int]) -> None:
    seq = S(text)
    assert seq.resolve(max_value) == numbers
    for n in range(0, max_value + 2):
        assert seq.contains(n, max_value) == (n in numbers)


def test_sequence_set_structure() -> None:
    seq = S("1:*,*:4,9")
    assert seq.ranges == (SeqRange(1, None), SeqRange(None, 4), SeqRange(9, 9))
    assert str(seq) == "1:*,*:4,9"
    assert seq.uses_star and seq.highest_explicit() == 9
    assert seq.intervals(20) == [(1, 20)]
    assert S("3:5,1,9:10").intervals(100) == [(1, 1), (3, 5), (9, 10)]
    assert not S("1:5").uses_star
    assert S(b"2:3") == SequenceSet((SeqRange(2, 3),))


def test_compress_sequence_set() -> None:
    assert compress_sequence_set([7, 1, 2, 3, 4, 5, 9, 10, 3]) == b"1:5,7,9:10"
    assert compress_sequence_set([5, 6, 1, 2]) == b"1:2,5:6"
    assert compress_sequence_set([5, 6, 1, 2], sort=False) == b"5:6,1:2"
    assert compress_sequence_set([42]) == b"42"
    with pytest.raises(ValueError):
        compress_sequence_set([])


# -- mailbox names and encoders --------------------------------------------------

MAILBOXES = [
    (b"INBOX", "INBOX"),
    (b"inbox", "INBOX"),
    (b"InBoX", "INBOX"),
    (b"Inbox/Sub", "Inbox/Sub"),  # only the name INBOX itself is special
    (b"&XfJT0ZAB-", "已发送"),
    (b"&g0l6P3ux-", "草稿箱"),
    (b"Tom &- Jerry", "Tom & Jerry"),
    (b"&2D3eAQ-", "😁"),
    ("Entwürfe".encode(), "Entwürfe"),  # raw UTF-8 tolerated
]


@pytest.mark.parametrize(("raw", "name"), MAILBOXES)
def test_decode_mailbox(raw: bytes, name: str) -> None:
    assert decode_mailbox(raw) == name


def test_encoders() -> None:
    assert quote_or_literal("hello world") == b'"hello world"'
    assert quote_or_literal('a"b\\c') == b'"a\\"b\\\\c"'
    assert quote_or_literal("中文") == b"{6}\r\n" + "中文".encode()
    assert quote_or_literal(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert quote_or_literal("x" * 2000).startswith(b"{2000}\r\n")
    assert quote_or_literal("") == b'""'
    assert encode_astring("FROM") == b"FROM"
    assert encode_astring("NIL") == b'"NIL"'
    assert encode_astring("two words") == b'"two words"'
    assert encode_astring("") == b'""'
    assert encode_nstring(None) == b"NIL"
    assert encode_nstring("NIL") == b'"NIL"'
    assert encode_mailbox("已发送") == b'"&XfJT0ZAB-"'
    assert encode_mailbox("Tom & Jerry") == b'"Tom &- Jerry"'
    assert encode_mailbox('a"b') == b'"a\\"b"'
    assert (
        format_flag_list(["\\Seen", "\\Deleted", "$Forwarded"]) == b"(\\Seen \\Deleted $Forwarded)"
    )
    assert format_flag_list([]) == b"()"


INTERNALDATES = [
    (
        datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))),
        b'"17-Jul-1996 02:44:25 -0700"',
    ),
    (
        datetime(2026, 11, 7, 10, 0, 0, tzinfo=timezone(timedelta(hours=8))),
        b'"07-Nov-2026 10:00:00 +0800"',
    ),
    (
        datetime(2026, 1, 1, 0, 0, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        b'"01-Jan-2026 00:00:00 +0530"',
    ),
    (
        datetime(2026, 1, 1, 0, 0, 0, tzinfo=timezone(-timedelta(hours=3, minutes=30))),
        b'"01-Jan-2026 00:00:00 -0330"',
    ),
    (datetime(2000, 12, 31, 23, 59, 59), b'"31-Dec-2000 23:59:59 +0000"'),
]


@pytest.mark.parametrize(("moment", "text"), INTERNALDATES)
def test_format_internaldate(moment: datetime, text: bytes) -> None:
    assert format_internaldate(moment) == text
    # what we print, APPEND can read back
    cmd = parse_bytes(b"a APPEND INBOX " + text + b" {1}\r\nx")
    expected = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    assert cmd.args.internal_date == expected


def test_decode_sasl_response() -> None:
    assert decode_sasl_response(PLAIN_IR) == b"\0alice@example.com\0Wonder1and"
    assert decode_sasl_response(b"") == b""
    assert decode_sasl_response(b"*") is None
    with pytest.raises(ParseError):
        decode_sasl_response(b"not base64!")


# -- framing -------------------------------------------------------------------


def test_framing_lines_crlf_and_bare_lf_and_blank_lines() -> None:
    framer = Framer()
    events = framer.feed(b"a1 NOOP\r\n\r\na2 NOOP\n\na3 CAPA")
    assert events == [CommandUnit((b"a1 NOOP",)), CommandUnit((b"a2 NOOP",))]
    assert framer.feed(b"BILITY\r") == []
    assert framer.feed(b"\n") == [CommandUnit((b"a3 CAPABILITY",))]
    assert not framer.in_command


def test_framing_literals_byte_by_byte() -> None:
    data = b"a1 LOGIN {5}\r\nal\r\ne {7+}\r\n{3}\r\n\r\n\r\na2 NOOP\r\n"
    events = feed_bytewise(Framer(), data)
    assert events == [
        ContinuationRequest(5, "a1", "LOGIN"),
        CommandUnit((b"a1 LOGIN {5}", b" {7+}", b""), (b"al\r\ne", b"{3}\r\n\r\n")),
        CommandUnit((b"a2 NOOP",)),
    ]
    assert Framer().feed(data) == events  # split-independent
    assert parse_command(units(events)[0]).args == LoginArgs("al\r\ne", "{3}\r\n\r\n")


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_framing_is_independent_of_packet_boundaries(cuts: list[int]) -> None:
    data = (
        b"a1 APPEND Sent (\\Seen) {11+}\r\nhello\r\nworld\r\n"
        b"a2 UID FETCH 1:* (FLAGS)\na3 SEARCH CHARSET UTF-8 SUBJECT {12}\r\n" + SUBJ_UTF8 + b"\r\n"
        b"a4 IDLE\r\nDONE\r\na5 LOGOUT\r\n"
    )
    expected = _drive(Framer(), [data])
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(points, points[1:], strict=False)]
    assert _drive(Framer(), chunks) == expected
    assert [type(e).__name__ for e in expected].count("CommandUnit") == 5


def _drive(framer: Framer, chunks: list[bytes]) -> list:
    """A minimal server loop: honours pauses the way a real one must."""
    seen = []

    def handle(events: list) -> None:
        for event in events:
            seen.append(event)
            if isinstance(event, CommandUnit) and event.name == "IDLE":
                framer.expect_raw_line()
            elif isinstance(event, RawLine):
                framer.resume()
            elif isinstance(event, CommandUnit) and framer.paused:
                framer.resume()

    for chunk in chunks:
        events = framer.feed(chunk)
        while events:
            handle(events)
            events = framer.feed(b"")
    return seen


def test_idle_pauses_and_delivers_done_raw() -> None:
    framer = Framer()
    assert framer.feed(b"a1 IDLE\r\ndone\r\na2 NOOP\r\n") == [CommandUnit((b"a1 IDLE",))]
    assert framer.paused and framer.buffered == len(b"done\r\na2 NOOP\r\n")
    framer.expect_raw_line()
    (line,) = framer.feed(b"")
    assert line == RawLine(b"done") and line.is_done
    assert framer.paused
    framer.resume()
    assert framer.feed(b"") == [CommandUnit((b"a2 NOOP",))]


@pytest.mark.parametrize(
    ("line", "done"),
    [
        (b"DONE", True),
        (b"Done", True),
        (b"DONE ", False),
        (b"a2 DONE", False),
        (b"DONEX", False),
        (b"", False),
    ],
)
def test_idle_done_must_be_exact(line: bytes, done: bool) -> None:
    assert RawLine(line).is_done is done


def test_idle_raw_line_is_not_parsed_for_literals() -> None:
    framer = Framer()
    framer.feed(b"a1 IDLE\r\n")
    framer.expect_raw_line()
    assert framer.feed(b"x {5}\r\n") == [RawLine(b"x {5}")]


def test_authenticate_rounds_in_raw_mode() -> None:
    framer = Framer()
    (unit,) = framer.feed(b"a1 AUTHENTICATE LOGIN\r\n")
    assert parse_command(unit).args == AuthenticateArgs("LOGIN")
    framer.expect_raw_line()  # after "+ VXNlcm5hbWU6"
    assert framer.feed(b"YWxpY2U=\r\n") == [RawLine(b"YWxpY2U=")]
    framer.expect_raw_line()  # after "+ UGFzc3dvcmQ6"
    assert framer.feed(b"*\r\n") == [RawLine(b"*")]
    assert decode_sasl_response(b"*") is None
    framer.resume()
    assert framer.feed(b"a2 NOOP\r\n") == [CommandUnit((b"a2 NOOP",))]


def test_starttls_pause_lets_server_drop_injected_plaintext() -> None:
    framer = Framer()
    assert framer.feed(b"a1 STARTTLS\r\na2 DELETE INBOX\r\n") == [CommandUnit((b"a1 STARTTLS",))]
    assert framer.discard_buffered() == len(b"a2 DELETE INBOX\r\n")
    framer.resume()
    assert framer.feed(b"") == []
    assert framer.feed(b"a3 NOOP\r\n") == [CommandUnit((b"a3 NOOP",))]


LIMITS = FramerLimits(
    max_line_length=100, max_literal_size=50, max_append_size=500, max_command_size=1000
)


def test_line_too_long_is_reported_then_skipped() -> None:
    framer = Framer(LIMITS)
    events = feed_bytewise(framer, b"a1 SEARCH TEXT " + b"x" * 200 + b"\r\na2 NOOP\r\n")
    assert events == [
        FramingError(FramingErrorKind.LINE_TOO_LONG, "Line longer than 100 bytes", "a1", "SEARCH"),
        CommandUnit((b"a2 NOOP",)),
    ]
    assert events[0].code == "TOOBIG"
    # the same when the whole line arrives at once
    assert Framer(LIMITS).feed(b"a1 SEARCH TEXT " + b"x" * 200 + b"\r\na2 NOOP\r\n") == events


def test_line_exactly_at_the_limit_is_accepted() -> None:
    line = b"a1 X " + b"y" * 95
    assert len(line) == 100
    assert Framer(LIMITS).feed(line + b"\r\n") == [CommandUnit((line,))]
    assert feed_bytewise(Framer(LIMITS), line + b"\r\n") == [CommandUnit((line,))]


def test_too_long_line_ending_in_literal_plus_skips_the_literal() -> None:
    data = b"a1 SEARCH TEXT " + b"x" * 200 + b" {6+}\r\na3 BAD\r\na2 NOOP\r\n"
    for events in (Framer(LIMITS).feed(data), feed_bytewise(Framer(LIMITS), data)):
        assert [type(e) for e in events] == [FramingError, CommandUnit]
        assert events[1] == CommandUnit((b"a2 NOOP",))


def test_sync_literal_too_big_is_refused_without_continuation() -> None:
    framer = Framer(LIMITS)
    events = framer.feed(b"a1 LOGIN alice {51}\r\n")
    assert events == [
        FramingError(
            FramingErrorKind.LITERAL_TOO_BIG, "Literal larger than 50 bytes", "a1", "LOGIN", 51
        )
    ]
    assert framer.feed(b"a2 NOOP\r\n") == [CommandUnit((b"a2 NOOP",))]


def test_nonsync_literal_too_big_is_swallowed_then_framing_resumes() -> None:
    data = (
        b"a1 LOGIN alice {60+}\r\n"
        + b"A1 DELETE INBOX\r\n" * 3
        + b"123456789 {3+}\r\nabc more\r\na2 NOOP\r\n"
    )
    assert len(b"A1 DELETE INBOX\r\n" * 3 + b"123456789") == 60
    for events in (Framer(LIMITS).feed(data), feed_bytewise(Framer(LIMITS), data)):
        assert events == [
            FramingError(
                FramingErrorKind.LITERAL_TOO_BIG, "Literal larger than 50 bytes", "a1", "LOGIN", 60
            ),
            CommandUnit((b"a2 NOOP",)),
        ]


def test_append_has_its_own_literal_limit() -> None:
    framer = Framer(LIMITS)
    message = b"x" * 400
    events = framer.feed(b"a1 APPEND INBOX {400+}\r\n" + message + b"\r\n")
    assert parse_command(units(events)[0]).args == AppendArgs("INBOX", (), None, message)
    events = framer.feed(b"a2 APPEND INBOX {501}\r\n")
    assert events[0].kind is FramingErrorKind.LITERAL_TOO_BIG and events[0].name == "APPEND"


def test_command_too_big() -> None:
    framer = Framer(LIMITS)
    events = framer.feed(b"a1 APPEND INBOX {500+}\r\n" + b"x" * 500 + b" {500+}\r\n")
    assert events == [
        FramingError(
            FramingErrorKind.COMMAND_TOO_BIG, "Command larger than 1000 bytes", "a1", "APPEND", 500
        )
    ]
    assert framer.feed(b"y" * 500 + b"\r\na2 NOOP\r\n") == [CommandUnit((b"a2 NOOP",))]


def test_absurd_literal_size_is_too_big_not_a_crash() -> None:
    framer = Framer(LIMITS)
    events = framer.feed(b"a1 LOGIN {" + b"9" * 5000 + b"}\r\n")
    assert events[0].kind is FramingErrorKind.LINE_TOO_LONG
    events = framer.feed(b"a1 LOGIN {99999999999999999999}\r\n")
    assert events[0].kind is FramingErrorKind.LITERAL_TOO_BIG


def test_reject_literal_instead_of_continuation() -> None:
    framer = Framer()
    (request,) = framer.feed(b"a1 APPEND Nonexistent {300}\r\n")
    assert request == ContinuationRequest(300, "a1", "APPEND")
    assert framer.reject_literal()  # server sent "a1 NO [TRYCREATE]" instead of "+"
    assert framer.feed(b"a2 NOOP\r\n") == [CommandUnit((b"a2 NOOP",))]
    # too late once the client has started sending
    framer.feed(b"a3 APPEND INBOX {3}\r\n")
    framer.feed(b"a")
    assert not framer.reject_literal()
    assert units(framer.feed(b"bc\r\n"))[0].literals == (b"abc",)


def test_raw_line_too_long() -> None:
    framer = Framer(LIMITS)
    framer.feed(b"a1 AUTHENTICATE PLAIN\r\n")
    framer.expect_raw_line()
    events = framer.feed(b"Q" * 150)
    assert events == [FramingError(FramingErrorKind.LINE_TOO_LONG, "Line longer than 100 bytes")]
    assert framer.paused
    framer.resume()
    assert framer.feed(b"QQ {5+}\r\na2 NOOP\r\n") == [CommandUnit((b"a2 NOOP",))]


def test_framing_error_without_valid_tag() -> None:
    (event,) = Framer(LIMITS).feed(b"* LOGIN {99}\r\n")
    assert event.tag is None


def test_limits_can_be_changed_between_commands() -> None:
    framer = Framer(LIMITS)
    framer.limits = FramerLimits(max_line_length=10)
    assert framer.feed(b"a1 CAPABILITY\r\n")[0].kind is FramingErrorKind.LINE_TOO_LONG


# -- properties: never anything but ParseError -----------------------------------

TOKENS = st.sampled_from(
    [
        b" ",
        b"(",
        b")",
        b"[",
        b"]",
        b"<",
        b">",
        b"{",
        b"}",
        b"+",
        b'"',
        b"\\",
        b"*",
        b"%",
        b":",
        b",",
        b".",
        b"\r\n",
        b"\n",
        b"\x00",
        b"\xff",
        b"{3}\r\n",
        b"{0+}\r\n",
        b"{5",
        b"1",
        b"0",
        b"12",
        b"4294967296",
        b"a1",
        b"UID",
        b"FETCH",
        b"STORE",
        b"SEARCH",
        b"APPEND",
        b"LIST",
        b"SELECT",
        b"STATUS",
        b"ID",
        b"LOGIN",
        b"AUTHENTICATE",
        b"ENABLE",
        b"RETURN",
        b"CHARSET",
        b"UTF-8",
        b"GB2312",
        b"BODY",
        b"BODY.PEEK",
        b"HEADER.FIELDS",
        b"MIME",
        b"TEXT",
        b"OR",
        b"NOT",
        b"MODSEQ",
        b"SINCE",
        b"1-Feb-1994",
        b"+FLAGS",
        b"\\Seen",
        b"NIL",
        b"&",
        b"&-",
        b"&AGE-",
        b"CHANGEDSINCE",
        b"UNCHANGEDSINCE",
        b"HEADER",
        b"IDLE",
        b'"27-Nov-2026 10:00:00 +0800"',
        b"=",
        b"STATUS (MESSAGES)",
        b"INBOX",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.builds(lambda *p: b"".join(p), *[TOKENS] * 6), max_size=4),
    literals=st.lists(st.binary(max_size=8), max_size=4),
)
def test_hand_built_units_only_raise_parse_error(lines: list[bytes], literals: list[bytes]) -> None:
    unit = CommandUnit(tuple(lines), tuple(literals))
    assert unit.tag is None or unit.tag
    _check_unit(unit)


def _check_unit(unit: CommandUnit) -> None:
    try:
        command = parse_command(unit)
    except ParseError as exc:
        assert exc.message and exc.response()
    else:
        assert command.tag and command.name


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), chunk=st.integers(min_value=1, max_value=64))
def test_arbitrary_bytes_only_raise_parse_error(data: bytes, chunk: int) -> None:
    framer = Framer(FramerLimits(max_line_length=120, max_literal_size=60, max_command_size=300))
    for start in range(0, len(data), chunk):
        for event in framer.feed(data[start : start + chunk]):
            if isinstance(event, CommandUnit):
                _check_unit(event)
            if framer.paused:
                framer.resume()
    try:
        parse_bytes(data)
    except ParseError:
        pass


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(TOKENS, max_size=40))
def test_token_soup_only_raises_parse_error(parts: list[bytes]) -> None:
    data = b"t1 " + b"".join(parts)
    for event in _drive(Framer(), [data, b"\r\n"]):
        if isinstance(event, CommandUnit):
            _check_unit(event)


# -- properties: round trips -------------------------------------------------------

NUMBERS = st.one_of(st.none(), st.integers(min_value=1, max_value=2**32 - 1))
RANGES = st.builds(SeqRange, NUMBERS, NUMBERS) | NUMBERS.map(lambda n: SeqRange(n, n))
SEQUENCE_SETS = st.lists(RANGES, min_size=1, max_size=20).map(lambda r: SequenceSet(tuple(r)))


@given(SEQUENCE_SETS)
def test_sequence_set_round_trip(seq: SequenceSet) -> None:
    assert S(str(seq)) == seq
    assert str(S(str(seq))) == str(seq)


@given(seq=SEQUENCE_SETS, max_value=st.integers(min_value=0, max_value=300))
def test_sequence_set_resolution_agrees_with_contains(seq: SequenceSet, max_value: int) -> None:
    numbers = seq.resolve(max_value)
    assert numbers == sorted(set(numbers))
    assert numbers == [n for n in range(1, max_value + 1) if seq.contains(n, max_value)]


@given(st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=200))
def test_compressed_sets_resolve_to_their_numbers(numbers: set[int]) -> None:
    text = compress_sequence_set(numbers)
    assert S(text).resolve(10_000) == sorted(numbers)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40))
def test_mailbox_name_round_trip(name: str) -> None:
    encoded = encode_mailbox(name)
    command = parse_bytes(b"m SELECT " + encoded)
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert command.args == SelectArgs(expected)


@given(st.binary(max_size=300))
def test_quote_or_literal_round_trip(value: bytes) -> None:
    command = parse_bytes(b"q LOGIN " + quote_or_literal(value) + b" pw")
    assert command.args.username.encode("utf-8", "surrogateescape") == value
