"""POP3 against the real daemon (twistd): Debian's fetchmail fetching 1,000
messages with `keep` and without, over STLS and over implicit TLS with the
certificate checked, and a poplib session over pop3s."""

from __future__ import annotations

import os
import pickle
import poplib
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import Daemon, env, write_config

ADDRESS = "fetch@example.test"
PASSWORD = "Fetch3rPass"
N = 1000

needs_fetchmail = pytest.mark.skipif(
    shutil.which("fetchmail") is None, reason="fetchmail is not installed (CI installs it)"
)


def messages(n: int) -> list[bytes]:
    """Varied messages: plain, with dot lines, multipart with base64, CJK subjects."""
    out = []
    for i in range(n):
        subject = f"=?UTF-8?B?5pyI5bqm5oql5ZGK?= {i}" if i % 3 == 0 else f"report {i}"
        body = "".join(f"line {k} of message {i}\r\n" for k in range(i % 40 + 1))
        if i % 7 == 0:
            body += ".\r\n..two dots\r\n.one dot\r\n"
        head = (f"From: Sender {i % 13} <s{i % 13}@example.org>\r\nTo: {ADDRESS}\r\n"
                f"Subject: {subject}\r\nMessage-ID: <fetch{i}@example.org>\r\n"
                f"Date: Fri, 27 Nov 2026 10:{i % 60:02d}:00 +0800\r\nMIME-Version: 1.0\r\n")
        if i % 5 == 0:
            attachment = "QUJD" * 19 + "\r\n"
            msg = (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
                   "--b\r\nContent-Type: text/plain\r\n\r\n" + body +
                   "--b\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Transfer-Encoding: base64\r\n\r\n" + attachment * (i % 50 + 1) +
                   "--b--\r\n")
        else:
            msg = head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
        out.append(msg.encode())
    return out


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("pop3d")
    config, ports = write_config(tmp)
    msgs = messages(N)
    subprocess.run([sys.executable, "-m", "tests.pop3_fill", str(config), ADDRESS, PASSWORD],
                   input=pickle.dumps(msgs), check=True, env=env(),
                   cwd=Path(__file__).resolve().parent.parent, timeout=120)
    d = Daemon(config, ports, tmp)
    d.start(wait=30)
    d.messages = msgs  # type: ignore[attr-defined]
    yield d
    d.stop()
    out = d.output()
    assert "Traceback" not in out, out[-3000:]


def tls_context(d: Daemon) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(d.cwd / "var" / "tls" / "selfsigned.crt"))
    return ctx


def test_poplib_session_against_the_daemon_over_pop3s(daemon: Daemon) -> None:
    msgs = daemon.messages  # type: ignore[attr-defined]
    c = poplib.POP3_SSL("localhost", daemon.ports["pop3s"], context=tls_context(daemon),
                        timeout=30)
    caps = c.capa()
    assert "STLS" not in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
    c.user(ADDRESS)
    c.pass_(PASSWORD)
    assert c.stat() == (N, sum(map(len, msgs)))
    # (The fill ingests concurrently, so UID order need not be list order.)
    sizes = [int(line.split()[1]) for line in c.list()[1]]
    assert sorted(sizes) == sorted(len(m) for m in msgs)
    assert len({line.split()[1] for line in c.uidl()[1]}) == N
    wanted = set(msgs)
    for i in (1, 8, 500, N):
        resp, lines, _ = c.retr(i)
        assert b"".join(line + b"\r\n" for line in lines) in wanted
        assert resp == b"+OK %d octets" % sizes[i - 1]
    c.quit()  # nothing deleted: the fetchmail test below needs all of them
    assert "pop3 session end: user=fetch@example.test" in daemon.wait_for_log("pop3 session end")


def run_fetchmail(d: Daemon, tmp: Path, *, service: str, keep: bool) -> tuple[int, str, int]:
    """One fetchmail run; returns (exit status, its log, messages it delivered)."""
    out = tmp / "out.bsmtp"
    out.unlink(missing_ok=True)
    cert = d.cwd / "var" / "tls" / "selfsigned.crt"
    ssl_opts = "ssl" if service == "pop3s" else "sslproto tls1.2+"
    rc = tmp / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\nset no syslog\n"
        f"poll localhost protocol pop3 port {d.ports[service]} uidl timeout 60\n"
        f'  user "{ADDRESS}" password "{PASSWORD}" is root here\n'
        f"  {ssl_opts} sslcertck sslcertfile {cert}\n"
        f"  {'keep' if keep else 'nokeep fetchall'}\n"
        f"  bsmtp {out}\n"
    )
    rc.chmod(0o600)
    proc = subprocess.run(
        ["fetchmail", "-f", str(rc), "-i", str(tmp / "fetchids"), "--pidfile",
         str(tmp / "fetchmail.pid"), "--nodetach", "-v"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HOME": str(tmp), "FETCHMAILHOME": str(tmp)},
    )
    data = out.read_bytes() if out.exists() else b""
    return proc.returncode, proc.stdout + proc.stderr, data.count(b"\r\nDATA\r\n") + (
        1 if data.startswith(b"DATA\r\n") else 0)


@needs_fetchmail
def test_fetchmail_keep_then_fetch_and_delete(daemon: Daemon, tmp_path: Path) -> None:
    # 1: over STLS on the plain port, keep everything on the server.
    status, log, got = run_fetchmail(daemon, tmp_path, service="pop3", keep=True)
    assert status == 0 and got == N, log[-3000:]
    assert f"{N} messages for {ADDRESS}" in log, log[-3000:]
    assert "STLS" in log, log[-3000:]
    # 2: over implicit TLS; the UIDLs say everything is known: nothing new.
    status, log, got = run_fetchmail(daemon, tmp_path, service="pop3s", keep=True)
    assert status == 1 and got == 0, log[-3000:]
    assert f"{N} messages ({N} seen) for {ADDRESS}" in log, log[-3000:]
    # 3: fetch all and delete them.
    status, log, got = run_fetchmail(daemon, tmp_path, service="pop3s", keep=False)
    assert status == 0 and got == N, log[-3000:]
    assert "flushed" in log and "error" not in log.lower(), log[-3000:]
    c = poplib.POP3_SSL("localhost", daemon.ports["pop3s"], context=tls_context(daemon))
    c.user(ADDRESS)
    c.pass_(PASSWORD)
    assert c.stat() == (0, 0)
    c.quit()
