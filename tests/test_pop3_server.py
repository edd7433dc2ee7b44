"""POP3 over real loopback sockets: an in-process listener on the real store
(SQLite, and PostgreSQL when configured), driven by poplib and raw sockets
off the reactor thread."""

from __future__ import annotations

import base64
import poplib
import ssl
import threading
import time

import pytest
import pytest_twisted

from exmaild.store import flags, imapfolders

from .pop3util import PASSWORD, PopLab, RawClient, blocking, lab_fixture, mail

pop = lab_fixture()


def expect_err(fn, *args, contains: bytes = b"") -> bytes:  # type: ignore[no-untyped-def]
    with pytest.raises(poplib.error_proto) as e:
        fn(*args)
    msg = e.value.args[0]
    assert msg.startswith(b"-ERR"), msg
    assert contains in msg, msg
    return msg


async def fill(pop: PopLab, n: int, **kw) -> list[bytes]:  # type: ignore[no-untyped-def]
    msgs = [mail(i, body=f"Line one of {i}.\r\n.Leading dot line\r\n") for i in range(n)]
    for m in msgs:
        await pop.deliver(m, **kw)
    return msgs


def unstuffed(lines: list[bytes]) -> bytes:
    """poplib has already removed the stuffing; join lines back into a message."""
    return b"".join(line + b"\r\n" for line in lines)


# -- the basic commands ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_command_with_poplib(pop: PopLab) -> None:
    msgs = await fill(pop, 3)

    def session() -> None:
        c = pop.client(login=False)
        assert c.getwelcome() == b"+OK pop.example.test POP3 server ready"
        assert c.user(pop.address).startswith(b"+OK")
        assert c.pass_(PASSWORD) == b"+OK Logged in, 3 messages (%d octets)" % sum(
            map(len, msgs))
        assert c.stat() == (3, sum(map(len, msgs)))
        resp, listing, _ = c.list()
        assert listing == [b"%d %d" % (i + 1, len(m)) for i, m in enumerate(msgs)]
        assert c.list(2) == b"+OK 2 %d" % len(msgs[1])
        resp, uidls, _ = c.uidl()
        assert len(uidls) == 3 and len({u.split()[1] for u in uidls}) == 3
        assert c.uidl(3) == b"+OK " + uidls[2]  # with the message number (RFC 1939)
        for i, m in enumerate(msgs, 1):
            resp, lines, octets = c.retr(i)
            assert resp == b"+OK %d octets" % len(m)
            assert unstuffed(lines) == m  # exact bytes, dot-stuffing undone
        resp, lines, _ = c.top(1, 1)
        assert resp.startswith(b"+OK")
        head, _, body = msgs[0].partition(b"\r\n\r\n")
        assert unstuffed(lines) == head + b"\r\n\r\n" + body.split(b"\r\n")[0] + b"\r\n"
        assert c.noop() == b"+OK"
        assert c.dele(2).startswith(b"+OK")
        expect_err(c.retr, 2, contains=b"already marked for deletion")
        expect_err(c.dele, 2, contains=b"already marked")
        expect_err(c.list, 2, contains=b"already marked")
        assert c.stat() == (2, len(msgs[0]) + len(msgs[2]))
        assert [line.split()[0] for line in c.list()[1]] == [b"1", b"3"]
        assert c.rset().startswith(b"+OK Maildrop has 3 messages")
        assert c.stat()[0] == 3
        expect_err(c.retr, 4, contains=b"No message 4")
        expect_err(c.retr, 0, contains=b"No message 0")
        assert c.quit().startswith(b"+OK")

    await blocking(session)
    assert len(await pop.store.mailboxes.messages([await inbox_id(pop)])) == 3


async def inbox_id(pop: PopLab, address: str | None = None) -> int:
    acct = await pop.store.directory.get_account(address or pop.address)
    assert acct is not None
    box = await pop.store.mailboxes.get(acct.id, "INBOX")
    assert box is not None
    return box.id


@pytest_twisted.ensureDeferred
async def test_capa_lists_only_what_we_support(pop: PopLab) -> None:
    def session() -> tuple[dict, dict]:
        c = pop.client(login=False)
        before = c.capa()
        c.user(pop.address)
        c.pass_(PASSWORD)
        after = c.capa()
        c.quit()
        return before, after

    before, after = await blocking(session)
    assert set(before) == {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                           "USER", "SASL", "STLS", "IMPLEMENTATION"}
    assert before["SASL"] == ["PLAIN", "LOGIN"]
    assert before["IMPLEMENTATION"] == ["exmaild"]
    assert set(after) == {"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                          "IMPLEMENTATION"}


@pytest_twisted.ensureDeferred
async def test_commands_in_the_wrong_state(pop: PopLab) -> None:
    def session() -> None:
        c = pop.raw()
        assert c.cmd("STAT") == b"-ERR STAT is only valid after login\r\n"
        assert c.cmd("RETR 1").startswith(b"-ERR RETR is only valid after login")
        assert c.cmd("PASS secret") == b"-ERR Send USER first\r\n"
        c.login()
        assert c.cmd("USER bob@example.test") == b"-ERR Already logged in\r\n"
        assert c.cmd("STLS") == b"-ERR STLS is only valid before login\r\n"
        assert c.cmd("QUIT").startswith(b"+OK")
        c.close()

    await blocking(session)


# -- authentication --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_failures_say_auth_and_three_end_the_connection(pop: PopLab) -> None:
    def session() -> list[bytes]:
        c = pop.raw()
        out = []
        for user in ("bob@example.test", "nobody@example.test", "bob@example.test"):
            c.cmd(f"USER {user}")
            out.append(c.cmd("PASS Wr0ngPassword"))
        out.append(c.line())  # connection closed: b""
        c.close()
        return out

    out = await blocking(session)
    assert out[0] == out[1] == b"-ERR [AUTH] Authentication failed\r\n"
    assert out[2].startswith(b"-ERR [AUTH] Too many failed logins")
    assert out[3] == b""


@pytest_twisted.ensureDeferred
async def test_auth_plain_and_login(pop: PopLab) -> None:
    plain = base64.b64encode(f"\0{pop.address}\0{PASSWORD}".encode()).decode()

    def session() -> None:
        c = pop.raw()
        c.send(b"AUTH PLAIN " + plain.encode() + b"\r\n")
        assert c.line().startswith(b"+OK Logged in, 0 messages")
        c.cmd("QUIT")
        c.close()
        # Without an initial response: an empty "+ " challenge first.
        c = pop.raw()
        assert c.cmd("AUTH PLAIN") == b"+ \r\n"
        assert c.cmd(plain).startswith(b"+OK Logged in")
        c.cmd("QUIT")
        c.close()
        c = pop.raw()
        assert c.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
        assert c.cmd(base64.b64encode(pop.address.encode())) == b"+ UGFzc3dvcmQ6\r\n"
        assert c.cmd(base64.b64encode(PASSWORD.encode())).startswith(b"+OK Logged in")
        c.cmd("QUIT")
        c.close()
        c = pop.raw()
        assert c.cmd("AUTH PLAIN") == b"+ \r\n"
        assert c.cmd("*") == b"-ERR Authentication cancelled\r\n"
        assert c.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6\r\n"
        assert c.cmd("!!!") == b"-ERR [AUTH] Malformed base64 in SASL response\r\n"
        bad = base64.b64encode(f"\0{pop.address}\0nope".encode()).decode()
        assert c.cmd(f"AUTH PLAIN {bad}") == b"-ERR [AUTH] Authentication failed\r\n"
        assert c.cmd("AUTH CRAM-MD5").startswith(b"-ERR Unsupported SASL mechanism CRAM-MD5")
        assert c.cmd("NOOP").startswith(b"-ERR NOOP is only valid after login")
        c.close()

    await blocking(session)


@pytest_twisted.ensureDeferred
async def test_outlook_sequence(pop: PopLab) -> None:
    """What Outlook sends: AUTH to discover mechanisms, then USER/PASS, STAT,
    UIDL, RETR, DELE, QUIT."""
    msgs = await fill(pop, 4)

    def session() -> None:
        c = pop.raw()
        c.send(b"AUTH\r\n")
        assert c.line() == b"+OK SASL mechanisms follow\r\n"
        assert c.multiline() == [b"PLAIN\r\n", b"LOGIN\r\n"]
        c.login()
        assert c.cmd("STAT") == b"+OK 4 %d\r\n" % sum(map(len, msgs))
        c.send(b"UIDL\r\n")
        assert c.line().startswith(b"+OK")
        assert len(c.multiline()) == 4
        for i in (1, 2):
            assert c.cmd(f"RETR {i}") == b"+OK %d octets\r\n" % len(msgs[i - 1])
            c.multiline()
            assert c.cmd(f"DELE {i}").startswith(b"+OK")
        assert c.cmd("QUIT") == b"+OK pop.example.test closing connection, 2 deleted\r\n"
        c.close()

    await blocking(session)
    left = await pop.store.mailboxes.messages([await inbox_id(pop)])
    assert len(left) == 2
    # RETR marked them \Seen; the two left were never retrieved.
    assert all(not e.flags & flags.SEEN for e in left)


@pytest_twisted.ensureDeferred
async def test_plaintext_refused_before_tls_then_stls(store, cfg) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from exmaild.config import AuthConfig

    from .pop3util import start_lab, stop_lab

    lab = await start_lab(store, cfg)
    lab.app.cfg = dataclasses.replace(lab.app.cfg, auth=AuthConfig(allow_plaintext_loopback=False))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def session() -> tuple[dict, dict]:
        c = lab.client(login=False)
        before = c.capa()
        expect_err(c.user, lab.address, contains=b"[AUTH] Plaintext passwords are refused")
        assert c._shortcmd("AUTH").startswith(b"+OK")  # empty mechanism list
        assert c._getline()[0] == b"."
        expect_err(c._shortcmd, "AUTH PLAIN", contains=b"Plaintext passwords are refused")
        c.stls(ctx)
        after = c.capa()
        c.user(lab.address)
        c.pass_(PASSWORD)
        assert c.stat() == (0, 0)
        c.quit()
        return before, after

    try:
        before, after = await blocking(session)
    finally:
        await stop_lab(lab)
    assert "USER" not in before and "SASL" not in before and "STLS" in before
    assert "USER" in after and after["SASL"] == ["PLAIN", "LOGIN"] and "STLS" not in after


@pytest_twisted.ensureDeferred
async def test_stls_drops_commands_pipelined_in_the_clear(pop: PopLab) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def session() -> bytes:
        c = pop.raw()
        c.send(b"STLS\r\nCAPA\r\n")  # CAPA must not be answered, in clear or in TLS
        assert c.line() == b"+OK Begin TLS negotiation now\r\n"
        tls = ctx.wrap_socket(c.sock, server_hostname="localhost")
        f = tls.makefile("rb")
        tls.sendall(b"NOOP\r\n")
        first = f.readline()
        tls.sendall(b"STLS\r\n")
        assert f.readline() == b"-ERR This connection is already encrypted\r\n"
        tls.close()
        return first

    assert await blocking(session) == b"-ERR NOOP is only valid after login\r\n"


@pytest_twisted.ensureDeferred
async def test_pop3s_implicit_tls(pop: PopLab) -> None:
    msgs = await fill(pop, 2)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def session() -> list[bytes]:
        c = poplib.POP3_SSL("127.0.0.1", pop.tls_port, context=ctx, timeout=10)
        assert "STLS" not in c.capa()
        c.user(pop.address)
        c.pass_(PASSWORD)
        out = [unstuffed(c.retr(i)[1]) for i in (1, 2)]
        c.quit()
        return out

    assert await blocking(session) == msgs


# -- the maildrop ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_dropped_connection_after_dele_deletes_nothing(pop: PopLab) -> None:
    await fill(pop, 3)

    def session() -> None:
        c = pop.raw()
        c.login()
        assert c.cmd("DELE 1").startswith(b"+OK")
        assert c.cmd("DELE 2").startswith(b"+OK")
        assert c.cmd("RETR 3").startswith(b"+OK")
        c.multiline()
        c.close()  # no QUIT

    await blocking(session)
    await wait_unlocked(pop)
    entries = await pop.store.mailboxes.messages([await inbox_id(pop)])
    assert len(entries) == 3
    # Like Dovecot: \Seen of what was retrieved is kept even without QUIT.
    assert [bool(e.flags & flags.SEEN) for e in entries] == [False, False, True]


async def wait_unlocked(pop: PopLab) -> None:
    from twisted.internet import reactor, task

    from exmaild.protocols.pop3.maildrop import registry_for

    for _ in range(200):
        if registry_for(pop.store).holder(pop.account_id) is None:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the maildrop lock was never released")


@pytest_twisted.ensureDeferred
async def test_uidls_are_stable_and_never_reused(pop: PopLab) -> None:
    await fill(pop, 3)

    def uidls(delete_all: bool = False) -> list[bytes]:
        c = pop.client()
        got = [u.split()[1] for u in c.uidl()[1]]
        if delete_all:
            for i in range(1, len(got) + 1):
                c.dele(i)
        c.quit()
        return got

    first = await blocking(uidls)
    assert await blocking(uidls) == first  # stable across sessions
    await blocking(uidls, True)  # empty the maildrop
    assert await blocking(uidls) == []
    await fill(pop, 3)  # refill: new UIDLs, none reused
    refilled = await blocking(uidls)
    assert len(refilled) == 3 and not set(refilled) & set(first)


@pytest_twisted.ensureDeferred
async def test_retr_marks_seen_at_quit_top_does_not(pop: PopLab) -> None:
    await fill(pop, 3)

    def session() -> None:
        c = pop.client()
        c.retr(1)
        c.top(2, 0)
        c.quit()

    await blocking(session)
    entries = await pop.store.mailboxes.messages([await inbox_id(pop)])
    assert [bool(e.flags & flags.SEEN) for e in entries] == [True, False, False]


@pytest_twisted.ensureDeferred
async def test_pop_switch_off_refuses_login_clearly(pop: PopLab) -> None:
    await pop.settings(pop_enabled=False)

    def session() -> bytes:
        c = pop.client(login=False)
        c.user(pop.address)
        return expect_err(c.pass_, PASSWORD, contains=b"[AUTH]")

    msg = await blocking(session)
    assert b"POP3 access is switched off for this account" in msg
    await pop.settings(pop_enabled=True)
    await blocking(lambda: pop.client().quit())


@pytest_twisted.ensureDeferred
async def test_include_member_folders(pop: PopLab) -> None:
    inbox = await fill(pop, 2)
    work = await pop.store.pool.transaction(
        lambda c: imapfolders.create(c, pop.account_id, "Projects"))
    await pop.deliver(mail(100, subject="in my folder"), work.id)
    for special in ("\\Sent", "\\Drafts", "\\Trash", "\\Junk"):
        await pop.deliver(mail(200, subject=f"in {special}"), special)

    def subjects() -> list[bytes]:
        c = pop.client()
        out = []
        for i in range(1, c.stat()[0] + 1):
            out += [h for h in c.top(i, 0)[1] if h.startswith(b"Subject:")]
        c.quit()
        return out

    assert await blocking(subjects) == [b"Subject: message 0", b"Subject: message 1"]
    await pop.settings(pop_include_folders=True)
    assert await blocking(subjects) == [
        b"Subject: message 0", b"Subject: message 1", b"Subject: in my folder"]
    assert len(inbox) == 2


@pytest_twisted.ensureDeferred
async def test_fetch_window(pop: PopLab) -> None:
    from twisted.internet import reactor

    now = int(reactor.seconds())
    ages = {"10d": 10, "60d": 60, "200d": 200, "500d": 500, "1000d": 1000}
    for name, days in ages.items():
        await pop.deliver(mail(days, subject=name), internal_date=now - days * 86400)

    def count() -> int:
        c = pop.client()
        n = c.stat()[0]
        c.quit()
        return n

    expected = {"all": 5, "2y": 4, "1y": 3, "3m": 2, "30d": 1}
    for window, n in expected.items():
        await pop.settings(fetch_window=window)
        assert await blocking(count) == n, window


@pytest_twisted.ensureDeferred
async def test_forbid_deletion_hides_but_keeps(pop: PopLab) -> None:
    await fill(pop, 3)
    await pop.settings(pop_no_delete=True)

    def session() -> bytes:
        c = pop.client()
        c.retr(2)
        assert c.dele(2).startswith(b"+OK")  # the client thinks it worked
        return c.quit()

    assert (await blocking(session)).endswith(b"1 deleted")
    box = await inbox_id(pop)
    everything = await pop.store.mailboxes.messages([box])
    assert len(everything) == 3  # still on the server (IMAP, webmail see it)
    assert [e.pop_hidden for e in everything] == [False, True, False]
    assert everything[1].flags & flags.SEEN

    def stat() -> tuple[int, int]:
        c = pop.client()
        s = c.stat()
        c.quit()
        return s

    assert (await blocking(stat))[0] == 2  # no longer offered to POP
    await pop.settings(pop_no_delete=False)
    assert (await blocking(stat))[0] == 2  # hidden stays hidden


@pytest_twisted.ensureDeferred
async def test_two_clients_racing_for_one_maildrop(pop: PopLab) -> None:
    await fill(pop, 2)
    barrier = threading.Barrier(2)
    results: list[bytes] = []
    clients: list[RawClient] = []
    lock = threading.Lock()

    def racer() -> None:
        c = pop.raw()
        c.cmd(f"USER {pop.address}")
        barrier.wait()
        reply = c.cmd(f"PASS {PASSWORD}")
        with lock:
            results.append(reply)
            clients.append(c)

    def race() -> None:
        threads = [threading.Thread(target=racer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    await blocking(race)
    assert sorted(r[:13] for r in results) == [b"+OK Logged in", b"-ERR [IN-USE]"]
    winner = next(c for c, r in zip(clients, results, strict=True) if r.startswith(b"+OK"))
    loser = next(c for c, r in zip(clients, results, strict=True) if r.startswith(b"-ERR"))

    def after() -> None:
        assert loser.cmd(f"USER {pop.address}").startswith(b"+OK")
        assert loser.cmd(f"PASS {PASSWORD}").startswith(b"-ERR [IN-USE]")  # still held
        assert winner.cmd("QUIT").startswith(b"+OK")
        winner.close()
        time.sleep(0.05)
        assert loser.cmd(f"USER {pop.address}").startswith(b"+OK")
        assert loser.cmd(f"PASS {PASSWORD}").startswith(b"+OK Logged in")
        assert loser.cmd("QUIT").startswith(b"+OK")
        loser.close()

    await blocking(after)


@pytest_twisted.ensureDeferred
async def test_message_without_final_crlf_and_with_bare_lf(pop: PopLab) -> None:
    odd = [
        b"Subject: no final newline\r\n\r\nlast line",
        b"Subject: bare lf\n\n.dot\nline\n",
        b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\n",
    ]
    for m in odd:
        await pop.deliver(m)

    def session() -> list[list[bytes]]:
        c = pop.client()
        out = [c.retr(i)[1] for i in (1, 2, 3)]
        c.quit()
        return out

    got = await blocking(session)
    assert got[0] == [b"Subject: no final newline", b"", b"last line"]
    assert got[1] == [b"Subject: bare lf", b"", b".dot", b"line"]
    assert got[2] == [b"Subject: dots", b"", b".", b"..", b".x"]


@pytest_twisted.ensureDeferred
async def test_large_message_streams_exactly(pop: PopLab) -> None:
    from exmaild.protocols.pop3.transfer import CHUNK

    body = b"".join(b".line %06d with a leading dot\r\n" % i for i in range(60000))
    big = b"Subject: big\r\n\r\n" + body
    assert len(big) > 4 * CHUNK
    await pop.deliver(big)
    await pop.deliver(mail(1))

    def session() -> tuple[bytes, bytes]:
        c = pop.client()
        resp, lines, _ = c.retr(1)
        top = c.top(1, 2)[1]
        c.quit()
        return resp, unstuffed(lines), top

    resp, got, top = await blocking(session)
    assert resp == b"+OK %d octets" % len(big)
    assert got == big
    assert top == [b"Subject: big", b"", b".line 000000 with a leading dot",
                   b".line 000001 with a leading dot"]


@pytest_twisted.ensureDeferred
async def test_slow_reader_holds_the_server_back(pop: PopLab) -> None:
    """A client that does not read makes us stop reading the blob: memory stays flat."""
    from exmaild.protocols.pop3.transfer import CHUNK

    big = b"Subject: big\r\n\r\n" + b"x" * 78 + b"\r\n" * 1 + (b"y" * 1022 + b"\r\n") * 24000
    await pop.deliver(big)
    reads = []
    real = pop.store.blobs.read

    def counting(ref, start=0, length=None):  # type: ignore[no-untyped-def]
        reads.append(start)
        return real(ref, start, length)

    pop.store.blobs.read = counting  # type: ignore[method-assign]

    def session() -> int:
        c = pop.raw()
        c.sock.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 65536)
        c.login()
        c.send(b"RETR 1\r\n")
        time.sleep(0.5)
        stalled = len(reads)
        assert c.line().startswith(b"+OK")
        got = sum(len(line) for line in c.multiline())
        assert got == len(big)  # the whole message did arrive in the end
        c.cmd("QUIT")
        c.close()
        return stalled

    try:
        stalled = await blocking(session)
    finally:
        pop.store.blobs.read = real  # type: ignore[method-assign]
    total = len(big) // CHUNK + 1
    assert stalled < total // 2, (stalled, total)


@pytest_twisted.ensureDeferred
async def test_store_errors_answer_sys_temp_and_session_stays_sane(pop: PopLab) -> None:
    await fill(pop, 2)
    real_messages = pop.store.mailboxes.messages

    async def broken(*a, **kw):  # type: ignore[no-untyped-def]
        raise RuntimeError("database went away")

    pop.store.mailboxes.messages = broken  # type: ignore[method-assign]
    real_read = pop.store.blobs.read

    def session_fail() -> None:
        c = pop.raw()
        c.cmd(f"USER {pop.address}")
        assert c.cmd(f"PASS {PASSWORD}").startswith(b"-ERR [SYS/TEMP]")
        assert c.cmd("CAPA").startswith(b"+OK")  # still talking
        c.multiline()
        c.close()

    try:
        await blocking(session_fail)
    finally:
        pop.store.mailboxes.messages = real_messages  # type: ignore[method-assign]
    await wait_unlocked(pop)

    def failing_read(ref, start=0, length=None):  # type: ignore[no-untyped-def]
        raise OSError("disk on fire")

    def session_read() -> None:
        c = pop.raw()
        c.login()
        pop.store.blobs.read = failing_read  # type: ignore[method-assign]
        assert c.cmd("RETR 1").startswith(b"-ERR [SYS/TEMP]")
        pop.store.blobs.read = real_read  # type: ignore[method-assign]
        assert c.cmd("RETR 2").startswith(b"+OK")
        c.multiline()
        assert c.cmd("QUIT").startswith(b"+OK")
        c.close()

    try:
        await blocking(session_read)
    finally:
        pop.store.blobs.read = real_read  # type: ignore[method-assign]


@pytest_twisted.ensureDeferred
async def test_blob_moved_by_compaction_is_followed(pop: PopLab) -> None:
    await fill(pop, 1)
    real_read = pop.store.blobs.read
    calls = []

    def moved_once(ref, start=0, length=None):  # type: ignore[no-untyped-def]
        calls.append(ref)
        if len(calls) == 1:
            raise FileNotFoundError(ref.segment)
        return real_read(ref, start, length)

    def session() -> bytes:
        c = pop.client()
        pop.store.blobs.read = moved_once  # type: ignore[method-assign]
        resp = c.retr(1)[0]
        c.quit()
        return resp

    try:
        assert (await blocking(session)).startswith(b"+OK")
    finally:
        pop.store.blobs.read = real_read  # type: ignore[method-assign]
    assert len(calls) == 2


# -- bad input and limits ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_malformed_commands_each_get_a_reason(pop: PopLab) -> None:
    await fill(pop, 1)

    def session() -> list[bytes]:
        c = pop.raw()
        out = [c.cmd(b"\xff\xfe"), c.cmd(b"US\x00ER x"), c.cmd(""), c.cmd("HELO there")]
        c.login()
        out += [c.cmd("RETR one"), c.cmd("TOP 1"), c.cmd("LIST 1 2"), c.cmd("DELE"),
                c.cmd("RETR 99"), c.cmd("NOOP")]
        c.cmd("QUIT")
        c.close()
        return out

    out = await blocking(session)
    assert out == [
        b"-ERR Command line is not valid UTF-8\r\n",
        b"-ERR NUL characters are not allowed in commands\r\n",
        b"-ERR Empty command line\r\n",
        b"-ERR Unknown command: HELO\r\n",
        b"-ERR Invalid message number: one\r\n",
        b"-ERR TOP needs a message number and a line count\r\n",
        b"-ERR LIST takes at most one message number\r\n",
        b"-ERR DELE needs exactly one message number\r\n",
        b"-ERR No message 99\r\n",
        b"+OK\r\n",
    ]


@pytest_twisted.ensureDeferred
async def test_line_too_long_closes(pop: PopLab) -> None:
    def session() -> tuple[bytes, bytes]:
        c = pop.raw()
        c.send(b"USER " + b"a" * 20000 + b"\r\n")
        return c.line(), c.line()

    reply, after = await blocking(session)
    assert reply == b"-ERR Line too long, closing connection\r\n"
    assert after == b""


@pytest_twisted.ensureDeferred
async def test_pipelining_over_a_socket(pop: PopLab) -> None:
    msgs = await fill(pop, 3)

    def session() -> list[bytes]:
        c = pop.raw()
        c.send(f"USER {pop.address}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nLIST\r\n"
               "DELE 1\r\nRETR 2\r\nUIDL 2\r\nQUIT\r\n".encode())
        out = [c.line(), c.line(), c.line(), c.line()]
        body = c.multiline()
        assert unstuffed([b[:-2] for b in body]).replace(b"\r\n..", b"\r\n.") == msgs[0]
        out.append(c.line())
        c.multiline()
        out += [c.line(), c.line()]
        c.multiline()
        out += [c.line(), c.line(), c.line()]
        c.close()
        return out

    out = await blocking(session)
    assert out[0].startswith(b"+OK Now send the password")
    assert out[1].startswith(b"+OK Logged in, 3 messages")
    assert out[2] == b"+OK 3 %d\r\n" % sum(map(len, msgs))
    assert out[3] == b"+OK %d octets\r\n" % len(msgs[0])
    assert out[4].startswith(b"+OK 3 messages")
    assert out[5].startswith(b"+OK Message 1 marked")
    assert out[6] == b"+OK %d octets\r\n" % len(msgs[1])
    assert out[7].startswith(b"+OK 2 ")
    assert out[8].startswith(b"+OK pop.example.test closing connection, 1 deleted")
    assert out[9] == b""


idle = lab_fixture(pop3_idle_timeout=1)


@pytest_twisted.ensureDeferred
async def test_idle_timeout(idle: PopLab) -> None:
    def session() -> tuple[bytes, bytes, float]:
        c = idle.raw()
        t0 = time.monotonic()
        return c.line(), c.line(), time.monotonic() - t0

    reply, after, took = await blocking(session)
    assert reply == b"-ERR Idle for too long, closing connection\r\n"
    assert after == b"" and 0.5 < took < 5


delayed = lab_fixture(pop3_login_delay=60)


@pytest_twisted.ensureDeferred
async def test_login_delay(delayed: PopLab) -> None:
    def session() -> tuple[dict, bytes]:
        c = delayed.client()
        caps = c.capa()
        c.quit()
        c = delayed.client(login=False)
        c.user(delayed.address)
        return caps, expect_err(c.pass_, PASSWORD, contains=b"[LOGIN-DELAY]")

    caps, err = await blocking(session)
    assert caps["LOGIN-DELAY"] == ["60"]
    assert b"wait" in err


@pytest_twisted.ensureDeferred
async def test_idle_timeout_frees_a_client_that_stopped_reading(idle: PopLab) -> None:
    """Stuck mid-RETR on a client that reads nothing: after the idle timeout the
    connection is cut, nothing is deleted and the maildrop lock is released."""
    big = b"Subject: big\r\n\r\n" + (b"z" * 1022 + b"\r\n") * 16000
    await idle.deliver(big)

    def stuck() -> None:
        c = idle.raw()
        c.login()
        c.send(b"RETR 1\r\n")
        time.sleep(2.5)  # read nothing while the server times out
        c.close()

    await blocking(stuck)
    await wait_unlocked(idle)
    assert len(await idle.store.mailboxes.messages([await inbox_id(idle)])) == 1
