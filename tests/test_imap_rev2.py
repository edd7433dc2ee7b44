"""IMAP4rev2 (RFC 9051) over real sockets: advertised beside IMAP4rev1, and
after ENABLE IMAP4rev2 the differences of RFC 9051 appendix E that apply:
no \\Recent / RECENT, no [UNSEEN] in SELECT, a LIST of the mailbox in
SELECT, ESEARCH for SEARCH, UTF-8 mailbox names, STATUS DELETED. A session
that did not enable it is answered as before (and still gets its \\Recent)."""

from __future__ import annotations

import imaplib

import pytest_twisted

from exmaild.store import flags as fl

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    PASSWORD,
    USER,
    Raw,
    Server,
    blocking,
    imap_server_fixture,
    mail,
    on_reactor,
)

NAME = "项目/备份"


def _rev2(srv: Server) -> Raw:
    r = Raw(srv.port)
    r.login()
    assert r.cmd("e", "ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
    return r


@pytest_twisted.ensureDeferred
async def test_capability_and_select(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("one"))
    await imap_server.deliver(acct.id, mail("two"), flags=fl.SEEN)

    def run() -> None:
        r = Raw(imap_server.port)
        assert b" IMAP4rev1 IMAP4rev2 " in r.greeting, r.greeting
        r.login()
        caps = r.cmd("c", "CAPABILITY")[0]
        assert caps.startswith(b"* CAPABILITY IMAP4rev1 IMAP4rev2 "), caps
        assert r.cmd("e", "ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
        out = r.cmd("s", "SELECT inbox")
        assert out[-1].startswith(b"s OK [READ-WRITE]"), out
        assert b"* 2 EXISTS" in out, out
        assert not any(b"RECENT" in x or b"[UNSEEN" in x or b"\\Recent" in x for x in out), out
        assert b'* LIST (\\HasNoChildren) "/" "INBOX"' in out, out
        assert any(x.startswith(b"* OK [UIDNEXT ") for x in out), out
        out = r.cmd("f", "FETCH 1:* FLAGS")
        assert out[:2] == [b"* 1 FETCH (FLAGS ())", b"* 2 FETCH (FLAGS (\\Seen))"], out

        # New mail while selected: EXISTS without RECENT, no \Recent flag.
        on_reactor(imap_server.deliver, acct.id, mail("three"))
        out = r.cmd("n", "NOOP")
        assert out[0] == b"* 3 EXISTS" and not any(b"RECENT" in x for x in out), out
        out = r.cmd("f2", "FETCH 3 FLAGS")
        assert out[0] == b"* 3 FETCH (FLAGS ())", out
        out = r.cmd("ex", "EXAMINE INBOX")
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed", out
        assert not any(b"RECENT" in x or b"\\Recent" in x for x in out), out
        assert b"\\Recent" not in b"".join(r.cmd("f3", "FETCH 1:* FLAGS"))
        r.close()

        # IMAP4rev2 sessions claimed nothing: an IMAP4rev1 session that
        # selects next has all three as \Recent, with the old responses.
        old = Raw(imap_server.port)
        old.login()
        out = old.cmd("s", "SELECT INBOX")
        assert b"* 3 RECENT" in out and b"* OK [UNSEEN 1] First unseen: 1" in out, out
        assert not any(x.startswith(b"* LIST") for x in out), out
        out = old.cmd("f", "FETCH 2 FLAGS")
        assert out[0] == b"* 2 FETCH (FLAGS (\\Seen \\Recent))", out
        assert old.cmd("se", "SEARCH ALL")[0] == b"* SEARCH 1 2 3"
        old.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_enable_while_selected(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("one"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b"* 1 RECENT" in r.cmd("s", "SELECT INBOX")
        assert r.cmd("f", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))"
        assert r.cmd("e", "ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2"
        assert r.cmd("f2", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())"
        on_reactor(imap_server.deliver, acct.id, mail("two"))
        out = r.cmd("n", "NOOP")
        assert out[0] == b"* 2 EXISTS" and not any(b"RECENT" in x for x in out), out
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_search_is_esearch(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(5):
        await imap_server.deliver(acct.id, mail(f"m{i}"), flags=fl.SEEN if i == 3 else 0)

    def run() -> None:
        r = _rev2(imap_server)
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "SEARCH UNSEEN")
        assert out == [b'* ESEARCH (TAG "a") ALL 1:3,5', b"a OK Search completed"], out
        out = r.cmd("b", "UID SEARCH SUBJECT m4")
        assert out[0] == b'* ESEARCH (TAG "b") UID ALL 5', out
        out = r.cmd("c", "SEARCH SUBJECT nothing-like-it")
        assert out[0] == b'* ESEARCH (TAG "c")', out
        out = r.cmd("d", "SEARCH RETURN (COUNT MIN) SEEN")
        assert out[0] == b'* ESEARCH (TAG "d") MIN 4 COUNT 1', out
        # RFC 9051 keeps CHARSET (unlike UTF8=ACCEPT's RFC 6855 §3).
        out = r.cmd("e", "SEARCH CHARSET UTF-8 SEEN")
        assert out == [b'* ESEARCH (TAG "e") ALL 4', b"e OK Search completed"], out
        assert not any(x.startswith(b"* SEARCH") for x in r.cmd("f", "SEARCH ALL"))
        r.close()

        # imaplib reads ESEARCH as an untagged response of its own.
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.login(USER, PASSWORD)
        assert c.enable("IMAP4rev2")[0] == "OK"
        c.select("INBOX")
        typ, _ = c.search(None, "ALL")
        assert typ == "OK"
        assert c.untagged_responses["ESEARCH"][-1].endswith(b"ALL 1:5")
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_status_deleted_and_utf8_names(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("one"), flags=fl.DELETED)
    await imap_server.deliver(acct.id, mail("two"))
    await imap_server.deliver(acct.id, mail("three"), flags=fl.DELETED | fl.SEEN)

    def run() -> None:
        r = _rev2(imap_server)
        # Not loaded anywhere: counted in the database.
        out = r.cmd("st", 'STATUS "INBOX" (MESSAGES DELETED SIZE)')
        assert out[0].startswith(b'* STATUS "INBOX" (MESSAGES 3 DELETED 2 SIZE '), out
        r.cmd("s", "SELECT INBOX")
        r.cmd("u", "STORE 2 +FLAGS.SILENT (\\Deleted)")
        r.cmd("u2", "STORE 1 -FLAGS.SILENT (\\Deleted)")
        out = r.cmd("st2", 'STATUS "INBOX" (DELETED)')  # from the shared index
        assert out[0] == b'* STATUS "INBOX" (DELETED 2)', out

        quoted = b'"' + NAME.encode() + b'"'
        assert r.cmd("cr", b"CREATE " + quoted)[-1].startswith(b"cr OK")
        out = r.cmd("l", 'LIST "" "*"')
        assert b'* LIST (\\HasNoChildren) "/" ' + quoted in out, out
        assert b'* LIST (\\HasChildren) "/" "' + "项目".encode() + b'"' in out, out
        assert not any(NAME.encode("imap4-utf-7") in x for x in out), out
        out = r.cmd("s2", b"SELECT " + quoted)
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed", out
        assert b'* LIST (\\HasNoChildren) "/" ' + quoted in out, out
        out = r.cmd("s3", "SELECT \"" + "项目" + "\"")
        assert b'* LIST (\\HasChildren) "/" "' + "项目".encode() + b'"' in out, out
        # A system folder named by a localised alias: LIST gives its name.
        out = r.cmd("s4", 'SELECT "Sent Items"')
        assert b'* LIST (\\HasNoChildren \\Sent) "/" "Sent" ("OLDNAME" ("Sent Items"))' in out, out
        out = r.cmd("st3", b"STATUS " + quoted + b" (MESSAGES DELETED)")
        assert out[0] == b"* STATUS " + quoted + b" (MESSAGES 0 DELETED 0)", out
        r.close()

        # Not enabled: modified UTF-7 names, no LIST in SELECT, as before.
        old = Raw(imap_server.port)
        old.login()
        out = old.cmd("l", 'LIST "" "*"')
        assert b'"/" "' + NAME.encode("imap4-utf-7") + b'"' in b"\n".join(out), out
        out = old.cmd("s", "SELECT INBOX")
        assert not any(x.startswith(b"* LIST") for x in out), out
        old.close()

    await blocking(run)
