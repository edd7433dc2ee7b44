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
from zope.interface import provider

from exmaild import __version__, connlimits, logsetup
from exmaild.app import App
from exmaild.auth import passwords
from exmaild.config import TLS_SERVICES, Config
from exmaild.eagertcp import EagerTCPEndpoint
from exmaild.errors import StartupError, report
from exmaild.mailstore.service import MailStore
from exmaild.maintenance import Maintenance
from exmaild.netutil import hostname_problem
from exmaild.proxyproto import ProxyHeaderFactory
from exmaild.startup_checks import bind_error, check_daemon, safe_url
from exmaild.workers.spec import WorkerSpec

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


def _autoconfig(app: App) -> IProtocolFactory:
    from exmaild.autoconfig import make_site

    return make_site(app)


def _managesieve(app: App) -> IProtocolFactory:
    from exmaild.protocols.managesieve.server import ManageSieveFactory

    return ManageSieveFactory(app)


# service name -> factory builder. Protocol modules are imported lazily so a
# daemon that does not listen on a service never loads its code.
LISTENERS: dict[str, FactoryBuilder] = {
    "admin": _admin,
    "autoconfig": _autoconfig,
    "imap": _imap,
    "imaps": _imaps,
    "managesieve": _managesieve,
    "pop3": _pop3,
    "pop3s": _pop3s,
    "smtp": _smtp,
    "submission": _submission,
    "submissions": _submissions,
}


def endpoint(app: App, svc: str, host: str, port: int,
             adopt: tuple[int, int] | None = None) -> Any:
    # tcp.Port picks IPv4 or IPv6 from the interface address itself.
    implicit = svc in TLS_SERVICES or (svc == "admin" and app.cfg.tls.admin)
    tls = app.tls.for_service(svc) if implicit else None
    proxy = None
    pcfg = app.cfg.proxy
    if svc in pcfg.listeners:
        def proxy(f: Any) -> Any:
            return ProxyHeaderFactory(f, listener=svc, reactor=app.reactor,
                                      trusted=pcfg.trusted_networks, timeout=pcfg.timeout)
    return EagerTCPEndpoint(app.reactor, port, interface=host, tls=tls,
                            backlog=app.cfg.limits.listen_backlog,
                            send_buffer=app.cfg.limits.output_buffer, proxy=proxy, adopt=adopt)


class ExmailService(service.MultiService):
    def __init__(self, app: App | None, log_observer: ILogObserver | None = None) -> None:
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
        "exmaild {version} starting: config {config}, data in {data}, database {db}, "
        "new message contents in {blobs}",
        version=__version__,
        config=cfg.source or "none (embedded defaults)",
        data=str(cfg.data_dir),
        db=safe_url(cfg.database_url),
        blobs="the database" if cfg.blobs.backend == "postgresql" else "blob segments",
    )


def _admission(cfg: Config, reactor: Any) -> connlimits.Admission:
    """Raise the descriptor limit and derive the connection caps from it."""
    old, nofile = connlimits.raise_nofile()
    listeners = sum(1 for svc in LISTENERS if svc != "admin" and cfg.listen_address(svc))
    caps = connlimits.derive(cfg.limits, nofile, listeners)
    log.info(
        "descriptor limit {nofile} (soft limit was {old}); connection limits: {total} in all, "
        "{per_listener} per listener, {preauth} not logged in per listener, {per_ip} per "
        "address and listener", nofile=nofile, old=old, total=caps.total,
        per_listener=caps.per_listener, preauth=caps.preauth, per_ip=caps.per_ip,
    )
    somax = connlimits.somaxconn()
    if somax is not None and somax < cfg.limits.listen_backlog:
        log.warn(
            "listen backlog {backlog} ([limits] listen_backlog) is cut to {somaxconn} by the "
            "kernel (net.core.somaxconn); a burst of more new connections than that may leave "
            "clients connected but never answered (docs/limits.md)",
            backlog=cfg.limits.listen_backlog, somaxconn=somax,
        )
    return connlimits.Admission(caps, reactor.seconds)


def _watch_directory(app: App, top: service.MultiService) -> None:
    """Directory changes (exmailctl, the admin API, other nodes) drop the SMTP
    lookup cache within [directory] change_poll_interval seconds."""
    from exmaild.directory.watch import DirectoryWatch
    from exmaild.protocols.smtp.factory import policy_for

    watch = DirectoryWatch(app.store, app.reactor, app.cfg.directory.change_poll_interval)
    watch.subscribe(lambda: policy_for(app).cache.forget())
    watch.setServiceParent(top)


def make_service(cfg: Config, reactor: Any = None, *, stdout_log: bool = False,
                 worker: WorkerSpec | None = None) -> ExmailService:
    """The daemon's service tree: one process serving everything; with
    `[server] workers` above 1 the supervisor of that many worker processes
    (exmaild/workers/), each of which builds this tree again with `worker`
    (the sockets it serves, its pipes to the supervisor)."""
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    if worker is None and cfg.server.workers > 1:
        from exmaild.workers.build import make_supervisor

        return make_supervisor(cfg, reactor, stdout_log=stdout_log)
    if worker is None:  # a worker's supervisor checked all this, and holds the ports
        check_daemon(cfg)  # before any file is made or port bound: one line if it fails
    passwords.configure(cfg.auth)
    log_observers = logsetup.observers(cfg)
    for obs in log_observers:
        globalLogPublisher.addObserver(obs)
    stdout_observer = _stdout_observer(cfg) if stdout_log else None
    log_starting(cfg)
    if worker is None:
        _check_identity(cfg)
    store = MailStore(cfg, reactor)
    if worker is not None and not cfg.database_url.startswith("postgresql"):
        from exmaild.workers.channel import LocalNotifyRelay

        store.relay_factory = lambda notifier: LocalNotifyRelay(worker.link, notifier, reactor)
    state = store.open()  # refuses an out-of-date schema before anything binds
    log.info("database schema {state}", state=state)
    app = App(cfg, store, reactor)
    app.tls  # noqa: B018 -- load (or make) the certificate now: a bad one must stop start-up
    top = ExmailService(app, stdout_observer)
    flushed = log_observers + ([stdout_observer] if stdout_observer is not None else [])
    logsetup.LogFlusher(flushed).setServiceParent(top)  # stops last: flushes last
    store.setServiceParent(top)
    Maintenance(store, reactor).setServiceParent(top)
    _add_signal_handlers(top, app, log_observers, reactor)
    # The outbound queue runner: after the store, before the listeners (which
    # call app.queue.kick() once they have queued mail).
    from exmaild.queue.runner import QueueRunner

    app.queue = QueueRunner(cfg, store, reactor)
    app.queue.setServiceParent(top)
    admission = _admission(cfg, reactor)
    store.metrics.open_sources.append(admission.open_counts)
    _watch_directory(app, top)
    for svc, builder in LISTENERS.items():
        addr = cfg.listen_address(svc)
        if addr is None:
            continue
        host, port = addr
        adopt = worker.listen.get(svc) if worker is not None else None
        if worker is not None and adopt is None:
            continue  # not bound by the supervisor (it binds every configured one)
        factory = quiet(builder(app))
        if svc != "admin":
            factory.admission = admission.listener(svc)  # type: ignore[attr-defined]
        listener = Listener(endpoint(app, svc, host, port, adopt), factory, (host, port))
        listener.setName(svc)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return top


@provider(ILogObserver)
def _discard(event: dict[str, Any]) -> None:
    """twistd's observer when [log] file is set: its lines are in the file already."""


def _stdout_observer(cfg: Config) -> ILogObserver:
    # With [log] file set the lines go there only, not to stdout as well
    # (under systemd, journald would get each line twice).
    if cfg.log.file:
        return _discard
    return logsetup.text_observer(sys.stdout, cfg)


def _check_identity(cfg: Config) -> None:
    """Warn when [server] hostname is no name other mail servers accept."""
    problem = hostname_problem(cfg.server.hostname)
    if problem is not None:
        held = hostname_problem(cfg.queue.helo_name or cfg.server.hostname) is not None
        log.warn(
            "[server] hostname {hostname!r} {problem}: other mail servers may reject "
            "this one{held}; set [server] hostname to this server's public name, "
            "e.g. mail.example.com",
            hostname=cfg.server.hostname, problem=problem,
            held=", and outbound delivery is held" if held else "",
        )


def _add_signal_handlers(top: service.MultiService, app: App,
                         log_observers: list[ILogObserver], reactor: Any) -> None:
    """SIGHUP: reload the TLS certificate and reopen the logs; SIGUSR1: reopen the logs."""
    from exmaild.signals import SignalService

    def reload_tls() -> str:
        app.tls.reload()
        return app.tls.summary()

    SignalService(reactor, log_observers, reload_tls).setServiceParent(top)
