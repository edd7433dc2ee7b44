"""The outbound SMTP client protocol: a small LineReceiver with an async API.

Why not `twisted.mail.smtp.ESMTPClient`: its callback-driven state machine
has no place for the RFC 3461 DSN parameters (RET, ENVID, NOTIFY, ORCPT) or
SIZE=, reports recipients only in bulk, and does not reuse one connection
for several messages without subclassing most of it. Here every command is
`await client.command(...)`, replies queue up in order (so PIPELINING is just
"write several commands, then await as many replies"), and the session logic
(delivery.py) stays readable.

A progress timer runs whenever we wait for the server (a reply, or a paused
write during DATA); `command_timeout` without progress aborts the connection
and every waiter fails with `SMTPTimeout`.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IPushProducer
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from exmaild.codec.dotstuff import DotStuffer

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True)
class ServerReply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines).strip()

    @property
    def enhanced(self) -> str | None:
        m = _ENHANCED.match(self.lines[0] if self.lines else "")
        if m and m.group(1) == str(self.code)[0]:
            return m.group(0)
        return None

    @property
    def status(self) -> str:
        """The enhanced status, or one made from the reply class (Postfix does so)."""
        return self.enhanced or f"{str(self.code)[0]}.0.0"

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class SMTPClientError(Exception):
    """The connection went away or stalled; `stage` says when (Postfix's wording)."""

    def __init__(self, stage: str, why: str) -> None:
        super().__init__(f"{why} while {stage}")
        self.stage = stage
        self.why = why


class SMTPConnectionLost(SMTPClientError):
    pass


class SMTPTimeout(SMTPClientError):
    pass


class TLSHandshakeFailed(SMTPClientError):
    pass


class LocalReadError(SMTPClientError):
    """The queued message could not be read; the connection was aborted
    mid-DATA so the server never takes a truncated copy."""


def encode_xtext(text: str) -> str:
    """RFC 3461 §4 xtext: "+", "=" and anything outside "!".."~" as +XX."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}" for c in text)


@implementer(IOpenSSLClientConnectionCreator)
class _Opportunistic:
    """TLS 1.2+ without certificate verification (Postfix `may`), still sending SNI."""

    def __init__(self, server_name: str | None) -> None:
        self._opts = ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        self._sni = server_name.encode("idna") if server_name else None

    def clientConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        conn = self._opts.clientConnectionForTLS(tls_protocol)
        if self._sni:
            conn.set_tlsext_host_name(self._sni)
        return conn


def tls_creator(hostname: str, verify: bool, ca_pem: bytes | None = None) -> Any:
    """A client TLS connection creator: verifying `hostname`, or opportunistic."""
    from exmaild.queue.resolver import is_ip

    if not verify:
        return _Opportunistic(None if is_ip(hostname) else hostname)
    trust = None
    if ca_pem:
        certs = [
            ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
            for part in ca_pem.split(b"-----BEGIN CERTIFICATE-----")[1:]
        ]
        trust = ssl.trustRootFromCertificates(certs)
    return ssl.optionsForClientTLS(
        hostname, trustRoot=trust,
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2},
    )


@implementer(IPushProducer)
class _Flow:
    """Back-pressure for DATA: the transport pauses us when its buffer is full."""

    def __init__(self, client: SMTPClient) -> None:
        self.client = client
        self.paused: defer.Deferred[None] | None = None

    def pauseProducing(self) -> None:
        if self.paused is None:
            self.paused = defer.Deferred()
            self.client._waiting_changed()

    def resumeProducing(self) -> None:
        d, self.paused = self.paused, None
        if d is not None:
            self.client._progress()
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()


@dataclass
class Capabilities:
    esmtp: bool = False
    keywords: dict[str, str] = field(default_factory=dict)  # upper keyword -> parameters

    def has(self, keyword: str) -> bool:
        return keyword in self.keywords

    @property
    def size_limit(self) -> int:
        value = self.keywords.get("SIZE", "").split()
        return int(value[0]) if value and value[0].isdigit() else 0

    @property
    def auth_mechanisms(self) -> set[str]:
        return {m.upper() for m in self.keywords.get("AUTH", "").split()}


class SMTPClient(LineOnlyReceiver):
    delimiter = b"\r\n"
    MAX_LENGTH = 65536

    def __init__(self, reactor: Any, timeout: float, peer: str) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.peer = peer  # "host[address]" for error texts
        self.stage = "receiving the initial server greeting"
        self.caps = Capabilities()
        self.tls = False
        self.closed = False
        self._lines: list[str] = []
        self._waiters: deque[defer.Deferred[ServerReply]] = deque()
        self._early: deque[ServerReply] = deque()
        self._error: SMTPClientError | None = None
        self._timer: Any = None
        self._flow = _Flow(self)
        self._tls_pending = False
        self._awaiting_starttls = False
        self._tls_cutoff = False  # the rest of this read came before TLS: refuse it

    # -- connection and reply framing ---------------------------------------
    def connectionMade(self) -> None:
        self.greeting: defer.Deferred[ServerReply] = self.expect()

    def dataReceived(self, data: bytes) -> None:
        self._tls_cutoff = False  # a new read: after STARTTLS it is TLS-decrypted
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._tls_cutoff:
            # Plaintext that followed the 220 to STARTTLS in the same read: it
            # would pass for a reply over TLS (the STARTTLS injection attack).
            self._fail(TLSHandshakeFailed(self.stage, f"{self.peer} sent plaintext after "
                                          "its STARTTLS reply"))
            return
        self._progress()
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self._fail(SMTPConnectionLost(self.stage, f"malformed reply from {self.peer}"))
            return
        self._lines.append(text[4:])
        if text[3:4] == "-":
            return
        reply = ServerReply(int(text[:3]), tuple(self._lines))
        self._lines = []
        if self._awaiting_starttls:
            self._awaiting_starttls = False
            if reply.code == 220:
                self._tls_cutoff = True
                self._buffer = b""  # nor a partial line: TLS starts after this reply
        if self._waiters:
            self._waiters.popleft().callback(reply)
        else:
            self._early.append(reply)
        self._waiting_changed()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._fail(SMTPConnectionLost(self.stage, f"reply line too long from {self.peer}"))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self._cancel_timer()
        if self._error is None:
            tls_error = reason is not None and reason.check(SSL.Error)
            detail = f" ({reason.getErrorMessage()})" if tls_error else ""
            if self._tls_pending:
                self._error = TLSHandshakeFailed(
                    self.stage, f"TLS handshake with {self.peer} failed{detail}"
                )
            else:
                self._error = SMTPConnectionLost(
                    self.stage, f"lost connection with {self.peer}{detail}"
                )
        self._release()

    def _release(self) -> None:
        err = self._error
        assert err is not None
        while self._waiters:
            self._waiters.popleft().errback(err)
        d, self._flow.paused = self._flow.paused, None
        if d is not None:
            d.errback(err)

    def _fail(self, error: SMTPClientError) -> None:
        if self._error is None:
            self._error = error
        if self.transport is not None and not self.closed:
            self.transport.abortConnection()

    # -- progress timer ------------------------------------------------------
    def _waiting_changed(self) -> None:
        busy = bool(self._waiters) or self._flow.paused is not None
        if busy and self._timer is None:
            self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        elif not busy:
            self._cancel_timer()

    def _progress(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(SMTPTimeout(self.stage, f"conversation with {self.peer} timed out"))

    # -- commands ---------------------------------------------------------------
    def expect(self) -> defer.Deferred[ServerReply]:
        if self._early:
            return defer.succeed(self._early.popleft())
        if self._error is not None:
            return defer.fail(self._error)
        d: defer.Deferred[ServerReply] = defer.Deferred()
        self._waiters.append(d)
        self._waiting_changed()
        return d

    def send(self, line: str, stage: str | None = None) -> None:
        self.stage = f"sending {stage or line.split(' ', 1)[0].upper()}"
        if self._error is None and not self.closed:
            self.transport.write(line.encode("utf-8") + b"\r\n")

    async def command(self, line: str, stage: str | None = None) -> ServerReply:
        self.send(line, stage)
        return await self.expect()

    async def ehlo(self, name: str) -> ServerReply:
        """EHLO, falling back to HELO when the server refuses it (RFC 5321 §3.2)."""
        reply = await self.command(f"EHLO {name}")
        if reply.code == 250:
            keywords = {}
            for line in reply.lines[1:]:
                word, _, params = line.strip().partition(" ")
                keywords[word.upper().replace("AUTH=", "AUTH")] = params.strip()
            self.caps = Capabilities(True, keywords)
            return reply
        reply = await self.command(f"HELO {name}")
        self.caps = Capabilities()
        return reply

    async def starttls(self, creator: Any, helo: str) -> ServerReply:
        """STARTTLS and a fresh EHLO; returns the refusal if the server refuses."""
        self._awaiting_starttls = True
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            return reply
        self._tls_pending = True
        self.stage = "performing the TLS handshake"
        self.transport.startTLS(creator)
        reply = await self.ehlo(helo)  # the handshake happens on this first write
        self._tls_pending = False
        self.tls = True
        return reply

    def tls_description(self) -> str:
        try:
            conn = self.transport.getHandle()
            return f"{conn.get_protocol_version_name()} with cipher {conn.get_cipher_name()}"
        except Exception:
            return "TLS"

    async def auth(self, user: str, password: str) -> ServerReply:
        """AUTH PLAIN, else LOGIN (RFC 4954); the secret never reaches a log."""
        mechs = self.caps.auth_mechanisms
        if "PLAIN" in mechs or "LOGIN" not in mechs:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
            return await self.command(f"AUTH PLAIN {token}", "AUTH")
        reply = await self.command("AUTH LOGIN", "AUTH")
        for secret in (user, password):
            if reply.code != 334:
                return reply
            reply = await self.command(base64.b64encode(secret.encode()).decode(), "AUTH")
        return reply

    async def pipelined(self, lines: list[tuple[str, str]]) -> list[ServerReply]:
        """Send (line, stage) commands in one write when PIPELINING is offered
        (RFC 2920), one at a time otherwise; replies in order."""
        if self.caps.has("PIPELINING"):
            waiters = []
            for line, stage in lines:
                self.send(line, stage)
                waiters.append(self.expect())
            return [await d for d in waiters]
        return [await self.command(line, stage) for line, stage in lines]

    async def send_data(self, chunks: AsyncIterator[bytes]) -> ServerReply:
        """Stream the message after a 354: dot-stuffed, with back-pressure."""
        self.stage = "sending message body"
        stuffer = DotStuffer()
        self.transport.registerProducer(self._flow, True)
        try:
            async for chunk in chunks:
                out = stuffer.feed(chunk)
                if out and self._error is None:
                    self.transport.write(out)
                if self._error is not None:
                    raise self._error
                if self._flow.paused is not None:
                    await self._flow.paused
            self.stage = "sending end of data -- message may be sent more than once"
            self.transport.write(stuffer.end())
        except SMTPClientError:
            raise
        except Exception as e:
            self.abort("local error")
            raise LocalReadError(self.stage, f"cannot read the queued message ({e})") from e
        finally:
            if not self.closed:
                self.transport.unregisterProducer()
        return await self.expect()

    def abort(self, why: str) -> None:
        self._fail(SMTPConnectionLost(self.stage, why))

    async def quit(self) -> None:
        if self.closed:
            return
        try:
            self.send("QUIT")
            d = self.expect()
            d.addErrback(lambda _f: None)
            # Do not wait long for a polite goodbye.
            d.addTimeout(2, self.reactor, onTimeoutCancel=lambda *_: None)
            await d
        except Exception:
            pass
        if not self.closed:
            self.transport.loseConnection()
