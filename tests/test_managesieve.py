"""ManageSieve (RFC 5804) in process on the real store (SQLite and
PostgreSQL), driven by Debian's sieve-connect over STARTTLS and by a raw
socket for the protocol details; a script activated over ManageSieve decides
the next SMTP delivery."""

from __future__ import annotations

import base64
import os
import shutil
import smtplib
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from exmaild.config import Config
from exmaild.protocols.managesieve.server import ManageSieveFactory
from exmaild.service import endpoint
from exmaild.store import imapfolders
from exmaild.store.connector import Store

from .smtputil import PASSWORD, SmtpLab, blocking, mail, start_lab, with_cfg
from .test_sieve_delivery import placed

SIEVE_CONNECT = shutil.which("sieve-connect")


async def _start(store: Store, cfg: Config) -> tuple[SmtpLab, Any]:
    lab = await start_lab(store, with_cfg(cfg))
    port = await endpoint(lab.app, "managesieve", "127.0.0.1", 0).listen(
        ManageSieveFactory(lab.app))
    return lab, port


async def _stop(lab: SmtpLab, port: Any) -> None:
    await port.stopListening()
    for p in lab._ports:  # type: ignore[attr-defined]
        await p.stopListening()


@pytest_twisted.async_yield_fixture
async def lab(store: Store, cfg: Config) -> AsyncIterator[tuple[SmtpLab, int]]:
    smtp, port = await _start(store, cfg)
    yield smtp, port.getHost().port
    await _stop(smtp, port)


@pytest_twisted.async_yield_fixture
async def sqlite_lab(sqlite_cfg: Config) -> AsyncIterator[tuple[SmtpLab, int]]:
    """The client test needs no second database: the protocol test runs on both."""
    from twisted.internet import reactor

    from exmaild.mailstore.service import MailStore

    store = MailStore(sqlite_cfg, reactor)
    store.open()
    store.startService()
    smtp, port = await _start(store, sqlite_cfg)
    yield smtp, port.getHost().port
    await _stop(smtp, port)
    store.stopService()


def sieve_connect(port: int, *args: str, user: str = "bob@example.test",
                  password: str = PASSWORD) -> subprocess.CompletedProcess:
    r, w = os.pipe()
    os.write(w, password.encode() + b"\n")
    os.close(w)
    try:
        return subprocess.run(
            [SIEVE_CONNECT or "sieve-connect", "--server", "127.0.0.1", "--port", str(port),
             "--user", user, "--passwordfd", str(r), "--notlsverify", "--authmech", "PLAIN",
             *args],
            capture_output=True, text=True, timeout=60, pass_fds=(r,), stdin=subprocess.DEVNULL)
    finally:
        os.close(r)


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.f = self.sock.makefile("rb")
        self.greeting = self.response()

    def response(self) -> list[bytes]:
        """Lines up to and including the OK/NO/BYE line (literals inlined)."""
        lines = []
        while True:
            line = self.f.readline()
            if not line:
                return lines
            if line.rstrip().endswith(b"}") and b"{" in line:
                n = int(line.rstrip()[line.rindex(b"{") + 1 : -1].rstrip(b"+"))
                line = line + self.f.read(n) + self.f.readline()
            lines.append(line)
            if line[:2] in (b"OK", b"NO") or line[:3] == b"BYE":
                return lines

    def cmd(self, data: bytes) -> list[bytes]:
        self.sock.sendall(data)
        return self.response()

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _login(port: int) -> Raw:
    c = Raw(port)
    token = base64.b64encode(b"\0bob@example.test\0" + PASSWORD.encode()).decode()
    assert c.cmd(f'AUTHENTICATE "PLAIN" "{token}"\r\n'.encode())[-1].startswith(b"OK")
    return c


GOOD = b'require "fileinto";\r\nif header :contains "subject" "report" {\r\n' \
       b'  fileinto "Reports";\r\n}\r\n'


@pytest.mark.skipif(SIEVE_CONNECT is None, reason="sieve-connect not installed")
@pytest_twisted.ensureDeferred
async def test_sieve_connect_upload_check_activate(sqlite_lab: tuple[SmtpLab, int],
                                                   tmp_path: Path) -> None:
    smtp, port = sqlite_lab
    await smtp.store.pool.transaction(lambda c: imapfolders.create(c, smtp.bob, "Reports"))
    good = tmp_path / "good.sieve"
    good.write_bytes(GOOD)
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "fileinto";\n\nfileinto "x"\nkeep;\n')
    r = await blocking(sieve_connect, port, "--checkscript", "--localsieve", str(bad))
    assert r.returncode != 0 and "line 4" in (r.stdout + r.stderr), r
    r = await blocking(sieve_connect, port, "--upload", "--localsieve", str(bad),
                       "--remotesieve", "bad")
    assert r.returncode != 0 and "line 4" in (r.stdout + r.stderr), r
    r = await blocking(sieve_connect, port, "--upload", "--localsieve", str(good),
                       "--remotesieve", "filters")
    assert r.returncode == 0, r
    r = await blocking(sieve_connect, port, "--activate", "--remotesieve", "filters")
    assert r.returncode == 0, r
    r = await blocking(sieve_connect, port, "--list")
    assert r.returncode == 0 and "filters" in r.stdout, r
    out = tmp_path / "back.sieve"
    r = await blocking(sieve_connect, port, "--download", "--remotesieve", "filters",
                       "--localsieve", str(out))
    assert r.returncode == 0 and out.read_bytes() == GOOD, r
    r = await blocking(lambda: sieve_connect(port, "--list", password="wrong"))
    assert r.returncode != 0
    # The activated script decides the next delivery.
    msg = mail(1).replace(b"Subject: message 1", b"Subject: monthly report")

    def send() -> dict:
        with smtplib.SMTP("127.0.0.1", smtp.mx, timeout=30) as c:
            return c.sendmail("carol@remote.test", ["bob@example.test"], msg)

    assert await blocking(send) == {}
    assert [p[:2] for p in await blocking(placed, smtp, "bob@example.test")] == [
        ("Reports", "monthly report")]


@pytest_twisted.ensureDeferred
async def test_protocol_commands(lab: tuple[SmtpLab, int]) -> None:
    _, port = lab

    def session() -> None:
        c = Raw(port)
        greet = b"".join(c.greeting)
        assert b'"IMPLEMENTATION"' in greet and b'"STARTTLS"' in greet
        assert b'"SIEVE" "fileinto reject ereject envelope body imap4flags' in greet
        assert b'"VERSION" "1.0"' in greet and c.greeting[-1].startswith(b"OK")
        assert c.cmd(b'LISTSCRIPTS\r\n')[-1].startswith(b'NO "Log in first"')
        c.close()
        c = _login(port)
        assert c.cmd(b'HAVESPACE "a" 100\r\n') == [b"OK\r\n"]
        assert c.cmd(b'HAVESPACE "a" 99999999\r\n')[-1].startswith(b"NO (QUOTA/MAXSIZE)")
        script = b'keep;\r\n'
        assert c.cmd(b'PUTSCRIPT "one" {%d+}\r\n%s\r\n' % (len(script), script)) == [b"OK\r\n"]
        assert c.cmd(b'PUTSCRIPT "two" "discard;"\r\n') == [b"OK\r\n"]
        r = c.cmd(b'PUTSCRIPT "bad" "if true {\\r\\n"\r\n')
        assert r[-1].startswith(b'NO "line 1')
        r = c.cmd(b'CHECKSCRIPT {22+}\r\nrequire "x";\r\nkeep;\r\n\r\n')
        assert r[-1].startswith(b"NO") and b"line 1" in r[-1] and b"unsupported" in r[-1]
        assert c.cmd(b'SETACTIVE "one"\r\n') == [b"OK\r\n"]
        assert c.cmd(b'LISTSCRIPTS\r\n') == [b'"one" ACTIVE\r\n', b'"two"\r\n', b"OK\r\n"]
        assert c.cmd(b'GETSCRIPT "one"\r\n') == [b"{7}\r\nkeep;\r\n\r\n", b"OK\r\n"]
        assert c.cmd(b'GETSCRIPT "nope"\r\n')[-1].startswith(b"NO (NONEXISTENT)")
        assert c.cmd(b'DELETESCRIPT "one"\r\n')[-1].startswith(b"NO (ACTIVE)")
        assert c.cmd(b'RENAMESCRIPT "two" "one"\r\n')[-1].startswith(b"NO (ALREADYEXISTS)")
        assert c.cmd(b'RENAMESCRIPT "two" "three"\r\n') == [b"OK\r\n"]
        assert c.cmd(b'DELETESCRIPT "three"\r\n') == [b"OK\r\n"]
        assert c.cmd(b'SETACTIVE ""\r\n') == [b"OK\r\n"]
        assert c.cmd(b'LISTSCRIPTS\r\n') == [b'"one"\r\n', b"OK\r\n"]
        assert c.cmd(b'NOOP "abc"\r\n') == [b'OK (TAG "abc") "Done"\r\n']
        assert c.cmd(b'FROB\r\n')[-1].startswith(b"NO")
        assert c.cmd(b'"unterminated\r\n')[-1].startswith(b"NO")
        # A literal beyond the size limit ends the session with BYE.
        assert c.cmd(b'PUTSCRIPT "big" {99999999+}\r\n')[-1].startswith(b"BYE (QUOTA/MAXSIZE)")
        c.close()
        c = Raw(port)
        assert c.cmd(b"LOGOUT\r\n")[-1].startswith(b"OK")
        c.close()

    await blocking(session)
