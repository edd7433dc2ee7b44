"""MULTIAPPEND (RFC 3502) over a real socket: several messages in one APPEND,
synchronising literals and LITERAL+, APPENDUID with a UID set, EXISTS to a
session with the mailbox selected, and all or nothing: over quota, no such
mailbox, an empty message or a syntax error after the literals store none."""

from __future__ import annotations

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture, mail  # noqa: F401


def _multiappend(r: Raw, tag: str, head: str, parts: list[tuple[str, bytes]],
                 tail: bytes = b"") -> list[bytes]:
    """``tag APPEND head <prefix {n}> msg <prefix {n}> msg ...`` waiting for
    each "+" (synchronising literals)."""
    line = f"{tag} APPEND {head}".encode()
    for prefix, msg in parts:
        r.send(line + b" " + prefix.encode() + (b" " if prefix else b"") + b"{%d}\r\n" % len(msg))
        plus = r.line()
        if not plus.startswith(b"+"):
            return [plus]
        line = msg
    r.send(line + tail + b"\r\n")
    return r.response(tag)


@pytest_twisted.ensureDeferred
async def test_multiappend_all_or_nothing(imap_server: Server) -> None:
    acct = await imap_server.account(quota_bytes=6000)
    store = imap_server.store
    m1, m2, m3 = mail("one"), mail("two", body="x" * 300 + "\r\n"), mail("three")

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b" MULTIAPPEND" in r.cmd("c", "CAPABILITY")[0]
        watcher = Raw(imap_server.port)
        watcher.login()
        watcher.cmd("s", "SELECT INBOX")

        out = _multiappend(r, "a1", "INBOX", [
            ("(\\Seen)", m1), ('(\\Flagged $Work) "01-Dec-2026 10:00:00 +0000"', m2), ("", m3)])
        assert out[-1].startswith(b"a1 OK [APPENDUID "), out
        uidvalidity, uids = out[-1].split(b"[APPENDUID ")[1].split(b"]")[0].split()
        assert uids == b"1:3", out
        out = watcher.cmd("n", "NOOP")
        assert b"* 3 EXISTS" in out, out
        out = watcher.cmd("f", "UID FETCH 1:3 (FLAGS INTERNALDATE RFC822.SIZE)")
        assert b"FLAGS (\\Seen \\Recent)" in out[0], out  # new to the watcher
        assert b"$Work" in out[1] and b'"01-Dec-2026 10:00:00 +0000"' in out[1], out
        assert b"RFC822.SIZE %d" % len(m3) in out[2], out
        out = watcher.cmd("b", "UID FETCH 2 BODY.PEEK[]")
        assert m2 in b"\r\n".join(out), out

        # LITERAL+ (no "+" to wait for), two messages in one write.
        r.send(b"a2 APPEND INBOX {%d+}\r\n%b {%d+}\r\n%b\r\n" % (len(m1), m1, len(m3), m3))
        out = r.response("a2")
        assert out[-1].startswith(b"a2 OK [APPENDUID %b 4:5]" % uidvalidity), out

        # Over quota together (each alone would fit): none is stored.
        big = mail("big", body="y" * 2000 + "\r\n")
        out = _multiappend(r, "a3", "INBOX", [("", big), ("", big), ("", big)])
        assert out[-1].startswith(b"a3 NO [OVERQUOTA]"), out
        # No such mailbox: none stored, TRYCREATE.
        out = _multiappend(r, "a4", "Nowhere", [("", m1), ("", m3)])
        assert out[-1].startswith(b"a4 NO [TRYCREATE]"), out
        # An empty message among them: none stored.
        r.send(b"a5 APPEND INBOX {%d+}\r\n%b {0+}\r\n\r\n" % (len(m1), m1))
        assert r.response("a5")[-1].startswith(b"a5 NO [CANNOT]")
        # Garbage after the last literal: BAD, none stored.
        out = _multiappend(r, "a6", "INBOX", [("", m1), ("", m3)], tail=b" junk")
        assert out[-1].startswith(b"a6 BAD"), out

        out = r.cmd("st", "STATUS INBOX (MESSAGES UIDNEXT)")
        assert out[0] == b'* STATUS "INBOX" (MESSAGES 5 UIDNEXT 6)', out
        out = watcher.cmd("n2", "NOOP")
        assert b"* 5 EXISTS" in out, out
        r.close()
        watcher.close()

    await blocking(run)
    inbox = await store.mailboxes.get(acct.id, "INBOX")
    assert [e.uid for e in await store.mailboxes.messages([inbox.id])] == [1, 2, 3, 4, 5]
