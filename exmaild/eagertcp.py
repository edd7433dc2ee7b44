"""Listening TCP ports whose connections send at once when they can.

Twisted's transport.write() only queues: it registers the socket for writing
(epoll_ctl), the next reactor turn reports it writable, doWrite() sends, and
the socket is unregistered again (epoll_ctl). For a mail protocol's many
short replies that round trip costs more Python than the reply itself (about
a fifth of the reactor thread's time per SMTP message, measured with
bench/smtp_ingest.py). EagerServer tries send(2) first when nothing is queued
and hands only what the kernel did not take to the normal path, so ordering,
back-pressure and error handling stay Twisted's own.

The port also sets how many bytes may wait for a client before the
connection's push producer (the protocol's OutputGate) is paused:
`[limits] output_buffer` instead of Twisted's 64 KiB, which is also its
read size and stays so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer


class EagerServer(tcp.Server):
    def _isSendBufferFull(self) -> bool:
        limit = getattr(self.server, "send_buffer", self.bufferSize)
        return len(self.dataBuffer) - self.offset + self._tempDataLen > limit

    def write(self, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            # After STARTTLS, write() takes plaintext for the TLS layer.
            and not self.TLS
            # A registered pull producer is resumed from doWrite(); one whose
            # writes all went out at once would never be. A push producer is
            # paused only when data stays queued, so it may write eagerly.
            and (self.producer is None or self.streamingProducer)
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
        ):
            try:
                sent = self.socket.send(data)
            except OSError:  # EAGAIN, or an error doWrite() will report
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        super().write(data)


class EagerPort(tcp.Port):
    transport = EagerServer
    send_buffer = 64 * 1024  # bytes queued before a push producer is paused

    def _logConnectionLostMsg(self) -> None:
        # No `(TCP Port N Closed)` per listener: the daemon says it stopped, once.
        pass


@implementer(IStreamServerEndpoint)
class EagerTCPEndpoint:
    """Like TCP4ServerEndpoint / SSL4ServerEndpoint (TLS when `tls` is given)."""

    def __init__(
        self, reactor: Any, port: int, interface: str = "", tls: Any = None, backlog: int = 4096,
        send_buffer: int = 64 * 1024, proxy: Callable[[Any], Any] | None = None,
        adopt: tuple[int, int] | None = None,
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._tls = tls
        self._backlog = backlog
        self._send_buffer = send_buffer
        self._proxy = proxy  # wraps the factory so connections start with a PROXY header
        # (descriptor, address family) of a socket a supervisor bound and
        # listens on (exmaild/workers/): served instead of binding our own.
        self._adopt = adopt

    def listen(self, factory: IProtocolFactory) -> defer.Deferred[EagerPort]:
        def start() -> EagerPort:
            # No "Starting factory <… at 0x…>" lines: service.py names each listener.
            factory.noisy = False  # type: ignore[attr-defined]
            f = factory if self._tls is None else TLSMemoryBIOFactory(self._tls, False, factory)
            f.noisy = getattr(factory, "noisy", True)  # the TLS wrapper is as quiet
            if self._proxy is not None:  # the header comes before the TLS handshake
                f = self._proxy(f)
            if self._adopt is not None:
                fd, family = self._adopt
                port = EagerPort._fromListeningDescriptor(self._reactor, fd, family, f)
            else:
                port = EagerPort(self._port, f, self._backlog, self._interface, self._reactor)
            port.send_buffer = self._send_buffer
            port.startListening()
            if self._tls is not None:
                port._type = "TLS"
            return port

        return defer.execute(start)
