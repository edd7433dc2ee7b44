"""Helpers for tests with several daemons on one database."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .daemon import REPO, Daemon, env, write_config

WAIT = 15.0  # far below the 120 s IDLE poll that was all there was before LISTEN/NOTIFY


class Idler:
    """A raw IMAP session idling on INBOX."""

    def __init__(self, port: int, user: str, password: str,
                 sock: socket.socket | None = None) -> None:
        """`sock`: a connection made already, its greeting read."""
        self.sock = sock or socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""
        if sock is None:
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


def two_nodes(tmp_path: Path, db_url: str, user: str, password: str,
              **sections: dict[str, Any]) -> list[Daemon]:
    """Two daemons, node-a and node-b, on one database with `user` made
    first; `sections` go to both configs (each gets its own node_id)."""
    server = sections.pop("server", {})
    daemons = []
    for node in ("node-a", "node-b"):
        home = tmp_path / node
        home.mkdir()
        config, ports = write_config(home, db_url, server={"node_id": node, **server},
                                     log={"json_file": "-"}, **sections)
        if node == "node-a":
            subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), password,
                            user], check=True, cwd=REPO, env=env(), timeout=60)
        daemons.append(Daemon(config, ports, home))
    for d in daemons:
        d.start(wait=60)
    return daemons
