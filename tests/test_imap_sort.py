"""SORT, SORT=DISPLAY, ESORT and THREAD (RFC 5256, 5957, 5267) over real
sockets, on SQLite and PostgreSQL: raw protocol checks and IMAPClient."""

from __future__ import annotations

import re

import pytest_twisted
import sqlalchemy as sa

from exmaild.protocols.imap.thread import references, render
from exmaild.searchquery import SearchAll
from exmaild.store import model
from exmaild.store.sortkeys import SortKey, ThreadRow, base_subject, sorted_uids

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
    client,
    imap_server_fixture,
)

# (from, subject, date, extra headers); internal dates fall in reverse order.
MESSAGES = [
    ("Zed <zed@x.test>", "Re: beta", "Sun, 01 Nov 2026 10:00:00 +0000",
     "Message-ID: <2@t>\r\nIn-Reply-To: <1@t>\r\nReferences: <1@t>\r\nCc: bb@x.test\r\n"),
    ("amy@x.test", "alpha", "Tue, 03 Nov 2026 10:00:00 +0000", "Message-ID: <3@t>\r\n"),
    ("Bob <bob@x.test>", "Beta", "Fri, 30 Oct 2026 10:00:00 +0000",
     "Message-ID: <1@t>\r\nCc: aa@x.test\r\n"),
    ("Aaron <zz@x.test>", "[list] Alpha (fwd)", "Mon, 02 Nov 2026 10:00:00 +0000",
     "Message-ID: <4@t>\r\n"),
    ("Dan <dan@x.test>", "gamma", None, "Message-ID: <5@t>\r\nReferences: <2@t>\r\n"),
]
BASE = 1_800_000_000  # internal dates: 2027, after every Date: above


def _message(i: int) -> bytes:
    sender, subject, date, extra = MESSAGES[i]
    head = f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
    if date:
        head += f"Date: {date}\r\n"
    return (head + extra + "\r\n" + "x" * (100 * (3 - i) ** 2) + "\r\n").encode()


def _numbers(out: list[bytes], prefix: bytes) -> list[int]:
    line = next(x for x in out if x.startswith(prefix))
    return [int(x) for x in line[len(prefix) :].split()]


@pytest_twisted.ensureDeferred
async def test_sort_and_thread(imap_server: Server) -> None:
    acct = await imap_server.account()
    # UID 1 is expunged below, so UIDs (2..6) and sequence numbers (1..5) differ.
    await imap_server.deliver(acct.id, _message(0), internal_date=BASE + 99)
    for i in range(5):
        await imap_server.deliver(acct.id, _message(i), internal_date=BASE + 50 - 10 * i)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        caps = r.cmd("c", "CAPABILITY")[0].split()
        for cap in (b"SORT", b"SORT=DISPLAY", b"ESORT", b"THREAD=REFERENCES",
                    b"THREAD=ORDEREDSUBJECT"):
            assert cap in caps, caps
        # Not before SELECT.
        assert not r.cmd("n", "SORT (DATE) UTF-8 ALL")[-1].startswith(b"n OK")
        r.cmd("s", "SELECT INBOX")
        r.cmd("d", "UID STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert r.cmd("e", "EXPUNGE")[-1].startswith(b"e OK")

        def sort(tag: str, text: str, *, uid: bool = False) -> list[int]:
            out = r.cmd(tag, ("UID SORT " if uid else "SORT ") + text)
            assert out[-1] == tag.encode() + b" OK Sort completed", out
            return _numbers(out, b"* SORT")

        assert sort("a", "(SUBJECT) UTF-8 ALL") == [2, 4, 1, 3, 5]
        assert sort("b", "(DATE) UTF-8 ALL") == [3, 1, 4, 2, 5]
        assert sort("b2", "(REVERSE DATE) UTF-8 ALL") == [5, 2, 4, 1, 3]
        assert sort("b3", "(DATE) UTF-8 ALL", uid=True) == [4, 2, 5, 3, 6]
        assert sort("f", "(FROM) US-ASCII ALL") == [2, 3, 5, 1, 4]
        assert sort("g", "(DISPLAYFROM) UTF-8 ALL") == [4, 2, 3, 5, 1]
        assert sort("h", "(ARRIVAL) UTF-8 ALL") == [5, 4, 3, 2, 1]
        assert sort("i", "(CC) UTF-8 ALL") == [2, 4, 5, 3, 1]
        assert sort("j", "(TO DATE) UTF-8 ALL") == [3, 1, 4, 2, 5]
        assert sort("k", "(REVERSE SUBJECT DATE) UTF-8 ALL") == [5, 3, 1, 4, 2]
        assert sort("l", "(SIZE) UTF-8 ALL") == [4, 5, 3, 2, 1]
        assert sort("l2", "(REVERSE SIZE) UTF-8 ALL") == [1, 2, 3, 5, 4]
        # Search criteria restrict; sequence sets are the session's.
        assert sort("m", "(DATE) UTF-8 FROM bob") == [3]
        assert sort("m2", "(SUBJECT) UTF-8 2:4") == [2, 4, 3]
        assert sort("m3", "(SUBJECT) UTF-8 UID 2:4", uid=True) == [3, 2, 4]
        assert sort("m4", "(SUBJECT) UTF-8 DELETED") == []
        # ESORT: MIN/MAX first and last in sort order, ALL in sort order.
        out = r.cmd("e1", "SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL")
        assert out == [b'* ESEARCH (TAG "e1") MIN 3 MAX 5 COUNT 5 ALL 3,1,4,2,5',
                       b"e1 OK Sort completed"], out
        out = r.cmd("e2", "UID SORT RETURN (COUNT) (DATE) UTF-8 SUBJECT beta")
        assert out[0] == b'* ESEARCH (TAG "e2") UID COUNT 2', out
        # CONDSTORE: a MODSEQ key adds the highest MODSEQ of those returned.
        r.cmd("ms", "STORE 4 +FLAGS.SILENT (\\Flagged)")
        mod = int(re.search(rb"MODSEQ \((\d+)\)", r.cmd("mf", "FETCH 4 (MODSEQ)")[0])[1])
        out = r.cmd("ms2", "SORT (DATE) UTF-8 MODSEQ 1 SUBJECT alpha")
        assert out[0] == b"* SORT 4 2 (MODSEQ %d)" % mod, out
        out = r.cmd("ms3", "SORT RETURN (ALL) (DATE) UTF-8 MODSEQ 1 SUBJECT alpha")
        assert out[0] == b'* ESEARCH (TAG "ms3") ALL 4,2 MODSEQ %d' % mod, out
        r.cmd("mu", "STORE 4 -FLAGS.SILENT (\\Flagged)")

        def thread(tag: str, text: str) -> bytes:
            out = r.cmd(tag, text)
            assert out[-1] == tag.encode() + b" OK Thread completed", out
            return out[0]

        assert thread("t1", "THREAD ORDEREDSUBJECT UTF-8 ALL") == b"* THREAD (3 1)(4 2)(5)"
        assert thread("t2", "THREAD REFERENCES UTF-8 ALL") == b"* THREAD (3 1 5)(2 4)"
        assert thread("t3", "UID THREAD REFERENCES UTF-8 ALL") == b"* THREAD (4 2 6)(3 5)"
        assert thread("t4", "THREAD REFERENCES UTF-8 NOT FROM dan") == b"* THREAD (3 1)(2 4)"
        assert thread("t5", "THREAD ORDEREDSUBJECT UTF-8 DELETED") == b"* THREAD"
        # Bad input: BAD for syntax, NO [BADCHARSET] for an unknown charset.
        assert r.cmd("x1", "SORT (WHATEVER) UTF-8 ALL")[-1].startswith(b"x1 BAD")
        assert r.cmd("x2", "SORT () UTF-8 ALL")[-1].startswith(b"x2 BAD")
        assert r.cmd("x3", "SORT (DATE) ALL")[-1].startswith(b"x3 BAD")
        assert r.cmd("x4", "SORT (DATE) X-NOPE ALL")[-1].startswith(b"x4 NO [BADCHARSET")
        assert r.cmd("x5", "THREAD MOST-RECENT UTF-8 ALL")[-1].startswith(b"x5 BAD")
        assert r.cmd("x6", "SORT RETURN (SAVE MIN) (DATE) UTF-8 ALL")[-1].startswith(b"x6 BAD")
        assert r.cmd("z", "NOOP")[-1].startswith(b"z OK")
        r.close()

        c = client(imap_server)
        c.select_folder("INBOX")
        assert c.sort(["REVERSE DATE"]) == [6, 3, 5, 2, 4]
        assert c.sort(["SUBJECT", "DATE"], "FROM x.test") == [5, 3, 4, 2, 6]
        assert c.thread("REFERENCES") == ((4, 2, 6), (3, 5))
        assert c.thread("ORDEREDSUBJECT", ["SINCE", "1-Jan-2020"]) == ((4, 2), (5, 3), (6,))
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_sort_keys_made_for_new_mail(imap_server: Server) -> None:
    """Keys are made for messages that arrive after a first SORT, and a
    non-ASCII subject sorts by its octets after ASCII case mapping."""
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, _message(1))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        assert _numbers(r.cmd("a", "SORT (SUBJECT) UTF-8 ALL"), b"* SORT") == [1]
        r.close()

    await blocking(run)
    raw = b"From: x@y.test\r\nSubject: =?utf-8?q?=C3=84rger?=\r\n\r\nhi\r\n"
    await imap_server.deliver(acct.id, raw)
    await imap_server.deliver(acct.id, b"From: x@y.test\r\nSubject: Zulu\r\n\r\nhi\r\n")

    def again() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        assert _numbers(r.cmd("a", "SORT (SUBJECT) UTF-8 ALL"), b"* SORT") == [1, 3, 2]
        r.close()

    await blocking(again)
    # Keys missing (a message committed after the check): still sorted, as "".
    store = imap_server.store
    await store.pool.transaction(
        lambda conn: conn.execute(model.content_sort.delete().where(
            model.content_sort.c.content_id.in_(
                sa.select(model.messages.c.content_id).where(model.messages.c.uid == 3)))))
    box = await store.mailboxes.get(acct.id, "INBOX")
    assert box is not None
    by_subject = (SortKey("SUBJECT"),)
    got = await store.pool.do(
        lambda conn: sorted_uids(conn, box.id, by_subject, SearchAll(), [1, 2, 3]))
    assert got == [3, 1, 2], got


def test_base_subject() -> None:
    cases = {
        "Re: [list] Fwd: hi": ("hi", True),
        "[fwd: Re: hello (fwd)]": ("hello", True),
        "[blob] ": ("[blob]", False),
        "RE:re: Fw[x]: Subj (fwd) (FWD)": ("Subj", True),
        "[a] [b] x": ("x", False),
        "Plain   words ": ("Plain words", False),
        "": ("", False),
    }
    for subject, expected in cases.items():
        assert base_subject(subject) == expected, subject


def test_references_loops_and_duplicates() -> None:
    """Reference loops and duplicate Message-IDs do not break the tree."""
    rows = [
        ThreadRow(1, 10, "A", False, "<a>", "<b>"),
        ThreadRow(2, 20, "B", False, "<b>", "<a>"),  # a loop: kept apart
        ThreadRow(3, 30, "C", False, "<a>", ""),  # duplicate id: its own node
        ThreadRow(4, 40, "C", True, "", "<gone> <c>"),  # parents never seen: a root,
    ]  # which then joins 3 by subject (a reply under the original)
    out = render(references(rows), lambda uid: uid)
    assert out == b"* THREAD (2 1)(3 4)\r\n", out


def test_deep_threads_need_no_recursion() -> None:
    """A reply chain and a References: chain deeper than Python's recursion
    limit (hostile mail) still thread."""
    depth = 1500
    chain = [ThreadRow(i, i, "X", i > 1, f"<{i}>", f"<{i - 1}>" if i > 1 else "")
             for i in range(1, depth + 1)]
    out = render(references(chain), lambda uid: uid)
    assert out == b"* THREAD (" + b" ".join(b"%d" % i for i in range(1, depth + 1)) + b")\r\n"
    refs = " ".join(f"<d{i}>" for i in range(depth))
    rows = [ThreadRow(1, 1, "A", False, "<a>", refs), ThreadRow(2, 2, "B", False, "<b>", refs)]
    out = render(references(rows), lambda uid: uid)
    assert out == b"* THREAD ((1)(2))\r\n", out
