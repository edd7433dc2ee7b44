"""SEARCHRES (RFC 5182): ``$`` after SEARCH RETURN (SAVE), over a real socket
on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture, mail  # noqa: F401


def _fetched(out: list[bytes]) -> list[int]:
    return [int(m) for x in out for m in re.findall(rb"^\* \d+ FETCH \(UID (\d+)", x)]


@pytest_twisted.ensureDeferred
async def test_saved_search_result(imap_server: Server) -> None:
    acct = await imap_server.account()
    uids = [await imap_server.deliver(acct.id, mail(f"s{i}")) for i in range(6)]
    assert uids == [1, 2, 3, 4, 5, 6]

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b"SEARCHRES" in r.cmd("c", "CAPABILITY")[0].split()
        r.cmd("s", "SELECT INBOX")
        # UIDs 2..6 as sequence numbers 1..5.
        r.cmd("d", "UID STORE 1 +FLAGS.SILENT (\\Deleted)")
        r.cmd("e", "EXPUNGE")
        r.cmd("f", "UID STORE 3,5 +FLAGS.SILENT (\\Seen)")
        # SAVE alone answers nothing but the tagged OK.
        out = r.cmd("a", "UID SEARCH RETURN (SAVE) SEEN")
        assert len(out) == 1 and out[0].startswith(b"a OK"), out
        assert _fetched(r.cmd("b", "FETCH $ (UID)")) == [3, 5]
        out = r.cmd("b2", "FETCH $ (FLAGS)")
        assert [x.split(b" FETCH")[0] for x in out[:-1]] == [b"* 2", b"* 4"], out
        assert _fetched(r.cmd("b3", "UID FETCH $ (UID)")) == [3, 5]
        assert r.cmd("b4", "SEARCH $")[0] == b"* SEARCH 2 4"
        assert r.cmd("b5", "UID SEARCH OR UID $ SUBJECT s5")[0] == b"* SEARCH 3 5 6"
        assert r.cmd("b6", "SORT (REVERSE DATE) UTF-8 $")[-1].startswith(b"b6 OK")
        # With MIN/MAX only those are saved; with COUNT or ALL every match.
        out = r.cmd("m", "SEARCH RETURN (SAVE MIN) UNSEEN")
        assert out[0] == b'* ESEARCH (TAG "m") MIN 1', out
        assert _fetched(r.cmd("m2", "FETCH $ (UID)")) == [2]
        out = r.cmd("m3", "SEARCH RETURN (MAX SAVE COUNT) UNSEEN")
        assert out[0] == b'* ESEARCH (TAG "m3") MAX 5 COUNT 3', out
        assert _fetched(r.cmd("m4", "FETCH $ (UID)")) == [2, 4, 6]
        # Pipelined: the FETCH sees the SEARCH sent just before it.
        r.send(b"p1 SEARCH RETURN (SAVE) SUBJECT s3\r\np2 FETCH $ (UID)\r\n")
        assert r.response("p1")[-1].startswith(b"p1 OK")
        assert _fetched(r.response("p2")) == [4]
        # STORE, COPY, UID EXPUNGE take it too; expunged messages drop out.
        r.cmd("t1", "STORE $ +FLAGS.SILENT (\\Deleted)")
        assert r.cmd("t2", "COPY $ Drafts")[-1].startswith(b"t2 OK")
        assert r.cmd("t3", "UID EXPUNGE $")[0] == b"* 3 EXPUNGE"
        out = r.cmd("t4", "FETCH $ (UID)")
        assert out == [b"t4 OK Fetch completed"], out
        assert r.cmd("t5", "STATUS Drafts (MESSAGES)")[0].endswith(b"(MESSAGES 1)")
        # Nothing matched: $ is empty, and usable.
        r.cmd("n", "SEARCH RETURN (SAVE) DELETED")
        assert r.cmd("n2", "FETCH $ (UID)") == [b"n2 OK Fetch completed"]
        assert r.cmd("n3", "SEARCH $")[0] == b"* SEARCH"
        # A new selection starts with an empty $.
        r.cmd("x", "SEARCH RETURN (SAVE) ALL")
        r.cmd("s2", "SELECT INBOX")
        assert r.cmd("x2", "FETCH $ (UID)") == [b"x2 OK Fetch completed"]
        assert r.cmd("x3", "FETCH $$ (UID)")[-1].startswith(b"x3 BAD")
        r.close()

    await blocking(run)
