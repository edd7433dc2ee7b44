"""The Sieve engine on its own: parsing (errors with line and column), every
test and action of the supported extensions, limits, and fuzzed input that
must never raise anything but SieveError."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exmaild.sieve import Limits, MessageContext, SieveError, SieveRuntimeError, evaluate, parse
from exmaild.sieve.interp import Interpreter

ALL = ('require ["fileinto", "reject", "ereject", "envelope", "body", "imap4flags", "copy", '
       '"vacation", "relational", "subaddress", "variables", "date", '
       '"comparator-i;ascii-numeric"];\n')

RAW = (
    b"Return-Path: <boss@corp.example>\r\n"
    b"From: Big Boss <Boss@Corp.Example>\r\n"
    b"To: me+lists@x.example, other@y.example\r\n"
    b"Cc: third@z.example\r\n"
    b"Subject: =?utf-8?q?Quarterly_r=C3=A9sum=C3=A9?=\r\n"
    b"Date: Mon, 07 Dec 2026 10:30:00 +0100\r\n"
    b"X-Spam-Score: 7\r\n"
    b"\r\n"
    b"The body mentions PROJECT Falcon.\r\n"
)


def run(body: str, raw: bytes = RAW, limits: Limits | None = None, **kw: str) -> list[tuple]:
    script = parse(ALL + body)
    ctx = MessageContext.from_bytes(raw, envelope_from=kw.get("sender", "boss@corp.example"),
                                    envelope_to=kw.get("rcpt", "me+lists@x.example"))
    res = evaluate(script, ctx, limits)
    return [(a.kind, a.target, a.flags, a.copy) for a in res.effective]


@pytest.mark.parametrize("script, want", [
    ('', [("keep", "INBOX", (), False)]),
    ('discard;', []),
    ('fileinto "Work";', [("fileinto", "Work", (), False)]),
    ('fileinto :copy "Work";', [("keep", "INBOX", (), False), ("fileinto", "Work", (), True)]),
    ('if header :contains "subject" "résumé" { fileinto "CV"; }', [("fileinto", "CV", (), False)]),
    ('if header :is "subject" "quarterly RÉSUMÉ" { discard; }', [("keep", "INBOX", (), False)]),
    ('if header :matches "subject" "Quarterly*" { discard; }', []),
    ('if address :domain :is "from" "corp.example" { fileinto "Boss"; }',
     [("fileinto", "Boss", (), False)]),
    ('if address :localpart "from" "boss" { discard; }', []),
    ('if address :all :is "cc" "third@z.example" { discard; }', []),
    ('if address :user "to" "me" { if address :detail "to" "lists" { fileinto "L"; } }',
     [("fileinto", "L", (), False)]),
    ('if envelope :is "from" "boss@corp.example" { discard; }', []),
    ('if envelope :detail "to" "lists" { discard; }', []),
    ('if exists ["x-spam-score", "date"] { discard; }', []),
    ('if exists "x-missing" { discard; }', [("keep", "INBOX", (), False)]),
    ('if size :over 100 { discard; }', []),
    ('if size :under 100 { discard; }', [("keep", "INBOX", (), False)]),
    ('if body :contains "project falcon" { discard; }', []),
    ('if body :raw :contains "PROJECT" { discard; }', []),
    ('if not body :contains "eagle" { discard; }', []),
    ('if allof (true, false) { discard; }', [("keep", "INBOX", (), False)]),
    ('if anyof (false, true) { discard; }', []),
    ('if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }', []),
    ('if header :value "lt" :comparator "i;ascii-numeric" "x-spam-score" "5" { discard; }',
     [("keep", "INBOX", (), False)]),
    ('if address :count "eq" :comparator "i;ascii-numeric" "to" "2" { discard; }', []),
    ('setflag "\\\\Seen"; addflag ["$Work", "\\\\Flagged"]; removeflag "\\\\Seen";',
     [("keep", "INBOX", ("$Work", "\\Flagged"), False)]),
    ('keep :flags "\\\\Answered";', [("keep", "INBOX", ("\\Answered",), False)]),
    ('if hasflag "x" { discard; } addflag "x"; if hasflag "X" { fileinto "F"; }',
     [("fileinto", "F", ("x",), False)]),
    ('set "folder" "Lists"; set :upper "up" "abc"; fileinto "${folder}/${up}";',
     [("fileinto", "Lists/ABC", (), False)]),
    ('if header :matches "from" "* <*@*>" { fileinto "From/${3}"; }',
     [("fileinto", "From/Corp.Example", (), False)]),
    ('if string :is "${undefined}" "" { discard; }', []),
    ('if date :zone "+0000" "date" "hour" "09" { discard; }', []),
    ('if date :originalzone "date" "zone" "+0100" { discard; }', []),
    ('if date :zone "+0000" "date" "weekday" "1" { discard; }', []),
    ('if currentdate :zone "+0000" "year" "1999" { discard; }', [("keep", "INBOX", (), False)]),
    ('redirect "a@b.example";', [("redirect", "a@b.example", (), False)]),
    ('redirect :copy "a@b.example";',
     [("keep", "INBOX", (), False), ("redirect", "a@b.example", (), True)]),
    ('reject "go away";', [("reject", "go away", (), False)]),
    ('ereject "go away";', [("ereject", "go away", (), False)]),
    ('fileinto "A"; fileinto "A"; stop; fileinto "B";', [("fileinto", "A", (), False)]),
    ('if false { discard; } elsif true { fileinto "E"; } else { discard; }',
     [("fileinto", "E", (), False)]),
    ('if false { discard; } elsif false { discard; } else { fileinto "X"; }',
     [("fileinto", "X", (), False)]),
])
def test_actions(script: str, want: list[tuple]) -> None:
    assert run(script) == want


def test_vacation_action() -> None:
    script = parse(ALL + 'vacation :days 2 :subject "Out" :addresses ["alias@x.example"] '
                   ':from "me@x.example" text:\nI am away.\n..dotted\n.\n;')
    ctx = MessageContext.from_bytes(RAW, envelope_from="a@b", envelope_to="me@x.example")
    res = evaluate(script, ctx)
    (keep, vac) = res.effective
    assert keep.kind == "keep" and vac.kind == "vacation"
    v = vac.vacation
    assert v is not None
    assert (v.reason, v.subject, v.seconds, v.addresses, v.from_) == (
        "I am away.\n.dotted\n", "Out", 2 * 86400, ("alias@x.example",), "me@x.example")


@pytest.mark.parametrize("script, where", [
    ('if true {\n  keep;\n', "line 3"),
    ('fileinto "x";', "line 1, column 1"),
    ('require "fileinto";\n\nif header :bogus "a" "b" { }', "line 3, column 11"),
    ('require "nosuch";', "line 1"),
    ('keep;\nrequire "fileinto";', "line 2, column 1"),
    ('if header "a" { }', "line 1"),
    ('"abc', "line 1"),
    ('/* unterminated', "line 1"),
    ('keep;\nkeep\n', "line 3"),
    ('elsif true { }', "line 1"),
    ('if size 3 { }', "line 1"),
    ('if header :is :contains "a" "b" { }', "line 1, column 15"),
    ('redirect ["a@b", "c@d"];', "line 1"),
    ('require "relational";\nif header :value "xx" "a" "b" { }', "line 2"),
    ('text:\nabc\n', "line 1"),
])
def test_parse_errors(script: str, where: str) -> None:
    with pytest.raises(SieveError) as e:
        parse(script)
    assert where in str(e.value)


def test_size_limit() -> None:
    with pytest.raises(SieveError, match="larger than 100"):
        parse("keep;" * 50, max_size=100)


def test_runtime_limits() -> None:
    with pytest.raises(SieveRuntimeError, match="redirects"):
        run('redirect "a@x.example"; redirect "b@x.example"; redirect "c@x.example";',
            limits=Limits(max_redirects=2))
    with pytest.raises(SieveRuntimeError, match="actions"):
        run('fileinto "a"; fileinto "b"; fileinto "c";', limits=Limits(max_actions=2))
    # Steps: a script comparing many keys is stopped by the step budget.
    keys = ", ".join(f'"k{i}"' for i in range(200))
    with pytest.raises(SieveRuntimeError, match="steps"):
        run(f'if header :contains ["subject", "from", "to"] [{keys}] {{ discard; }}',
            limits=Limits(max_steps=100))
    with pytest.raises(SieveRuntimeError, match="reject"):
        run('fileinto "x"; reject "no";')


def test_currentdate_uses_now() -> None:
    script = parse(ALL + 'if currentdate :zone "+0000" "date" "2030-01-02" { discard; }')
    ctx = MessageContext.from_bytes(RAW, envelope_from="", envelope_to="me@x.example")
    res = Interpreter(script, ctx, now=datetime(2030, 1, 2, 5, tzinfo=UTC)).run()
    assert res.effective == []


def test_wildcard_is_linear() -> None:
    # A pattern that makes backtracking regexes explode stays cheap.
    raw = b"Subject: " + b"a" * 900 + b"\r\n\r\n"
    assert run('if header :matches "subject" "*a*a*a*a*a*a*a*a*a*b" { discard; }',
               raw=raw) == [("keep", "INBOX", (), False)]


_pieces = st.sampled_from([
    "require", "if", "elsif", "else", "header", "address", "envelope", "fileinto", "keep",
    "discard", "redirect", "vacation", "set", "body", "size", ":over", ":is", ":matches",
    ":contains", ":value", ":count", ":comparator", ":flags", ":days", "allof", "anyof",
    "not", "true", "stop", '"x"', '"${1}"', '"i;ascii-numeric"', '"ge"', "[", "]", "(",
    ")", "{", "}", ",", ";", "text:\n", "\n.\n", "10K", "99999999999999999999G", "#c\n",
    "/*", "*/", '"\\', "\n", " ", ":", "date", '"fileinto"', '"variables"', '"vacation"',
])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(st.text(max_size=200), st.lists(_pieces, max_size=60).map(" ".join)))
def test_fuzz_parser_only_raises_sieve_errors(text: str) -> None:
    try:
        script = parse(text)
    except SieveError as e:
        assert e.line is None or e.line >= 1
        return
    ctx = MessageContext.from_bytes(RAW, envelope_from="a@b.example", envelope_to="me@x.example")
    try:
        evaluate(script, ctx, Limits(max_steps=5000))
    except SieveRuntimeError:
        pass


_wire = st.lists(st.sampled_from([
    b"PUTSCRIPT", b"AUTHENTICATE", b"HAVESPACE", b" ", b'"', b"\\", b"{", b"}", b"+", b"5",
    b"99999999999999999999999", b"\r\n", b"\n", b"\r", b'"a b"', b"{3+}\r\nabc", b"{2}\r\n",
    b"\x00", b"\xff", b"x"]), max_size=40).map(b"".join)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(_wire, st.binary(max_size=200)))
def test_fuzz_managesieve_framing(data: bytes) -> None:
    from exmaild.protocols.managesieve.wire import TooLarge, WireError, take_command

    buf = bytearray(data)
    for _ in range(100):
        before = len(buf)
        try:
            cmd = take_command(buf, 1000, 100)
        except TooLarge:
            return
        except WireError:
            assert len(buf) < before  # the bad line was consumed: no endless loop
            continue
        if cmd is None:
            return
        assert len(buf) < before
        assert all(isinstance(a, str | int) for a in cmd.args)


def test_body_of_encoded_and_multipart_mail() -> None:
    qp = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
          b"Content-Transfer-Encoding: quoted-printable\r\n\r\nCaf=C3=A9 au lait\r\n")
    multi = (b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n"
             b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--b\r\n"
             b"Content-Type: text/html\r\n\r\n<p>second <b>part</b></p>\r\n--b--\r\n")
    body = 'if body :contains "{}" {{ discard; }}'
    assert run(body.format("café au"), raw=qp) == []
    assert run(body.format("=C3=A9"), raw=qp) == [("keep", "INBOX", (), False)]
    assert run(body.format("second part"), raw=multi) == []
    assert run(body.format("boundary"), raw=multi) == [("keep", "INBOX", (), False)]
