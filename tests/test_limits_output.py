"""Resource limits, output side (issue 9 item 10), through the real daemon.

A client that pipelines commands but never reads the answers makes the
daemon hold at most [limits] output_buffer of replies (plus the input it has
not acted on): no further command runs until the client reads. On 8dfcac9
only FETCH waited; 30,000 pipelined UID SEARCH ALL grew the RSS without bound.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from .daemon import Daemon, write_config
from .limitsutil import (
    PASSWORD,
    USER,
    add_account,
    connect,
    read_line,
    status,
    wait_quiet,
)

MB = 1 << 20
MESSAGES = 500  # "* SEARCH 1 2 ... 500": about 2 KB per reply
COMMANDS = 30_000  # about 60 MB of replies in all


def _login_and_fill(port: int) -> socket.socket:
    s = connect(port, timeout=120)
    assert read_line(s).startswith(b"* OK")
    s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    while not (line := read_line(s)).startswith(b"l "):
        pass
    assert line.startswith(b"l OK"), line
    msg = b"From: a@example.test\r\nSubject: m\r\n\r\nhello\r\n"
    s.sendall(b"".join(b"a%d APPEND INBOX {%d+}\r\n%s\r\n" % (i, len(msg), msg)
                       for i in range(MESSAGES)))
    done = 0
    while done < MESSAGES:
        line = read_line(s)
        assert line, "closed while appending"
        if line.startswith(b"a"):
            assert b" OK " in line, line
            done += 1
    s.sendall(b"s SELECT INBOX\r\n")
    while not (line := read_line(s)).startswith(b"s "):
        pass
    assert line.startswith(b"s OK"), line
    return s


def test_pipelined_search_from_a_client_that_never_reads(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    add_account(config)
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        assert d.proc is not None
        pid = d.proc.pid
        s = _login_and_fill(ports["imap"])
        before = status(pid, "VmHWM")
        bound = 40 * MB
        commands = b"".join(b"q%d UID SEARCH ALL\r\n" % i for i in range(COMMANDS))
        sender = threading.Thread(target=s.sendall, args=(commands,), daemon=True)
        sender.start()
        # Until the daemon has done all it will do for a client that does not
        # read (or has visibly grown past the bound).
        wait_quiet(pid, quiet=3.0, timeout=300,
                   stop=lambda: status(pid, "VmHWM") - before > bound)
        peak = status(pid, "VmHWM")
        assert peak - before < bound, (
            f"daemon peak RSS grew by {(peak - before) / MB:.0f} MB for a client that "
            "does not read")
        # Once the client reads, the replies come, in order.
        buf = b""
        expect = 0
        while expect < 2000:
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {expect} replies"
            buf += chunk
            lines = buf.split(b"\r\n")
            buf = lines.pop()
            for line in lines:
                if line.startswith(b"q"):
                    assert line.startswith(b"q%d OK" % expect), line
                    expect += 1
                else:
                    assert line.startswith(b"* SEARCH 1 2 3"), line[:80]
        s.close()
    finally:
        d.kill()
