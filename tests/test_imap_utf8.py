"""UTF8=ACCEPT (RFC 6855) over real sockets: ENABLE, mailbox names in UTF-8
both ways once enabled (modified UTF-7 for sessions that did not enable
it), APPEND ... UTF8 (~{n}) with 8-bit headers, and imaplib's own UTF-8
mode against the server."""

from __future__ import annotations

import imaplib

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import PASSWORD, USER, Raw, Server, blocking, imap_server_fixture  # noqa: F401

NAME = "项目/备份"
MUTF7 = NAME.encode("imap4-utf-7")


@pytest_twisted.ensureDeferred
async def test_utf8_accept(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b" UTF8=ACCEPT" in r.cmd("c", "CAPABILITY")[0]
        assert r.cmd("e", "ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT"
        quoted = b'"' + NAME.encode() + b'"'
        assert r.cmd("cr", b"CREATE " + quoted)[-1].startswith(b"cr OK")
        out = r.cmd("l", 'LIST "" "*"')
        assert b'* LIST (\\HasNoChildren) "/" ' + quoted in out, out
        assert not any(MUTF7 in x for x in out), out
        out = r.cmd("st", b"STATUS " + quoted + b" (MESSAGES)")
        assert out[0] == b"* STATUS " + quoted + b" (MESSAGES 0)", out

        msg = "From: 张三 <zhang@example.test>\r\nSubject: 你好，世界\r\n\r\n正文\r\n".encode()
        r.send(b"a APPEND " + quoted + b" UTF8 (~{%d}\r\n" % len(msg))
        assert r.line().startswith(b"+")
        r.send(msg + b")\r\n")
        assert r.response("a")[-1].startswith(b"a OK [APPENDUID"), msg
        r.cmd("s", b"SELECT " + quoted)
        out = r.cmd("f", "FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        assert "Subject: 你好，世界".encode() in out[0], out
        out = r.cmd("se", b'SEARCH SUBJECT "' + "世界".encode() + b'"')
        assert out[0] == b"* SEARCH 1", out
        assert r.cmd("sc", "SEARCH CHARSET UTF-8 ALL")[-1].startswith(b"sc BAD")  # RFC 6855 §3
        assert r.cmd("b", b"APPEND " + quoted + b" UTF8 (abc)")[-1].startswith(b"b BAD")
        # Once enabled, "&" is a plain character, not a modified UTF-7 shift.
        assert r.cmd("amp", 'CREATE "R&D"')[-1].startswith(b"amp OK")
        assert b'* LIST (\\HasNoChildren) "/" "R&D"' in r.cmd("l2", 'LIST "" "R&D"')
        r.close()

        # A session that did not enable it sees modified UTF-7, as before.
        plain = Raw(imap_server.port)
        plain.login()
        out = plain.cmd("l", 'LIST "" "*"')
        assert b'"/" "' + MUTF7 + b'"' in b"\n".join(out), out
        assert b'"/" "R&-D"' in b"\n".join(out), out  # the same name in modified UTF-7
        plain.close()

        # imaplib's UTF-8 mode (ENABLE UTF8=ACCEPT switches its encoding).
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.login(USER, PASSWORD)
        typ, _ = c.enable("UTF8=ACCEPT")
        assert typ == "OK"
        typ, data = c.select(f'"{NAME}"')
        assert typ == "OK" and data == [b"1"], data
        typ, names = c.list()
        assert any(NAME.encode() in n for n in names), names
        c.logout()

    await blocking(run)
