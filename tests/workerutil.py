"""Which process serves a connection: for tests of `[server] workers`."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def children(pid: int) -> list[int]:
    """The live processes whose parent is `pid`."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(p.name))
    return out


def worker_pids(pid: int) -> list[int]:
    """The worker processes of the supervisor `pid`."""
    out = []
    for c in children(pid):
        try:
            cmd = Path(f"/proc/{c}/cmdline").read_bytes()
        except OSError:
            continue
        if b"exmaild.workers.worker" in cmd:
            out.append(c)
    return sorted(out)


def wait_for_workers(pid: int, n: int, timeout: float = 60.0,
                     not_in: tuple[int, ...] = ()) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = [p for p in worker_pids(pid)]
        if len(pids) == n and not set(pids) & set(not_in):
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"workers of {pid}: {pids}, wanted {n} not in {not_in}")
        time.sleep(0.1)


def _server_inode(server_port: int, client_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if (int(f[1].rsplit(":", 1)[1], 16) == server_port
                    and int(f[2].rsplit(":", 1)[1], 16) == client_port and f[9] != "0"):
                return f[9]
    return None


def serving_pid(sock: socket.socket, pids: list[int]) -> int | None:
    """Which of `pids` holds the server end of `sock` (call after the greeting)."""
    inode = _server_inode(sock.getpeername()[1], sock.getsockname()[1])
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return pid
            except OSError:
                continue
    return None


def connect_to(port: int, pid: int, pids: list[int], tries: int = 200) -> socket.socket:
    """A connection (greeting read) served by worker `pid`: the kernel hashes
    each new connection to one worker's socket, so try until one lands there."""
    for _ in range(tries):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.recv(4096)  # the greeting: the worker has accepted
        if serving_pid(s, pids) == pid:
            return s
        s.close()
    raise AssertionError(f"no connection to {port} landed on worker {pid} in {tries} tries")
