"""Resource limits, output side (issue 9 item 10), through the real daemon.

A client that pipelines commands but never reads the answers makes the
daemon hold at most [limits] output_buffer of replies (plus the input it has
not acted on): no further command runs until the client reads. On 8dfcac9
only FETCH waited; pipelined UID SEARCH ALL grew the RSS without bound.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest_twisted

from .daemon import Daemon, write_config
from .imaputil import _HASH, PASSWORD, blocking
from .limitsutil import PeakRSS, connect, fill_store, read_line, wait_quiet

MB = 1 << 20
USER = "carol@example.test"
MESSAGES = 3000  # "* SEARCH 1 2 ... 3000": about 14 KB per reply
COMMANDS = 30_000  # about 400 MB of replies in all
BOUND = 24 * MB


def _login(port: int) -> socket.socket:
    s = connect(port, timeout=120)
    assert read_line(s).startswith(b"* OK")
    s.sendall(f'l LOGIN {USER} "{PASSWORD}"\r\ns SELECT INBOX\r\n'.encode())
    while not (line := read_line(s)).startswith(b"s "):
        assert not line.startswith(b"l ") or line.startswith(b"l OK"), line
    assert line.startswith(b"s OK"), line
    return s


@pytest_twisted.ensureDeferred
async def test_pipelined_search_from_a_client_that_never_reads(tmp_path: Path) -> None:
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    await fill_store(config, USER, _HASH, MESSAGES)
    d = Daemon(config, ports, tmp_path)

    def run() -> None:
        d.start(wait=30)
        assert d.proc is not None
        pid = d.proc.pid
        s = _login(ports["imap"])
        rss = PeakRSS(pid)
        commands = b"".join(b"q%d UID SEARCH ALL\r\n" % i for i in range(COMMANDS))
        sender = threading.Thread(target=s.sendall, args=(commands,), daemon=True)
        sender.start()
        # Until the daemon has done all it will do for a client that does not
        # read (or has visibly grown past the bound).
        wait_quiet(pid, quiet=3.0, timeout=300, stop=lambda: rss.sample() > BOUND)
        grown = rss.sample()
        assert grown < BOUND, (
            f"daemon RSS grew by {grown / MB:.0f} MB for a client that does not read")
        # Once the client reads, the replies come, in order.
        buf = b""
        expect = 0
        while expect < 500:
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

    try:
        await blocking(run)
    finally:
        d.kill()


def _pipelined_without_reading(tmp_path: Path, svc: str, greeting: bytes, command: bytes,
                               count: int, reply: bytes) -> None:
    config, ports = write_config(tmp_path, log={"json_file": "-"})
    d = Daemon(config, ports, tmp_path)
    d.start(wait=30)
    try:
        assert d.proc is not None
        pid = d.proc.pid
        s = connect(ports[svc], timeout=120)
        assert read_line(s).startswith(greeting)
        rss = PeakRSS(pid)
        sender = threading.Thread(target=s.sendall, args=(command * count,), daemon=True)
        sender.start()
        wait_quiet(pid, quiet=3.0, timeout=300, stop=lambda: rss.sample() > BOUND)
        grown = rss.sample()
        assert grown < BOUND, (
            f"{svc}: daemon RSS grew by {grown / MB:.0f} MB for a client that does not read")
        # Reading, the client gets its replies (and the daemon reads on).
        replies = 0
        tail = b""
        while replies < 1000:
            chunk = s.recv(1 << 20)
            assert chunk, "closed"
            replies += (tail + chunk).count(reply)
            tail = chunk[-len(reply) + 1:]
        s.close()
    finally:
        d.kill()


def test_pipelined_pop3_capa_from_a_client_that_never_reads(tmp_path: Path) -> None:
    # Before login, too: ~150 bytes of reply per 6 bytes of input.
    _pipelined_without_reading(tmp_path, "pop3", b"+OK", b"CAPA\r\n", 500_000,
                               b"IMPLEMENTATION exmaild\r\n.\r\n")


def test_pipelined_smtp_ehlo_from_a_client_that_never_reads(tmp_path: Path) -> None:
    _pipelined_without_reading(tmp_path, "smtp", b"220 ", b"EHLO x\r\n", 400_000,
                               b"250 SMTPUTF8\r\n")
