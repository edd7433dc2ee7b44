"""`[server] workers = N`: one twistd supervising N worker processes that
share the listening sockets and the store (exmaild/workers/), on SQLite and
on PostgreSQL, through the real daemon and real sockets.

Which worker serves a connection is read from /proc: the process holding
the server end of the TCP connection."""

from __future__ import annotations

import imaplib
import os
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exmaild.config import ConfigError, load_config

from .clusterutil import WAIT, Idler
from .conftest import PG_URL, _wipe_pg
from .daemon import REPO, Daemon, env, write_config
from .workerutil import connect_to, serving_pid, wait_for_workers, worker_pids

USER, PASSWORD = "wanda@example.test", "Secret9Pass"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        if not PG_URL:
            pytest.skip("EXMAILD_TEST_DATABASE_URL is not set")
        url = request.getfixturevalue("pg_database")
        _wipe_pg(url)
        return url
    return ""


def _start(tmp_path: Path, db_url: str, workers: int = 2, **sections: dict) -> Daemon:
    import subprocess
    import sys

    server = {"workers": workers, "lock_lease": 5, **sections.pop("server", {})}
    config, ports = write_config(tmp_path, db_url, server=server, **sections)
    subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD, USER],
                   check=True, cwd=REPO, env=env(), timeout=60)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=60)
    return d


@pytest.fixture
def daemon(tmp_path: Path, db_url: str) -> Iterator[Daemon]:
    d = _start(tmp_path, db_url)
    yield d
    pids = worker_pids(d.proc.pid) if d.proc else []
    d.kill()
    for pid in pids:  # they would stop by themselves (their pipe closed); no waiting
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_started(d: Daemon, n: int, timeout: float = 60.0) -> str:
    """The log once each of `n` workers wrote its `exmaild … started` line."""
    deadline = time.monotonic() + timeout
    while True:
        out = d.output()
        up = set(re.findall(r"\[worker(\d+) exmaild\.service#info\] exmaild \S+ started", out))
        if len(up) >= n:
            return out
        assert time.monotonic() < deadline, f"workers started: {sorted(up)}"
        time.sleep(0.1)


def _smtp_send(sock: socket.socket, subject: str) -> None:
    """One message over a connection whose greeting was read."""
    f = sock.makefile("rb")

    def cmd(line: bytes) -> bytes:
        sock.sendall(line + b"\r\n")
        while True:
            reply = f.readline()
            if reply[3:4] != b"-":
                assert reply[:1] in (b"2", b"3"), reply
                return reply

    cmd(b"EHLO client.test")
    cmd(b"MAIL FROM:<x@outside.test>")
    cmd(f"RCPT TO:<{USER}>".encode())
    cmd(b"DATA")
    cmd(f"Subject: {subject}\r\n\r\nhello\r\n.".encode())
    cmd(b"QUIT")
    sock.close()


def _greets(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return bool(s.recv(512))


def test_workers_are_validated(tmp_path: Path) -> None:
    for bad in (0, -1, 65):
        config, _ = write_config(tmp_path, server={"workers": bad})
        with pytest.raises(ConfigError) as e:
            load_config(str(config))
        assert "server.workers: must be between 1 and 64" in e.value.errors
    config, _ = write_config(tmp_path, server={"workers": "2"})
    with pytest.raises(ConfigError, match="server.workers"):
        load_config(str(config))
    config, _ = write_config(tmp_path)
    assert load_config(str(config)).server.workers == 1


def test_one_worker_is_the_single_process_daemon(tmp_path: Path) -> None:
    d = _start(tmp_path, "", workers=1)
    try:
        assert worker_pids(d.proc.pid) == []
        assert "[worker" not in d.output() and "exmaild.workers" not in d.output()
    finally:
        d.kill()


def test_two_workers_serve_every_listener(daemon: Daemon) -> None:
    pids = wait_for_workers(daemon.proc.pid, 2)
    out = _wait_started(daemon, 2)
    for n in (1, 2):
        assert f"worker {n} started: pid " in out
        assert f"node id node1-w{n}" in out
    # Every listener is served by both workers, and connections spread.
    for svc in ("smtp", "imap", "pop3", "submission", "managesieve"):
        seen = set()
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", daemon.ports[svc]), timeout=10) as s:
                assert s.recv(512)
                seen.add(serving_pid(s, pids))
            if seen == set(pids):
                break
        assert seen == set(pids), (svc, seen, pids)
    # Mail through either worker lands in the one store.
    for i, pid in enumerate(pids):
        _smtp_send(connect_to(daemon.ports["smtp"], pid, pids), f"via {i}")
    m = imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=WAIT)
    m.login(USER, PASSWORD)
    assert m.select("INBOX")[1] == [b"2"]
    m.logout()


def test_idle_on_one_worker_sees_mail_delivered_through_the_other(daemon: Daemon) -> None:
    a, b = wait_for_workers(daemon.proc.pid, 2)
    idler = Idler(0, USER, PASSWORD, sock=connect_to(daemon.ports["imap"], a, [a, b]))
    t0 = time.monotonic()
    _smtp_send(connect_to(daemon.ports["smtp"], b, [a, b]), "cross")
    assert idler.wait_for(b"EXISTS") == b"* 1 EXISTS"
    # Far below the two-minute IDLE poll: the notice came through the supervisor
    # (SQLite) or LISTEN/NOTIFY (PostgreSQL).
    assert time.monotonic() - t0 < WAIT
    # A flag change through worker a's peer shows on the idling session.
    other = imaplib.IMAP4("127.0.0.1", daemon.ports["imap"], timeout=WAIT)
    other.sock.close()
    other.sock = connect_to(daemon.ports["imap"], b, [a, b])
    other.file = other.sock.makefile("rb")
    other.login(USER, PASSWORD)
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Flagged)")
    assert b"\\Flagged" in idler.wait_for(b"FETCH")
    other.logout()


def _pop_login(sock: socket.socket) -> bytes:
    f = sock.makefile("rb")
    sock.sendall(f"USER {USER}\r\n".encode())
    assert f.readline().startswith(b"+OK")
    sock.sendall(f"PASS {PASSWORD}\r\n".encode())
    return f.readline()


def test_pop3_maildrop_lock_holds_across_workers(daemon: Daemon) -> None:
    a, b = wait_for_workers(daemon.proc.pid, 2)
    sa_ = connect_to(daemon.ports["pop3"], a, [a, b])
    assert _pop_login(sa_).startswith(b"+OK")
    sb = connect_to(daemon.ports["pop3"], b, [a, b])
    assert _pop_login(sb).startswith(b"-ERR [IN-USE]")
    sb.close()
    sa_.sendall(b"QUIT\r\n")
    sa_.close()
    deadline = time.monotonic() + 20
    while True:
        sb = connect_to(daemon.ports["pop3"], b, [a, b])
        reply = _pop_login(sb)
        sb.close()
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert reply.startswith(b"+OK"), reply


def test_a_killed_worker_is_restarted_and_listeners_keep_answering(daemon: Daemon) -> None:
    a, b = wait_for_workers(daemon.proc.pid, 2)
    os.kill(a, signal.SIGKILL)
    # Meanwhile connections hashed to the dead worker's socket wait in its
    # backlog (the supervisor keeps the socket): none is refused.
    for _ in range(10):
        assert _greets(daemon.ports["smtp"])
    pids = wait_for_workers(daemon.proc.pid, 2, not_in=(a,))
    assert b in pids
    out = daemon.wait_for_log(f"pid {a}) ended unexpectedly", timeout=30)
    assert f"worker 1 (pid {a}) ended unexpectedly after" in out
    assert "(killed by SIGKILL); starting it again in 0.5 s" in out
    new = next(p for p in pids if p != b)
    daemon.wait_for_log(f"worker 1 started: pid {new}")
    for svc in ("smtp", "submission", "imap", "pop3", "managesieve"):
        connect_to(daemon.ports[svc], new, pids).close()
        connect_to(daemon.ports[svc], b, pids).close()
    assert daemon.health()["status"] == "ok"
    _smtp_send(connect_to(daemon.ports["smtp"], new, pids), "after restart")


def test_sigterm_stops_every_worker_cleanly(tmp_path: Path, db_url: str) -> None:
    d = _start(tmp_path, db_url)
    try:
        pids = wait_for_workers(d.proc.pid, 2)
        for i, pid in enumerate(pids):
            _smtp_send(connect_to(d.ports["smtp"], pid, pids), f"before stop {i}")
        # An IMAP session open on each worker: the stop must not wait on clients.
        held = [connect_to(d.ports["imap"], pid, pids) for pid in pids]
        assert d.stop(signal.SIGTERM, timeout=60) in (0, -signal.SIGTERM)
        out = d.output()
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
            assert f"(pid {pid}) stopped: exit status 0" in out
        assert "stopping 2 worker(s)" in out
        assert "Traceback" not in out
        assert "ended unexpectedly" not in out
        for s in held:
            s.close()
        # The store is consistent: one process on it again finds both messages.
        config = d.config
        config.write_text(config.read_text().replace("workers = 2", "workers = 1"))
        d2 = Daemon(config, d.ports, tmp_path)
        d2.start(wait=60)
        try:
            m = imaplib.IMAP4("127.0.0.1", d2.ports["imap"], timeout=WAIT)
            m.login(USER, PASSWORD)
            assert m.select("INBOX")[1] == [b"2"]
            m.logout()
        finally:
            d2.kill()
    finally:
        d.kill()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_worker_stops_when_its_supervisor_dies(daemon: Daemon) -> None:
    pids = wait_for_workers(daemon.proc.pid, 2)
    daemon.proc.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        time.sleep(0.1)
    assert "the supervisor is gone (its pipe closed): stopping" in daemon.output()


def test_healthz_through_the_shared_admin_port(daemon: Daemon) -> None:
    url = f"http://127.0.0.1:{daemon.ports['admin']}/healthz"
    for _ in range(10):
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200


def test_sighup_reaches_every_worker(daemon: Daemon) -> None:
    pids = wait_for_workers(daemon.proc.pid, 2)
    _wait_started(daemon, 2)
    time.sleep(1)  # both said they are ready (the pipe) a moment after their start line
    daemon.proc.send_signal(signal.SIGHUP)
    out = daemon.wait_for_log("[worker2 exmaild.signals#info] SIGHUP: reloaded", timeout=20)
    daemon.wait_for_log("[worker1 exmaild.signals#info] SIGHUP: reloaded", timeout=20)
    # Each process writes its lines in batches: the supervisor's may come later.
    out = daemon.wait_for_log("which reload the TLS certificate", timeout=20)
    assert "SIGHUP: reopened" in out
    assert "passed on to 2 worker(s), which reload the TLS certificate" in out
    assert worker_pids(daemon.proc.pid) == pids
    assert "ended unexpectedly" not in out
