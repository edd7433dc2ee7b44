"""SIGHUP and SIGUSR1, the way logrotate and `systemctl reload` use them.

SIGUSR1 reopens the log files (after logrotate renamed them); SIGHUP reloads
the TLS certificate (new connections get it; open ones keep theirs) and
reopens the log files. Each signal is answered with one log line. The
configuration itself is not reread: that needs a restart.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.logger import ILogObserver, Logger

from exmaild import logsetup

log = Logger()


class SignalService(service.Service):
    """Installs the handlers while running; restores the previous ones on stop."""

    def __init__(self, reactor: Any, observers: list[ILogObserver],
                 reload_tls: Callable[[], str]) -> None:
        self.reactor = reactor
        self.observers = observers
        self.reload_tls = reload_tls
        self._previous: dict[int, Any] = {}

    def startService(self) -> None:
        super().startService()
        for sig, handler in ((signal.SIGHUP, self.hangup), (signal.SIGUSR1, self.reopen)):
            self._previous[sig] = signal.signal(sig, self._handler(handler))

    def _handler(self, work: Callable[[], None]) -> Callable[[int, Any], None]:
        def handle(signum: int, frame: Any) -> None:
            # Only wake the reactor (callFromThread is signal-safe); the work
            # runs in the reactor thread like everything else.
            self.reactor.callFromThread(work)
            previous = self._previous.get(signum)
            if callable(previous):  # e.g. twistd's own --logfile rotation on SIGUSR1
                previous(signum, frame)

        return handle

    def stopService(self) -> Any:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        return super().stopService()

    def _reopen_logs(self) -> str:
        try:
            paths = logsetup.reopen_all(self.observers)
        except OSError as e:
            return f"cannot reopen the log files: {e}"
        return f"reopened {', '.join(paths)}" if paths else "no log files to reopen"

    def reopen(self) -> None:
        log.info("SIGUSR1: {result}", result=self._reopen_logs())

    def hangup(self) -> None:
        logs = self._reopen_logs()
        try:
            tls = self.reload_tls()
        except Exception as e:  # a bad file must not stop a running daemon
            log.error("SIGHUP: cannot reload the TLS certificate ({error}), keeping the old "
                      "one; {logs}", error=str(e) or type(e).__name__, logs=logs)
            return
        log.info("SIGHUP: reloaded the TLS certificate ({tls}); {logs}", tls=tls, logs=logs)
