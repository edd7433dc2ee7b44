"""BINARY (RFC 3516) over real sockets: FETCH BINARY[part] with the
transfer encoding undone (base64, quoted-printable, identity), literal8 for
data with NULs, partials, BINARY.SIZE, \\Seen, NO [UNKNOWN-CTE], and APPEND
of a literal8 message; imaplib reads the results."""

from __future__ import annotations

import base64
import imaplib

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import PASSWORD, USER, Raw, Server, blocking, imap_server_fixture  # noqa: F401

PAYLOAD = bytes(range(256)) * 3  # NULs and every other octet
QP_TEXT = "Grüße aus Köln — 北京".encode()
MESSAGE = (
    b"From: a@example.test\r\nTo: alice@example.test\r\nSubject: binary\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
    b"--BB\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln =E2=80=94 =E5=8C=97=E4=BA=AC\r\n"
    b"--BB\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"--BB\r\nContent-Type: text/plain\r\n\r\nplain seven bit\r\n"
    b"--BB\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n"
    b"begin 644 x\r\n`\r\nend\r\n"
    b"--BB--\r\n"
)


@pytest_twisted.ensureDeferred
async def test_binary_fetch_and_literal8_append(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, MESSAGE)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b" BINARY" in r.cmd("c", "CAPABILITY")[0]
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "FETCH 1 (BINARY.PEEK[2])")
        assert out[0] == b"* 1 FETCH (BINARY[2] ~{%d}\r\n%b)" % (len(PAYLOAD), PAYLOAD), out[0][:80]
        out = r.cmd("b", "FETCH 1 (BINARY.SIZE[2] BINARY.SIZE[1] BINARY.PEEK[2]<254.4>)")
        assert out[0] == (b"* 1 FETCH (BINARY.SIZE[2] %d BINARY.SIZE[1] %d "
                          b"BINARY[2]<254> ~{4}\r\n\xfe\xff\x00\x01)"
                          % (len(PAYLOAD), len(QP_TEXT))), out
        out = r.cmd("c", "FETCH 1 (BINARY.PEEK[1] BINARY.PEEK[3] BINARY.PEEK[9])")
        assert out[0] == (b"* 1 FETCH (BINARY[1] {%d}\r\n%b BINARY[3] {15}\r\nplain seven bit"
                          b" BINARY[9] NIL)" % (len(QP_TEXT), QP_TEXT)), out
        out = r.cmd("d", "FETCH 1 (FLAGS)")
        assert b"\\Seen" not in out[0], out  # .PEEK and BINARY.SIZE leave \Seen alone
        out = r.cmd("e", "FETCH 1 (BINARY.PEEK[4])")
        assert out[-1].startswith(b"e NO [UNKNOWN-CTE]"), out
        for bad in ("BINARY[1.HEADER]", "BINARY[1.MIME]", "BINARY", "BINARY.SIZE[1]<0.5>"):
            assert r.cmd("f", f"FETCH 1 ({bad})")[-1].startswith(b"f BAD"), bad
        # BINARY without .PEEK sets \Seen, and the FETCH says so.
        out = r.cmd("g", "FETCH 1 (BINARY[3])")
        assert b"FLAGS (\\Seen" in out[0], out

        # APPEND of a literal8: NULs in the message are kept as sent.
        raw = b"Subject: nul\r\n\r\nzero:\x00:byte\r\n"
        r.send(b"h APPEND INBOX ~{%d}\r\n" % len(raw))
        assert r.line().startswith(b"+")
        r.send(raw + b"\r\n")
        assert r.response("h")[-1].startswith(b"h OK [APPENDUID"), raw
        out = r.cmd("i", "FETCH 2 (BINARY.PEEK[])")
        assert out[0] == b"* 2 FETCH (BINARY[] ~{%d}\r\n%b)" % (len(raw), raw), out
        r.close()

        # imaplib (literals, literal8 included, parsed by the library).
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.login(USER, PASSWORD)
        c.select("INBOX")
        typ, data = c.fetch("1", "(BINARY.PEEK[1] BINARY.PEEK[2])")
        assert typ == "OK"
        assert data[0][1] == QP_TEXT and data[1][1] == PAYLOAD, data
        c.logout()

    await blocking(run)
