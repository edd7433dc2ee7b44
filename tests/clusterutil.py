"""Helpers for tests with several daemons on one database."""

from __future__ import annotations

import socket
import time

WAIT = 15.0  # far below the 120 s IDLE poll that was all there was before LISTEN/NOTIFY


class Idler:
    """A raw IMAP session idling on INBOX."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""
        self.line()
        self.cmd(f"a LOGIN {user} {password}")
        self.cmd("b SELECT INBOX")
        self.sock.sendall(b"c IDLE\r\n")
        assert self.line().startswith(b"+ ")

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: str) -> list[bytes]:
        tag = text.split()[0].encode()
        self.sock.sendall(text.encode() + b"\r\n")
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" OK"), out
                return out

    def wait_for(self, needle: bytes) -> bytes:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            line = self.line()
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {WAIT} s")
