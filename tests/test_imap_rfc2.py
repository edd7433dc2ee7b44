"""More IMAP details from issue 12, over real sockets: SENT* dates in the
Date: header's own zone, a re-created mailbox's counts."""

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
    on_reactor,
)


def _dated(subject: str, date: str | None) -> bytes:
    head = f"From: Bob <bob@example.test>\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    return (head + "\r\nHi.\r\n").encode()


def _search(r: Raw, tag: str, criteria: str) -> list[int]:
    out = r.cmd(tag, "UID SEARCH " + criteria)
    assert out[-1].startswith(tag.encode() + b" OK"), out
    line = next(x for x in out if x.startswith(b"* SEARCH"))
    return [int(x) for x in line.split()[2:]]


# -- SENTON / SENTBEFORE / SENTSINCE (RFC 3501 §6.4.4) ---------------------------------------
@pytest_twisted.ensureDeferred
async def test_sent_dates_compare_the_day_as_written(imap_server: Server) -> None:
    acct = await imap_server.account()
    dates = [
        "Sun, 25 Mar 2007 00:00:00 +0200",  # 24 Mar 22:00 UTC
        "Sat, 02 Mar 2024 00:30:00 +1400",  # 1 Mar UTC
        "Fri, 01 Mar 2024 23:00:00 -1200",  # 2 Mar UTC
        "Fri, 01 Mar 2024 23:30:00",  # no zone: as UTC
    ]
    u = [await imap_server.deliver(acct.id, _dated(f"m{i}", d)) for i, d in enumerate(dates)]
    # No Date: the internal date's (UTC) day.
    u.append(await imap_server.deliver(acct.id, _dated("nodate", None), internal_date=1709251200))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        assert _search(r, "a", "SENTON 25-Mar-2007") == [u[0]]
        assert _search(r, "b", "SENTON 24-Mar-2007") == []
        assert _search(r, "c", "SENTBEFORE 25-Mar-2007") == []
        assert _search(r, "d", "SENTON 2-Mar-2024") == [u[1]]
        assert _search(r, "e", "SENTON 1-Mar-2024") == [u[2], u[3], u[4]]
        assert _search(r, "f", "SENTSINCE 2-Mar-2024") == [u[1]]
        assert _search(r, "g", "SENTBEFORE 2-Mar-2024") == [u[0], u[2], u[3], u[4]]
        assert _search(r, "h", "NOT SENTON 1-Mar-2024") == [u[0], u[1]]
        out = r.cmd("i", "SEARCH SENTON 25-Mar-2007")
        assert out[0] == b"* SEARCH 1", out
        r.close()

    await blocking(run)


# -- a deleted and re-created mailbox (issue 12 item 4) ---------------------------------------
def _status(r: Raw, tag: str, name: str) -> bytes:
    out = r.cmd(tag, f"STATUS {name} (MESSAGES UNSEEN UIDNEXT)")
    assert out[-1].startswith(tag.encode() + b" OK"), out
    return out[0]


@pytest_twisted.ensureDeferred
async def test_recreated_mailbox_starts_empty(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert r.cmd("a", "CREATE Reborn")[-1].startswith(b"a OK")
        msg = _dated("x", "Fri, 01 Mar 2024 10:00:00 +0000")
        r.send(f"b APPEND Reborn (\\Seen) {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
        assert r.response("b")[-1].startswith(b"b OK"), "append"
        r.cmd("c", "SELECT Reborn")  # the index is cached, then left idle
        r.cmd("d", "SELECT INBOX")
        assert _status(r, "e", "Reborn") == b"* STATUS \"Reborn\" (MESSAGES 1 UNSEEN 0 UIDNEXT 2)"
        assert r.cmd("f", "DELETE Reborn")[-1].startswith(b"f OK")
        assert r.cmd("g", "CREATE Reborn")[-1].startswith(b"g OK")
        assert _status(r, "h", "Reborn") == b"* STATUS \"Reborn\" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)"
        out = r.cmd("i", "SELECT Reborn")
        assert b"* 0 EXISTS" in out, out
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_no_cache_answers_for_a_reused_mailbox_id(imap_server: Server) -> None:
    """Ids are not reused any more; a store where one was (an older SQLite
    database, a restore) must still not get the deleted mailbox's counts."""
    acct = await imap_server.account()
    store = imap_server.store
    boxes = m.mailboxes

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert r.cmd("a", "CREATE Reused")[-1].startswith(b"a OK")
        msg = _dated("x", "Fri, 01 Mar 2024 10:00:00 +0000")
        r.send(f"b APPEND Reused (\\Seen) {{{len(msg)}+}}\r\n".encode() + msg + b"\r\n")
        assert r.response("b")[-1].startswith(b"b OK")
        r.cmd("c", "SELECT Reused")
        r.cmd("d", "SELECT INBOX")  # its index stays cached, loaded
        row = on_reactor(store.pool.do, lambda conn: conn.execute(
            sa.select(boxes).where(boxes.c.account_id == acct.id, boxes.c.name == "Reused")
        ).mappings().one())
        assert r.cmd("e", "DELETE Reused")[-1].startswith(b"e OK")

        # The same id handed out again, with one unseen message.
        def reinsert(conn: sa.Connection) -> None:
            conn.execute(boxes.insert().values(
                {**row, "uidnext": 1, "highestmodseq": 1, "recent_uid": 0}))

        on_reactor(store.pool.transaction, reinsert)
        on_reactor(imap_server.deliver, acct.id, _dated("y", None), row["id"])
        assert _status(r, "f", "Reused") == b"* STATUS \"Reused\" (MESSAGES 1 UNSEEN 1 UIDNEXT 2)"
        out = r.cmd("h", "SELECT Reused")
        assert b"* 1 EXISTS" in out and any(b"[UIDNEXT 2]" in x for x in out), out
        out = r.cmd("i", "FETCH 1 (UID FLAGS)")
        assert out[0] == b"* 1 FETCH (UID 1 FLAGS (\\Recent))", out
        r.close()

    await blocking(run)


# -- ESEARCH (RFC 4731) ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_esearch_return_options(imap_server: Server) -> None:
    acct = await imap_server.account()
    uids = [await imap_server.deliver(acct.id, _dated(f"s{i}", None)) for i in range(10)]
    assert uids == list(range(1, 11))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        caps = r.cmd("c", "CAPABILITY")[0].split()
        assert b"ESEARCH" in caps, caps
        r.cmd("s", "SELECT INBOX")
        # Expunge 1, 3, 4: UIDs 2,5:10 stay, as sequence numbers 1..7.
        r.cmd("f", "UID STORE 1,3,4 +FLAGS.SILENT (\\Deleted)")
        assert r.cmd("e", "EXPUNGE")[-1].startswith(b"e OK")
        r.cmd("g", "UID STORE 2,5:9 +FLAGS.SILENT (\\Seen)")

        def one(tag: str, text: str) -> bytes:
            out = r.cmd(tag, text)
            assert out[-1] == tag.encode() + b" OK Search completed", out
            assert len(out) == 2, out
            return out[0]

        assert one("a1", "UID SEARCH RETURN (MIN MAX COUNT ALL) SEEN") == (
            b'* ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 6 ALL 2,5:9')
        assert one("a2", "SEARCH RETURN (MIN MAX COUNT ALL) SEEN") == (
            b'* ESEARCH (TAG "a2") MIN 1 MAX 6 COUNT 6 ALL 1:6')
        assert one("a3", "UID SEARCH RETURN (MIN) SEEN") == b'* ESEARCH (TAG "a3") UID MIN 2'
        assert one("a4", "UID SEARCH RETURN (MAX) SEEN") == b'* ESEARCH (TAG "a4") UID MAX 9'
        assert one("a5", "SEARCH RETURN (COUNT) UNSEEN") == b'* ESEARCH (TAG "a5") COUNT 1'
        assert one("a6", "UID SEARCH RETURN (ALL) UNSEEN") == b'* ESEARCH (TAG "a6") UID ALL 10'
        # RETURN () is RETURN (ALL); CHARSET follows RETURN.
        assert one("a7", "UID SEARCH RETURN () CHARSET UTF-8 ALL") == (
            b'* ESEARCH (TAG "a7") UID ALL 2,5:10')
        # Nothing matched: no MIN/MAX/ALL, COUNT 0.
        assert one("x", "UID SEARCH RETURN (MIN MAX ALL) DELETED") == b'* ESEARCH (TAG "x") UID'
        assert one("y", "SEARCH RETURN (COUNT ALL) DELETED") == b'* ESEARCH (TAG "y") COUNT 0'
        # CONDSTORE: the highest MODSEQ of the matches.
        out = one("m", "UID SEARCH RETURN (COUNT) MODSEQ 1 UNSEEN")
        assert re.fullmatch(rb'\* ESEARCH \(TAG "m"\) UID COUNT 1 MODSEQ \d+', out), out
        # MIN/MAX alone: the highest MODSEQ of those two messages (RFC 7162 §3.1.5).
        r.cmd("k", "UID STORE 5 +FLAGS.SILENT (\\Flagged)")  # 5 now has the highest
        mod = {int(u): int(ms) for u, ms in re.findall(
            rb"UID (\d+) MODSEQ \((\d+)\)", b" ".join(r.cmd("n", "FETCH 1:* (UID MODSEQ)")))}
        assert max(mod, key=mod.__getitem__) == 5, mod
        out = one("m2", "UID SEARCH RETURN (MIN) MODSEQ 1 SEEN")
        assert out == b'* ESEARCH (TAG "m2") UID MIN 2 MODSEQ %d' % mod[2], (out, mod)
        out = one("m3", "UID SEARCH RETURN (MIN MAX) MODSEQ 1 SEEN")
        assert out == b'* ESEARCH (TAG "m3") UID MIN 2 MAX 9 MODSEQ %d' % max(mod[2], mod[9])
        out = one("m4", "UID SEARCH RETURN (ALL) MODSEQ 1 SEEN")
        assert out == b'* ESEARCH (TAG "m4") UID ALL 2,5:9 MODSEQ %d' % mod[5]
        # A plain SEARCH still answers * SEARCH.
        assert one("p", "UID SEARCH UNSEEN") == b"* SEARCH 10"
        # Unknown options and bad syntax are BAD.
        assert r.cmd("b1", "SEARCH RETURN (KEEP) ALL")[-1].startswith(b"b1 BAD")
        assert r.cmd("b2", "SEARCH RETURN (MIN ALL")[-1].startswith(b"b2 BAD")
        assert r.cmd("b3", "SEARCH RETURN MIN ALL")[-1].startswith(b"b3 BAD")
        assert r.cmd("b4", "SEARCH RETURN (MIN)")[-1].startswith(b"b4 BAD")
        assert r.cmd("z", "NOOP")[-1].startswith(b"z OK")
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_esearch_through_imapclient(imap_server: Server) -> None:
    """IMAPClient has no ESEARCH call; its raw command path reads the
    untagged ESEARCH response as the client library sees it."""
    acct = await imap_server.account()
    for i in range(4):
        await imap_server.deliver(acct.id, _dated(f"s{i}", None))

    def run() -> None:
        c = client(imap_server)
        assert b"ESEARCH" in c.capabilities()
        c.select_folder("INBOX")
        typ, data = c._imap.uid("SEARCH", "RETURN", "(MIN MAX COUNT)", "ALL")
        assert typ == "OK", data
        assert data == [None], data  # no "* SEARCH"
        found = c._imap.untagged_responses.pop("ESEARCH")
        assert len(found) == 1 and found[0].endswith(b'") UID MIN 1 MAX 4 COUNT 4'), found
        c.logout()

    await blocking(run)
