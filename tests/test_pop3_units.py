"""POP3 pieces without sockets: the command parser, the message encoder, SASL,
and the whole protocol on a StringTransport fed arbitrary bytes (hypothesis)."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from exmaild.auth.checker import AuthFailed
from exmaild.config import load_config
from exmaild.metrics import Metrics
from exmaild.netutil import is_loopback
from exmaild.protocols.pop3 import responses as r
from exmaild.protocols.pop3 import sasl
from exmaild.protocols.pop3.commands import BadCommand, Command, parse
from exmaild.protocols.pop3.encoder import MessageEncoder
from exmaild.protocols.pop3.maildrop import Maildrop, SessionRegistry, uidl
from exmaild.protocols.pop3.server import TRANSACTION, POP3Server
from exmaild.protocols.pop3.transfer import MessageReader
from exmaild.store.blobs import BlobRef
from exmaild.store.records import Account, MessageEntry

# -- command parser ------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"STAT", Command("STAT")),
        (b"stat", Command("STAT")),
        (b"LIST", Command("LIST")),
        (b"LIST 3", Command("LIST", (3,))),
        (b"uidl 12", Command("UIDL", (12,))),
        (b"RETR 1", Command("RETR", (1,))),
        (b"RETR  007", Command("RETR", (7,))),
        (b"TOP 2 0", Command("TOP", (2, 0))),
        (b"DELE 5", Command("DELE", (5,))),
        (b"USER bob@example.test", Command("USER", ("bob@example.test",))),
        (b"PASS  two  spaces ", Command("PASS", (" two  spaces ",))),
        ("PASS pässwörd".encode(), Command("PASS", ("pässwörd",))),
        (b"AUTH", Command("AUTH")),
        (b"AUTH plain", Command("AUTH", ("PLAIN",))),
        (b"AUTH PLAIN AGJvYgBwdw==", Command("AUTH", ("PLAIN", "AGJvYgBwdw=="))),
        (b"CAPA", Command("CAPA")),
        (b"STLS", Command("STLS")),
        (b"QUIT", Command("QUIT")),
    ],
)
def test_parse_good(line: bytes, expected: Command) -> None:
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "Empty command"),
        (b"   ", "Empty command"),
        (b"FOO", "Unknown command: FOO"),
        (b"XTND XMIT", "Unknown command: XTND"),
        (b"LAST", "Unknown command"),
        (b"RETR", "needs exactly one message number"),
        (b"RETR x", "Invalid message number: x"),
        (b"RETR -1", "Invalid message number: -1"),
        (b"RETR +1", "Invalid message number"),
        (b"RETR 1 2", "needs exactly one"),
        (b"RETR 99999999999", "Invalid message number"),
        (b"RETR 9999999999", "too large"),
        (b"LIST 1 2", "at most one"),
        (b"TOP 1", "message number and a line count"),
        (b"TOP 1 x", "Invalid line count"),
        (b"STAT 1", "takes no arguments"),
        (b"QUIT now", "takes no arguments"),
        (b"USER", "exactly one user name"),
        (b"USER a b", "exactly one user name"),
        (b"PASS", "needs a password"),
        (b"AUTH PLAIN a b", "at most one initial response"),
        (b"AUTH PL@IN", "Invalid SASL mechanism"),
        (b"APOP bob 0123456789abcdef", "APOP is not supported"),
        (b"RETR\x001", "NUL"),
        (b"RETR \xff", "not valid UTF-8"),
        (b"RETR\x0b1", "Control characters"),
        (b"\x1b[2J", "Control characters"),
    ],
)
def test_parse_bad_says_why(line: bytes, reason: str) -> None:
    res = parse(line)
    assert isinstance(res, BadCommand)
    assert not res.reply.ok
    assert reason in res.reply.text


def test_bad_command_echo_cannot_forge_lines() -> None:
    res = parse(b"RETR " + b"A" * 500)
    assert isinstance(res, BadCommand)
    wire = res.reply.encode()
    assert wire.count(b"\r\n") == 1 and len(wire) < 120


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_parse_never_raises_on_any_bytes(line: bytes) -> None:
    res = parse(line)
    if isinstance(res, BadCommand):
        wire = res.reply.encode()
        assert wire.startswith(b"-ERR ") and wire.endswith(b"\r\n")
        assert wire.count(b"\n") == 1
    else:
        assert res.name.isupper()


@given(st.sampled_from(["RETR", "DELE", "LIST", "UIDL"]), st.integers(1, 2**31 - 1))
@settings(deadline=None)
def test_parse_message_numbers_round_trip(verb: str, n: int) -> None:
    assert parse(f"{verb.lower()} {n}".encode()) == Command(verb, (n,))


# -- message encoder -----------------------------------------------------------


def unstuff(wire: bytes) -> bytes:
    """What a client makes of a multi-line response body (RFC 1939 §3)."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire[:-3].split(b"\r\n")[:-1] if wire != b".\r\n" else []
    out = []
    for line in lines:
        assert line != b".", "a lone dot inside the data would end the response"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(line + b"\r\n" for line in out)


def encode(msg: bytes, splits: list[int] | None = None, top: int | None = None) -> bytes:
    enc = MessageEncoder(top)
    cuts = sorted({c for c in (splits or []) if 0 < c < len(msg)})
    out, prev = [], 0
    for c in [*cuts, len(msg)]:
        out.append(enc.feed(msg[prev:c]))
        prev = c
    out.append(enc.close())
    return b"".join(out)


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n..b\r\n", b"a\r\n...b\r\n.\r\n"),
        (b"no final newline", b"no final newline\r\n.\r\n"),
        (b"bare\nlf\n.dot\n", b"bare\r\nlf\r\n..dot\r\n.\r\n"),
        (b"ends with cr\r", b"ends with cr\r\n.\r\n"),
        (b"a\r\n.", b"a\r\n..\r\n.\r\n"),
    ],
)
def test_encoder_stuffs_and_terminates(msg: bytes, wire: bytes) -> None:
    assert encode(msg) == wire
    # The same whatever the chunking, down to one byte at a time.
    assert encode(msg, list(range(len(msg)))) == wire


def test_encoder_counts_octets_of_a_crlf_message() -> None:
    msg = b"Subject: x\r\n\r\n.a\r\nb\r\n"
    enc = MessageEncoder()
    enc.feed(msg)
    enc.close()
    assert enc.octets == len(msg)


lines_st = st.lists(
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    max_size=12,
)


@given(lines_st, st.sampled_from([b"\r\n", b"\n"]), st.booleans(),
       st.lists(st.integers(0, 200), max_size=8))
@settings(max_examples=300, deadline=None)
def test_encoder_round_trips_any_message_and_chunking(
    lines: list[bytes], eol: bytes, final_eol: bool, splits: list[int]
) -> None:
    msg = eol.join(lines) + (eol if final_eol and lines else b"")
    wire = encode(msg, splits)
    expected = b"".join(line + b"\r\n" for line in lines) if lines else b""
    if lines and not final_eol and lines[-1] == b"":
        expected = expected[:-2]  # "a\r\n" + "" : the empty last piece is no line
    assert unstuff(wire) == expected
    assert b"\n.\r\n" not in wire[:-3] or wire == b".\r\n"


def test_top_sends_headers_blank_line_and_n_body_lines() -> None:
    msg = b"From: a\r\nSubject: b\r\n\r\nl1\r\n.l2\r\nl3\r\n"
    assert encode(msg, top=0) == b"From: a\r\nSubject: b\r\n\r\n.\r\n"
    assert encode(msg, top=2) == b"From: a\r\nSubject: b\r\n\r\nl1\r\n..l2\r\n.\r\n"
    assert encode(msg, top=99) == encode(msg)
    assert encode(msg, list(range(len(msg))), top=2) == encode(msg, top=2)
    # Headers only, no blank line, no final CRLF: everything, properly ended.
    assert encode(b"From: a\r\nX: y", top=5) == b"From: a\r\nX: y\r\n.\r\n"
    # A message that starts with the blank line has an empty header.
    assert encode(b"\r\nbody\r\nmore\r\n", top=1) == b"\r\nbody\r\n.\r\n"


def test_top_stops_early_once_done() -> None:
    enc = MessageEncoder(0)
    enc.feed(b"A: b\r\n\r\nbody")
    assert enc.done
    assert enc.feed(b"more body\r\n") == b""


# -- SASL ----------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_sasl_plain_with_and_without_initial_response() -> None:
    ex = sasl.Exchange("PLAIN")
    assert ex.start(b64(b"\0bob@x.test\0pw")) == sasl.Credentials("bob@x.test", "pw")
    ex = sasl.Exchange("plain")
    ch = ex.start(None)
    assert isinstance(ch, sasl.Challenge) and ch.encode() == b"+ \r\n"
    assert ex.step(b64(b"bob@x.test\0bob@x.test\0pw")) == sasl.Credentials("bob@x.test", "pw")


def test_sasl_login_asks_username_then_password() -> None:
    ex = sasl.Exchange("LOGIN")
    ch = ex.start(None)
    assert isinstance(ch, sasl.Challenge) and ch.encode() == b"+ VXNlcm5hbWU6\r\n"
    ch = ex.step(b64(b"bob@x.test"))
    assert isinstance(ch, sasl.Challenge) and ch.encode() == b"+ UGFzc3dvcmQ6\r\n"
    assert ex.step(b64("pässword".encode())) == sasl.Credentials("bob@x.test", "pässword")


@pytest.mark.parametrize(
    ("mech", "response", "text"),
    [
        ("PLAIN", "*", "cancelled"),
        ("PLAIN", "not base64!", "base64"),
        ("PLAIN", b64(b"only-one-part"), "expected authzid"),
        ("PLAIN", b64(b"\0bob\0"), "empty"),
        ("PLAIN", b64(b"admin\0bob\0pw"), "Authentication failed"),
        ("PLAIN", b64(b"\0b\xffob\0pw"), "not UTF-8"),
        ("LOGIN", "*", "cancelled"),
        ("LOGIN", "=", "empty user name"),
    ],
)
def test_sasl_failures(mech: str, response: str, text: str) -> None:
    ex = sasl.Exchange(mech)
    ex.start(None)
    res = ex.step(response)
    assert isinstance(res, sasl.Failure) and text in res.reply.text


# -- small helpers --------------------------------------------------------------


def test_reply_encoding_and_codes() -> None:
    assert r.IN_USE.encode().startswith(b"-ERR [IN-USE] ")
    assert r.AUTH_FAILED.encode() == b"-ERR [AUTH] Authentication failed\r\n"
    assert r.SYS_TEMP.encode().startswith(b"-ERR [SYS/TEMP] ")
    assert r.STAT.format(count=2, size=320).encode() == b"+OK 2 320\r\n"
    assert r.NOOP_OK.encode() == b"+OK\r\n"
    assert r.err("a\r\nb").encode() == b"-ERR a  b\r\n"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.9.9.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("::ffff:10.0.0.1")
    assert not is_loopback("not-an-address")


def test_uidl_is_printable_and_unique_per_triple() -> None:
    e = MessageEntry(1, 7, 42, 1, 10, 0, "", 0, 0)
    u = uidl(e, 1700000000)
    assert re.fullmatch(r"[\x21-\x7e]{1,70}", u)
    assert u != uidl(MessageEntry(2, 8, 42, 1, 10, 0, "", 0, 0), 1700000000)
    assert u != uidl(MessageEntry(3, 7, 43, 1, 10, 0, "", 0, 0), 1700000000)
    assert u != uidl(e, 1700000001)


def test_registry_lock_and_login_delay() -> None:
    reg = SessionRegistry()
    a, b = object(), object()
    assert reg.acquire(1, a) and not reg.acquire(1, b) and reg.acquire(2, b)
    reg.release(1, b)  # not the holder: no effect
    assert not reg.acquire(1, b)
    reg.release(1, a)
    assert reg.acquire(1, b)
    reg.logged_in(1, 1000.0)
    assert reg.login_wait(1, 0, 1000.5) == 0
    assert reg.login_wait(1, 60, 1010.0) == 50
    assert reg.login_wait(1, 60, 1061.0) == 0


# -- the whole protocol on a StringTransport, fed anything ----------------------

MESSAGES = [
    b"Subject: one\r\n\r\nbody\r\n.\r\n..x\r\n",
    b"Subject: two\r\n\r\nno final newline",
    b"Subject: three\nbare: lf\n\n.dot\n",
]


class _Seg:
    def __init__(self) -> None:
        self.blob = b"".join(MESSAGES)

    def read(self, ref: BlobRef, start: int = 0, length: int | None = None) -> bytes:
        end = ref.size if length is None else min(ref.size, start + length)
        return self.blob[ref.offset + start: ref.offset + end]


class _Pool:
    async def call(self, fn: Any, *args: Any) -> Any:
        return fn(*args)


class _Auth:
    async def authenticate(self, user: str, password: str) -> Any:
        raise AuthFailed("unit test")


class _Timer:
    def reset(self, *_: Any) -> None:
        pass

    def active(self) -> bool:
        return True

    def cancel(self) -> None:
        pass


class _Reactor:
    def callLater(self, *_: Any) -> _Timer:
        return _Timer()

    def seconds(self) -> float:
        return 0.0


class _App:
    def __init__(self) -> None:
        self.cfg = load_config(None)
        self.store = type("S", (), {"pool": _Pool(), "blobs": _Seg(), "metrics": Metrics()})()
        self.auth = _Auth()
        self.reactor = _Reactor()
        self.tls = None


class _TLSStringTransport(StringTransport):
    tls_started = False

    def startTLS(self, ctx: Any) -> None:
        self.tls_started = True


def _protocol(logged_in: bool) -> tuple[POP3Server, StringTransport]:
    app = _App()
    p = POP3Server(app, SessionRegistry(), implicit_tls=False)
    t = _TLSStringTransport()
    p.makeConnection(t)
    if logged_in:
        acct = Account(1, "bob@example.test", 1, "member", "", False, True, 0, 0, 0, {})
        refs, entries, off = {}, [], 0
        for i, m in enumerate(MESSAGES):
            refs[i] = BlobRef("seg", off, len(m))
            entries.append(MessageEntry(i, 1, i + 1, i, len(m), 0, "", 0, 0))
            off += len(m)
        drop = Maildrop(acct, entries, [f"u{i}" for i in range(len(entries))], refs)
        p.maildrop, p.state, p.account = drop, TRANSACTION, acct
        p._reader = MessageReader(app.store, drop)
    t.clear()
    return p, t


def _check_replies(out: bytes) -> None:
    """Every line we sent is a status line or part of a properly ended multi-line body."""
    assert out == b"" or out.endswith(b"\r\n")
    assert b"Traceback" not in out


command_words = st.sampled_from(
    ["USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "STAT", "LIST", "RETR", "DELE", "NOOP",
     "RSET", "TOP", "UIDL", "APOP", "LAST", "retr", "Top", "*", "", "\x00", "é"]
)
arg = st.one_of(st.integers(-2, 5).map(str), st.text(max_size=8),
                st.sampled_from(["PLAIN", "LOGIN", "=", "*", "AGJvYgBwdw=="]))
line_st = st.one_of(
    st.tuples(command_words, st.lists(arg, max_size=3)).map(
        lambda t: " ".join([t[0], *t[1]]).encode("utf-8", "replace")),
    st.binary(max_size=40),
)


def _feed_lines(logged_in: bool, data: list[bytes], crlf: bool) -> None:
    p, t = _protocol(logged_in)
    eol = b"\r\n" if crlf else b"\n"
    p.dataReceived(b"".join(line.replace(b"\n", b"").replace(b"\r", b"") + eol
                            for line in data))
    _check_replies(t.value())


# (pytest-twisted cannot run @given tests that are also parametrized: two tests.)
@given(data=st.lists(line_st, max_size=25), crlf=st.booleans())
@settings(max_examples=200, deadline=None)
def test_protocol_survives_any_commands_before_login(data: list[bytes], crlf: bool) -> None:
    _feed_lines(False, data, crlf)


@given(data=st.lists(line_st, max_size=25), crlf=st.booleans())
@settings(max_examples=200, deadline=None)
def test_protocol_survives_any_commands_after_login(data: list[bytes], crlf: bool) -> None:
    _feed_lines(True, data, crlf)


@given(st.binary(max_size=2000))
@settings(max_examples=200, deadline=None)
def test_protocol_survives_raw_garbage(blob: bytes) -> None:
    p, t = _protocol(True)
    p.dataReceived(blob)
    _check_replies(t.value())


def test_pipelined_commands_answered_in_order() -> None:
    p, t = _protocol(True)
    p.dataReceived(b"STAT\r\nRETR 1\r\nLIST 2\r\nDELE 2\r\nRETR 2\r\nRSET\r\nUIDL\r\nNOOP\r\n")
    out = t.value()
    heads = [line for line in out.split(b"\r\n") if line.startswith((b"+OK", b"-ERR"))]
    assert heads[0] == b"+OK 3 %d" % sum(map(len, MESSAGES))
    assert heads[1] == b"+OK %d octets" % len(MESSAGES[0])
    assert heads[2] == b"+OK 2 %d" % len(MESSAGES[1])
    assert heads[3].startswith(b"+OK Message 2 marked")
    assert heads[4] == b"-ERR Message 2 is already marked for deletion"
    assert heads[5].startswith(b"+OK Maildrop has 3 messages")
    assert heads[6] == b"+OK Unique-ID listing follows"
    assert heads[7] == b"+OK"
    assert b"1 u0\r\n2 u1\r\n3 u2\r\n.\r\n" in out


def test_too_many_bad_commands_closes() -> None:
    p, t = _protocol(False)
    p.dataReceived(b"BOGUS\r\n" * 30)
    assert t.disconnecting
    assert t.value().count(b"-ERR") == 21
    assert t.value().endswith(r.TOO_MANY_BAD_COMMANDS.encode())


def test_overlong_line_closes() -> None:
    p, t = _protocol(False)
    p.dataReceived(b"USER " + b"x" * 10000)
    assert t.disconnecting and t.value() == r.LINE_TOO_LONG.encode()


def test_long_listings_are_written_in_pieces() -> None:
    p, t = _protocol(True)
    acct = p.maildrop.account  # type: ignore[union-attr]
    n = 9000
    entries = [MessageEntry(i, 1, i + 1, 0, 100 + i, 0, "", 0, 0) for i in range(n)]
    p.maildrop = Maildrop(acct, entries, [f"uidl-{i:06d}" for i in range(n)],
                          {0: BlobRef("seg", 0, 10)})
    writes: list[bytes] = []
    real_write = t.write
    t.write = lambda data: (writes.append(data), real_write(data))  # type: ignore[method-assign]
    p.dataReceived(b"DELE 2\r\nUIDL\r\nLIST\r\n")
    out = t.value()
    uidl_part = out.split(b"+OK Unique-ID listing follows\r\n")[1].split(b".\r\n")[0]
    assert uidl_part.count(b"\r\n") == n - 1 and b"2 uidl-000001" not in uidl_part
    assert out.endswith(b"%d %d\r\n.\r\n" % (n, 100 + n - 1))
    assert max(map(len, writes)) <= 64 * 1024 + 100
