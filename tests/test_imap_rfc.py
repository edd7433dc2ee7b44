"""IMAP protocol details from the compliance run of issue 12, over real
sockets: section echo, a long ID before login, invalid mailbox names,
new keywords, MODSEQ under concurrent STOREs, \\Recent, subscriptions."""

from __future__ import annotations

import imaplib
import random
import re
import smtplib
import threading
from pathlib import Path
from typing import Any

import pytest_twisted
import sqlalchemy as sa
from twisted.internet import threads

from exmaild.config import Config
from exmaild.mailstore.service import MailStore as Store

from .conftest import *  # noqa: F403 (fixtures)
from .daemon import Daemon, exmailctl, write_config
from .imaputil import (  # noqa: F401
    Raw,
    Server,
    blocking,
    imap_server_fixture,
    mail,
    on_reactor,
    start_server,
    stop_server,
)


# -- section echo (RFC 3501 §7.4.2) ----------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_header_fields_section_echoed_as_requested(imap_server: Server) -> None:
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("echo"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("a", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (from from)])")
        assert out[0].startswith(b"* 1 FETCH (BODY[HEADER.FIELDS (from from)] {"), out
        assert b"From: Bob <bob@example.test>\r\n\r\n" in out[0]
        assert out[0].count(b"From:") == 1  # the field itself once
        out = r.cmd("b", "FETCH 1 (BODY.PEEK[HEADER.FIELDS.NOT (Subject DATE)])")
        assert out[0].startswith(b"* 1 FETCH (BODY[HEADER.FIELDS.NOT (Subject DATE)] {"), out
        r.close()

    await blocking(run)


# -- ID before login (RFC 2971 §3.3) -------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_longest_id_allowed_before_login(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        pairs = " ".join(f'"field-{i:02d}-{"f" * 21}" "{chr(97 + i % 26) * 1024}"'
                         for i in range(30))
        line = f"ID ({pairs})"
        assert len(line) > 31_000
        out = r.cmd("a", line)
        assert out[0].startswith(b'* ID ("name" "exmaild"'), out
        assert out[-1] == b"a OK ID completed"
        r.login()
        assert r.cmd("b", "NOOP")[-1] == b"b OK NOOP completed"
        r.close()
        r = Raw(imap_server.port)  # a line past the pre-login bound is still refused
        r.send(b"c NOOP " + b"x" * 50000 + b"\r\n")
        assert r.line().startswith(b"c BAD [TOOBIG]")
        r.close()

    await blocking(run)


# -- invalid mailbox names: NO, not BAD -----------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_invalid_mailbox_names_get_no(imap_server: Server) -> None:
    await imap_server.account()

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        for i, name in enumerate(["a&b", "&2D0-", "&Jjo", "{3+}\r\na\x01b"]):
            out = r.cmd(f"c{i}", f"CREATE {name}")
            assert out[-1].startswith(f"c{i} NO ".encode()), out
            out = r.cmd(f"s{i}", f"SELECT {name}")
            assert out[-1].startswith(f"s{i} NO ".encode()), out
        out = r.cmd("l", 'LIST "" "a&b*"')
        assert out[-1].startswith(b"l NO "), out
        # NO is not a protocol error: many of them do not end the session.
        for i in range(25):
            assert r.cmd(f"x{i}", "STATUS &Jjo (MESSAGES)")[-1].startswith(f"x{i} NO".encode())
        assert r.cmd("n", "NOOP")[-1] == b"n OK NOOP completed"
        r.close()

    await blocking(run)


# -- new keywords: FLAGS before any FETCH shows them (RFC 3501 §7.2.6) -----------------------
def _before(lines: list[bytes], first: bytes, then: bytes) -> bool:
    """A line starting with ``first`` comes before the first containing ``then``."""
    a = next(i for i, x in enumerate(lines) if x.startswith(first))
    b = next(i for i, x in enumerate(lines) if then in x)
    return a < b


@pytest_twisted.ensureDeferred
async def test_new_keyword_announced_to_every_session(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(2):
        await imap_server.deliver(acct.id, mail(f"k{i}"))

    def run() -> None:
        a, b, c, d = (Raw(imap_server.port) for _ in range(4))
        for x in (a, b, c, d):
            x.login()
        a.cmd("s", "SELECT INBOX")
        b.cmd("s", "SELECT INBOX")
        c.cmd("s", "EXAMINE INBOX")
        out = d.cmd("s", "SELECT INBOX")
        assert b"$Fresh" not in out[0]
        d.send(b"i IDLE\r\n")
        assert d.line().startswith(b"+ ")
        out = a.cmd("a", "STORE 1 +FLAGS ($Fresh)")
        assert out[0].startswith(b"* FLAGS (") and b"$Fresh" in out[0], out
        assert out[1].startswith(b"* OK [PERMANENTFLAGS (") and b"$Fresh" in out[1], out
        assert _before(out, b"* FLAGS", b"FETCH"), out
        # The idling session hears of it: FLAGS first.
        pushed = [d.line(), d.line(), d.line()]
        assert pushed[0].startswith(b"* FLAGS (") and b"$Fresh" in pushed[0], pushed
        assert pushed[1].startswith(b"* OK [PERMANENTFLAGS ("), pushed
        assert pushed[2].startswith(b"* 1 FETCH (") and b"$Fresh" in pushed[2], pushed
        d.send(b"DONE\r\n")
        assert d.response("i")[-1].startswith(b"i OK")
        # Another read-write session, at its next command (here a FETCH).
        out = b.cmd("b", "FETCH 1:2 FLAGS")
        assert _before(out, b"* FLAGS", b"FETCH") and b"$Fresh" in out[0], out
        assert any(x.startswith(b"* OK [PERMANENTFLAGS (") for x in out)
        # A read-only one too, with the empty PERMANENTFLAGS of EXAMINE.
        out = c.cmd("c", "UID FETCH 1:* (UID FLAGS)")
        assert _before(out, b"* FLAGS", b"FETCH") and b"$Fresh" in out[0], out
        assert b"* OK [PERMANENTFLAGS ()] Flags permitted" in out
        # Told once: the next change with a known keyword brings no FLAGS.
        out = a.cmd("a2", "STORE 2 +FLAGS ($Fresh)")
        assert not any(x.startswith(b"* FLAGS") for x in out), out
        out = b.cmd("b2", "NOOP")
        assert not any(x.startswith(b"* FLAGS") for x in out), out
        assert b"* 2 FETCH (UID 2 FLAGS ($Fresh))" in out
        for x in (a, b, c, d):
            x.close()

    await blocking(run)


# -- MODSEQ never goes back within a session (RFC 7162 §3.1.3) ----------------------------------
_UID_MODSEQ = re.compile(rb"^\* \d+ FETCH \(.*\bUID (\d+)\b.*\bMODSEQ \((\d+)\)")
_HIGHEST = re.compile(rb"HIGHESTMODSEQ (\d+)")


@pytest_twisted.ensureDeferred
async def test_modseq_monotonic_under_concurrent_stores(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(6):
        await imap_server.deliver(acct.id, mail(f"m{i}"))
    problems: list[str] = []

    def session(n: int) -> None:
        rnd = random.Random(n)
        r = Raw(imap_server.port, timeout=60)
        r.login()
        r.cmd("e", "ENABLE CONDSTORE")
        r.cmd("s", "SELECT INBOX")
        last: dict[int, int] = {}
        top = 0

        def watch(lines: list[bytes]) -> None:
            nonlocal top
            for line in lines:
                m = _UID_MODSEQ.match(line)
                if m:
                    uid, ms = int(m.group(1)), int(m.group(2))
                    if ms < last.get(uid, 0):
                        problems.append(f"session {n}: UID {uid} MODSEQ {last[uid]} -> {ms}")
                    last[uid] = max(ms, last.get(uid, 0))
                    top = max(top, ms)

        for i in range(60):
            uid = rnd.randint(1, 6)
            flag = rnd.choice(["\\Seen", "\\Flagged", "\\Answered", "$A", "$B"])
            sign = rnd.choice("+-")
            watch(r.cmd(f"t{i}", f"UID STORE {uid} {sign}FLAGS ({flag})"))
            if i % 5 == 0:
                watch(r.cmd(f"f{i}", "FETCH 1:* (UID MODSEQ)"))
            if i % 10 == 0:
                out = r.cmd(f"n{i}", "STATUS INBOX (HIGHESTMODSEQ)")
                got = int(_HIGHEST.search(out[0]).group(1))  # type: ignore[union-attr]
                if got < top:  # what was sent before the STATUS line
                    problems.append(f"session {n}: HIGHESTMODSEQ {got} < MODSEQ {top} sent")
                watch(out)
        watch(r.cmd("z", "NOOP"))
        r.close()

    def run() -> None:
        threads = [threading.Thread(target=session, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    await blocking(run)
    assert not problems, problems[:10]


@pytest_twisted.ensureDeferred
async def test_modseq_not_rolled_back_by_a_late_store_result(imap_server: Server) -> None:
    """Session B's STORE commits first (MODSEQ m) but its result reaches the
    reactor after session S's STORE of the same message (m+1): S must not be
    shown the older MODSEQ and flags afterwards."""
    acct = await imap_server.account()
    await imap_server.deliver(acct.id, mail("race"))
    pool = imap_server.store.pool
    real = pool.transaction
    armed = threading.Event()
    committed, release = threading.Event(), threading.Event()

    async def held(fn: Any, **kw: Any) -> Any:
        hold = armed.is_set()
        armed.clear()
        result = await real(fn, **kw)
        if hold:  # committed; hand the result over only when told
            committed.set()
            await threads.deferToThread(release.wait, 20)
        return result

    pool.transaction = held  # type: ignore[method-assign]

    def run() -> None:
        s, b = Raw(imap_server.port), Raw(imap_server.port)
        for x in (s, b):
            x.login()
            x.cmd("e", "ENABLE CONDSTORE")
            x.cmd("s", "SELECT INBOX")
        armed.set()
        b.send(b"b STORE 1 +FLAGS ($B)\r\n")
        assert committed.wait(20)
        out = s.cmd("a", "STORE 1 +FLAGS ($S)")
        got = [_UID_MODSEQ.match(x) for x in out]
        top = max(int(m.group(2)) for m in got if m)
        # s selected first: \Recent is s's.
        assert b"* 1 FETCH (UID 1 FLAGS ($B $S \\Recent) MODSEQ (%d))" % top in out, out
        release.set()
        assert b.response("b")[-1] == b"b OK Store completed"
        for tag, command in (("c", "CAPABILITY"), ("n", "NOOP"), ("f", "FETCH 1 (FLAGS MODSEQ)")):
            out = s.cmd(tag, command)
            for m in filter(None, map(_UID_MODSEQ.match, out)):
                assert int(m.group(2)) >= top, out
            assert not any(b"FLAGS ($B \\Recent)" in x for x in out), out
        assert out[0] == b"* 1 FETCH (FLAGS ($B $S \\Recent) MODSEQ (%d))" % top
        s.close()
        b.close()

    try:
        await blocking(run)
    finally:
        release.set()
        del pool.transaction


# -- \Recent (RFC 3501 §2.3.2) ------------------------------------------------------------------
def _recent(out: list[bytes]) -> int:
    return int(next(x for x in out if x.endswith(b" RECENT")).split()[1])


def _status_recent(r: Raw, tag: str) -> int:
    out = r.cmd(tag, "STATUS INBOX (RECENT)")
    return int(out[0].split(b"RECENT ")[1].rstrip(b")"))


@pytest_twisted.ensureDeferred
async def test_recent_goes_to_one_session_and_survives_a_restart(
    imap_server: Server, cfg: Config
) -> None:
    acct = await imap_server.account()
    for i in range(2):  # nobody has INBOX selected
        await imap_server.deliver(acct.id, mail(f"early {i}"))

    def first() -> None:
        a, b, e = Raw(imap_server.port), Raw(imap_server.port), Raw(imap_server.port)
        for x in (a, b, e):
            x.login()
        assert _status_recent(a, "st") == 2
        # EXAMINE claims nothing, and sees what nobody claimed as \Recent.
        out = e.cmd("x", "EXAMINE INBOX")
        assert _recent(out) == 2
        assert e.cmd("xf", "FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))"
        out = a.cmd("s", "SELECT INBOX")
        assert _recent(out) == 2
        assert a.cmd("n", "SEARCH NEW")[0] == b"* SEARCH 1 2"
        assert a.cmd("f", "FETCH 2 FLAGS")[0] == b"* 2 FETCH (FLAGS (\\Recent))"
        out = b.cmd("s", "SELECT INBOX")
        assert _recent(out) == 0
        assert b.cmd("n", "SEARCH RECENT")[0] == b"* SEARCH"
        assert b.cmd("f", "FETCH 2 FLAGS")[0] == b"* 2 FETCH (FLAGS ())"
        # A delivery while both have it selected: whoever hears of it first.
        on_reactor(imap_server.deliver, acct.id, mail("third"))
        out = b.cmd("p", "NOOP")
        assert b"* 3 EXISTS" in out and _recent(out) == 1
        out = a.cmd("p", "NOOP")
        assert b"* 3 EXISTS" in out and _recent(out) == 2
        assert a.cmd("g", "FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS ())"
        assert b.cmd("g", "FETCH 3 FLAGS")[0] == b"* 3 FETCH (FLAGS (\\Recent))"
        assert _status_recent(e, "st") == 0
        for x in (a, b, e):
            x.close()

    await blocking(first)
    await imap_server.deliver(acct.id, mail("while nobody looks"))
    # A restart (or another node on the same database): a new store, no caches.
    await stop_server(imap_server)
    imap_server._listeners = []  # type: ignore[attr-defined]  (stopped; the fixture skips it)
    from twisted.internet import reactor

    store2 = Store(cfg, reactor)
    store2.open()
    store2.startService()
    srv2 = await start_server(cfg, store2)

    def second() -> None:
        c, d = Raw(srv2.port), Raw(srv2.port)
        c.login()
        d.login()
        assert _status_recent(c, "st") == 1
        out = c.cmd("s", "SELECT INBOX")
        assert b"* 4 EXISTS" in out and _recent(out) == 1
        assert c.cmd("f", "FETCH 3:4 FLAGS")[:2] == [b"* 3 FETCH (FLAGS ())",
                                                    b"* 4 FETCH (FLAGS (\\Recent))"]
        assert _recent(d.cmd("s", "SELECT INBOX")) == 0
        c.close()
        d.close()

    try:
        await blocking(second)
    finally:
        await stop_server(srv2)
        store2.stopService()


# -- subscriptions are names, not mailboxes (RFC 3501 §6.3.6-9, RFC 5258) --------------------------
@pytest_twisted.ensureDeferred
async def test_subscriptions_are_not_mailboxes(imap_server: Server) -> None:
    await imap_server.account()

    def names(out: list[bytes]) -> list[bytes]:
        return [x for x in out if x.startswith((b"* LIST", b"* LSUB"))]

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        assert b'* LSUB () "/" "INBOX"' in r.cmd("l0", 'LSUB "" "*"')  # system folders are
        out = r.cmd("c", "CREATE Projects/Alpha")[-1]
        assert out.startswith(b"c OK [MAILBOXID (") and out.endswith(b")] Create completed"), out
        # CREATE subscribes neither the mailbox nor its implicit parent.
        assert not any(b"Projects" in x for x in r.cmd("l1", 'LSUB "" "*"'))
        assert not any(b"Projects" in x for x in r.cmd("l2", 'LIST (SUBSCRIBED) "" "*"'))
        assert r.cmd("s", "SUBSCRIBE Projects/Alpha")[-1] == b"s OK Subscribe completed"
        assert r.cmd("d", "DELETE Projects/Alpha")[-1] == b"d OK Delete completed"
        # DELETE leaves the subscription.
        assert names(r.cmd("l3", 'LSUB "" "Projects/*"')) == [b'* LSUB () "/" "Projects/Alpha"']
        assert names(r.cmd("l4", 'LIST (SUBSCRIBED) "" "Projects/*"')) == [
            b'* LIST (\\NonExistent \\Subscribed) "/" "Projects/Alpha"']
        # RECURSIVEMATCH: a parent the pattern matches, with a subscribed child.
        assert names(r.cmd("l5", 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Pro%"')) == [
            b'* LIST (\\HasNoChildren) "/" "Projects" ("CHILDINFO" ("SUBSCRIBED"))']
        assert names(r.cmd("l6", 'LIST (SUBSCRIBED) "" "Pro%"')) == []
        # LSUB with % : the unsubscribed parent of a subscribed name is \Noselect.
        assert names(r.cmd("l7", 'LSUB "" "Pro%"')) == [b'* LSUB (\\Noselect) "/" "Projects"']
        # Plain LIST shows what exists only.
        assert not any(b"Alpha" in x for x in r.cmd("l8", 'LIST "" "*"'))
        # Forbidden option combinations (RFC 5258 §3).
        assert r.cmd("b1", 'LIST (RECURSIVEMATCH REMOTE) "" "*"')[-1].startswith(b"b1 BAD")
        assert r.cmd("b2", 'LIST (RECURSIVEMATCH) "" "*"')[-1].startswith(b"b2 BAD")
        # UNSUBSCRIBE of a subscribed name whose mailbox is gone: OK; then NO.
        out = r.cmd("u1", "UNSUBSCRIBE Projects/Alpha")
        assert out[-1] == b"u1 OK Unsubscribe completed"
        assert r.cmd("u2", "UNSUBSCRIBE Projects/Alpha")[-1].startswith(b"u2 NO [NONEXISTENT]")
        assert r.cmd("u3", "SUBSCRIBE Nowhere")[-1].startswith(b"u3 NO [NONEXISTENT]")
        assert names(r.cmd("l9", 'LSUB "" "Pro*"')) == []
        # RENAME takes the subscriptions along.
        r.cmd("c2", "CREATE Projects/Beta")
        r.cmd("s2", "SUBSCRIBE Projects/Beta")
        assert r.cmd("r", "RENAME Projects Archive")[-1] == b"r OK Rename completed"
        assert names(r.cmd("la", 'LSUB "" "*/Beta"')) == [b'* LSUB () "/" "Archive/Beta"']
        r.close()

    await blocking(run)


def test_recent_across_a_real_daemon_restart(tmp_path: Path) -> None:
    """twistd as deployed: mail delivered over SMTP while no session has INBOX
    selected is \\Recent for the next SELECT, before and after a restart."""
    config, ports = write_config(tmp_path)
    d = Daemon(config, ports, tmp_path)
    try:
        d.start(30)
        assert exmailctl(config, "domain", "add", "example.test").returncode == 0
        assert exmailctl(config, "user", "add", "dan@example.test",
                         "--password", "Secr3tPass9").returncode == 0

        def send(subject: str) -> None:
            with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as s:
                s.sendmail("bob@example.test", ["dan@example.test"],
                           mail(subject, to="dan@example.test"))

        def imap() -> imaplib.IMAP4:
            c = imaplib.IMAP4("127.0.0.1", ports["imap"], timeout=30)
            c.login("dan@example.test", "Secr3tPass9")
            return c

        send("one")
        a = imap()
        typ, data = a.status("INBOX", "(RECENT)")
        assert typ == "OK" and b"RECENT 1" in data[0], data
        a.select("INBOX")
        assert a.response("RECENT")[1] == [b"1"]
        a.logout()
        send("two")
        d.stop()
        d.start(30)
        b, c = imap(), imap()
        assert b"RECENT 1" in b.status("INBOX", "(RECENT)")[1][0]
        b.select("INBOX")
        assert b.response("EXISTS")[1] == [b"2"] and b.response("RECENT")[1] == [b"1"]
        typ, data = b.fetch("1:2", "(FLAGS)")
        assert [x for x in data] == [b"1 (FLAGS ())", b"2 (FLAGS (\\Recent))"], data
        c.select("INBOX")
        assert c.response("RECENT")[1] == [b"0"]
        b.logout()
        c.logout()
    finally:
        d.kill()


@pytest_twisted.ensureDeferred
async def test_recent_claim_failure_leaves_them_for_the_next_session(imap_server: Server) -> None:
    acct = await imap_server.account()
    for i in range(2):
        await imap_server.deliver(acct.id, mail(f"m{i}"))
    pool = imap_server.store.pool
    real = pool.transaction
    fail = threading.Event()

    async def failing(fn: Any, **kw: Any) -> Any:
        if fail.is_set():
            fail.clear()
            raise sa.exc.OperationalError("claim", {}, Exception("database is gone"))
        return await real(fn, **kw)

    pool.transaction = failing  # type: ignore[method-assign]

    def run() -> None:
        a, b = Raw(imap_server.port), Raw(imap_server.port)
        a.login()
        b.login()
        fail.set()
        out = a.cmd("s", "SELECT INBOX")  # the claim fails: the SELECT does not
        assert out[-1].startswith(b"s OK [READ-WRITE]") and _recent(out) == 0
        assert a.cmd("n", "NOOP")[-1] == b"n OK NOOP completed"
        out = b.cmd("s", "SELECT INBOX")
        assert _recent(out) == 2
        a.close()
        b.close()

    try:
        await blocking(run)
    finally:
        del pool.transaction


@pytest_twisted.ensureDeferred
async def test_recent_two_nodes_on_one_database(imap_server: Server, cfg: Config) -> None:
    """Two stores (as two nodes would have) on one database, both with INBOX
    selected: each new message is \\Recent on one of them only."""
    acct = await imap_server.account()
    for i in range(3):
        await imap_server.deliver(acct.id, mail(f"m{i}"))
    from twisted.internet import reactor

    store2 = Store(cfg, reactor)
    store2.open()
    store2.startService()
    srv2 = await start_server(cfg, store2)

    def run() -> None:
        a, b = Raw(imap_server.port), Raw(srv2.port)
        a.login()
        b.login()
        assert _recent(a.cmd("s", "SELECT INBOX")) == 3
        assert _recent(b.cmd("s", "SELECT INBOX")) == 0
        # Delivered through node 2: node 1's session hears of it first.
        on_reactor(srv2.deliver, acct.id, mail("via node 2"))
        out = a.cmd("n", "NOOP")
        assert b"* 4 EXISTS" in out and _recent(out) == 4
        out = b.cmd("n", "NOOP")
        assert b"* 4 EXISTS" in out and _recent(out) == 0
        assert b.cmd("f", "FETCH 4 FLAGS")[0] == b"* 4 FETCH (FLAGS ())"
        # And the other way round.
        on_reactor(imap_server.deliver, acct.id, mail("via node 1"))
        out = b.cmd("m", "NOOP")
        assert b"* 5 EXISTS" in out and _recent(out) == 1
        out = a.cmd("m", "NOOP")
        assert b"* 5 EXISTS" in out and _recent(out) == 4
        a.close()
        b.close()

    try:
        await blocking(run)
    finally:
        await stop_server(srv2)
        store2.stopService()
