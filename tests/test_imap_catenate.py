"""CATENATE (RFC 4469) over a real socket: a message put together from TEXT
literals and URLs naming stored messages and their parts (sections,
partials), in a MULTIAPPEND too; NO [BADURL] for URLs that name nothing
this account can read, and nothing stored then."""

from __future__ import annotations

import re

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture  # noqa: F401

SOURCE = (
    b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: source\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nfirst part text\r\n"
    b"--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"JVBERi0xLjQK\r\n--XX--\r\n"
)
ATTACHED = b"JVBERi0xLjQK"


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


@pytest_twisted.ensureDeferred
async def test_catenate(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, SOURCE)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b" CATENATE" in r.cmd("c", "CAPABILITY")[0]
        out = r.cmd("s", "EXAMINE INBOX")
        uv = int(re.search(rb"UIDVALIDITY (\d+)", b"\n".join(out)).group(1))  # type: ignore[union-attr]
        base = f"/INBOX;UIDVALIDITY={uv}/;UID=1"

        head = (b"From: alice@example.test\r\nTo: carol@example.test\r\nSubject: Fwd\r\n"
                b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=YY\r\n\r\n"
                b"--YY\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
                b"--YY\r\nContent-Type: application/pdf\r\n"
                b"Content-Transfer-Encoding: base64\r\n\r\n")
        tail = b"\r\n--YY--\r\n"
        r.send(b"a APPEND Drafts (\\Draft) CATENATE (TEXT " + lit(head)
               + f' URL "{base}/;SECTION=2" TEXT '.encode() + lit(tail) + b")\r\n")
        out = r.response("a")
        assert out[-1].startswith(b"a OK [APPENDUID"), out
        r.cmd("d", "EXAMINE Drafts")
        out = r.cmd("f", "FETCH 1 (FLAGS BODY.PEEK[])")
        assert head + ATTACHED + tail in out[0] and b"\\Draft" in out[0], out

        # Sections, partials, a percent-encoded HEADER.FIELDS and MULTIAPPEND.
        r.send(f'b APPEND Drafts CATENATE (URL "{base}/;SECTION=HEADER.FIELDS%20(SUBJECT)"'
               f' URL "{base}/;SECTION=1/;PARTIAL=6.4") CATENATE (URL "{base}")\r\n'.encode())
        out = r.response("b")
        assert out[-1].startswith(b"b OK [APPENDUID"), out
        assert out[-1].split(b"]")[0].endswith(b" 2:3"), out
        out = r.cmd("g", "FETCH 2:3 BODY.PEEK[]")
        assert b"Subject: source\r\n\r\npart" in out[0], out
        assert SOURCE in out[1], out

        # URLs naming nothing readable: BADURL, nothing stored.
        for bad in (f"/INBOX;UIDVALIDITY={uv + 1}/;UID=1", "/INBOX/;UID=99",
                    "/Nowhere/;UID=1", "imap://alice@elsewhere.test/INBOX/;UID=1",
                    f"{base}/;SECTION=7"):
            r.send(b"x APPEND Drafts CATENATE (TEXT " + lit(b"Subject: x\r\n\r\n")
                   + f' URL "{bad}")\r\n'.encode())
            out = r.response("x")
            assert out[-1].startswith(b"x NO [BADURL "), (bad, out)
        out = r.cmd("st", "STATUS Drafts (MESSAGES)")
        assert out[0].endswith(b"(MESSAGES 3)"), out
        assert r.cmd("y", "APPEND Drafts CATENATE ()")[-1].startswith(b"y BAD")
        assert r.cmd("z", 'APPEND Drafts CATENATE (FILE "x")')[-1].startswith(b"z BAD")
        r.close()

    await blocking(run)
