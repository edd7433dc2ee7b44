"""SMTP against the real daemon (twistd): Debian's swaks with STARTTLS, AUTH,
implicit TLS and pipelining; mail to a remote address leaving through the queue
runner (to a local stand-in for the remote MX); and a crash test: kill -9
during parallel SMTP load, restart, and every acknowledged message is in its
mailbox exactly once and every queued one is delivered."""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from exmaild.store import model as m

from .daemon import REPO, Daemon, env, write_config
from .smtputil import Sink

PASSWORD = "Subm1tPass"
needs_swaks = pytest.mark.skipif(
    shutil.which("swaks") is None, reason="swaks is not installed (CI installs it)"
)


@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def start_daemon(tmp: Path, sink: Sink, **sections: dict) -> Daemon:
    config, ports = write_config(
        tmp,
        queue={"relayhost": f"[127.0.0.1]:{sink.port}", "relayhost_tls": "none",
               "scan_interval": 0.5},
        log={"json_file": "-"},
        **sections,
    )
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD,
                    "alice@example.test", "bob@example.test"],
                   check=True, env=env(), cwd=REPO, timeout=120)
    d = Daemon(config, ports, tmp)
    d.start(wait=60)
    return d


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("smtpd"), sink)
    yield d
    d.stop()
    assert "Traceback" not in d.output(), d.output()[-3000:]


def inbox(d: Daemon, address: str, mailbox: str = "INBOX") -> list[str]:
    """Message-IDs in a mailbox, in UID order."""
    eng = sa.create_engine(f"sqlite:///{d.cwd / 'var' / 'exmaild.sqlite'}")
    try:
        with eng.connect() as c:
            return list(c.execute(
                sa.select(m.contents.c.message_id)
                .select_from(m.messages.join(m.mailboxes).join(m.accounts).join(m.contents))
                .where(m.accounts.c.address == address, m.mailboxes.c.name == mailbox)
                .order_by(m.messages.c.uid)
            ).scalars())
    finally:
        eng.dispose()


def wait_for(cond, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--timeout", "30", *args],
                          capture_output=True, text=True, timeout=90)


@needs_swaks
def test_swaks_submissions_to_local_and_remote(daemon: Daemon, sink: Sink) -> None:
    """Thunderbird-like settings: implicit TLS on 465, AUTH, one local and one remote."""
    r = swaks("--port", str(daemon.ports["submissions"]), "--tls-on-connect",
              "--auth", "PLAIN", "--auth-user", "alice@example.test",
              "--auth-password", PASSWORD, "--from", "alice@example.test",
              "--to", "bob@example.test,friend@remote.test",
              "--header", "Message-Id: <swaks-465@example.test>", "--body", "Hello from 465.")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"<~  250 2\.0\.0 Ok: queued as [0-9A-F]{12}", r.stdout), r.stdout
    assert "<swaks-465@example.test>" in inbox(daemon, "bob@example.test")
    assert "<swaks-465@example.test>" in inbox(daemon, "alice@example.test", "Sent")
    wait_for(lambda: any(b"swaks-465" in msg for _, _, msg in sink.messages()))
    [(sender, rcpts, msg)] = [x for x in sink.messages() if b"swaks-465" in x[2]]
    assert (sender, rcpts) == ("alice@example.test", ["friend@remote.test"])
    assert msg.startswith(b"Received: from ") and b"Return-Path" not in msg


@needs_swaks
def test_swaks_starttls_auth_login_on_587(daemon: Daemon) -> None:
    r = swaks("--port", str(daemon.ports["submission"]), "--tls", "--auth", "LOGIN",
              "--auth-user", "bob@example.test", "--auth-password", PASSWORD,
              "--from", "bob@example.test", "--to", "alice@example.test",
              "--header", "Message-Id: <swaks-587@example.test>")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in r.stdout
    assert "<~  235 2.7.0 Authentication successful" in r.stdout
    assert "<swaks-587@example.test>" in inbox(daemon, "alice@example.test")
    bad = swaks("--port", str(daemon.ports["submission"]), "--tls", "--auth", "PLAIN",
                "--auth-user", "bob@example.test", "--auth-password", "Wrong1Pass",
                "--from", "bob@example.test", "--to", "alice@example.test")
    assert bad.returncode != 0 and "535 5.7.8" in bad.stdout


@needs_swaks
def test_swaks_pipelining_to_the_mx(daemon: Daemon) -> None:
    r = swaks("--port", str(daemon.ports["smtp"]), "--pipeline",
              "--from", "someone@remote.test", "--to", "alice@example.test,bob@example.test",
              "--header", "Message-Id: <swaks-pipe@remote.test>")
    assert r.returncode == 0, r.stdout + r.stderr
    # swaks sent MAIL, both RCPTs and DATA as one group and read the replies in order.
    assert re.search(r" -> MAIL FROM:<someone@remote.test>\n -> RCPT TO:<alice@example.test>\n"
                     r" -> RCPT TO:<bob@example.test>\n -> DATA\n<-  250 2.1.0 Ok\n"
                     r"<-  250 2.1.5 Ok\n<-  250 2.1.5 Ok\n<-  354 ", r.stdout), r.stdout
    assert "<swaks-pipe@remote.test>" in inbox(daemon, "alice@example.test")
    assert "<swaks-pipe@remote.test>" in inbox(daemon, "bob@example.test")
    denied = swaks("--port", str(daemon.ports["smtp"]), "--pipeline",
                   "--from", "someone@remote.test", "--to", "victim@elsewhere.test")
    assert "554 5.7.1 <victim@elsewhere.test>: Relay access denied" in denied.stdout


def test_crash_during_parallel_load(tmp_path: Path, sink: Sink) -> None:
    d = start_daemon(tmp_path, sink)
    acked: list[tuple[str, bool]] = []  # (Message-ID, has a remote recipient)
    lock = threading.Lock()
    stop = threading.Event()

    def session(n: int) -> None:
        submit = n < 2  # two members submitting (local + remote), eight MX clients
        port = d.ports["submission" if submit else "smtp"]
        try:
            c = smtplib.SMTP("127.0.0.1", port, timeout=20)
            if submit:
                c.login("alice@example.test", PASSWORD)
            for i in range(40):
                if stop.is_set():
                    break
                mid = f"<crash-{n}-{i}@test>"
                rcpts = ["bob@example.test"] + ([f"r{n}@remote.test"] if submit else [])
                msg = f"From: x@test\r\nMessage-ID: {mid}\r\nSubject: {n}/{i}\r\n\r\nbody\r\n"
                c.sendmail("alice@example.test" if submit else "x@remote.test", rcpts, msg)
                with lock:
                    acked.append((mid, submit))
        except (OSError, smtplib.SMTPException):
            pass  # the daemon was killed under us: that message was not acknowledged

    threads = [threading.Thread(target=session, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 120 or not any(t.is_alive() for t in threads), 120)
    d.kill()  # SIGKILL, mid-load
    stop.set()
    for t in threads:
        t.join(30)
    with lock:
        done = list(acked)
    assert 120 <= len(done) < 400  # killed mid-load

    d2 = Daemon(d.config, d.ports, d.cwd)
    d2.start(wait=60)
    try:
        stored = Counter(inbox(d2, "bob@example.test"))
        for mid, _ in done:
            assert stored[mid] == 1, (mid, stored[mid])
        assert max(stored.values()) == 1  # nothing twice, acknowledged or not
        remote = {mid for mid, submitted in done if submitted}

        def delivered() -> set[str]:
            out = set()
            for _, _, msg in sink.messages():
                found = re.search(rb"Message-ID: (<crash-[^>]+>)", msg)
                if found:
                    out.add(found.group(1).decode())
            return out

        wait_for(lambda: remote <= delivered(), 60)
    finally:
        d2.stop()
    assert "Traceback" not in d2.output()[d2.output().rfind("starting up"):]
