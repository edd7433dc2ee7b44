"""The supervisor: twistd's one service when `[server] workers` is above 1.

It binds every listener in privilegedStartService (so ports below 1024 work
before twistd drops privileges), then starts the workers, already as the
unprivileged user, each with its own socket of every listener group
(sockets.py) and its pipes (channel.py). It passes mailbox change notices
between the workers (SQLite; on PostgreSQL LISTEN/NOTIFY does it), starts a
worker that died again after a back-off, forwards SIGHUP and SIGUSR1, and on
stop sends SIGTERM to every worker and waits until each has drained.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

from exmaild.config import Config
from exmaild.errors import StartupError, report
from exmaild.workers.channel import READY, GapProducer, LineSplitter, is_notice
from exmaild.workers.sockets import ListenerGroup, bind_groups

log = Logger(namespace="exmaild.workers")

RESTART_FIRST = 0.5  # seconds before a dead worker starts again...
RESTART_MAX = 30.0  # ...doubling while it keeps dying young, up to this
STABLE_AFTER = 30.0  # a worker that ran this long starts again after RESTART_FIRST
# A worker still running this long after SIGTERM is killed: within the
# systemd unit's TimeoutStopSec (60 s), so the supervisor says so itself.
STOP_TIMEOUT = 50.0


def node_id(base: str, index: int) -> str:
    """Worker `index`'s node id: its queue claims, job rows and lock holder names."""
    return f"{base}-w{index}"


def exit_text(reason: Any) -> str:
    v = reason.value
    if getattr(v, "signal", None):
        try:
            name = signal.Signals(v.signal).name
        except ValueError:
            name = f"signal {v.signal}"
        return f"killed by {name}"
    return f"exit status {getattr(v, 'exitCode', '?')}"


class WorkerProcess(GapProducer, protocol.ProcessProtocol):
    """One worker process as the supervisor sees it."""

    def __init__(self, sup: Supervisor, index: int) -> None:
        self.sup = sup
        self.index = index
        self.split = LineSplitter()
        self.started = time.monotonic()
        self.ended = False
        self.ready = False  # said READY: it handles SIGHUP and SIGUSR1 now
        self.pid: int | None = None  # kept: Twisted forgets it once the process is reaped

    def connectionMade(self) -> None:
        pipe = getattr(self.transport, "pipes", {}).get(0)
        if pipe is not None:  # bounded: a worker that does not read gets a gap, not a backlog
            pipe.registerProducer(self, True)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 3:
            for line in self.split.feed(data):
                if line == READY:
                    self.ready = True
                elif is_notice(line):
                    self.sup.fan_out(self, line)

    def _closed(self) -> bool:
        return self.ended

    def _write(self, line: bytes) -> None:
        try:
            self.transport.writeToChild(0, line)  # type: ignore[union-attr]
        except (KeyError, error.ProcessExitedAlready):
            pass

    def signal(self, sig: int) -> None:
        if self.ended or self.transport is None:
            return
        try:
            self.transport.signalProcess(sig)
        except (error.ProcessExitedAlready, OSError):
            pass

    def processEnded(self, reason: Any) -> None:
        self.ended = True
        self.sup.worker_ended(self, reason)


class Supervisor(service.Service):
    name = "workers"

    def __init__(self, cfg: Config, reactor: Any, *, stdout_log: bool) -> None:
        self.cfg = cfg
        self.reactor = reactor
        self.count = cfg.server.workers
        self.stdout_log = stdout_log
        self.groups: list[ListenerGroup] = []
        self.workers: dict[int, WorkerProcess] = {}
        self._delay: dict[int, float] = {}
        self._restarts: dict[int, Any] = {}
        self._stopping = False
        self._all_ended: defer.Deferred[None] | None = None
        self.restarts = 0  # workers started again after dying (tests, metrics)

    # -- start -------------------------------------------------------------
    def privilegedStartService(self) -> None:
        try:
            self.groups = bind_groups(self.cfg, self.count)
        except StartupError as e:  # taken since the start-up check: one line, no traceback
            report("exmaild", e)
            raise SystemExit(1) from None
        for g in self.groups:
            log.info("listening for {service} on {host}:{port} ({n} sockets, one per worker)",
                     service=g.service, host=g.host, port=g.port, n=len(g.sockets))
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        for i in range(1, self.count + 1):
            self._spawn(i)

    def _argv(self, index: int, fds: dict[int, Any]) -> list[str]:
        argv = [sys.executable, "-m", "exmaild.workers.worker", "--index", str(index)]
        if self.cfg.source:
            argv += ["--config", self.cfg.source]
        if self.stdout_log:
            argv.append("--stdout-log")
        fd = 4
        for g in self.groups:
            fds[fd] = g.sockets[index - 1].fileno()
            argv += ["--listen", f"{g.service}={fd}:{g.family}"]
            fd += 1
        return argv

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        if self._stopping:
            return
        fds: dict[int, Any] = {0: "w", 1: 1, 2: 2, 3: "r"}
        argv = self._argv(index, fds)
        wp = WorkerProcess(self, index)
        self.workers[index] = wp
        proc = self.reactor.spawnProcess(wp, sys.executable, argv, env=dict(os.environ),
                                         path=os.getcwd(), childFDs=fds)
        wp.pid = proc.pid
        log.info("worker {worker} started: pid {pid}, node id {node}", worker=index,
                 pid=wp.pid, node=node_id(self.cfg.server.node_id, index))

    # -- notices -------------------------------------------------------------
    def fan_out(self, sender: WorkerProcess, line: bytes) -> None:
        for wp in self.workers.values():
            if wp is not sender:
                wp.send(line)

    # -- signals ---------------------------------------------------------------
    def signal_all(self, sig: int, *, ready_only: bool = False) -> int:
        """`ready_only`: skip workers still starting (they read the certificate
        and open the logs anew anyway, and SIGHUP would end them)."""
        live = [wp for wp in self.workers.values()
                if not wp.ended and (wp.ready or not ready_only)]
        for wp in live:
            wp.signal(sig)
        return len(live)

    # -- a worker ended --------------------------------------------------------
    def worker_ended(self, wp: WorkerProcess, reason: Any) -> None:
        ran = time.monotonic() - wp.started
        how = exit_text(reason)
        if self._stopping:
            log.info("worker {worker} (pid {pid}) stopped: {how}", worker=wp.index,
                     pid=wp.pid, how=how)
            self._check_all_ended()
            return
        if self.workers.get(wp.index) is not wp:
            return
        delay = RESTART_FIRST if ran >= STABLE_AFTER else min(
            RESTART_MAX, self._delay.get(wp.index, RESTART_FIRST / 2) * 2)
        self._delay[wp.index] = delay
        log.error("worker {worker} (pid {pid}) ended unexpectedly after {ran} s ({how}); "
                  "starting it again in {delay} s", worker=wp.index, pid=wp.pid,
                  ran=round(ran, 1), how=how, delay=delay)
        self.restarts += 1
        self._restarts[wp.index] = self.reactor.callLater(delay, self._spawn, wp.index)

    def _check_all_ended(self) -> None:
        if self._all_ended is not None and all(wp.ended for wp in self.workers.values()):
            d, self._all_ended = self._all_ended, None
            d.callback(None)

    # -- stop ------------------------------------------------------------------
    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        n = self.signal_all(signal.SIGTERM)
        log.info("stopping {n} worker(s): each finishes or closes its sessions", n=n)
        self._all_ended = defer.Deferred()
        d = self._all_ended
        timer = self.reactor.callLater(STOP_TIMEOUT, self._kill_stragglers)
        self._check_all_ended()

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            for g in self.groups:
                g.close()
            self.groups = []
            return result

        return d.addBoth(done)

    def _kill_stragglers(self) -> None:
        for wp in self.workers.values():
            if not wp.ended:
                log.error("worker {worker} (pid {pid}) still running {timeout} s after "
                          "SIGTERM: killing it", worker=wp.index, pid=wp.pid,
                          timeout=STOP_TIMEOUT)
                wp.signal(signal.SIGKILL)
