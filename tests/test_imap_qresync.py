"""QRESYNC (RFC 7162 §3.2) over real sockets: ENABLE, SELECT / EXAMINE
(QRESYNC ...), VANISHED (EARLIER), untagged VANISHED instead of EXPUNGE,
UID FETCH (CHANGEDSINCE m VANISHED), the CLOSED response code; expunges by
IMAP, MOVE, POP3 (expunge_rows) and the upgrade's catch-all row."""

from __future__ import annotations

import re

import pytest_twisted
import sqlalchemy as sa

from exmaild.store import model as m

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
    client,
    imap_server_fixture,
    mail,
    on_reactor,
)


def _code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        found = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if found:
            return int(found.group(1))
    raise AssertionError(f"no {name!r} in {lines!r}")


def _modseq(line: bytes) -> int:
    found = re.search(rb"MODSEQ \((\d+)\)", line)
    assert found, line
    return int(found.group(1))


@pytest_twisted.ensureDeferred
async def test_qresync_resync_vanished_and_fetch(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(8):
        await imap_server.deliver(acct.id, mail(f"m{i}"))
    inbox = await imap_server.store.mailboxes.get(acct.id, "INBOX")
    assert inbox is not None

    def run() -> None:
        caps = Raw(imap_server.port)
        caps.login()
        assert caps.cmd("cr", "CREATE Archive")[-1].startswith(b"cr OK")
        assert b" QRESYNC" in caps.cmd("c", "CAPABILITY")[0]
        # Without ENABLE QRESYNC the parameter and the modifier are BAD.
        assert caps.cmd("b1", "SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"b1 BAD")
        caps.cmd("s", "SELECT INBOX")
        out = caps.cmd("b2", "UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        assert out[-1].startswith(b"b2 BAD"), out
        # A second SELECT closes the first mailbox with [CLOSED] first.
        out = caps.cmd("s2", "EXAMINE INBOX")
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed", out
        caps.close()

        r1 = Raw(imap_server.port)
        r1.login()
        assert r1.cmd("e", "ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
        out = r1.cmd("s", "SELECT INBOX")
        uv, m0 = _code(out, b"UIDVALIDITY"), _code(out, b"HIGHESTMODSEQ")

        # Another session without QRESYNC changes flags and expunges.
        r2 = Raw(imap_server.port)
        r2.login()
        r2.cmd("s", "SELECT INBOX")
        r2.cmd("f", "STORE 2 +FLAGS (\\Seen)")
        r2.cmd("d", "STORE 3:4 +FLAGS.SILENT (\\Deleted)")
        out = r2.cmd("x", "EXPUNGE")
        assert out[:2] == [b"* 4 EXPUNGE", b"* 3 EXPUNGE"], out  # old clients: EXPUNGE

        # The QRESYNC session hears VANISHED, never EXPUNGE.
        out = r1.cmd("n", "NOOP")
        assert b"* VANISHED 3:4" in out, out
        assert not any(line.endswith(b"EXPUNGE") for line in out), out
        flag_lines = [line for line in out if b"FETCH" in line]
        assert [line.split(b" FLAGS")[0] for line in flag_lines[-1:]] == [b"* 2 FETCH (UID 2"]
        m_flag = _modseq(flag_lines[-1])
        assert m_flag > m0

        # UID FETCH ... (CHANGEDSINCE m0 VANISHED): what vanished in the set
        # first, then what changed.
        out = r1.cmd("v", f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
        assert out[0] == b"* VANISHED (EARLIER) 3:4", out
        assert [line.split(b" FLAGS")[0] for line in out[1:-1]] == [b"* 2 FETCH (UID 2"], out
        out = r1.cmd("v2", f"UID FETCH 1:3 (FLAGS) (VANISHED CHANGEDSINCE {m0})")
        assert out[0] == b"* VANISHED (EARLIER) 3", out
        out = r1.cmd("v3", f"UID FETCH 5:* (FLAGS) (CHANGEDSINCE {m0} VANISHED)")
        assert out == [b"v3 OK Fetch completed"], out
        assert r1.cmd("v4", "FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(
            b"v4 BAD")
        assert r1.cmd("v5", "UID FETCH 1:* (FLAGS) (VANISHED)")[-1].startswith(b"v5 BAD")

        # Its own EXPUNGE and MOVE answer with VANISHED, with HIGHESTMODSEQ.
        r1.cmd("d", "UID STORE 5 +FLAGS.SILENT (\\Deleted)")
        out = r1.cmd("x", "EXPUNGE")
        assert out[0] == b"* VANISHED 5", out
        assert out[-1].startswith(b"x OK [HIGHESTMODSEQ "), out
        out = r1.cmd("mv", "UID MOVE 7:8 Archive")
        assert b"* VANISHED 7:8" in out, out
        assert not any(line.endswith(b"EXPUNGE") for line in out), out
        # CLOSE (which expunges silently) tells the HIGHESTMODSEQ.
        out = r1.cmd("cl", "CLOSE")
        assert out[-1].startswith(b"cl OK [HIGHESTMODSEQ "), out
        assert not any(b"VANISHED" in x for x in out), out
        r1.cmd("s2", "SELECT INBOX")
        r2.close()

        # A client coming back: SELECT (QRESYNC (uidvalidity modseq known-uids)).
        r3 = Raw(imap_server.port)
        r3.login()
        r3.cmd("e", "ENABLE QRESYNC")
        out = r3.cmd("s", f"SELECT INBOX (QRESYNC ({uv} {m0} 1:8))")
        assert out[-1].startswith(b"s OK [READ-WRITE]"), out
        tail = out[out.index(next(x for x in out if b"[HIGHESTMODSEQ" in x)) + 1 : -1]
        tail = [x for x in tail if not x.startswith(b"* OK [MAILBOXID")]  # OBJECTID's
        assert tail[0] == b"* VANISHED (EARLIER) 3:5,7:8", out
        assert [line.split(b" FLAGS")[0] for line in tail[1:]] == [b"* 2 FETCH (UID 2"], out
        assert _modseq(tail[1]) == m_flag
        # Known UIDs limit VANISHED; the sequence match data is accepted.
        out = r3.cmd("s2", f"EXAMINE INBOX (QRESYNC ({uv} {m0} 1:4 (1:2 1:2)))")
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed", out
        assert b"* VANISHED (EARLIER) 3:4" in out, out
        # Up to date: nothing to tell.
        hms = _code(out, b"HIGHESTMODSEQ")
        out = r3.cmd("s3", f"EXAMINE INBOX (QRESYNC ({uv} {hms}))")
        assert not any(b"VANISHED" in x or b"FETCH" in x for x in out), out
        # Another UIDVALIDITY: the client must start over; no resync data.
        out = r3.cmd("s4", f"EXAMINE INBOX (QRESYNC ({uv + 1} {m0} 1:8))")
        assert not any(b"VANISHED" in x or b"FETCH" in x for x in out), out
        assert out[-1].startswith(b"s4 OK"), out
        r3.close()
        r1.close()

    await blocking(run)
    hms_before = (await imap_server.store.mailboxes.get(acct.id, "INBOX")).highestmodseq

    # POP3's deletion path (expunge_rows) records its expunges too.
    entries = await imap_server.store.mailboxes.messages([inbox.id])
    assert [e.uid for e in entries] == [1, 2, 6]
    await imap_server.store.mailboxes.expunge_ids([entries[0].id])

    # The upgrade's catch-all row (1:uidnext-1 at the then highest modseq)
    # names present UIDs too: only the absent ones may be reported.
    def catch_all(conn) -> None:  # type: ignore[no-untyped-def]
        conn.execute(m.expunged_uids.insert().values(
            mailbox_id=inbox.id, first_uid=1, last_uid=8, modseq=hms_before))

    await imap_server.store.pool.transaction(catch_all)

    def run2() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("e", "ENABLE QRESYNC")
        out = r.cmd("s", "EXAMINE INBOX")
        uv = _code(out, b"UIDVALIDITY")
        out = r.cmd("q", f"EXAMINE INBOX (QRESYNC ({uv} {hms_before}))")
        assert b"* VANISHED (EARLIER) 1" in out, out
        out = r.cmd("q2", f"EXAMINE INBOX (QRESYNC ({uv} {hms_before - 1}))")
        assert b"* VANISHED (EARLIER) 1,3:5,7:8" in out, out
        r.close()

        # A real client library: imapclient enables QRESYNC and parses VANISHED.
        c = client(imap_server)
        assert c.enable("QRESYNC") == [b"QRESYNC"]
        c.select_folder("INBOX")
        other = client(imap_server)
        other.select_folder("INBOX")
        other.add_flags([6], [b"\\Deleted"])
        other.expunge()
        other.logout()
        assert c.noop()[1] == [(b"VANISHED", 6)]
        c.logout()

    await blocking(run2)

    # A deleted mailbox takes its expunge records along.
    def run3() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("c", "CREATE Tmp")
        msg = b"Subject: t\r\n\r\nx\r\n"
        r.send(b"a APPEND Tmp (\\Deleted) {%d+}\r\n%b\r\n" % (len(msg), msg))
        assert r.response("a")[-1].startswith(b"a OK")
        r.cmd("s", "SELECT Tmp")
        r.cmd("x", "EXPUNGE")
        r.cmd("u", "UNSELECT")
        r.close()

    await blocking(run3)
    tmp = await imap_server.store.mailboxes.get(acct.id, "Tmp")
    assert tmp is not None

    def count(conn) -> int:  # type: ignore[no-untyped-def]
        e = m.expunged_uids.c
        return conn.execute(sa.select(sa.func.count()).where(e.mailbox_id == tmp.id)).scalar()

    assert await imap_server.store.pool.do(count) == 1

    def delete() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert r.cmd("d", "DELETE Tmp")[-1].startswith(b"d OK")
        r.close()

    await blocking(delete)
    assert await imap_server.store.pool.do(count) == 0
