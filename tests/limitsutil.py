"""Helpers for the resource-limit tests: the daemon's memory from /proc, a
daemon under a low descriptor limit, accounts and mail made before start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .daemon import Daemon, env, exmailctl

USER = "bob@example.test"
PASSWORD = "Secr3tPass"


def status(pid: int, key: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM, RssAnon)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_quiet(pid: int, quiet: float = 2.0, timeout: float = 180.0,
               stop: Callable[[], bool] | None = None) -> None:
    """Until the daemon used no CPU for `quiet` seconds (it did what it could),
    or `stop()` says there is no point waiting longer."""
    deadline = time.monotonic() + timeout
    last, since = cpu_ticks(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if stop is not None and stop():
            return
        now = cpu_ticks(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


class PeakRSS:
    """The highest VmRSS seen by `sample()` (VmHWM would include start-up and
    argon2's 64 MiB)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.base = self.peak = status(pid, "VmRSS")

    def sample(self) -> int:
        self.peak = max(self.peak, status(self.pid, "VmRSS"))
        return self.peak - self.base


async def fill_store(config: Path, address: str, password_hash: str, count: int) -> None:
    """Create the account and ingest `count` small messages before the daemon starts."""
    from twisted.internet import defer, reactor

    from exmaild.config import load_config
    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.mailstore.service import MailStore as Store

    store = Store(load_config(str(config)), reactor)
    store.open()
    store.startService()
    try:
        await store.directory.add_domain(address.split("@")[1])
        acct = await store.directory.add_account(address, password_hash)
        for start in range(0, count, 500):
            await defer.gatherResults([
                defer.Deferred.fromCoroutine(store.ingestor.ingest(IngestRequest(
                    b"From: a@example.test\r\nSubject: m%d\r\n\r\nhello\r\n" % i,
                    [Target(acct.id, "INBOX", 0)])))
                for i in range(start, min(count, start + 500))
            ], consumeErrors=True)
    finally:
        store.stopService()


def add_account(config: Path) -> None:
    for args in (("domain", "add", "example.test"),
                 ("user", "add", USER, "--password", PASSWORD)):
        r = exmailctl(config, *args)
        assert r.returncode == 0, r.stderr


def push(sock: socket.socket, total: int, chunk: bytes, stall: float = 5.0) -> int:
    """Send up to `total` bytes; stop early once the peer has taken nothing for
    `stall` seconds (it stopped reading). Bytes sent."""
    sock.settimeout(stall)
    sent = 0
    view = memoryview(chunk)
    while sent < total:
        try:
            n = sock.send(view)
        except TimeoutError:
            break
        except OSError:
            break
        sent += n
    return sent


class LimitedDaemon(Daemon):
    """The daemon started under `prlimit --nofile=N:N`."""

    def __init__(self, config: Path, ports: dict[str, int], cwd: Path, nofile: int) -> None:
        super().__init__(config, ports, cwd)
        self.nofile = nofile

    def start(self, wait: float = 30.0) -> float:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["prlimit", f"--nofile={self.nofile}:{self.nofile}", "--",
             sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "exmaild", "--config", str(self.config)],
            cwd=self.cwd, env=env(), stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        while time.monotonic() - t0 < wait:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.output()}")
            try:
                self.health()
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not answer /healthz: {self.output()}")


def connect(port: int, timeout: float = 30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_line(sock: socket.socket) -> bytes:
    """One line (without CRLF), read byte by byte so nothing after it is lost; b"" at EOF."""
    out = bytearray()
    while not out.endswith(b"\r\n"):
        b = sock.recv(1)
        if not b:
            return bytes(out)
        out += b
    return bytes(out[:-2])
