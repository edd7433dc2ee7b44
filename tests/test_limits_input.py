"""Resource limits, input side (issue 9 items 8 and 9), through the real daemon.

A client's input is read only while the daemon takes it: bytes sent while a
command waits (here AUTHENTICATE behind a queue of argon2 checks) stop being
read once [limits] input_buffer is held. Only APPEND may carry a large
literal; other commands get [limits] imap_literal_size (64 KiB), refused
before it is sent, and a refused LITERAL+ ends the connection.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from .daemon import Daemon, write_config
from .limitsutil import PASSWORD, USER, add_account, connect, push, read_line, status

MB = 1 << 20


def _imap_response(sock, tag: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    lines = []
    while True:
        line = read_line(sock)
        assert line, f"connection closed; so far {lines!r}"
        lines.append(line)
        if line.startswith(tag + b" "):
            return lines


def test_input_sent_while_authenticate_waits_is_not_buffered(tmp_path: Path) -> None:
    # One argon2 thread and a queue of failing logins ahead of the AUTHENTICATE
    # keep it waiting for seconds; on 8dfcac9 the daemon read and kept everything
    # sent meanwhile (752 MB pushed: 88 MB -> 968 MB RSS).
    # The production argon2id cost (64 MiB, 3 passes): the queue must take a while.
    slow = {"argon2_time_cost": 3, "argon2_memory_kib": 65536, "argon2_parallelism": 4}
    config, ports = write_config(tmp_path, log={"json_file": "-"}, auth={"threads": 1, **slow})
    add_account(config)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        assert d.proc is not None
        pid = d.proc.pid
        # One login first: argon2's 64 MiB is then already in the peak (VmHWM).
        s = connect(ports["imap"])
        read_line(s)
        s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        assert _imap_response(s, b"l")[-1].startswith(b"l OK")
        s.close()
        before = status(pid, "VmHWM")
        helpers = []
        for i in range(10):
            s = connect(ports["imap"])
            assert read_line(s).startswith(b"* OK")
            # Distinct wrong passwords: identical concurrent checks are shared.
            s.sendall(f"h1 LOGIN {USER} wrong{i}a\r\nh2 LOGIN {USER} wrong{i}b\r\n".encode())
            helpers.append(s)
        victim = connect(ports["imap"])
        assert read_line(victim).startswith(b"* OK")
        ir = base64.b64encode(f"\0{USER}\0not-{PASSWORD}".encode())
        victim.sendall(b"a AUTHENTICATE PLAIN " + ir + b"\r\n")
        sent = push(victim, 400 * MB, b"x" * MB)
        peak = status(pid, "VmHWM")
        assert peak - before < 64 * MB, (
            f"daemon peak RSS grew by {(peak - before) / MB:.0f} MB while {sent / MB:.0f} MB "
            "were pushed at a waiting AUTHENTICATE")
        for s in [victim, *helpers]:
            s.close()
        # Still serving.
        s = connect(ports["imap"])
        assert read_line(s).startswith(b"* OK")
        s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        assert _imap_response(s, b"l")[-1].startswith(b"l OK")
        s.close()
    finally:
        d.kill()


def test_only_append_gets_a_large_literal(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    add_account(config)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        s = connect(ports["imap"])
        read_line(s)
        s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        assert _imap_response(s, b"l")[-1].startswith(b"l OK")
        # A 1 MB literal outside APPEND is refused before it is sent (no "+").
        s.sendall(b"a SEARCH TEXT {1000000}\r\n")
        assert read_line(s).startswith(b"a BAD [TOOBIG]")
        # APPEND may announce one up to [limits] message_size.
        s.sendall(b"b APPEND INBOX {1000000}\r\n")
        assert read_line(s).startswith(b"+")
        s.sendall(b"Subject: big\r\n\r\n" + b"y" * (1000000 - 18) + b"\r\n\r\n")
        assert _imap_response(s, b"b")[-1].startswith(b"b OK")
        # Many literals within the literal limit still make a command too big:
        # all of a command but APPEND is bounded (here by [limits] input_buffer).
        s.sendall(b"c SELECT INBOX\r\n")
        assert _imap_response(s, b"c")[-1].startswith(b"c OK")
        s.sendall(b"d SEARCH TEXT {60000}\r\n")
        refused = None
        for _ in range(40):
            line = read_line(s)
            if not line.startswith(b"+"):
                refused = line
                break
            s.sendall(b"z" * 60000 + b" TEXT {60000}\r\n")
        assert refused is not None and refused.startswith(b"d BAD [TOOBIG]"), refused
        # A LITERAL+ over the limit is on its way regardless: BAD, then the
        # connection ends instead of reading it (RFC 7888 section 4).
        s.sendall(b"e SEARCH TEXT {100000000+}\r\n")
        lines = [read_line(s), read_line(s)]
        assert lines[0].startswith(b"e BAD [TOOBIG]"), lines
        assert lines[1].startswith(b"* BYE"), lines
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and s.recv(65536):
            pass
        s.close()
    finally:
        d.kill()
