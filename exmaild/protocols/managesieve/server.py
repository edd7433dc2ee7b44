"""ManageSieve (RFC 5804): members upload, check and activate Sieve scripts.

Authentication is IMAP's: the same AccountAuthenticator (password hashes,
login hooks), PLAIN only, and only over TLS (STARTTLS) unless [auth]
allow_plaintext_loopback lets a loopback client log in without it. Scripts
are checked by the same code as `exmailctl sieve put`; errors name the line.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from exmaild import __version__, connlimits
from exmaild.netutil import is_loopback
from exmaild.protocols.managesieve.wire import TooLarge, WireError, literal, quote, take_command
from exmaild.sieve.delivery import scripts_of
from exmaild.sieve.parser import EXTENSIONS
from exmaild.sieve.scripts import ScriptError, check_name, check_script

log = Logger(namespace="exmaild.managesieve")

MAX_AUTH_FAILURES = 3
IDLE_TIMEOUT = 1800
REFUSAL = b'BYE (TRYLATER) "Too many connections, try again later"\r\n'


class ManageSieveServer(protocol.Protocol, TimeoutMixin):
    def __init__(self, app: Any, *, ticket: connlimits.Ticket | None = None) -> None:
        self.app = app
        self.cfg = app.cfg
        self.ticket = ticket or connlimits.Ticket()
        self.buf = bytearray()
        self.tls = False
        self.account: Any = None
        self.remote = "?"
        self.failures = 0
        self.busy = False
        self.closed = False
        self.sasl_pending: bool = False

    # -- connection ------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.remote = getattr(peer, "host", str(peer))
        self.callLater = self.app.reactor.callLater
        self.setTimeout(self.cfg.limits.preauth_timeout)
        self.send(self.capabilities() + b'OK "exmaild ManageSieve ready"\r\n')

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self.closed = True
        self.setTimeout(None)
        self.ticket.release()

    def timeoutConnection(self) -> None:
        self.send(b'BYE "Idle timeout"\r\n')
        self.transport.loseConnection()

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def plaintext_ok(self) -> bool:
        return self.tls or (bool(self.cfg.auth.allow_plaintext_loopback)
                            and is_loopback(self.remote))

    def capabilities(self) -> bytes:
        lines = [b'"IMPLEMENTATION" ' + quote(f"exmaild {__version__}"),
                 b'"SIEVE" ' + quote(" ".join(EXTENSIONS)),
                 b'"MAXREDIRECTS" ' + quote(str(self.cfg.sieve.max_redirects)),
                 b'"VERSION" "1.0"']
        if self.account is None:
            lines.insert(1, b'"SASL" ' + quote("PLAIN" if self.plaintext_ok() else ""))
            if not self.tls:
                lines.append(b'"STARTTLS"')
        else:
            lines.append(b'"OWNER" ' + quote(self.account.address))
        return b"".join(line + b"\r\n" for line in lines)

    # -- input -----------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.buf += data
        if self.busy and len(self.buf) > 2 * (self.cfg.sieve.max_script_size
                                              + self.cfg.limits.line_length):
            # Pipelined input beyond one command's worth while one runs.
            return self._bye("too much input at once", "QUOTA/MAXSIZE")
        self._pump()

    def _pump(self) -> None:
        while not self.busy and not self.closed and self.buf:
            if self.sasl_pending:
                nl = self.buf.find(b"\n")
                if nl < 0:
                    if len(self.buf) > self.cfg.limits.line_length:
                        return self._bye("line too long")
                    return
                line = bytes(self.buf[:nl]).rstrip(b"\r")
                del self.buf[: nl + 1]
                self.sasl_pending = False
                self._run(self._sasl_continue(line))
                continue
            try:
                cmd = take_command(self.buf, self.cfg.limits.line_length,
                                   self.cfg.sieve.max_script_size + 1024)
            except WireError as e:
                self.send(b"NO " + quote(f"Syntax error: {e}") + b"\r\n")
                continue
            except TooLarge as e:
                return self._bye(str(e), "QUOTA/MAXSIZE")
            if cmd is None:
                return
            self._run(self._dispatch(cmd.name, cmd.args))

    def _run(self, coro: Any) -> None:
        self.busy = True
        d = defer.Deferred.fromCoroutine(coro)

        def done(result: Any) -> None:
            self.busy = False
            if isinstance(result, bytes):
                self.send(result)
            if not self.closed:
                self._pump()

        def failed(f: Any) -> None:
            log.failure("managesieve command failed for {user}", f,
                        user=getattr(self.account, "address", "-"))
            self.busy = False
            self.send(b'NO (TRYLATER) "Internal error, try again later"\r\n')
            if not self.closed:
                self._pump()

        d.addCallbacks(done, failed)

    def _bye(self, why: str, code: str = "") -> None:
        self.send(b"BYE " + (f"({code}) ".encode() if code else b"") + quote(why) + b"\r\n")
        self.transport.loseConnection()
        self.closed = True

    # -- commands --------------------------------------------------------
    async def _dispatch(self, name: str, args: list[str | int]) -> bytes:
        pre = {"CAPABILITY", "LOGOUT", "NOOP", "STARTTLS", "AUTHENTICATE"}
        post = {"CAPABILITY", "LOGOUT", "NOOP", "HAVESPACE", "PUTSCRIPT", "CHECKSCRIPT",
                "LISTSCRIPTS", "SETACTIVE", "GETSCRIPT", "DELETESCRIPT", "RENAMESCRIPT"}
        if name not in (post if self.account is not None else pre):
            if name in pre | post:
                return no("Not allowed now" if self.account else "Log in first")
            return no(f"Unknown command {name[:20]}")
        handler = getattr(self, "c_" + name.lower())
        return await handler(args)

    async def c_capability(self, args: list[Any]) -> bytes:
        return self.capabilities() + b"OK\r\n"

    async def c_noop(self, args: list[Any]) -> bytes:
        if args and isinstance(args[0], str):
            return b"OK (TAG " + quote(args[0]) + b') "Done"\r\n'
        return b'OK "Done"\r\n'

    async def c_logout(self, args: list[Any]) -> bytes:
        self.send(b'OK "Logout"\r\n')
        self.transport.loseConnection()
        self.closed = True
        return b""

    async def c_starttls(self, args: list[Any]) -> bytes:
        if self.tls:
            return no("TLS already active")
        self.send(b'OK "Begin TLS negotiation"\r\n')
        self.buf.clear()  # nothing sent before the handshake may count after it
        self.transport.startTLS(self.app.tls.for_service("managesieve"))
        self.tls = True
        return self.capabilities() + b"OK\r\n"  # RFC 5804 §2.2: capabilities again

    async def c_authenticate(self, args: list[Any]) -> bytes:
        if not args or not isinstance(args[0], str):
            return no("AUTHENTICATE needs a mechanism")
        if args[0].upper() != "PLAIN":
            return no("Only PLAIN is supported")
        if not self.plaintext_ok():
            return no("Use STARTTLS first", "ENCRYPT-NEEDED")
        if len(args) > 1:
            return await self._plain(str(args[1]).encode())
        self.sasl_pending = True
        return b'""\r\n'  # empty challenge; the response comes as a string

    async def _sasl_continue(self, line: bytes) -> bytes:
        text = line.strip()
        if text.startswith(b'"') and text.endswith(b'"') and len(text) >= 2:
            text = text[1:-1]
        if text == b"*":
            return no("Authentication cancelled")
        return await self._plain(text)

    async def _plain(self, b64: bytes) -> bytes:
        try:
            data = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return no("Invalid base64")
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return no("Malformed PLAIN response")
        authz, user_b, password_b = parts
        if authz and authz != user_b:
            return no("Logging in as another user is not supported")
        user = user_b.decode("utf-8", "surrogateescape")[:320]
        d = await self.app.logins.login(
            user, password_b.decode("utf-8", "surrogateescape"), protocol="sieve",
            ip=self.remote)
        if not d.ok:
            log.info("managesieve login failed: user={user}, rip={rip}, reason={reason}",
                     user=user, rip=self.remote, reason=d.reason)
            if d.kind in ("throttled", "unavailable"):
                return no(d.text or "Login temporarily unavailable, try again later",
                          "TRYLATER")
            self.failures += 1
            if self.failures >= MAX_AUTH_FAILURES:
                self._bye("Too many failed logins")
                return b""
            if d.kind in ("refused", "must_change") and d.text:
                return no(d.text)
            return no("Authentication failed")
        acct = d.account
        assert acct is not None
        self.account = acct
        self.ticket.authenticated()
        self.setTimeout(IDLE_TIMEOUT)
        log.info("managesieve login: user={user}, rip={rip}, tls={tls}", user=acct.address,
                 rip=self.remote, tls=self.tls)
        return b'OK "Logged in"\r\n'

    def _strings(self, args: list[Any], n: int, usage: str) -> list[str] | None:
        if len(args) != n or not all(isinstance(a, str) for a in args):
            return None
        return args

    async def c_havespace(self, args: list[Any]) -> bytes:
        if len(args) != 2 or not isinstance(args[0], str) or not isinstance(args[1], int):
            return no("Usage: HAVESPACE name size")
        problem = await scripts_of(self.app).have_space(self.account.id, args[0], args[1])
        return no(problem, "QUOTA/MAXSIZE") if problem else b"OK\r\n"

    async def c_checkscript(self, args: list[Any]) -> bytes:
        if self._strings(args, 1, "") is None:
            return no("Usage: CHECKSCRIPT script")
        try:
            check_script(args[0], self.cfg.sieve)
        except ScriptError as e:
            return no(str(e), e.code)
        return b"OK\r\n"

    async def c_putscript(self, args: list[Any]) -> bytes:
        if self._strings(args, 2, "") is None:
            return no("Usage: PUTSCRIPT name script")
        try:
            await scripts_of(self.app).put(self.account.id, args[0], args[1])
        except ScriptError as e:
            return no(str(e), e.code)
        log.info("managesieve: {user} stored script {name!r}", user=self.account.address,
                 name=args[0])
        return b"OK\r\n"

    async def c_listscripts(self, args: list[Any]) -> bytes:
        out = b""
        for s in await scripts_of(self.app).list(self.account.id):
            out += quote(s.name) + (b" ACTIVE" if s.active else b"") + b"\r\n"
        return out + b"OK\r\n"

    async def c_setactive(self, args: list[Any]) -> bytes:
        if self._strings(args, 1, "") is None:
            return no("Usage: SETACTIVE name")
        try:
            await scripts_of(self.app).activate(self.account.id, args[0])
        except ScriptError as e:
            return no(str(e), e.code)
        return b"OK\r\n"

    async def c_getscript(self, args: list[Any]) -> bytes:
        if self._strings(args, 1, "") is None:
            return no("Usage: GETSCRIPT name")
        text = await scripts_of(self.app).get(self.account.id, args[0])
        if text is None:
            return no("No such script", "NONEXISTENT")
        return literal(text.encode("utf-8", "surrogateescape")) + b"\r\nOK\r\n"

    async def c_deletescript(self, args: list[Any]) -> bytes:
        if self._strings(args, 1, "") is None:
            return no("Usage: DELETESCRIPT name")
        try:
            await scripts_of(self.app).delete(self.account.id, args[0])
        except ScriptError as e:
            return no(str(e), e.code)
        return b"OK\r\n"

    async def c_renamescript(self, args: list[Any]) -> bytes:
        if self._strings(args, 2, "") is None:
            return no("Usage: RENAMESCRIPT old new")
        try:
            check_name(args[1])
            await scripts_of(self.app).rename(self.account.id, args[0], args[1])
        except ScriptError as e:
            return no(str(e), e.code)
        return b"OK\r\n"


def no(text: str, code: str = "") -> bytes:
    return b"NO " + (f"({code}) ".encode() if code else b"") + quote(text) + b"\r\n"


class ManageSieveFactory(protocol.ServerFactory):
    def __init__(self, app: Any) -> None:
        self.app = app

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        ticket = connlimits.admit(self, addr, REFUSAL, "managesieve")
        if not isinstance(ticket, connlimits.Ticket):
            return ticket
        p = ManageSieveServer(self.app, ticket=ticket)
        p.factory = self
        return p
