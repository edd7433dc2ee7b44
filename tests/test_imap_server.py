"""The IMAP server over real loopback sockets: imaplib, imapclient and a raw
line client against an in-process listener (the reactor runs the server; the
blocking clients run on a thread)."""

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
    tls_context,
)


# -- greeting, capabilities, login ----------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_greeting_capabilities_and_login(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        assert r.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
        assert b"AUTH=PLAIN" in r.greeting and b"STARTTLS" in r.greeting
        out = r.cmd("a", "CAPABILITY")
        assert out[-1] == b"a OK Capability completed"
        out = r.cmd("b", f'LOGIN {USER} "wrong"')
        assert out[-1] == b"b NO [AUTHENTICATIONFAILED] Authentication failed"
        out = r.cmd("c", f'LOGIN "{USER}" "{PASSWORD}"')
        assert out[-1].startswith(b"c OK [CAPABILITY IMAP4rev1 ")
        for cap in (b"IDLE", b"UIDPLUS", b"MOVE", b"SPECIAL-USE", b"XLIST", b"NAMESPACE",
                    b"CHILDREN", b"ID", b"QUOTA", b"CONDSTORE", b"ENABLE", b"LITERAL+",
                    b"UNSELECT", b"APPENDLIMIT="):
            assert cap in out[-1], cap
        assert r.cmd("d", f'LOGIN "{USER}" "{PASSWORD}"')[-1] == b"d BAD Already logged in"
        assert r.cmd("e", "LOGOUT") == [b"* BYE Logging out", b"e OK Logout completed"]
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_commands_before_login_and_bad_input(imap_server: Server) -> None:
    def run() -> None:
        r = Raw(imap_server.port)
        assert r.cmd("a", "SELECT INBOX")[-1] == b"a BAD Log in first"
        assert r.cmd("b", "FROB")[-1].startswith(b"b BAD Unknown command")
        assert r.cmd("c", "FETCH")[-1].startswith(b"c BAD")
        r.send(b"\x00\xff garbage\r\n")
        assert r.line().startswith(b"* BAD")
        assert r.cmd("d", "NOOP")[-1] == b"d OK NOOP completed"  # still usable
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_authenticate_plain_login_and_sasl_ir(imap_server: Server) -> None:
    await imap_server.account()
    creds = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()

    def run() -> None:
        r = Raw(imap_server.port)
        out = r.cmd("a", f"AUTHENTICATE PLAIN {creds}")
        assert out[-1].startswith(b"a OK [CAPABILITY"), out
        r.close()
        r = Raw(imap_server.port)
        r.send(b"a AUTHENTICATE PLAIN\r\n")
        assert r.line() == b"+ "
        r.send(creds.encode() + b"\r\n")
        assert r.response("a")[-1].startswith(b"a OK")
        r.close()
        r = Raw(imap_server.port)
        r.send(b"a AUTHENTICATE LOGIN\r\n")
        assert r.line() == b"+ " + base64.b64encode(b"Username:")
        r.send(base64.b64encode(USER.encode()) + b"\r\n")
        assert r.line() == b"+ " + base64.b64encode(b"Password:")
        r.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
        assert r.response("a")[-1].startswith(b"a OK")
        r.close()
        r = Raw(imap_server.port)
        r.send(b"a AUTHENTICATE PLAIN\r\n")
        r.line()
        r.send(b"*\r\n")
        assert r.response("a")[-1] == b"a BAD Authentication cancelled"
        assert r.cmd("b", "AUTHENTICATE CRAM-MD5")[-1].startswith(b"b NO [CANNOT]")
        r.close()
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_starttls_and_implicit_tls(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.starttls(tls_context())
        assert "STARTTLS" not in c.capabilities
        c.login(USER, PASSWORD)
        c.logout()
        c2 = imaplib.IMAP4_SSL("127.0.0.1", imap_server.tls_port, ssl_context=tls_context())
        assert "STARTTLS" not in c2.capabilities
        c2.login(USER, PASSWORD)
        assert c2.select("INBOX")[0] == "OK"
        c2.logout()
        # Plaintext pipelined after STARTTLS is dropped, not executed (CVE-2011-0411).
        r = Raw(imap_server.port)
        r.send(b"a STARTTLS\r\nb LOGIN x y\r\n")
        assert r.line() == b"a OK Begin TLS negotiation now"
        r.starttls()
        assert r.cmd("c", "NOOP")[-1] == b"c OK NOOP completed"
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_logindisabled_without_tls_off_loopback(imap_server: Server) -> None:
    import dataclasses

    await imap_server.account()
    cfg = imap_server.app.cfg
    imap_server.app.cfg = dataclasses.replace(
        cfg, auth=dataclasses.replace(cfg.auth, allow_plaintext_loopback=False))

    def run() -> None:
        r = Raw(imap_server.port)
        assert b"LOGINDISABLED" in r.greeting and b"AUTH=PLAIN" not in r.greeting
        out = r.cmd("a", f'LOGIN "{USER}" "{PASSWORD}"')
        assert out[-1].startswith(b"a NO [PRIVACYREQUIRED]")
        r.close()
        c = imaplib.IMAP4("127.0.0.1", imap_server.port)
        c.starttls(tls_context())
        assert "AUTH=PLAIN" in c.capabilities
        c.login(USER, PASSWORD)
        c.logout()

    try:
        await blocking(run)
    finally:
        imap_server.app.cfg = cfg


@pytest_twisted.ensureDeferred
async def test_imap_switch_off_is_refused_with_alert(imap_server: Server) -> None:
    await imap_server.account()
    await imap_server.store.directory.update_settings(USER, imap_enabled=False)

    def run() -> None:
        r = Raw(imap_server.port)
        out = r.cmd("a", f'LOGIN "{USER}" "{PASSWORD}"')
        assert out[-1].startswith(b"a NO [ALERT] IMAP access is switched off"), out
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_three_failed_logins_close_the_connection(imap_server: Server) -> None:
    def run() -> None:
        r = Raw(imap_server.port)
        for tag in "abc":
            out = r.cmd(tag, f'LOGIN {USER} "nope"')
        assert out[-1].startswith(b"c NO [AUTHENTICATIONFAILED]")
        assert r.line() == b"* BYE Too many failed logins"
        with pytest.raises(ConnectionError):
            r.line()

    await blocking(run)


# -- folders -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_list_xlist_special_use_and_namespace(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        c = client(imap_server)
        folders = {name: set(flags) for flags, _, name in c.list_folders()}
        assert folders == {
            "INBOX": {b"\\HasNoChildren"},
            "Drafts": {b"\\HasNoChildren", b"\\Drafts"},
            "Sent": {b"\\HasNoChildren", b"\\Sent"},
            "Deleted": {b"\\HasNoChildren", b"\\Trash"},
            "Junk": {b"\\HasNoChildren", b"\\Junk"},
        }
        xl = {name: set(flags) for flags, _, name in c.xlist_folders()}
        assert b"\\Inbox" in xl["INBOX"] and b"\\Spam" in xl["Junk"] and b"\\Trash" in xl["Deleted"]
        assert c.find_special_folder(b"\\Sent") == "Sent"
        assert c.namespace().personal == (("", "/"),)
        r = Raw(imap_server.port)
        r.login()
        assert r.cmd("a", 'LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""'
        out = r.cmd("b", 'LIST (SPECIAL-USE) "" "*"')
        assert len(out) == 5 and all(b"\\HasNoChildren \\" in line for line in out[:-1])
        out = r.cmd("c", 'LIST "" "*" RETURN (STATUS (MESSAGES UIDNEXT))')
        assert b'* STATUS "INBOX" (MESSAGES 0 UIDNEXT 1)' in out
        out = r.cmd("d", 'LIST "" "in%"')
        assert out[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"'
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_create_nest_rename_delete_and_system_folders(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        c = client(imap_server)
        c.create_folder("Projects/2026/Q1")  # parents are created too
        names = [n for _, _, n in c.list_folders()]
        assert {"Projects", "Projects/2026", "Projects/2026/Q1"} <= set(names)
        flags = {n: f for f, _, n in c.list_folders()}
        assert b"\\HasChildren" in flags["Projects"]
        deep = "/".join(f"L{i}" for i in range(10))
        c.create_folder(deep)
        with pytest.raises(IMAPClient.Error, match="CANNOT"):
            c.create_folder(deep + "/L10")  # an 11th level
        with pytest.raises(IMAPClient.Error, match="ALREADYEXISTS"):
            c.create_folder("Projects")
        with pytest.raises(IMAPClient.Error, match="CANNOT"):
            c.delete_folder("Sent")
        with pytest.raises(IMAPClient.Error, match="CANNOT"):
            c.rename_folder("INBOX", "Old")
        with pytest.raises(IMAPClient.Error, match="CANNOT"):
            c.rename_folder("Junk", "Spam2")
        with pytest.raises(IMAPClient.Error, match="INUSE"):
            c.delete_folder("Projects")
        c.rename_folder("Projects", "Archive/Projects")
        names = {n for _, _, n in c.list_folders()}
        assert "Archive/Projects/2026/Q1" in names and "Projects" not in names
        with pytest.raises(IMAPClient.Error, match="NONEXISTENT"):
            c.delete_folder("Nope")
        c.delete_folder("Archive/Projects/2026/Q1")
        assert "Archive/Projects/2026/Q1" not in {n for _, _, n in c.list_folders()}
        # Chinese names travel in modified UTF-7.
        c.create_folder("客户/华南")
        assert "客户/华南" in {n for _, _, n in c.list_folders()}
        c.select_folder("客户/华南")
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_localised_system_folder_names_reach_the_system_folder(imap_server: Server) -> None:
    acct = await imap_server.account()

    def run() -> None:
        c = client(imap_server)
        before = {n for _, _, n in c.list_folders()}
        for name in ("已发送", "Sent Items", "已删除邮件", "Deleted Items", "垃圾邮件",
                     "Junk E-mail", "草稿箱", "Trash", "垃圾箱"):
            c.create_folder(name)  # OK, and no duplicate
        assert {n for _, _, n in c.list_folders()} == before
        uid = c.append("Sent Items", mail("sent by outlook"))
        assert b"APPENDUID" in uid
        c.append("已发送", mail("sent by foxmail"))
        assert c.select_folder("Sent")[b"EXISTS"] == 2
        assert c.folder_status("已发送", ["MESSAGES"])[b"MESSAGES"] == 2
        c.select_folder("INBOX")
        c.logout()

    await blocking(run)
    boxes = {b.name: b.id for b in await imap_server.store.mailboxes.list(acct.id)}
    assert len(await imap_server.store.mailboxes.messages([boxes["Sent"]])) == 2


@pytest_twisted.ensureDeferred
async def test_subscribe_lsub_status(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("one"))
    await imap_server.deliver(acct.id, mail("two"), flags=fl.SEEN)

    def run() -> None:
        c = client(imap_server)
        c.create_folder("News")
        c.unsubscribe_folder("News")
        subs = {n for _, _, n in c.list_sub_folders()}
        assert "News" not in subs and "INBOX" in subs
        c.subscribe_folder("News")
        assert "News" in {n for _, _, n in c.list_sub_folders()}
        st = c.folder_status("INBOX", ["MESSAGES", "UNSEEN", "UIDNEXT", "UIDVALIDITY",
                                       "RECENT", "HIGHESTMODSEQ"])
        assert st[b"MESSAGES"] == 2 and st[b"UNSEEN"] == 1 and st[b"UIDNEXT"] == 3
        assert st[b"HIGHESTMODSEQ"] >= 2
        c.select_folder("INBOX")  # STATUS from the cached index too
        st2 = c.folder_status("INBOX", ["MESSAGES", "UNSEEN"])
        assert st2[b"MESSAGES"] == 2 and st2[b"UNSEEN"] == 1
        with pytest.raises(IMAPClient.Error, match="NONEXISTENT"):
            c.folder_status("Nope", ["MESSAGES"])
        c.logout()

    await blocking(run)


# -- SELECT / EXAMINE -------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_select_answers_everything(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("a"), flags=fl.SEEN)
    await imap_server.deliver(acct.id, mail("b"), keywords=("$Work",))
    await imap_server.deliver(acct.id, mail("c"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        out = r.cmd("a", "SELECT INBOX")
        assert out[0] == b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Work)"
        assert out[1].startswith(b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
                                 b"\\Draft $Work \\*)]")
        assert b"* 3 EXISTS" in out and b"* 3 RECENT" in out  # the first to select
        assert any(x.startswith(b"* OK [UNSEEN 2]") for x in out)
        assert any(x.startswith(b"* OK [UIDVALIDITY ") for x in out)
        assert any(x.startswith(b"* OK [UIDNEXT 4]") for x in out)
        assert any(x.startswith(b"* OK [HIGHESTMODSEQ ") for x in out)
        assert out[-1] == b"a OK [READ-WRITE] Select completed"
        out = r.cmd("b", "EXAMINE INBOX")
        assert out[-1] == b"b OK [READ-ONLY] Examine completed"
        assert r.cmd("c", "STORE 1 +FLAGS (\\Deleted)")[-1].startswith(b"c NO [READ-ONLY]")
        assert r.cmd("d", "SELECT Nope")[-1].startswith(b"d NO [NONEXISTENT]")
        assert r.cmd("e", "FETCH 1 FLAGS")[-1] == b"e BAD No mailbox selected"
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_pipelined_commands_answer_in_order(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(3):
        await imap_server.deliver(acct.id, mail(f"m{i}"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.send(f'a LOGIN {USER} "{PASSWORD}"\r\nb SELECT INBOX\r\nc FETCH 1:* (UID)\r\n'
               "d UID FETCH 2 (FLAGS)\r\ne STATUS INBOX (MESSAGES)\r\nf NOOP\r\n")
        out = r.response("f")
        tagged = [line.split()[0] for line in out if not line.startswith(b"*")]
        assert tagged == [b"a", b"b", b"c", b"d", b"e", b"f"]
        assert all(line.split()[1] == b"OK" for line in out if not line.startswith(b"*"))
        assert sum(1 for line in out if b" FETCH (UID " in line) == 4
        r.close()

    await blocking(run)


# -- FETCH ------------------------------------------------------------------------------
MULTIPART = (
    b"From: =?UTF-8?B?5byg5LiJ?= <zhang@example.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: =?UTF-8?B?5a2j5bqm5oql5ZGK?=\r\n"
    b"Date: Fri, 27 Nov 2026 10:00:00 +0800\r\n"
    b"Message-ID: <mp@example.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello body\r\n"
    b"--XX\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"X-Inner: yes\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--XX--\r\n"
)


@pytest_twisted.ensureDeferred
async def test_fetch_items_and_sections(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, MULTIPART, internal_date=1_700_000_000)
    await imap_server.deliver(acct.id, mail("plain", "line1\r\nline2\r\n"))

    def run() -> None:
        c = client(imap_server)
        c.select_folder("INBOX")
        res = c.fetch([1], ["UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE", "ENVELOPE",
                            "BODYSTRUCTURE", "BODY"])[1]
        assert res[b"RFC822.SIZE"] == len(MULTIPART)
        assert res[b"ENVELOPE"].subject == b"=?UTF-8?B?5a2j5bqm5oql5ZGK?="
        assert res[b"INTERNALDATE"].year == 2023
        assert res[b"BODYSTRUCTURE"].is_multipart
        got = c.fetch([1], ["BODY.PEEK[1]", "BODY.PEEK[2]", "BODY.PEEK[2.HEADER]",
                            "BODY.PEEK[2.TEXT]", "BODY.PEEK[1.MIME]",
                            "BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)]",
                            "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM TO DATE MESSAGE-ID "
                            "MIME-VERSION)]", "BODY.PEEK[TEXT]", "BODY.PEEK[9]",
                            "BODY.PEEK[2.1]"])[1]
        assert got[b"BODY[1]"] == b"Hello body"
        assert got[b"BODY[2]"].startswith(b"Subject: inner\r\n")
        assert got[b"BODY[2.HEADER]"] == b"Subject: inner\r\nX-Inner: yes\r\n\r\n"
        assert got[b"BODY[2.TEXT]"] == b"inner body"
        assert got[b"BODY[1.MIME]"] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        assert got[b"BODY[HEADER.FIELDS (SUBJECT FROM)]"] == (
            b"From: =?UTF-8?B?5byg5LiJ?= <zhang@example.test>\r\n"
            b"Subject: =?UTF-8?B?5a2j5bqm5oql5ZGK?=\r\n\r\n")
        assert got[b"BODY[HEADER.FIELDS.NOT (SUBJECT FROM TO DATE MESSAGE-ID MIME-VERSION)]"] \
            == b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        assert got[b"BODY[TEXT]"].startswith(b"preamble\r\n--XX")
        assert got[b"BODY[9]"] is None
        assert got[b"BODY[2.1]"] == b"inner body"
        plain = c.fetch([2], ["BODY.PEEK[1]", "BODY.PEEK[HEADER]", "RFC822.HEADER"])[2]
        assert plain[b"BODY[1]"] == b"line1\r\nline2\r\n"
        assert plain[b"BODY[HEADER]"] == plain[b"RFC822.HEADER"]
        # PEEK set nothing (\Recent: this session selected first).
        assert c.get_flags([1, 2]) == {1: (b"\\Recent",), 2: (b"\\Recent",)}
        whole = c.fetch([2], ["RFC822"])[2]
        assert whole[b"RFC822"].endswith(b"line1\r\nline2\r\n")
        assert whole[b"FLAGS"] == (b"\\Seen", b"\\Recent")  # set by RFC822 and reported
        c.logout()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_partial_fetch_echoes_origin_only(imap_server: Server) -> None:
    acct = await imap_server.account()
    raw = mail("partial", "0123456789" * 50)
    await imap_server.deliver(acct.id, raw)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "FETCH 1 (BODY.PEEK[]<0.393216>)")
        assert out[0] == b"* 1 FETCH (BODY[]<0> {%d}\r\n" % len(raw) + raw + b")"
        out = r.cmd("b", "UID FETCH 1 (BODY.PEEK[]<10.5>)")
        assert out[0] == b"* 1 FETCH (UID 1 BODY[]<10> {5}\r\n" + raw[10:15] + b")"
        out = r.cmd("c", "FETCH 1 (BODY.PEEK[TEXT]<5.10>)")
        body = raw[raw.index(b"\r\n\r\n") + 4:]
        assert out[0] == b"* 1 FETCH (BODY[TEXT]<5> {10}\r\n" + body[5:15] + b")"
        out = r.cmd("d", "FETCH 1 (BODY.PEEK[]<100000.10>)")
        assert out[0] == b"* 1 FETCH (BODY[]<100000> {0}\r\n)"
        out = r.cmd("e", "FETCH 1 (BODY[1]<0.4>)")  # not PEEK: \Seen, reported
        assert out[0] == b"* 1 FETCH (BODY[1]<0> {4}\r\n0123 FLAGS (\\Seen \\Recent))"
        out = r.cmd("f", "FETCH 2 FLAGS")
        assert out[-1] == b"f BAD Invalid message sequence set: no such message"
        assert r.cmd("g", "UID FETCH 99 FLAGS")[-1] == b"g OK Fetch completed"
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_append_with_the_mailbox_name_as_a_literal(imap_server: Server) -> None:
    """Every APPEND literal is spooled as it arrives; a mailbox name sent as a
    literal (synchronising or LITERAL+) is still read as a name."""
    await imap_server.account()
    msg = b"Subject: literal name\r\n\r\nbody\r\n"

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.send(b"a APPEND {5+}\r\nINBOX () {%d+}\r\n%s\r\n" % (len(msg), msg))
        assert r.response("a")[-1].startswith(b"a OK"), "LITERAL+ name"
        r.send(b"b APPEND {5}\r\n")
        assert r.line().startswith(b"+")
        r.send(b"INBOX {%d}\r\n" % len(msg))
        assert r.line().startswith(b"+")
        r.send(msg + b"\r\n")
        assert r.response("b")[-1].startswith(b"b OK"), "synchronising name"
        r.cmd("s", "SELECT INBOX")
        fetched = r.cmd("f", "FETCH 1:* BODY.PEEK[]")
        assert sum(msg in line for line in fetched) == 2, fetched
        assert r.cmd("n", "NOOP")[-1] == b"n OK NOOP completed"
        r.close()

    await blocking(run)
