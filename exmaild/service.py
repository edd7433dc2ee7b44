"""Builds the daemon: one MultiService with the store first and listeners last.

Each listener is a StreamServerEndpointService, which binds in
privilegedStartService, so ports 25/465/587/993/995 can be bound before twistd
drops to an unprivileged user. A protocol joins the daemon by adding its
factory builder to LISTENERS; services without one are not started.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.components import Componentized

from exmaild import __version__, logsetup
from exmaild.app import App
from exmaild.config import TLS_SERVICES, Config
from exmaild.eagertcp import EagerTCPEndpoint
from exmaild.errors import StartupError, report
from exmaild.mailstore.service import MailStore
from exmaild.maintenance import Maintenance
from exmaild.startup_checks import bind_error, check_daemon, safe_url

log = Logger()

FactoryBuilder = Callable[[App], IProtocolFactory]


def _admin(app: App) -> IProtocolFactory:
    from exmaild.admin.resource import make_site

    return make_site(app)


def _smtp(app: App) -> IProtocolFactory:
    from exmaild.protocols.smtp.factory import make_factory

    return make_factory(app, "smtp")


def _submission(app: App) -> IProtocolFactory:
    from exmaild.protocols.smtp.factory import make_factory

    return make_factory(app, "submission")


def _submissions(app: App) -> IProtocolFactory:
    from exmaild.protocols.smtp.factory import make_factory

    return make_factory(app, "submissions")


def _pop3(app: App) -> IProtocolFactory:
    from exmaild.protocols.pop3.server import POP3Factory

    return POP3Factory(app, implicit_tls=False)


def _pop3s(app: App) -> IProtocolFactory:
    from exmaild.protocols.pop3.server import POP3Factory

    return POP3Factory(app, implicit_tls=True)


def _imap(app: App) -> IProtocolFactory:
    from exmaild.protocols.imap.server import IMAPFactory

    return IMAPFactory(app, implicit_tls=False)


def _imaps(app: App) -> IProtocolFactory:
    from exmaild.protocols.imap.server import IMAPFactory

    return IMAPFactory(app, implicit_tls=True)


# service name -> factory builder. Protocol modules are imported lazily so a
# daemon that does not listen on a service never loads its code.
LISTENERS: dict[str, FactoryBuilder] = {
    "admin": _admin,
    "imap": _imap,
    "imaps": _imaps,
    "pop3": _pop3,
    "pop3s": _pop3s,
    "smtp": _smtp,
    "submission": _submission,
    "submissions": _submissions,
}


def endpoint(app: App, svc: str, host: str, port: int) -> Any:
    # tcp.Port picks IPv4 or IPv6 from the interface address itself.
    tls = app.tls if svc in TLS_SERVICES else None
    return EagerTCPEndpoint(app.reactor, port, interface=host, tls=tls)


class ExmailService(service.MultiService):
    def __init__(self, app: App, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.app = app
        self.log_observer = log_observer
        self.started_at: float | None = None

    def setServiceParent(self, parent: Any) -> Any:
        # twistd takes its log observer from the application, when it has one.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def startService(self) -> None:
        super().startService()
        self.started_at = time.monotonic()
        log.info("exmaild {version} started", version=__version__)

    def stopService(self) -> Any:
        d = super().stopService()
        d.addBoth(_log_stopped, self.started_at)
        return d


def _log_stopped(result: Any, started_at: float | None) -> Any:
    """The one line at shutdown, once every service has stopped."""
    uptime = time.monotonic() - started_at if started_at is not None else 0.0
    log.info("exmaild stopped after {uptime} up", uptime=_duration(uptime),
             uptime_seconds=round(uptime, 3))
    return result


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m)
    return "".join(parts + [f"{s}s"])


class Listener(StreamServerEndpointService):
    """A listening service that says so once its port is bound (so the
    start-up lines come in the order things happen)."""

    def __init__(self, endpoint: Any, factory: IProtocolFactory, address: tuple[str, int]) -> None:
        super().__init__(endpoint, factory)
        self._address = address

    def privilegedStartService(self) -> None:
        host, port = self._address
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            # Taken between the start-up check and now: still one line, no traceback.
            err = e.socketError if isinstance(e.socketError, OSError) else OSError(str(e))
            report("exmaild", StartupError(bind_error(f"listen.{self.name}", host, port, err)))
            raise SystemExit(1) from None
        self._waitingForPort.addCallback(self._bound, host, port)

    def _bound(self, port: Any, host: str, wanted: int) -> Any:
        bound = getattr(port, "getHost", lambda: None)()
        log.info("listening for {service} on {host}:{port}", service=self.name, host=host,
                 port=getattr(bound, "port", wanted))
        return port


def quiet(factory: IProtocolFactory) -> IProtocolFactory:
    """No `Starting factory <... at 0x...>` lines: the listener's own line says it."""
    factory.noisy = False  # type: ignore[attr-defined]
    return factory


def log_starting(cfg: Config) -> None:
    log.info(
        "exmaild {version} starting: config {config}, data in {data}, database {db}",
        version=__version__,
        config=cfg.source or "none (embedded defaults)",
        data=str(cfg.data_dir),
        db=safe_url(cfg.database_url),
    )


def make_service(cfg: Config, reactor: Any = None, *, stdout_log: bool = False) -> ExmailService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    check_daemon(cfg)  # before any file is made or port bound: one line if it fails
    log_observers = logsetup.observers(cfg)
    for obs in log_observers:
        globalLogPublisher.addObserver(obs)
    stdout_observer = logsetup.text_observer(sys.stdout, cfg) if stdout_log else None
    log_starting(cfg)
    store = MailStore(cfg, reactor)
    state = store.open()  # refuses an out-of-date schema before anything binds
    log.info("database schema {state}", state=state)
    app = App(cfg, store, reactor)
    app.tls  # noqa: B018 -- load (or make) the certificate now: a bad one must stop start-up
    top = ExmailService(app, stdout_observer)
    flushed = log_observers + ([stdout_observer] if stdout_observer is not None else [])
    logsetup.LogFlusher(flushed).setServiceParent(top)  # stops last: flushes last
    store.setServiceParent(top)
    Maintenance(store, reactor).setServiceParent(top)
    # The outbound queue runner: after the store, before the listeners (which
    # call app.queue.kick() once they have queued mail).
    from exmaild.queue.runner import QueueRunner

    app.queue = QueueRunner(cfg, store, reactor)
    app.queue.setServiceParent(top)
    for svc, builder in LISTENERS.items():
        addr = cfg.listen_address(svc)
        if addr is None:
            continue
        host, port = addr
        listener = Listener(endpoint(app, svc, host, port), quiet(builder(app)), (host, port))
        listener.setName(svc)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return top
