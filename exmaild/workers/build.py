"""The twistd service tree when `[server] workers` is above 1."""

from __future__ import annotations

import signal
from typing import Any

from twisted.logger import ILogObserver, Logger, globalLogPublisher

from exmaild import logsetup
from exmaild.config import Config
from exmaild.signals import SignalService
from exmaild.startup_checks import check_daemon
from exmaild.workers.supervisor import Supervisor

log = Logger(namespace="exmaild.workers")


class SupervisorSignals(SignalService):
    """SIGHUP and SIGUSR1 reopen the supervisor's own logs and go on to every worker."""

    def __init__(self, reactor: Any, observers: list[ILogObserver], sup: Supervisor) -> None:
        super().__init__(reactor, observers, lambda: "")
        self.sup = sup

    def reopen(self) -> None:
        logs = self._reopen_logs()
        n = self.sup.signal_all(signal.SIGUSR1, ready_only=True)
        log.info("SIGUSR1: {logs}; passed on to {n} worker(s)", logs=logs, n=n)

    def hangup(self) -> None:
        logs = self._reopen_logs()
        n = self.sup.signal_all(signal.SIGHUP, ready_only=True)
        log.info("SIGHUP: {logs}; passed on to {n} worker(s), which reload the TLS "
                 "certificate", logs=logs, n=n)


def make_supervisor(cfg: Config, reactor: Any, *, stdout_log: bool) -> Any:
    from exmaild import service as daemon
    from exmaild.store import schema
    from exmaild.store.pool import make_engine
    from exmaild.tlscontext import server_context

    check_daemon(cfg)  # as one process would: one line and exit 1 before anything binds
    log_observers = logsetup.observers(cfg)
    for obs in log_observers:
        globalLogPublisher.addObserver(obs)
    stdout_observer = daemon._stdout_observer(cfg) if stdout_log else None
    daemon.log_starting(cfg)
    daemon._check_identity(cfg)
    # The schema is made (or refused) once, here, not raced by N workers;
    # likewise the self-signed certificate, when there is none.
    if cfg.database_url.startswith("sqlite"):
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(cfg.database_url, 1)
    try:
        log.info("database schema {state}", state=schema.ensure_schema(engine))
    finally:
        engine.dispose()
    server_context(cfg)
    top = daemon.ExmailService(None, stdout_observer)
    flushed = log_observers + ([stdout_observer] if stdout_observer is not None else [])
    logsetup.LogFlusher(flushed).setServiceParent(top)  # stops last: flushes last
    sup = Supervisor(cfg, reactor, stdout_log=stdout_log)
    sup.setServiceParent(top)
    SupervisorSignals(reactor, log_observers, sup).setServiceParent(top)
    log.info("running {n} worker processes", n=cfg.server.workers)
    return top
