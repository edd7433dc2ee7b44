"""Tests for exmaild.mailstore.parse: ingest-time parsing into IMAP-ready data.

Expected BODYSTRUCTURE/BODY/ENVELOPE strings marked "Dovecot" were checked
byte for byte against Dovecot 2.3.19 (APPEND + FETCH on a loopback instance);
the others follow RFC 3501 §7.4.2 by hand.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmaild.mailstore import parse as parse_module
from exmaild.mailstore.parse import ParsedMessage, imap_quote, parse_message
from exmaild.mailstore.rfc822 import _parse_addresses, parse_addresses


def msg(text: str | bytes) -> bytes:
    """A test message from a triple-quoted string: line ends become CRLF."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# --- a strict reader for IMAP response data ------------------------------------
def read_imap(data: bytes) -> object:
    """Parse one IMAP value (list, NIL, number, quoted string, literal).

    Raises AssertionError on anything RFC 3501 would not accept, so tests can
    check that generated responses are well-formed.
    """
    value, pos = _read(data, 0)
    assert pos == len(data), f"trailing data at {pos}: {data[pos : pos + 20]!r}"
    return value


def _read(data: bytes, pos: int) -> tuple[object, int]:
    c = data[pos : pos + 1]
    if c == b"(":
        items: list[object] = []
        pos += 1
        while data[pos : pos + 1] != b")":
            if items:  # lists follow lists directly: ((a)(b)), (part)(part) "mixed"
                if data[pos : pos + 1] == b" ":
                    pos += 1
                else:
                    assert data[pos : pos + 1] == b"(" and isinstance(items[-1], list), pos
            item, pos = _read(data, pos)
            items.append(item)
        return items, pos + 1
    if c == b'"':
        out = bytearray()
        pos += 1
        while (ch := data[pos : pos + 1]) != b'"':
            assert ch and ch not in b"\r\n\x00" and ch[0] < 0x80, f"bad quoted char {ch!r}"
            if ch == b"\\":
                pos += 1
                ch = data[pos : pos + 1]
                assert ch in (b"\\", b'"'), "bad escape"
            out += ch
            pos += 1
        return bytes(out), pos + 1
    if c == b"{":
        close = data.index(b"}\r\n", pos)
        n = int(data[pos + 1 : close])
        start = close + 3
        literal = data[start : start + n]
        assert len(literal) == n and b"\x00" not in literal
        return literal, start + n
    if data.startswith(b"NIL", pos):
        return None, pos + 3
    end = pos
    while data[end : end + 1].isdigit():
        end += 1
    assert end > pos, f"unexpected {data[pos : pos + 20]!r}"
    return int(data[pos:end]), end


def strip_extension(bs: object) -> object:
    """BODY form of a parsed BODYSTRUCTURE (drop extension data)."""
    assert isinstance(bs, list)
    if isinstance(bs[0], list):  # multipart: parts then subtype
        n = next(i for i, x in enumerate(bs) if not isinstance(x, list))
        return [strip_extension(p) for p in bs[:n]] + [bs[n]]
    if bs[0].lower() == b"message" and bs[1].lower() == b"rfc822" and len(bs) >= 10:
        return bs[:8] + [strip_extension(bs[8]), bs[9]]
    return bs[:8] if bs[0].lower() == b"text" else bs[:7]


def check_wellformed(p: ParsedMessage, raw: bytes) -> None:
    assert p.size == len(raw)
    assert 0 <= p.header_len <= p.size
    envelope = read_imap(p.envelope)
    assert isinstance(envelope, list) and len(envelope) == 10
    assert strip_extension(read_imap(p.bodystructure)) == read_imap(p.body)
    for text in (p.subject, p.headers_text, p.excerpt, p.from_, p.to):
        assert "\x00" not in text
        text.encode("utf-8")  # storable: no lone surrogates


# --- simple messages ---------------------------------------------------------------
SIMPLE = msg(
    """\
Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Minutes of the meeting.
Second line.
"""
)


def test_simple_text_message() -> None:
    p = parse_message(SIMPLE)
    header = SIMPLE[: SIMPLE.index(b"\r\n\r\n") + 4]
    assert p.size == len(SIMPLE)
    assert p.header_len == len(header)
    assert SIMPLE[p.header_len :] == b"Minutes of the meeting.\r\nSecond line.\r\n"
    # The RFC 3501 §7.4.2 example message.
    assert p.envelope == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes" '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'(("Terry Gray" NIL "gray" "cac.washington.edu")) '
        b'((NIL NIL "imap" "cac.washington.edu")) '
        b'((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU")) '
        b'NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    # Dovecot: a lone us-ascii 7bit text/plain body comes out in canonical case.
    assert p.body == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 39 2)'
    assert p.bodystructure == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 39 2 NIL NIL NIL NIL)'
    )
    assert p.subject == "IMAP4rev1 WG mtg summary and minutes"
    assert p.from_ == "Terry Gray <gray@cac.washington.edu>"
    assert p.to == "imap@cac.washington.edu"
    assert p.cc == "minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>"
    assert p.bcc == p.reply_to == p.in_reply_to == p.references == ""
    assert p.message_id == "<B27397-0100000@cac.washington.edu>"
    assert p.sent_date == datetime(1996, 7, 17, 9, 23, 25, tzinfo=UTC)
    assert p.headers_text.splitlines()[2] == "Subject: IMAP4rev1 WG mtg summary and minutes"
    assert p.excerpt == "Minutes of the meeting.\nSecond line."
    assert p.attachment_names == () and not p.has_attachments
    check_wellformed(p, SIMPLE)


ENVELOPE_MSG = msg(
    b"""\
Date: Tue, 01 Oct 2024 10:00:00 +0800
Subject: Re: the "plan"   for\r\n\t Q4 \\ review
From: "Doe, Jane" <jane@example.com>
Sender: <@relay.example:bounce@example.com>
Reply-To: Team: a@example.com, "B" <b@example.com>;, undisclosed-recipients:;
To: bob@example.org (Bob Comment), \xe5\xbc\xa0\xe4\xb8\x89 <zhang@example.cn>
Cc: =?UTF-8?B?5L2g5aW9?= <cc@example.com>, local-only
Bcc: <>
In-Reply-To: <parent@example.com>
Message-ID: <child@example.com>

x
"""
)


def test_exact_envelope_by_rfc3501_rules() -> None:
    p = parse_message(ENVELOPE_MSG)
    assert p.envelope == (
        b'("Tue, 01 Oct 2024 10:00:00 +0800" '
        # folding and whitespace runs collapse; \ and " are escaped
        b'"Re: the \\"plan\\" for Q4 \\\\ review" '
        b'(("Doe, Jane" NIL "jane" "example.com")) '
        b'((NIL "@relay.example" "bounce" "example.com")) '
        # groups: (NIL NIL "name" NIL) members (NIL NIL NIL NIL)
        b'((NIL NIL "Team" NIL)(NIL NIL "a" "example.com")("B" NIL "b" "example.com")'
        b'(NIL NIL NIL NIL)(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) '
        # a trailing comment is the name; raw 8-bit name is a literal
        b'(("Bob Comment" NIL "bob" "example.org")'
        b'({6}\r\n\xe5\xbc\xa0\xe4\xb8\x89 NIL "zhang" "example.cn")) '
        # encoded-words stay encoded; a bare local part gets a placeholder host
        b'(("=?UTF-8?B?5L2g5aW9?=" NIL "cc" "example.com")(NIL NIL "local-only" "MISSING_DOMAIN")) '
        b'((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) '
        b'"<parent@example.com>" "<child@example.com>")'
    )
    assert p.subject == 'Re: the "plan" for Q4 \\ review'
    assert p.from_ == "Doe, Jane <jane@example.com>"
    assert p.reply_to == "Team: a@example.com, B <b@example.com>;, undisclosed-recipients:;"
    assert p.to == "Bob Comment <bob@example.org>, 张三 <zhang@example.cn>"
    assert p.cc == "你好 <cc@example.com>, local-only"
    assert p.bcc == ""
    assert p.in_reply_to == "<parent@example.com>"
    check_wellformed(p, ENVELOPE_MSG)


def test_envelope_defaults_and_missing_headers() -> None:
    p = parse_message(msg("From: a@b.example\nSubject:\nMessage-ID:\n\nbody\n"))
    assert p.envelope == (
        b'(NIL "" ((NIL NIL "a" "b.example")) ((NIL NIL "a" "b.example")) '
        b'((NIL NIL "a" "b.example")) NIL NIL NIL NIL "")'
    )
    assert parse_message(b"\r\nbody").envelope == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


def test_type_and_parameter_case_is_kept() -> None:  # Dovecot
    raw = msg(
        "Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; Format=Flowed\n"
        "Content-Transfer-Encoding: 7BIT\n\nx\n"
    )
    assert parse_message(raw).body == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "Format" "Flowed") NIL NIL "7BIT" 3 1)'
    )


def test_first_header_wins() -> None:
    p = parse_message(msg("Subject: first\nSubject: second\n\n"))
    assert p.subject == "first"
    assert b'"first"' in p.envelope


# --- MIME structure ------------------------------------------------------------------
ALTERNATIVE = msg(
    """\
From: Alice <alice@example.com>
To: bob@example.org
Subject: alt
Date: Tue, 1 Oct 2024 10:00:00 +0800
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="BND"

preamble
--BND
Content-Type: text/plain; charset=UTF-8
Content-Transfer-Encoding: quoted-printable

hello =E4=BD=A0
second line
--BND
Content-Type: TEXT/HTML; CHARSET="utf-8"; Format=Flowed
Content-Transfer-Encoding: BASE64

PGI+aGk8L2I+
--BND--
epilogue
"""
)


def test_multipart_alternative_bodystructure() -> None:  # Dovecot
    p = parse_message(ALTERNATIVE)
    assert p.bodystructure == (
        b'(("text" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 28 1 NIL NIL NIL NIL)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8" "Format" "Flowed") NIL NIL "BASE64" 12 0'
        b' NIL NIL NIL NIL) "alternative" ("boundary" "BND") NIL NIL NIL)'
    )
    assert p.body == (
        b'(("text" "plain" ("charset" "UTF-8") NIL NIL "quoted-printable" 28 1)'
        b'("TEXT" "HTML" ("CHARSET" "utf-8" "Format" "Flowed") NIL NIL "BASE64" 12 0)'
        b' "alternative")'
    )
    assert p.excerpt == "hello 你\nsecond line"  # the plain alternative only
    assert not p.has_attachments
    check_wellformed(p, ALTERNATIVE)


MIXED = msg(
    """\
From: a@b.c
Subject: =?GB2312?B?suLK1A==?=
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: text/plain

body text
--outer
Content-Type: application/octet-stream; name="=?UTF-8?B?5rWL6K+VLnR4dA==?="
Content-Disposition: attachment; filename*=UTF-8''%E6%B5%8B%E8%AF%95.txt
Content-Transfer-Encoding: base64
Content-ID: <cid1@x>
Content-Description: a file
Content-Language: en, fr
Content-Location: http://x/y
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

aGVsbG8=
--outer
Content-Type: application/pdf; name*0*=UTF-8''%E6%B5; name*1*=%8B.pdf
Content-Disposition: attachment; filename*0="long"; filename*1="name.pdf"

xx
--outer
Content-Type: message/rfc822

From: Inner <in@x.y>
Subject: inner
Content-Type: text/plain; charset=us-ascii

inner body
line2

--outer--
"""
)


def test_multipart_mixed_with_attachments_and_message() -> None:  # Dovecot
    p = parse_message(MIXED)
    assert p.bodystructure == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 0 NIL NIL NIL NIL)'
        b'("application" "octet-stream" ("name" "=?UTF-8?B?5rWL6K+VLnR4dA==?=") "<cid1@x>"'
        b' "a file" "base64" 8 "Q2hlY2sgSW50ZWdyaXR5IQ=="'
        b' ("attachment" ("filename*" "UTF-8\'\'%E6%B5%8B%E8%AF%95.txt")) ("en" "fr")'
        b' "http://x/y")'
        b'("application" "pdf" ("name*" "UTF-8\'\'%E6%B5%8B.pdf") NIL NIL "7bit" 2 NIL'
        b' ("attachment" ("filename" "longname.pdf")) NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 103 (NIL "inner" (("Inner" NIL "in" "x.y"))'
        b' (("Inner" NIL "in" "x.y")) (("Inner" NIL "in" "x.y")) NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 19 2 NIL NIL NIL NIL) 6'
        b' NIL NIL NIL NIL) "mixed" ("boundary" "outer") NIL NIL NIL)'
    )
    assert p.subject == "测试"
    # Disposition filename (RFC 2231) wins over the Content-Type name.
    assert p.attachment_names == ("测试.txt", "longname.pdf")
    assert p.has_attachments
    assert p.excerpt == "body text\ninner body\nline2"
    check_wellformed(p, MIXED)


def _b64w(text: str, charset: str) -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


CHINESE_ATTACHMENTS = msg(
    f"""\
From: {_b64w("王五", "gbk")} <wangwu@example.cn>
To: =?UTF-8?Q?=E6=9D=8E=E5=9B=9B?= <lisi@example.cn>
Subject: {_b64w("季度报告", "gb2312")}
Date: Mon, 7 Oct 2024 09:30:00 +0800
Content-Type: multipart/mixed; boundary="----=_Part_0_1"

------=_Part_0_1
Content-Type: text/plain; charset=gbk
Content-Transfer-Encoding: base64

{base64.b64encode("请查收附件。".encode("gbk")).decode()}
------=_Part_0_1
Content-Type: application/vnd.ms-excel; name="{_b64w("数据.xls", "gbk")}"
Content-Disposition: attachment; filename="{_b64w("数据.xls", "gbk")}"
Content-Transfer-Encoding: base64

AAAA
------=_Part_0_1
Content-Type: application/pdf
Content-Disposition: attachment;
 filename*0*=UTF-8''%E6%8A%A5;
 filename*1*=%E5%91%8A.pdf

%PDF
------=_Part_0_1--
"""
)


def test_chinese_attachment_names_rfc2047_and_rfc2231() -> None:
    p = parse_message(CHINESE_ATTACHMENTS)
    assert p.attachment_names == ("数据.xls", "报告.pdf")
    assert p.has_attachments
    assert p.subject == "季度报告"
    assert p.from_ == "王五 <wangwu@example.cn>"
    assert p.to == "李四 <lisi@example.cn>"
    assert p.excerpt == "请查收附件。"
    assert p.sent_date == datetime(2024, 10, 7, 1, 30, tzinfo=UTC)
    structure = read_imap(p.bodystructure)
    assert isinstance(structure, list)
    assert structure[2][8] == [b"attachment", [b"filename*", b"UTF-8''%E6%8A%A5%E5%91%8A.pdf"]]
    check_wellformed(p, CHINESE_ATTACHMENTS)


def test_message_rfc822_only_body() -> None:  # Dovecot
    p = parse_message(msg("From: a@b\nContent-Type: message/rfc822\n\nSubject: x\n"))
    assert p.bodystructure == (
        b'("message" "rfc822" NIL NIL NIL "7bit" 12 (NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) 1'
        b" NIL NIL NIL NIL)"
    )


def test_digest_parts_default_to_message_rfc822() -> None:  # Dovecot
    raw = msg(
        "From: a@b.c\nContent-Type: multipart/digest; boundary=d\n\n--d\n\n"
        "From: x@y\nSubject: d1\n\none\n--d\nContent-Type: text/plain\n\ntwo\n--d--\n"
    )
    assert parse_message(raw).body == (
        b'(("message" "rfc822" NIL NIL NIL "7bit" 29 (NIL "d1" ((NIL NIL "x" "y"))'
        b' ((NIL NIL "x" "y")) ((NIL NIL "x" "y")) NIL NIL NIL NIL NIL)'
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) 3)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 3 0) "digest")'
    )


def test_outer_boundary_ends_unterminated_inner_multipart() -> None:  # Dovecot
    raw = msg(
        """\
From: a@b.c
Content-Type: multipart/mixed; boundary="=_abc"

--=_abc
Content-Type: multipart/alternative; boundary="=_abcd"

--=_abcd
Content-Type: text/plain

p
--=_abcd
Content-Type: text/html

h
--=_abc
Content-Type: text/plain

after
--=_abc--
"""
    )
    assert parse_message(raw).body == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 1 0) "alternative")'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) "mixed")'
    )


def test_disposition_language_location_on_multipart() -> None:  # Dovecot
    raw = msg(
        'From: a@b\nContent-Type: multipart/related; boundary="b"; type="text/html"\n'
        "Content-Disposition: inline\nContent-Language: en\nContent-Location: foo\n\n"
        "--b\nContent-Type: text/html\n\nx\n--b--\n"
    )
    assert parse_message(raw).bodystructure == (
        b'(("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 1 0 NIL NIL NIL NIL) "related"'
        b' ("boundary" "b" "type" "text/html") ("inline" NIL) ("en") "foo")'
    )


def test_single_part_attachment_message() -> None:
    raw = msg(
        "Content-Type: application/pdf\nContent-Disposition: attachment; filename=a.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERi0=\n"
    )
    p = parse_message(raw)
    assert p.attachment_names == ("a.pdf",) and p.has_attachments
    assert p.excerpt == ""


def test_inline_related_image_is_not_an_attachment() -> None:
    raw = msg(
        "Content-Type: multipart/related; boundary=r\n\n--r\nContent-Type: text/html\n\n"
        '<img src="cid:i1">\n--r\nContent-Type: image/png; name="logo.png"\n'
        "Content-ID: <i1>\nContent-Transfer-Encoding: base64\n\niVBORw==\n--r--\n"
    )
    p = parse_message(raw)
    assert p.attachment_names == () and not p.has_attachments


# --- header decoding -------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"=?GB2312?B?suLK1A==?=", "测试"),
        (b"=?UTF-8?Q?=E4=BD=A0=E5=A5=BD_world?=", "你好 world"),
        (b"=?gbk?b?1tDOxA==?= =?utf-8?b?5Lit5paH?=", "中文中文"),  # ws between words dropped
        (b"Re: =?utf-8?B?5L2g5aW9?= ok", "Re: 你好 ok"),
        ("中文主题".encode(), "中文主题"),  # raw 8-bit UTF-8
        ("中文主题".encode("gbk"), "中文主题"),  # raw 8-bit GBK: GB18030 fallback
        (b"=?big5?B?pKSk5Q==?=", "中文"),
        (b"=?x-unknown?Q?plain?=", "plain"),
    ],
)
def test_subject_decoding(header: bytes, expected: str) -> None:
    p = parse_message(b"Subject: " + header + b"\r\n\r\n")
    assert p.subject == expected
    assert p.headers_text == "Subject: " + expected


def test_encoded_word_split_inside_a_multibyte_character() -> None:
    data = "你好".encode()
    words = [base64.b64encode(data[:4]).decode(), base64.b64encode(data[4:]).decode()]
    p = parse_message(
        f"Subject: =?UTF-8?B?{words[0]}?=\r\n =?UTF-8?B?{words[1]}?=\r\n\r\n".encode()
    )
    assert p.subject == "你好"


def test_raw_utf8_name_with_nbsp_byte_is_kept_intact() -> None:  # Dovecot
    # 张 is E5 BC A0 in UTF-8: A0 must not be taken for a (latin-1) space.
    p = parse_message(msg("From: 张三 <zs@x.cn>\nTo: 李四 <ls@x.cn>\n\n"))
    assert p.envelope.startswith(b'(NIL NIL (({6}\r\n\xe5\xbc\xa0\xe4\xb8\x89 NIL "zs" "x.cn"))')
    assert p.from_ == "张三 <zs@x.cn>"


def test_raw_8bit_headers_become_literals_of_the_raw_bytes() -> None:
    raw = "Subject: 中文\r\nFrom: 张三 <z@x.cn>\r\n\r\n".encode("gbk")
    p = parse_message(raw)
    gbk_subject = "中文".encode("gbk")
    assert p.envelope.startswith(b"(NIL {%d}\r\n%b ((" % (len(gbk_subject), gbk_subject))
    assert p.subject == "中文" and p.from_ == "张三 <z@x.cn>"
    check_wellformed(p, raw)


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        (b"Tue, 1 Oct 2024 10:00:00 +0800", datetime(2024, 10, 1, 2, 0, tzinfo=UTC)),
        (b"1 Oct 2024 10:00:00 GMT", datetime(2024, 10, 1, 10, 0, tzinfo=UTC)),
        (b"Tue, 1 Oct 2024 10:00:00 -0000", datetime(2024, 10, 1, 10, 0, tzinfo=UTC)),
        (b"Tue, 1 Oct 2024 10:00:00 EDT", datetime(2024, 10, 1, 14, 0, tzinfo=UTC)),
        (b"not a date", None),
        (b"Tue, 31 Feb 2024 10:00:00 +0000", None),
        (b"Tue, 1 Oct 2024 25:61:00 +0800", None),
    ],
)
def test_sent_date(date: bytes, expected: datetime | None) -> None:
    assert parse_message(b"Date: " + date + b"\r\n\r\n").sent_date == expected


# --- body text -----------------------------------------------------------------
def test_html_only_body_is_stripped() -> None:
    raw = msg(
        "Content-Type: text/html; charset=utf-8\n\n<html><head><style>p{color:red}</style>"
        "<script>var x = '<b>';</script></head><body><p>Hello&nbsp;<b>world</b> &amp; "
        "<!-- hidden -->you</p></body></html>\n"
    )
    assert parse_message(raw).excerpt == "Hello world & you"


def test_excerpt_is_truncated_and_charset_decoded() -> None:
    body = base64.encodebytes(("中文" * 5000).encode("gb18030")).decode()
    raw = msg(
        f"Content-Type: text/plain; charset=GB2312\nContent-Transfer-Encoding: base64\n\n{body}"
    )
    p = parse_message(raw, excerpt_chars=100)
    assert p.excerpt == "中文" * 50
    assert parse_message(raw, excerpt_chars=0).excerpt == ""


def test_unknown_charset_and_unlabelled_8bit_body() -> None:
    raw = "Content-Type: text/plain; charset=x-klingon\r\n\r\n你好".encode()
    assert parse_message(raw).excerpt == "你好"
    raw = "Content-Type: text/plain\r\n\r\n你好".encode("gbk")
    assert parse_message(raw).excerpt == "你好"


# --- malformed input -------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n",
        b"\n\n",
        b"no colon and no end",
        b"Subject: header only, no blank line",
        b"From: a@b\nSubject: bare LF\n\nbody\n",
        b"Subject: nul\x00\r\nFrom: a\x00b@c\r\n\r\nbo\x00dy",
        b"Content-Type: multipart/mixed\r\n\r\nno boundary parameter",
        b"Content-Type: multipart/mixed; boundary=zz\r\n\r\nboundary never appears",
        b'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n--\r\n',
        b"Content-Type: ;;;\r\nContent-Transfer-Encoding: (\r\n\r\nx",
        b'Content-Type: text/plain; charset="unterminated\r\n\r\nx',
        b"Content-Type: text/plain; name*99999999999999999999*=x\r\n\r\nx",
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!!====abc",
        b"Subject: =?utf-8?B?broken!!?= =?utf-8?Q?=ZZ=?= =?utf-8?B??=\r\n\r\n",
        b"Content-Type: text/plain; charset=base64\r\n\r\n\xff\xfe",
        b"Content-Type: text/plain; charset=utf-7\r\n\r\n+2D3cAA-",
        b'To: ((((((((((\r\nCc: """""\r\nBcc: <<<<@@@>>>,,;;::\r\nFrom: a@\r\n\r\n',
        b"Subject: " + b"A" * 300_000 + b"\r\n\r\nx",
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * 6000,
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(300)
        ),
        b"Content-Type: text/html\r\n\r\n" + b"<" * 50_000 + b"<script" * 1000,
        # inputs that made early regexes backtrack quadratically
        b"To: a" + b" " * 50_000 + b"x\r\nCc: a" + b" " * 50_000 + b"<x\r\n\r\n",
        b"Content-Type: text/html; charset=utf-8\r\n\r\n" + "\u3000".encode() * 50_000,
        b"Content-Type: text/plain; name*\xb2=x\r\n\r\n",  # latin-1 digit: int() fails
    ],
)
def test_malformed_input_never_raises(raw: bytes) -> None:
    p = parse_module._parse(raw, 16384)  # the strict path: no fallback hiding bugs
    check_wellformed(p, raw)
    assert parse_message(raw) == p


def test_no_boundary_falls_back_to_text_plain() -> None:
    raw = b"Content-Type: multipart/mixed\r\n\r\nhello\r\n"
    assert parse_message(raw).body == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1)'


def test_header_only_and_empty_messages() -> None:
    for raw in (b"", b"Subject: x", b"Subject: x\r\n"):
        p = parse_message(raw)
        assert p.header_len == len(raw)
        assert p.body == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'


def test_bare_lf_offsets_are_on_the_raw_bytes() -> None:
    raw = b"From: a@b\nContent-Type: multipart/mixed; boundary=x\n\n--x\n\nhello\n--x--\n"
    p = parse_message(raw)
    assert p.header_len == raw.index(b"\n\n") + 2
    assert p.body == b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0) "mixed")'


def test_fallback_result_is_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(raw: bytes, excerpt_chars: int) -> ParsedMessage:
        raise RuntimeError("bug")

    monkeypatch.setattr(parse_module, "_parse", boom)
    p = parse_message(SIMPLE)
    assert p.header_len == SIMPLE.index(b"\r\n\r\n") + 4
    check_wellformed(p, SIMPLE)


# --- imap_quote ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, b"NIL"),
        (b"", b'""'),
        (b"plain text", b'"plain text"'),
        (b'say "hi" \\o/', b'"say \\"hi\\" \\\\o/"'),
        (b"two\r\nlines", b"{10}\r\ntwo\r\nlines"),
        ("中文", b"{6}\r\n\xe4\xb8\xad\xe6\x96\x87"),
        (b"\xd6\xd0", b"{2}\r\n\xd6\xd0"),
        (b"nul\x00", b"{6}\r\nnul\xef\xbf\xbd"),
    ],
)
def test_imap_quote(value: bytes | str | None, expected: bytes) -> None:
    assert imap_quote(value) == expected


# --- properties ----------------------------------------------------------------
SAMPLES = [SIMPLE, ENVELOPE_MSG, ALTERNATIVE, MIXED, CHINESE_ATTACHMENTS]
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    check_wellformed(parse_module._parse(raw, 500), raw)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate", "truncate"]))
        chunk = draw(
            st.one_of(
                st.binary(max_size=8),
                st.sampled_from([b"\r\n", b"\n", b"--", b'"', b"(", b"<", b";", b"=?", b"\x00"]),
            )
        )
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        elif op == "replace":
            data[pos : pos + len(chunk)] = chunk
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 200))]
        else:
            del data[pos:]
    return bytes(data)


@PROPERTY
@given(mutated_messages())
def test_mutated_messages_never_raise(raw: bytes) -> None:
    p = parse_module._parse(raw, 1000)
    check_wellformed(p, raw)
    assert p.header_len <= p.size


@PROPERTY
@given(
    st.lists(
        st.sampled_from(
            ['"', "<", ">", "@", ",", " ", "a", "b.c", "Jo", "\t", "\xa0", "\x85", "(", ":", ";"]
        ),
        max_size=20,
    ).map("".join)
)
def test_address_fast_path_agrees_with_tokenizer(value: str) -> None:
    assert parse_addresses(value.encode("latin-1")) == _parse_addresses(value)
