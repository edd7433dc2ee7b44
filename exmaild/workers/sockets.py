"""The supervisor's listening sockets: one group per listener, one socket per worker.

All sockets of a group are bound to the same address with SO_REUSEPORT, so
the kernel hashes each new connection to one worker's socket. A single
accept socket shared by every worker balances badly: with epoll every worker
wakes, and the first one back from other work takes a whole burst.

The supervisor keeps its copy of every socket open for its whole life. A
worker that dies leaves its socket listening, so connections the kernel
hashed to it wait in the backlog until its successor adopts the same socket;
none is refused.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from exmaild.config import Config
from exmaild.errors import StartupError
from exmaild.startup_checks import bind_error, listen_keys


@dataclass
class ListenerGroup:
    service: str
    host: str
    port: int  # the bound port (the configured one, or the kernel's pick for 0)
    family: int
    sockets: list[socket.socket]

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def _bind_one(family: int, sockaddr: tuple, backlog: int) -> socket.socket:
    s = socket.socket(family, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(sockaddr)
        s.listen(backlog)  # [limits] listen_backlog, as the one-process daemon's ports
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def bind_groups(cfg: Config, workers: int) -> list[ListenerGroup]:
    """Every configured listener, `workers` sockets each; all or nothing."""
    groups: list[ListenerGroup] = []
    try:
        for svc in listen_keys(cfg):
            addr = cfg.listen_address(svc)
            if addr is None:
                continue
            host, port = addr
            try:
                family, _, _, _, sockaddr = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
                backlog = cfg.limits.listen_backlog
                first = _bind_one(family, sockaddr, backlog)
                bound = first.getsockname()[1]  # port 0: the rest join the kernel's pick
                socks = [first]
                groups.append(ListenerGroup(svc, host, bound, family, socks))
                rest = (sockaddr[0], bound, *sockaddr[2:])
                socks += [_bind_one(family, rest, backlog) for _ in range(workers - 1)]
            except OSError as e:
                raise StartupError(bind_error(f"listen.{svc}", host, port, e)) from None
    except BaseException:
        for g in groups:
            g.close()
        raise
    return groups
