"""The IMAP server over real sockets, part two: STORE, COPY / MOVE / EXPUNGE,
APPEND, QUOTA, SEARCH, CONDSTORE, IDLE, several sessions, limits."""

from __future__ import annotations

import base64
import imaplib

import pytest
import pytest_twisted
from imapclient import IMAPClient

from exmaild.store import flags as fl

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import (  # noqa: F401
    PASSWORD,
    USER,
    Raw,
    Server,
    blocking,
    client,
    imap_server_fixture,
    mail,
    on_reactor,
)


# -- STORE ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_store_flags_keywords_silent_and_uid(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(4):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "STORE 1:2 +FLAGS (\\Flagged $Work)")
        assert out[0].startswith(b"* FLAGS (") and b"$Work" in out[0]  # a new keyword
        assert out[1].startswith(b"* OK [PERMANENTFLAGS (")
        # Delivered before the first SELECT: \Recent in this session.
        assert out[2:4] == [b"* 1 FETCH (UID 1 FLAGS (\\Flagged $Work \\Recent))",
                           b"* 2 FETCH (UID 2 FLAGS (\\Flagged $Work \\Recent))"]
        assert r.cmd("b", "STORE 1 +FLAGS.SILENT (\\Seen)") == [b"b OK Store completed"]
        out = r.cmd("c", "UID STORE 2 -FLAGS ($work)")  # keywords match in any case
        assert out[0] == b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))"
        out = r.cmd("d", "STORE 3 FLAGS (\\Answered \\Draft)")
        assert out[0] == b"* 3 FETCH (UID 3 FLAGS (\\Answered \\Draft \\Recent))"
        out = r.cmd("e", "STORE 4 +FLAGS \\Deleted")  # flags without parentheses
        assert out[0] == b"* 4 FETCH (UID 4 FLAGS (\\Deleted \\Recent))"
        out = r.cmd("f", "FETCH 1:4 FLAGS")
        assert out[:4] == [b"* 1 FETCH (FLAGS (\\Seen \\Flagged $Work \\Recent))",
                           b"* 2 FETCH (FLAGS (\\Flagged \\Recent))",
                           b"* 3 FETCH (FLAGS (\\Answered \\Draft \\Recent))",
                           b"* 4 FETCH (FLAGS (\\Deleted \\Recent))"]
        out = r.cmd("g", "SELECT INBOX")
        assert out[0] == b"* OK [CLOSED] Previous mailbox closed"  # RFC 7162 §3.2.11
        assert b"$Work" in out[1]  # keywords in use show in FLAGS
        assert r.cmd("h", "STORE 1 +FLAGS (\\Recent)")[-1] == b"h OK Store completed"
        assert r.cmd("i", "STORE 1 +FLAGS (bad\x01)")[-1].startswith(b"i BAD")
        r.close()

    await blocking(run)
    entries = await imap_server.store.mailboxes.messages([
        (await imap_server.store.mailboxes.get(acct.id, "INBOX")).id])
    assert [(e.flags, e.keywords) for e in entries] == [
        (fl.SEEN | fl.FLAGGED, "$Work"), (fl.FLAGGED, ""), (fl.ANSWERED | fl.DRAFT, ""),
        (fl.DELETED, "")]


# -- COPY / MOVE / EXPUNGE / UIDPLUS ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_copy_move_expunge_with_uidplus(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(6):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "COPY 1:2 Junk")
        assert out[-1].startswith(b"a OK [COPYUID ") and out[-1].split()[4:6] == [b"1:2", b"1:2]"]
        out = r.cmd("b", "UID MOVE 3,5 Deleted")
        assert out[0].startswith(b"* OK [COPYUID ") and b" 3,5 1:2]" in out[0]
        assert out[1:3] == [b"* 5 EXPUNGE", b"* 3 EXPUNGE"]
        assert out[-1] == b"b OK Move completed"
        assert r.cmd("c", "COPY 1 Nowhere")[-1].startswith(b"c NO [TRYCREATE]")
        r.cmd("d", "STORE 1,3 +FLAGS.SILENT (\\Deleted)")
        out = r.cmd("e", "UID EXPUNGE 1")  # only UID 1, although 4 is \Deleted too
        assert out == [b"* 1 EXPUNGE", b"e OK Expunge completed"]
        out = r.cmd("f", "FETCH 1:* (UID FLAGS)")
        assert [x.split(b"UID ")[1].split()[0] for x in out[:-1]] == [b"2", b"4", b"6"]
        out = r.cmd("g", "EXPUNGE")
        assert out == [b"* 2 EXPUNGE", b"g OK Expunge completed"]
        out = r.cmd("h", "SELECT Deleted")
        assert b"* 2 EXISTS" in out
        r.cmd("i", "STORE 1 +FLAGS.SILENT (\\Deleted)")
        assert r.cmd("j", "CLOSE") == [b"j OK Close completed"]  # expunges silently
        out = r.cmd("k", "STATUS Deleted (MESSAGES)")
        assert out[0] == b'* STATUS "Deleted" (MESSAGES 1)'
        r.cmd("l", "EXAMINE Junk")
        out = r.cmd("m", "UNSELECT")
        assert out == [b"m OK Unselect completed"]
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_copy_into_itself_and_over_quota(imap_server: Server) -> None:
    acct = await imap_server.account(quota_bytes=2000)
    await imap_server.deliver(acct.id, mail("x", "y" * 700))

    def run() -> None:
        c = client(imap_server)
        c.select_folder("INBOX")
        c.copy([1], "INBOX")
        assert c.noop()  # EXISTS already sent with the COPY
        assert c.select_folder("INBOX")[b"EXISTS"] == 2
        with pytest.raises(IMAPClient.Error, match="OVERQUOTA"):
            c.copy([1, 2], "Junk")
        c.move([1], "Junk")  # moving within an account costs no quota
        c.logout()

    await blocking(run)


# -- APPEND ------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_append_flags_date_literal_plus_trycreate_and_quota(imap_server: Server) -> None:
    await imap_server.account(quota_bytes=4000)
    raw = mail("draft", "text\r\n")

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.send(b'a APPEND Drafts (\\Draft $Todo) "05-Mar-2024 10:11:12 +0800" {%d}\r\n' % len(raw))
        assert r.line() == b"+ Ready for literal data"
        r.send(raw + b"\r\n")
        out = r.response("a")
        assert out[-1].startswith(b"a OK [APPENDUID ") and out[-1].split()[4] == b"1]"
        r.send(b"b APPEND Drafts {%d+}\r\n" % len(raw) + raw + b"\r\n")
        assert r.response("b")[-1].startswith(b"b OK [APPENDUID ")
        r.send(b"c APPEND Nowhere {%d+}\r\n" % len(raw) + raw + b"\r\n")
        assert r.response("c")[-1].startswith(b"c NO [TRYCREATE]")
        r.cmd("s", "SELECT Drafts")
        out = r.cmd("d", "FETCH 1 (FLAGS INTERNALDATE)")
        assert out[0] == (b'* 1 FETCH (FLAGS (\\Draft $Todo \\Recent) '
                          b'INTERNALDATE "05-Mar-2024 02:11:12 +0000")')
        # APPEND into the selected mailbox: EXISTS before the tagged OK.
        r.send(b"e APPEND Drafts {%d+}\r\n" % len(raw) + raw + b"\r\n")
        out = r.response("e")
        assert out[0] == b"* 3 EXISTS" and out[-1].startswith(b"e OK [APPENDUID")
        big = b"x" * 5000
        r.send(b"f APPEND INBOX {%d}\r\n" % len(big))  # refused before the upload
        assert r.line().startswith(b"f NO [OVERQUOTA]")
        r.send(b"g APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
        assert r.response("g")[-1].startswith(b"g NO [OVERQUOTA]")
        assert r.cmd("h", "APPEND INBOX {0+}\r\n")[-1].startswith(b"h NO")
        assert r.cmd("i", "NOOP")[-1] == b"i OK NOOP completed"
        r.close()
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.login(USER, PASSWORD)
        typ, data = c.append("INBOX", "(\\Seen)", None, raw)
        assert typ == "OK" and b"APPENDUID" in data[0]
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_append_before_login_is_refused_without_upload(imap_server: Server) -> None:
    def run() -> None:
        r = Raw(imap_server.port)
        r.send(b"a APPEND INBOX {10}\r\n")
        assert r.line() == b"a BAD Log in first"
        assert r.cmd("b", "NOOP")[-1] == b"b OK NOOP completed"
        r.close()

    await blocking(run)


# -- QUOTA, ID, ENABLE, NAMESPACE ---------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_quota_id_enable(imap_server: Server) -> None:
    acct = await imap_server.account(quota_bytes=1024 * 1024)
    await imap_server.deliver(acct.id, mail("q", "z" * 3000))

    def run() -> None:
        r = Raw(imap_server.port)
        out = r.cmd("a", 'ID ("name" "Foxmail" "version" "7.2")')
        assert out[0].startswith(b'* ID ("name" "exmaild"')
        r.login()
        out = r.cmd("b", "GETQUOTAROOT INBOX")
        assert out[0] == b'* QUOTAROOT "INBOX" ""'
        assert out[1] == b'* QUOTA "" (STORAGE 4 1024)'
        assert r.cmd("c", 'GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 4 1024)'
        assert r.cmd("d", "GETQUOTA other")[-1].startswith(b"d NO [NONEXISTENT]")
        assert r.cmd("e", "ENABLE CONDSTORE QRESYNC")[0] == b"* ENABLED CONDSTORE QRESYNC"
        assert r.cmd("f", "ID NIL")[-1] == b"f OK ID completed"
        r.close()

    await blocking(run)


# -- SEARCH ------------------------------------------------------------------------------------
CN_SUBJECT = "=?UTF-8?B?" + base64.b64encode("第三季度报告".encode()).decode() + "?="
GB_SUBJECT = "=?GB2312?B?" + base64.b64encode("季度报告（初稿）".encode("gb2312")).decode() + "?="


@pytest_twisted.ensureDeferred
async def test_search_chinese_subject_charsets_and_keys(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail(CN_SUBJECT))
    await imap_server.deliver(acct.id, mail("weekly status"), flags=fl.SEEN)
    await imap_server.deliver(acct.id, mail(GB_SUBJECT, "budget numbers"))
    await imap_server.deliver(acct.id, mail("other"), flags=fl.FLAGGED)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        word = "季度报告".encode()
        r.send(b"a UID SEARCH CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word))
        assert r.line().startswith(b"+")
        r.send(word + b"\r\n")
        assert r.response("a") == [b"* SEARCH 1 3", b"a OK Search completed"]
        gb = "季度报告".encode("gb18030")
        out = r.cmd("b", b"SEARCH CHARSET GB18030 SUBJECT {%d+}\r\n" % len(gb) + gb)
        assert out == [b"* SEARCH 1 3", b"b OK Search completed"]
        gbk = "报告".encode("gbk")
        out = r.cmd("c", b"SEARCH CHARSET GBK SUBJECT {%d+}\r\n" % len(gbk) + gbk)
        assert out[0] == b"* SEARCH 1 3"
        out = r.cmd("d", "SEARCH CHARSET KOI9-X SUBJECT x")
        assert out[-1].startswith(b"d NO [BADCHARSET (UTF-8")
        assert r.cmd("e", "SEARCH UNSEEN")[0] == b"* SEARCH 1 3 4"
        assert r.cmd("f", "SEARCH OR FLAGGED SEEN")[0] == b"* SEARCH 2 4"
        assert r.cmd("g", "SEARCH NOT SUBJECT status")[0] == b"* SEARCH 1 3 4"
        assert r.cmd("h", "SEARCH BODY budget")[0] == b"* SEARCH 3"
        assert r.cmd("i", "UID SEARCH 2:3 ALL")[0] == b"* SEARCH 2 3"
        assert r.cmd("j", "SEARCH FROM bob SMALLER 100000 SINCE 1-Jan-2000")[0] \
            == b"* SEARCH 1 2 3 4"
        out = r.cmd("k", "SEARCH MODSEQ 1")
        assert out[0].startswith(b"* SEARCH 1 2 3 4 (MODSEQ ")
        assert r.cmd("l", "SEARCH SUBJECT nothing-like-this")[0] == b"* SEARCH"
        assert r.cmd("m", "SEARCH FROBNICATE")[-1].startswith(b"m BAD")
        r.close()
        c = client(imap_server)
        c.select_folder("INBOX")
        assert c.search(["SUBJECT", "季度报告"], charset="UTF-8") == [1, 3]
        c.logout()

    await blocking(run)


# -- CONDSTORE ---------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_condstore_modseq_changedsince_unchangedsince(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(3):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        out = r.cmd("a", "SELECT INBOX (CONDSTORE)")
        hms = int(next(x for x in out if b"HIGHESTMODSEQ" in x).split()[3].rstrip(b"]"))
        out = r.cmd("b", "FETCH 1:* (MODSEQ)")
        mods = [int(x.split(b"MODSEQ (")[1].split(b")")[0]) for x in out[:-1]]
        assert max(mods) == hms
        out = r.cmd("c", "STORE 2 +FLAGS (\\Flagged)")
        assert out[0].startswith(b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (")
        new = int(out[0].split(b"MODSEQ (")[1].split(b")")[0])
        assert new > hms
        out = r.cmd("d", f"FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})")
        assert out == [b"* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (%d))" % new,
                       b"d OK Fetch completed"]
        out = r.cmd("e", f"STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)")
        assert out[-1] == b"e OK [MODIFIED 2] Conditional store failed for some messages"
        out = r.cmd("f", f"UID STORE 2 (UNCHANGEDSINCE {new}) +FLAGS.SILENT (\\Answered)")
        assert out[0].startswith(b"* 2 FETCH (UID 2 MODSEQ (")
        st = r.cmd("g", "STATUS INBOX (HIGHESTMODSEQ)")[0]
        assert int(st.split()[-1].rstrip(b")")) > new
        r.close()

    await blocking(run)


# -- IDLE and several sessions ----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_idle_pushes_deliveries_flags_and_expunges(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("first"))

    def run() -> None:
        a = Raw(imap_server.port)
        a.login()
        a.cmd("s", "SELECT INBOX")
        a.send(b"i IDLE\r\n")
        assert a.line() == b"+ idling"
        on_reactor(imap_server.deliver, acct.id, mail("second"))
        assert a.line() == b"* 2 EXISTS"
        assert a.line() == b"* 2 RECENT"  # the idling session claimed both
        b = client(imap_server)
        b.select_folder("INBOX")
        b.add_flags([1], [b"\\Flagged"])
        assert a.line() == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))"
        b.append("INBOX", mail("third"))
        assert a.line() == b"* 3 EXISTS"
        a.line()  # RECENT
        b.delete_messages([2])
        b.expunge()
        assert a.line() == b"* 2 FETCH (UID 2 FLAGS (\\Deleted \\Recent))"
        assert a.line() == b"* 2 EXPUNGE"
        a.send(b"hello\r\n")  # anything but DONE does not end IDLE
        assert a.line() == b"* BAD Expected DONE to end IDLE"
        a.send(b"DONE\r\n")
        assert a.line() == b"i OK Idle completed"
        assert a.cmd("n", "FETCH 1:* (UID)")[:-1] == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)"]
        b.logout()
        a.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_two_sessions_see_each_others_changes(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(3):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        a, b = Raw(imap_server.port), Raw(imap_server.port)
        a.login()
        b.login()
        a.cmd("s", "SELECT INBOX")
        b.cmd("s", "SELECT INBOX")
        b.cmd("x", "STORE 1 +FLAGS (\\Seen)")
        b.cmd("y", "STORE 3 +FLAGS.SILENT (\\Deleted)")
        b.cmd("z", "EXPUNGE")
        # FETCH may not announce the expunge (RFC 3501 §7.4.1): sequence numbers hold.
        out = a.cmd("f", "FETCH 1:3 (FLAGS)")
        assert b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))" in out  # a selected first
        assert not any(line.endswith(b"EXPUNGE") for line in out)
        assert out[-1].startswith(b"f OK")
        out = a.cmd("n", "NOOP")
        assert b"* 3 EXPUNGE" in out
        on_reactor(imap_server.deliver, acct.id, mail("new"))
        out = a.cmd("m", "NOOP")
        assert b"* 3 EXISTS" in out
        out = a.cmd("u", "UID SEARCH ALL")
        assert out[0] == b"* SEARCH 1 2 4"
        a.close()
        b.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_deleting_a_selected_mailbox_ends_other_sessions(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        a, b = Raw(imap_server.port), Raw(imap_server.port)
        a.login()
        b.login()
        b.cmd("c", "CREATE Temp")
        a.cmd("s", "SELECT Temp")
        b.cmd("d", "DELETE Temp")
        a.send(b"n NOOP\r\n")
        assert a.line() == b"* BYE The selected mailbox was deleted or renamed"
        b.close()
        a.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_retention_sweep_expunges_reach_idlers(imap_server: Server) -> None:
    import time as _time

    from exmaild.mailstore import retention

    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("old junk"), mailbox="\\Junk")
    await imap_server.deliver(acct.id, mail("new junk"), mailbox="\\Junk")

    def run() -> None:
        a = Raw(imap_server.port)
        a.login()
        a.cmd("s", "SELECT Junk")
        a.send(b"i IDLE\r\n")
        assert a.line() == b"+ idling"

        async def sweep() -> int:
            import sqlalchemy as sa

            from exmaild.store import model as m

            def age(conn: sa.Connection) -> None:
                conn.execute(m.messages.update().where(m.messages.c.uid == 1).where(
                    m.messages.c.mailbox_id.in_(sa.select(m.mailboxes.c.id).where(
                        m.mailboxes.c.special_use == "\\Junk"))).values(added=1))

            await imap_server.store.pool.transaction(age)
            return await retention.sweep(imap_server.store, now=_time.time())

        assert on_reactor(sweep) == 1
        assert a.line() == b"* 1 EXPUNGE"
        a.send(b"DONE\r\n")
        assert a.line() == b"i OK Idle completed"
        a.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_fetch_window_setting_limits_what_imap_sees(imap_server: Server) -> None:
    import time as _time

    acct = await imap_server.account()
    now = int(_time.time())
    await imap_server.deliver(acct.id, mail("ancient"), internal_date=now - 400 * 86400)
    await imap_server.deliver(acct.id, mail("older"), internal_date=now - 60 * 86400)
    await imap_server.deliver(acct.id, mail("recent"), internal_date=now - 86400)
    await imap_server.store.directory.update_settings(USER, fetch_window="30d")

    def run() -> None:
        c = client(imap_server)
        assert c.select_folder("INBOX")[b"EXISTS"] == 1
        assert c.search(["ALL"]) == [3]  # imapclient searches by UID
        assert list(c.fetch([3], ["UID"])) == [3]
        c.use_uid = False
        assert c.fetch([1], ["UID"])[1][b"UID"] == 3
        assert c.search(["ALL"]) == [1]
        assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 1
        c.logout()

    await blocking(run)
    await imap_server.store.directory.update_settings(USER, fetch_window="1y")

    def run2() -> None:
        c = client(imap_server)
        assert c.select_folder("INBOX")[b"EXISTS"] == 2
        c.logout()

    await blocking(run2)


# -- limits and bad input -------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_long_lines_big_literals_and_bad_commands(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        r.send(b"a NOOP " + b"x" * 50000 + b"\r\n")  # before login: 40 KB lines
        assert r.line().startswith(b"a BAD [TOOBIG]")
        r.send(b"b LOGIN {100000}\r\n")
        assert r.line().startswith(b"b BAD [TOOBIG]")
        r.login()
        r.send(b"c NOOP " + b"x" * 70000 + b"\r\n")  # after: imap_line_length (64 KB)
        assert r.line().startswith(b"c BAD [TOOBIG]")
        r.send(b"d APPEND INBOX {999999999999}\r\n")
        assert r.line().startswith(b"d NO [TOOBIG]")
        # LITERAL+ over the limit: refused, and the connection ends (RFC 7888 §4)
        # rather than reading what may be gigabytes.
        r.send(b"e APPEND INBOX {60000000+}\r\n")
        assert r.line().startswith(b"e NO [TOOBIG]")
        assert r.line().startswith(b"* BYE")
        r.close()
        r = Raw(imap_server.port)
        r.login()
        assert r.cmd("f", "NOOP")[-1] == b"f OK NOOP completed"
        for i in range(5):
            assert r.cmd(f"g{i}", "BOGUS")[-1].startswith(f"g{i} BAD".encode())
        assert r.cmd("h", "FETCH 1 (BODY[HEADER.FIELDS ()])")[-1].startswith(b"h BAD")
        assert r.cmd("i", "SELECT INBOX")[-1].startswith(b"i OK")
        assert r.cmd("j", "FETCH 1:x FLAGS")[-1].startswith(b"j BAD")
        assert r.cmd("k", "SEARCH " + "NOT " * 200 + "ALL")[-1].startswith(b"k BAD")
        r.close()
        r = Raw(imap_server.port)
        for i in range(20):
            r.send(f"t{i} BOGUS\r\n".encode())
        lines = [r.line() for _ in range(21)]
        assert lines[-1] == b"* BYE Too many invalid commands"

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_autologout(imap_server: Server) -> None:
    import dataclasses
    import time as _time

    await imap_server.account()
    cfg = imap_server.app.cfg
    imap_server.app.cfg = dataclasses.replace(
        cfg, limits=dataclasses.replace(cfg.limits, imap_autologout=1))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.send(b"i IDLE\r\n")
        assert r.line() == b"+ idling"
        t0 = _time.monotonic()
        assert r.line() == b"* BYE Autologout; idle for too long"
        assert _time.monotonic() - t0 < 5

    try:
        await blocking(run)
    finally:
        imap_server.app.cfg = cfg


@pytest_twisted.ensureDeferred
async def test_list_extended_forms(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("a", "CREATE Work/Reports")
        r.cmd("a2", "SUBSCRIBE Work/Reports")  # CREATE does not subscribe
        r.cmd("b", "UNSUBSCRIBE Junk")
        out = r.cmd("c", 'LIST (SUBSCRIBED) "" "*"')
        assert not any(b'"Junk"' in x for x in out)
        assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"' in out
        out = r.cmd("d", 'LIST "" ("INBOX" "Sent" "Work") RETURN (CHILDREN SPECIAL-USE)')
        assert out[:-1] == [b'* LIST (\\HasNoChildren) "/" "INBOX"',
                            b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"',
                            b'* LIST (\\HasChildren) "/" "Work"']
        out = r.cmd("e", 'LIST "Work/" "%"')
        assert out[0] == b'* LIST (\\HasNoChildren) "/" "Work/Reports"'
        out = r.cmd("f", 'LSUB "" "*"')
        assert b'* LSUB () "/" "Work/Reports"' in out and not any(b"Junk" in x for x in out)
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_uid_flags_resync_stays_right_after_changes(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(5):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        a, b = Raw(imap_server.port), Raw(imap_server.port)
        a.login()
        b.login()
        a.cmd("s", "SELECT INBOX")
        b.cmd("s", "SELECT INBOX")
        first = a.cmd("f1", "UID FETCH 1:* (UID FLAGS)")
        # a selected first: \Recent is a's.
        assert first[:-1] == [b"* %d FETCH (UID %d FLAGS (\\Recent))" % (i, i)
                              for i in range(1, 6)]
        b.cmd("x", "STORE 2 +FLAGS (\\Answered)")
        b.cmd("y", "STORE 1 +FLAGS (\\Deleted)")
        b.cmd("z", "EXPUNGE")
        on_reactor(imap_server.deliver, acct.id, mail("m5"))
        a.cmd("n", "NOOP")
        out = a.cmd("f2", "UID FETCH 1:* (FLAGS)")
        assert out[:-1] == [b"* 1 FETCH (UID 2 FLAGS (\\Answered \\Recent))",
                            b"* 2 FETCH (UID 3 FLAGS (\\Recent))",
                            b"* 3 FETCH (UID 4 FLAGS (\\Recent))",
                            b"* 4 FETCH (UID 5 FLAGS (\\Recent))",
                            b"* 5 FETCH (UID 6 FLAGS (\\Recent))"]
        out = b.cmd("f3", "UID FETCH 4:* (UID FLAGS)")
        assert out[:-1] == [b"* 5 EXISTS", b"* 0 RECENT", b"* 3 FETCH (UID 4 FLAGS ())",
                            b"* 4 FETCH (UID 5 FLAGS ())", b"* 5 FETCH (UID 6 FLAGS ())"]
        a.close()
        b.close()

    await blocking(run)
