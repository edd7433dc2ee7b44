"""Builds the daemon: one MultiService with the store first and listeners last.

Each listener is a StreamServerEndpointService, which binds in
privilegedStartService, so ports 25/465/587/993/995 can be bound before twistd
drops to an unprivileged user. A protocol joins the daemon by adding its
factory builder to LISTENERS; services without one are not started.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.application import service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IProtocolFactory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.components import Componentized

from exmaild import __version__, logsetup
from exmaild.app import App
from exmaild.config import TLS_SERVICES, Config
from exmaild.eagertcp import EagerTCPEndpoint
from exmaild.maintenance import Maintenance
from exmaild.store.connector import Store

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
    implicit = svc in TLS_SERVICES or (svc == "admin" and app.cfg.tls.admin)
    tls = app.tls if implicit else None
    return EagerTCPEndpoint(app.reactor, port, interface=host, tls=tls)


class ExmailService(service.MultiService):
    def __init__(self, app: App, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.app = app
        self.log_observer = log_observer

    def setServiceParent(self, parent: Any) -> Any:
        # twistd takes its log observer from the application, when it has one.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def startService(self) -> None:
        log.info(
            "exmaild {version} starting: data in {data}, database {db}",
            version=__version__,
            data=str(self.app.cfg.data_dir),
            db=_safe_url(self.app.cfg.database_url),
        )
        super().startService()


def _safe_url(url: str) -> str:
    """The database URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _watch_directory(app: App, top: service.MultiService) -> None:
    """Directory changes (exmailctl, the admin API, other nodes) drop the SMTP
    lookup cache within [directory] change_poll_interval seconds."""
    from exmaild.directory.watch import DirectoryWatch
    from exmaild.protocols.smtp.factory import policy_for

    watch = DirectoryWatch(app.store, app.reactor, app.cfg.directory.change_poll_interval)
    watch.subscribe(lambda: policy_for(app).cache.forget())
    watch.setServiceParent(top)


def make_service(cfg: Config, reactor: Any = None, *, stdout_log: bool = False) -> ExmailService:
    if reactor is None:
        from twisted.internet import reactor as _reactor

        reactor = _reactor
    log_observers = logsetup.observers(cfg)
    for obs in log_observers:
        globalLogPublisher.addObserver(obs)
    stdout_observer = logsetup.text_observer(sys.stdout, cfg) if stdout_log else None
    store = Store(cfg, reactor)
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
    _watch_directory(app, top)
    for svc, builder in LISTENERS.items():
        addr = cfg.listen_address(svc)
        if addr is None:
            continue
        host, port = addr
        listener = StreamServerEndpointService(endpoint(app, svc, host, port), builder(app))
        listener.setName(svc)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
        log.info("listening for {service} on {host}:{port}", service=svc, host=host, port=port)
    return top
