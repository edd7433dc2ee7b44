"""More IMAP details from issue 12, over real sockets: SENT* dates in the
Date: header's own zone, a re-created mailbox's counts."""

from __future__ import annotations

import pytest_twisted
import sqlalchemy as sa

from exmaild.store import model as m

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
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
