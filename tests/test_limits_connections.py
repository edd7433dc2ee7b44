"""Connection limits (issue 9 item 11), through the real daemon and raw sockets.

Per listener: connections from one address, connections not logged in yet,
all of the listener's; and all listeners together. A refused client hears its
protocol's temporary refusal (SMTP 421 4.7.0, IMAP * BYE, POP3 -ERR
[SYS/TEMP]) and the log says which limit and from where. The caps are derived
from the descriptor limit, so idle unauthenticated IMAP connections cannot
lock SMTP out; clients that do not log in are dropped after
[limits] preauth_timeout.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from .daemon import Daemon, write_config
from .limitsutil import PASSWORD, USER, LimitedDaemon, add_account, connect, read_line

GREETING = {"imap": b"* OK", "pop3": b"+OK", "smtp": b"220 "}
REFUSAL = {
    "imap": b"* BYE [UNAVAILABLE] Too many connections",
    "pop3": b"-ERR [SYS/TEMP] Too many connections",
    "smtp": b"421 4.7.0 mx.example.test Too many connections",
}


def _first_line(port: int, timeout: float = 30.0) -> tuple[socket.socket, bytes]:
    s = connect(port, timeout=timeout)
    return s, read_line(s)


def _eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _refused(sock: socket.socket) -> bool:
    """The server hung up after its refusal."""
    sock.settimeout(30)
    try:
        return sock.recv(100) == b""
    except OSError:
        return True


def test_per_address_limit_refuses_with_each_protocols_text(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, log={"json_file": "-"},
                                 limits={"max_connections_per_ip": 2})
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        assert "2 per address and listener" in d.wait_for_log("per address and listener")
        for svc in ("imap", "pop3", "smtp"):
            held = []
            for _ in range(2):
                s, line = _first_line(ports[svc])
                assert line.startswith(GREETING[svc]), (svc, line)
                held.append(s)
            s, line = _first_line(ports[svc])
            assert line.startswith(REFUSAL[svc]), (svc, line)
            assert _refused(s)
            s.close()
            text = f"{svc}: refused connection from 127.0.0.1: limits.max_connections_per_ip (2)"
            assert text in d.wait_for_log(text), d.output()[-3000:]
            # The limit is per listener: another protocol is not affected...
            other = "pop3" if svc == "imap" else "imap"
            s, line = _first_line(ports[other])
            assert line.startswith(GREETING[other]), (other, line)
            s.close()
            # ...and a place that frees up can be taken again.
            held.pop().close()

            def admitted(svc: str = svc) -> bool:
                s, line = _first_line(ports[svc])
                s.close()
                return line.startswith(GREETING[svc])

            assert _eventually(admitted), svc
            for s in held:
                s.close()
    finally:
        d.kill()


def test_preauth_limit_and_timeout(tmp_path: Path) -> None:
    config, ports = write_config(
        tmp_path, log={"json_file": "-"},
        limits={"max_preauth_connections": 2, "max_connections_per_ip": 50,
                "preauth_timeout": 5})
    add_account(config)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        a, line = _first_line(ports["imap"])
        assert line.startswith(b"* OK")
        b, line = _first_line(ports["imap"])
        assert line.startswith(b"* OK")
        a.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        b.sendall(b"n NOOP\r\n")
        c, line = _first_line(ports["imap"])
        if line.startswith(REFUSAL["imap"]):
            # The third arrived before a's login was through: refused as it must.
            assert _refused(c)
            text = "imap: refused connection from 127.0.0.1: limits.max_preauth_connections (2)"
            assert text in d.wait_for_log(text)
        else:
            assert line.startswith(b"* OK")
        while not (line := read_line(a)).startswith(b"l "):
            pass
        assert line.startswith(b"l OK"), line

        # Logged in, a no longer counts: another client may connect.
        def admitted() -> bool:
            s, line = _first_line(ports["imap"])
            s.close()
            return line.startswith(b"* OK")

        assert _eventually(admitted)
        # b never logs in: dropped after preauth_timeout (5 s), a stays.
        assert read_line(b) == b"n OK NOOP completed"
        b.settimeout(60)
        assert read_line(b).startswith(b"* BYE")
        assert _refused(b)
        a.sendall(b"m NOOP\r\n")
        assert read_line(a) == b"m OK NOOP completed"
        # POP3 as well.
        p, line = _first_line(ports["pop3"])
        assert line.startswith(b"+OK")
        p.settimeout(60)
        assert read_line(p).startswith(b"-ERR")
        assert _refused(p)
        for s in (a, b, c, p):
            s.close()
    finally:
        d.kill()


def test_idle_imap_clients_do_not_lock_smtp_out_under_a_low_descriptor_limit(
    tmp_path: Path,
) -> None:
    # Default limits, derived from RLIMIT_NOFILE = 256. On 8dfcac9 the idle
    # IMAP connections took every descriptor and SMTP was never answered.
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    d = LimitedDaemon(config, ports, tmp_path, nofile=256)
    d.start(wait=30)
    held: list[socket.socket] = []
    try:
        greeted = refused = failures = 0
        for _ in range(300):
            try:
                s = connect(ports["imap"], timeout=3)
                held.append(s)
                line = read_line(s)
            except OSError:
                failures += 1
                if failures >= 5:
                    break
                continue
            if line.startswith(b"* OK"):
                greeted += 1
            elif line.startswith(REFUSAL["imap"]):
                refused += 1
        s, line = _first_line(ports["smtp"], timeout=20)
        assert line.startswith(b"220 "), (line, greeted, refused, failures)
        s.sendall(b"QUIT\r\n")
        s.close()
        assert refused > 0 and failures == 0, (greeted, refused, failures)
        assert "descriptor limit 256" in d.wait_for_log("descriptor limit")
        assert "limits.max_preauth_connections" in d.output() or \
            "limits.max_connections_per_ip" in d.output()
        # Once the idle ones go, IMAP is served again.
        for s in held:
            s.close()
        held.clear()

        def admitted() -> bool:
            s, line = _first_line(ports["imap"])
            s.close()
            return line.startswith(b"* OK")

        assert _eventually(admitted)
    finally:
        for s in held:
            s.close()
        d.kill()
