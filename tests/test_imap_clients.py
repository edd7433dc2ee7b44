"""Real clients and the sessions real clients send.

mbsync (isync) syncs a 1,000-message mailbox both ways against the real
daemon (twistd), twice; Foxmail's session runs against the daemon too;
Outlook's and iOS Mail's against an in-process listener.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer

from exmaild.config import load_config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.service import MailStore
from exmaild.store import flags as fl

from .conftest import *  # noqa: F403 (fixtures)
from .daemon import Daemon, write_config
from .imaputil import (  # noqa: F401
    _HASH,
    PASSWORD,
    Raw,
    Server,
    blocking,
    imap_server_fixture,
    mail,
    on_reactor,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import mailgen  # noqa: E402

USER = "alice@example.test"


async def _fill_daemon_store(config: Path, messages: list[bytes]) -> None:
    """Create the account and ingest before the daemon starts (one ingest path)."""
    from twisted.internet import reactor

    store = MailStore(load_config(str(config)), reactor)
    store.open()
    store.startService()
    try:
        await store.directory.add_domain("example.test")
        acct = await store.directory.add_account(USER, _HASH)
        base = int(time.time()) - len(messages) - 10
        await defer.gatherResults([
            defer.Deferred.fromCoroutine(store.ingestor.ingest(IngestRequest(
                raw, [Target(acct.id, "INBOX", fl.SEEN if i % 3 else 0)],
                internal_date=base + i)))
            for i, raw in enumerate(messages)
        ], consumeErrors=True)
    finally:
        store.stopService()


@pytest.fixture
def daemon_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    d = Daemon(config, ports, tmp_path)
    yield config, ports, d
    d.kill()


def _maildir_files(root: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        p = Path(dirpath)
        if p.name in ("cur", "new"):
            out.setdefault(str(p.parent.relative_to(root)), set()).update(filenames)
    return out


def _mbsync(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mbsync", "-c", str(conf), "-a", "-V"], capture_output=True,
                          text=True, timeout=300)


def _summary(out: str) -> str:
    return "\n".join(line for line in out.splitlines()
                     if re.search(r"(propagat|Processed|\+\d)", line))


@pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync (mbsync) is not installed")
@pytest_twisted.ensureDeferred
async def test_daemon_mbsync_both_ways_twice_then_foxmail(daemon_dir, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One daemon (twistd, as deployed) for mbsync and for Foxmail's session."""
    config, ports, daemon = daemon_dir
    messages = list(mailgen.iter_messages(1000, seed=3, pool=40))
    await _fill_daemon_store(config, messages)
    await blocking(daemon.start, 30)
    local = tmp_path / "maildir"
    inbox = local / "INBOX"
    for sub in ("cur", "new", "tmp"):
        (inbox / sub).mkdir(parents=True)
        (local / "Local" / sub).mkdir(parents=True)
    for i, raw in enumerate(mailgen.iter_messages(50, seed=4, pool=10)):  # new on the client
        (inbox / "new" / f"{1700000000 + i}.local{i}.host").write_bytes(raw)
    for i in range(5):
        (local / "Local" / "cur" / f"{1700000100 + i}.lf{i}.host:2,S").write_bytes(
            mail(f"local folder {i}"))
    conf = tmp_path / "mbsyncrc"
    conf.write_text(f"""
IMAPAccount exmaild
Host 127.0.0.1
Port {ports["imap"]}
User {USER}
Pass {PASSWORD}
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account exmaild

MaildirStore local
Path {local}/
Inbox {inbox}
SubFolders Verbatim

Channel sync
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
""")

    def run() -> None:
        import imaplib

        first = _mbsync(conf)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "error" not in first.stderr.lower(), first.stderr[-3000:]
        files = _maildir_files(local)
        assert len(files["INBOX"]) == 1050
        c = imaplib.IMAP4("127.0.0.1", ports["imap"])
        c.login(USER, PASSWORD)
        status = {}
        for box in ("INBOX", "Local", "Sent", "Junk"):
            typ, data = c.status(box, "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
            assert typ == "OK", (box, data)
            status[box] = data[0]
        assert b"MESSAGES 1050" in status["INBOX"] and b"MESSAGES 5" in status["Local"]
        c.logout()
        second = _mbsync(conf)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert _maildir_files(local) == files  # nothing changed on this side
        c = imaplib.IMAP4("127.0.0.1", ports["imap"])
        c.login(USER, PASSWORD)
        for box, before in status.items():
            typ, data = c.status(box, "(MESSAGES UIDNEXT HIGHESTMODSEQ)")
            assert data[0] == before, (box, before, data[0])  # nor on the server's
        # A flag change on the server travels on the next run.
        c.select("INBOX")
        c.uid("STORE", "1:10", "+FLAGS", "(\\Flagged)")
        c.logout()
        third = _mbsync(conf)
        assert third.returncode == 0, third.stderr[-3000:]
        flagged = [n for n in _maildir_files(local)["INBOX"] if re.search(r":2,[A-Z]*F", n)]
        assert len(flagged) == 10
        foxmail(ports["imap"], 1050)

    await blocking(run)
    assert daemon.stop() in (0, -15)
    assert "Traceback" not in daemon.output()


def foxmail(port: int, exists: int) -> None:
    """LOGIN, ID, XLIST, SELECT "INBOX", UID FETCH 1:* (UID FLAGS), the header
    fetch of the newest mail, IDLE with a delivery pushed, as Foxmail 7.2 sends them."""
    import imaplib

    r = Raw(port)
    assert r.cmd("A0001", "CAPABILITY")[-1].startswith(b"A0001 OK")
    assert r.cmd("A0002", f'LOGIN "{USER}" "{PASSWORD}"')[-1].startswith(b"A0002 OK")
    out = r.cmd("A0003", 'ID ("name" "Foxmail" "version" "7.2.25.228" "os" "Windows")')
    assert out[-1] == b"A0003 OK ID completed"
    out = r.cmd("A0004", 'XLIST "" "*"')
    assert b'* XLIST (\\HasNoChildren \\Inbox) "/" "INBOX"' in out
    assert b'* XLIST (\\HasNoChildren \\Sent) "/" "Sent"' in out
    out = r.cmd("A0005", 'SELECT "INBOX"')
    assert b"* %d EXISTS" % exists in out and out[-1].startswith(b"A0005 OK [READ-WRITE]")
    out = r.cmd("A0006", "UID FETCH 1:* (UID FLAGS)")
    assert len(out) == exists + 1 and out[0].startswith(b"* 1 FETCH (UID 1 FLAGS (")
    out = r.cmd("A0007", f"UID FETCH {exists - 5}:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])")
    assert len(out) == 7 and b"BODY[HEADER] {" in out[0] and b"\r\nSubject: " in out[0]
    r.send(b"A0008 IDLE\r\n")
    assert r.line() == b"+ idling"
    other = imaplib.IMAP4("127.0.0.1", port)
    other.login(USER, PASSWORD)
    assert other.append("INBOX", None, None, mail("pushed"))[0] == "OK"
    assert r.line() == b"* %d EXISTS" % (exists + 1)
    r.send(b"DONE\r\n")
    assert r.response("A0008")[-1] == b"A0008 OK Idle completed"
    assert r.cmd("A0009", "LOGOUT")[-1] == b"A0009 OK Logout completed"
    other.logout()


@pytest_twisted.ensureDeferred
async def test_outlook_session(imap_server: Server) -> None:
    """LOGIN, LIST "" "*", SELECT, UID FETCH, UID STORE, UID MOVE to "Deleted
    Items", APPEND to "Sent Items" with APPENDUID, IDLE after SELECT."""
    acct = await imap_server.account()
    for i in range(10):
        await imap_server.deliver(acct.id, mail(f"outlook {i}"))

    def run() -> None:
        r = Raw(imap_server.port)
        r.cmd("1", "CAPABILITY")
        assert r.cmd("2", f"LOGIN {USER} {PASSWORD}")[-1].startswith(b"2 OK")
        out = r.cmd("3", 'LIST "" "*"')
        assert len(out) == 6 and out[-1] == b"3 OK LIST completed"
        out = r.cmd("4", 'SELECT "INBOX"')
        assert b"* 10 EXISTS" in out
        out = r.cmd("5", "UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
                         "(From To Cc Subject Date Message-ID Priority X-Priority References "
                         "Newsgroups In-Reply-To Content-Type Reply-To)])")
        assert len(out) == 11 and b"Subject: outlook 0\r\n" in out[0]
        out = r.cmd("6", "UID STORE 3 +FLAGS (\\Seen)")
        assert out[0] == b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent))"
        out = r.cmd("7", 'UID MOVE 4 "Deleted Items"')
        assert out[0].startswith(b"* OK [COPYUID ") and out[1] == b"* 4 EXPUNGE"
        msg = mail("sent from outlook")
        r.send(b'8 APPEND "Sent Items" (\\Seen) {%d}\r\n' % len(msg))
        assert r.line().startswith(b"+ ")
        r.send(msg + b"\r\n")
        out = r.response("8")
        assert re.match(rb"8 OK \[APPENDUID \d+ 1\] Append completed", out[-1])
        r.send(b"9 IDLE\r\n")
        assert r.line() == b"+ idling"
        on_reactor(imap_server.deliver, acct.id, mail("new while idle"))
        assert r.line() == b"* 10 EXISTS"
        r.send(b"DONE\r\n")
        assert r.response("9")[-1] == b"9 OK Idle completed"
        out = r.cmd("10", 'STATUS "Deleted Items" (MESSAGES)')
        assert out[0] == b'* STATUS "Deleted Items" (MESSAGES 1)'
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_ios_partial_body_fetches(imap_server: Server) -> None:
    acct = await imap_server.account()
    big = mail("big one", "".join(f"line {i:06d} of a long message\r\n" for i in range(20000)))
    assert len(big) > 393216
    await imap_server.deliver(acct.id, big)

    def run() -> None:
        r = Raw(imap_server.port)
        r.login()
        r.cmd("s", "SELECT INBOX")
        got = b""
        origin = 0
        while True:
            out = r.cmd("f", f"UID FETCH 1 (UID BODY.PEEK[]<{origin}.393216>)")
            head, _, rest = out[0].partition(b"\r\n")
            assert head.startswith(b"* 1 FETCH (UID 1 BODY[]<%d> {" % origin), head
            n = int(head[head.rindex(b"{") + 1 : -1])
            got += rest[:n]
            if n < 393216:
                break
            origin += n
        assert got == big
        r.close()

    await blocking(run)


@pytest_twisted.ensureDeferred
async def test_big_fetches_over_implicit_tls(imap_server: Server) -> None:
    """The chunk producer behind TLS (imaps): a 3 MB message and 200 others."""
    acct = await imap_server.account()
    big = mail("big", "x" * 76 + "\r\n") * 1 + mail("huge", ("y" * 998 + "\r\n") * 3000)
    await imap_server.deliver(acct.id, big)
    await imap_server.fill(acct.id, [mail(f"m{i}", "body\r\n" * i) for i in range(200)])

    def run() -> None:
        import imaplib

        from .imaputil import tls_context

        c = imaplib.IMAP4_SSL("127.0.0.1", imap_server.tls_port, ssl_context=tls_context())
        c.login(USER, PASSWORD)
        c.select("INBOX")
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == big
        typ, data = c.fetch("1:*", "(UID BODY.PEEK[HEADER] BODYSTRUCTURE)")
        assert typ == "OK" and sum(1 for d in data if isinstance(d, tuple)) == 201
        c.logout()

    await blocking(run)
