"""A worker process: `python -m exmaild.workers.worker`, started by the supervisor.

It builds the same service tree as the single-process daemon (service.py),
with its own node id (`<node_id>-w<index>`) and, instead of binding, the
listening sockets the supervisor handed it. It runs its own reactor: SIGTERM
stops it the way it stops twistd (listeners first, sessions drained, store
last); so does the end of its stdin, which means the supervisor is gone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from typing import Any

# Until the daemon's own handlers are in place (SignalService), a SIGHUP or
# SIGUSR1 the supervisor passes on must not end this process (their default).
signal.signal(signal.SIGHUP, signal.SIG_IGN)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

from twisted.logger import Logger, globalLogBeginner, globalLogPublisher  # noqa: E402

log = Logger(namespace="exmaild.workers")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="exmaild-worker")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--config")
    p.add_argument("--stdout-log", action="store_true")
    p.add_argument("--listen", action="append", default=[], metavar="SERVICE=FD:FAMILY")
    return p.parse_args(argv)


def _listen(specs: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for spec in specs:
        svc, _, rest = spec.partition("=")
        fd, _, family = rest.partition(":")
        out[svc] = (int(fd), int(family))
    return out


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO

    from exmaild.config import ConfigError, load_config
    from exmaild.configfind import find_config
    from exmaild.errors import StartupError, report
    from exmaild.service import make_service
    from exmaild.workers.channel import READY, ParentLink
    from exmaild.workers.spec import WorkerSpec
    from exmaild.workers.supervisor import node_id

    index = args.index

    def tag(event: dict[str, Any]) -> None:  # first observer: every line says whose it is
        event["worker"] = event["log_worker"] = index

    globalLogPublisher.addObserver(tag)
    try:
        cfg = load_config(find_config(args.config))
    except ConfigError as e:
        sys.stderr.write(f"exmaild worker {index}: configuration errors: {e.errors}\n")
        return 1
    cfg = dataclasses.replace(
        cfg, server=dataclasses.replace(cfg.server, node_id=node_id(cfg.server.node_id, index)))

    def supervisor_gone() -> None:
        if reactor.running and not stopping:
            log.warn("the supervisor is gone (its pipe closed): stopping")
            reactor.stop()

    stopping = False
    link = ParentLink(supervisor_gone)
    StandardIO(link, stdin=0, stdout=3, reactor=reactor)
    spec = WorkerSpec(index, _listen(args.listen), link)
    try:
        top = make_service(cfg, reactor, stdout_log=args.stdout_log, worker=spec)
    except StartupError as e:
        report(f"exmaild worker {index}", e)
        return 1
    observers = [top.log_observer] if top.log_observer is not None else []
    globalLogBeginner.beginLoggingTo(observers, redirectStandardIO=False)
    top.privilegedStartService()
    for fd, _family in spec.listen.values():  # the listeners hold their own duplicates
        os.close(fd)
    top.startService()

    def stop() -> Any:
        nonlocal stopping
        stopping = True
        return top.stopService()

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.callWhenRunning(link.send, READY)  # handlers installed, listeners adopted
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
