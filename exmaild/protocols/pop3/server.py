"""The POP3 server protocol (RFC 1939, 2449, 2595, 3206, 5034) and its factory.

Framing is Twisted's LineReceiver; commands are parsed by `commands.parse`
(sans-IO) and answered strictly in order: a command that has to wait for the
database or the disk pauses the protocol (and with it the socket's reading),
so pipelined commands (RFC 2449 PIPELINING) queue up in the line buffer and
are taken one by one when it resumes. Responses to RETR, TOP, LIST and UIDL
are written through a push producer registered with the transport, so a client
that reads slowly slows us down instead of filling our memory.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from exmaild import connlimits
from exmaild.auth.checker import MustChangePassword
from exmaild.netutil import is_loopback
from exmaild.protocols.flow import OutputGate
from exmaild.protocols.pop3 import responses as r
from exmaild.protocols.pop3 import sasl
from exmaild.protocols.pop3.commands import (
    AUTHORIZATION_COMMANDS,
    TRANSACTION_COMMANDS,
    BadCommand,
    Command,
    echo,
    parse,
)
from exmaild.protocols.pop3.maildrop import Maildrop, SessionRegistry, load_maildrop, registry_for
from exmaild.protocols.pop3.responses import Reply
from exmaild.protocols.pop3.transaction import MidResponse, TransactionCommands
from exmaild.protocols.pop3.transfer import ConnectionGone, MessageReader

log = Logger(namespace="exmaild.pop3")

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"  # after QUIT: nothing more is read
# Consecutive bad commands before we hang up (Dovecot's limit too), and failed
# logins per connection (each costs an argon2 verification).
MAX_BAD_COMMANDS = 20
MAX_AUTH_FAILURES = 3
# Seconds a closing connection may take to send its last words.
CLOSE_GRACE = 30


class POP3Server(TransactionCommands, LineReceiver, TimeoutMixin):
    delimiter = b"\n"  # CR is stripped below: a client sending bare LF still works

    def __init__(self, app: Any, registry: SessionRegistry, *, implicit_tls: bool) -> None:
        self.app = app
        self.store = app.store
        self.metrics = app.store.metrics
        self.registry = registry
        self.cfg = app.cfg
        self.MAX_LENGTH = self.cfg.limits.line_length
        self.tls_active = implicit_tls
        self.state = AUTHORIZATION
        self.user: str | None = None  # from USER, waiting for PASS
        self.account: Any = None
        self.maildrop: Maildrop | None = None
        self.remote = "?"
        self.closed = False
        self._busy = False
        self._sasl: sasl.Exchange | None = None
        self._bad_commands = 0
        self._auth_failures = 0
        # Registered for the connection's life: no further command is taken
        # while more than [limits] output_buffer waits for the client.
        self._gate: OutputGate | None = OutputGate(self._flow_changed)
        self._reader: MessageReader | None = None
        self._gate_registered = False
        self.ticket = connlimits.Ticket()
        # Input held while no line is taken, before reading stops.
        self.input_limit = max(self.cfg.limits.input_buffer, 2 * self.MAX_LENGTH)
        self._end_reason = "disconnected"
        self._abort_call: Any = None
        self.stats = {"top": 0, "top_bytes": 0, "retr": 0, "retr_bytes": 0}

    # -- connection -----------------------------------------------------------
    def connectionMade(self) -> None:
        # Every response is written whole: send it now (as Dovecot's TCP_CORK
        # does), not when Nagle's algorithm has heard back about the last one.
        nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if nodelay is not None:
            nodelay(True)
        peer = self.transport.getPeer()
        self.remote = getattr(peer, "host", str(peer))
        self.callLater = self.app.reactor.callLater
        limits = self.cfg.limits
        self.setTimeout(min(limits.preauth_timeout, limits.pop3_idle_timeout))
        assert self._gate is not None
        self._gate.attach(self.transport)
        self._gate_registered = True
        self.reply(r.GREETING.format(hostname=self.cfg.server.hostname))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.ticket.release()
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._gate is not None:
            self._gate.stopProducing()
        drop, self.maildrop = self.maildrop, None
        if drop is not None:
            defer.Deferred.fromCoroutine(self._end_session(drop, self._end_reason))

    async def _end_session(self, drop: Maildrop, reason: str) -> None:
        """Log the summary, save \\Seen flags (never deletions), then let the lock go."""
        acct = drop.account
        log.info(
            "pop3 session end: user={user}, rip={rip}, {reason}: top={top}/{top_bytes}, "
            "retr={retr}/{retr_bytes}, del={deleted}/{count}, size={size}",
            user=acct.address, rip=self.remote, reason=reason, top=self.stats["top"],
            top_bytes=self.stats["top_bytes"], retr=self.stats["retr"],
            retr_bytes=self.stats["retr_bytes"],
            deleted=len(drop.deleted) if reason == "logged out" else 0,
            count=len(drop.entries), size=drop.total_size,
        )
        try:
            if drop.retrieved:
                await drop.save_seen(self.store, self)
        except Exception:
            log.failure("pop3: saving \\Seen flags failed for {user}", user=acct.address)
        finally:
            self._unlock_maildrop(acct.id)

    def close(self) -> None:
        """Hang up once what is written has been sent (or after CLOSE_GRACE seconds
        if the client does not read it)."""
        if self._gate_registered and not self.closed:
            # A paused producer would keep the connection open.
            assert self._gate is not None
            self._gate.detach()
            self._gate_registered = False
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        if not self.closed:
            self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        self._end_reason = "idle timeout"
        if not self._busy:
            self.reply(r.IDLE_TIMEOUT)
            self.close()
        else:
            # Stuck writing to a client that does not read: no room for a reply.
            self.transport.abortConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._end_reason = "line too long"
        self.reply(r.LINE_TOO_LONG)
        self.close()

    # -- output ---------------------------------------------------------------
    def reply(self, rep: Reply) -> None:
        if not self.closed:
            self.transport.write(rep.encode())

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    # -- input ----------------------------------------------------------------
    def lineReceived(self, line: bytes) -> None:
        if self.closed or self.state == UPDATE:
            return
        self.resetTimeout()
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl is not None:
            self._run(self._sasl_step(line))
            return
        cmd = parse(line)
        if isinstance(cmd, BadCommand):
            self.metrics.command("pop3", "unknown")
            self._bad(cmd.reply)
            return
        self.metrics.command("pop3", cmd.name)
        allowed = TRANSACTION_COMMANDS if self.state == TRANSACTION else AUTHORIZATION_COMMANDS
        if cmd.name not in allowed:
            self._bad(self._wrong_state(cmd))
            return
        handler: Callable[[Command], Any] = getattr(self, "do_" + cmd.name)
        try:
            result = handler(cmd)
        except Exception:
            self._failed(Failure())
            return
        if result is not None:
            self._run(result)

    def _wrong_state(self, cmd: Command) -> Reply:
        if self.state == TRANSACTION:
            if cmd.name in ("USER", "PASS", "AUTH", "APOP"):
                return r.ALREADY_LOGGED_IN
            return r.NOT_IN_AUTHORIZATION.format(command=cmd.name)
        return r.NOT_IN_TRANSACTION.format(command=cmd.name)

    def _bad(self, rep: Reply) -> None:
        self.reply(rep)
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self._end_reason = "too many bad commands"
            self.reply(r.TOO_MANY_BAD_COMMANDS)
            self.close()

    def _good(self) -> None:
        self._bad_commands = 0

    def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a command that may wait; later lines stay queued until it is done."""
        self._busy = True
        d = defer.Deferred.fromCoroutine(coro)
        d.addErrback(self._failed)
        if d.called:  # done without waiting (e.g. RETR of a message read ahead)
            self._busy = False
            return
        self.pauseProducing()
        d.addBoth(self._done)

    def _failed(self, f: Failure) -> None:
        if f.check(defer.CancelledError, ConnectionGone):
            return
        log.failure("pop3 command failed (user={user}, rip={rip})", f,
                    user=self.account.address if self.account else self.user, rip=self.remote)
        if f.check(MidResponse):
            # Part of a multi-line response is out: nothing sane can follow it.
            self.transport.abortConnection()
        else:
            self.reply(r.SYS_TEMP)

    def _done(self, _: object) -> None:
        self._busy = False
        if not self.closed and not self.transport.disconnecting:
            if self._gate is not None and self._gate.paused:
                # Read on (up to input_limit) but take no line until it drains.
                self.transport.resumeProducing()
            else:
                self.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.paused and len(self._buffer) > self.input_limit and not self.closed:
            self.transport.pauseProducing()

    def _flow_changed(self) -> None:
        """The output gate paused (take no further line) or resumed."""
        if self.closed or self._gate is None:
            return
        if self._gate.paused:
            self.paused = True
        elif not self._busy and self.paused and not self.transport.disconnecting:
            self.resumeProducing()

    # -- AUTHORIZATION ----------------------------------------------------------
    def _plaintext_ok(self) -> bool:
        if self.tls_active:
            return True
        return bool(self.cfg.auth.allow_plaintext_loopback) and is_loopback(self.remote)

    def capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        delay = self.cfg.limits.pop3_login_delay
        if delay:
            caps.append(f"LOGIN-DELAY {delay}")
        if self.state == AUTHORIZATION:
            if self._plaintext_ok():
                caps.append("USER")
                caps.append("SASL " + " ".join(sasl.MECHANISMS))
            if not self.tls_active:
                caps.append("STLS")
        caps.append("IMPLEMENTATION exmaild")
        return caps

    def do_CAPA(self, cmd: Command) -> None:
        self._good()
        self.reply(r.CAPA_FOLLOWS)
        self.write("".join(f"{c}\r\n" for c in self.capabilities()).encode() + b".\r\n")

    def do_QUIT(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        self._good()
        if self.state == AUTHORIZATION:
            self._end_reason = "logged out"
            self.reply(r.BYE.format(hostname=self.cfg.server.hostname))
            self.close()
            return None
        return self._quit()

    async def _quit(self) -> None:
        drop = self.maildrop
        assert drop is not None
        self.state = UPDATE
        self.maildrop = None  # connectionLost must not end the session a second time
        try:
            deleted = await drop.commit(self.store, self)
        except Exception:
            log.failure("pop3: applying deletions failed for {user}", user=drop.account.address)
            self.reply(r.UPDATE_FAILED)
            drop.deleted.clear()
            await self._end_session(drop, "update failed")
            self.close()
            return
        await self._end_session(drop, "logged out")
        host = self.cfg.server.hostname
        self.reply(r.BYE_DELETED.format(deleted=deleted, hostname=host) if deleted
                   else r.BYE.format(hostname=host))
        self.close()

    def do_STLS(self, cmd: Command) -> None:
        self._good()
        if self.tls_active:
            self.reply(r.TLS_ACTIVE)
            return
        self.reply(r.STLS_BEGIN)
        # Anything pipelined after STLS was sent in the clear: drop it (RFC 2595 §4,
        # the STARTTLS command-injection attack).
        self.clearLineBuffer()
        self.user = None
        self.transport.startTLS(self.app.tls.for_service("pop3"))
        self.tls_active = True

    def do_USER(self, cmd: Command) -> None:
        if not self._plaintext_ok():
            self._bad(r.PLAINTEXT_REFUSED)
            return
        self._good()
        self.user = str(cmd.args[0])
        self.reply(r.USER_OK)

    def do_PASS(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        if not self._plaintext_ok():
            self._bad(r.PLAINTEXT_REFUSED)
            return None
        if self.user is None:
            self._bad(r.NEED_USER)
            return None
        user, self.user = self.user, None
        return self._login(user, str(cmd.args[0]), "USER")

    def do_AUTH(self, cmd: Command) -> Coroutine[Any, Any, None] | None:
        self._good()
        plain_ok = self._plaintext_ok()
        if not cmd.args:
            # Not in RFC 5034, but Outlook asks this way which mechanisms exist.
            self.reply(r.SASL_MECHS_FOLLOW)
            mechs = sasl.MECHANISMS if plain_ok else ()
            self.write("".join(f"{m}\r\n" for m in mechs).encode() + b".\r\n")
            return None
        mech = str(cmd.args[0])
        if not sasl.Exchange.supported(mech):
            self._bad(r.UNKNOWN_MECHANISM.format(mech=echo(mech)))
            return None
        if not plain_ok:
            self._bad(r.PLAINTEXT_REFUSED)
            return None
        self._sasl = sasl.Exchange(mech)
        initial = str(cmd.args[1]) if len(cmd.args) > 1 else None
        return self._sasl_next(self._sasl.start(initial))

    async def _sasl_step(self, line: bytes) -> None:
        assert self._sasl is not None
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            self._sasl = None
            self._bad(r.BAD_BASE64)
            return
        await self._sasl_next(self._sasl.step(text))

    async def _sasl_next(self, step: sasl.Step) -> None:
        if isinstance(step, sasl.Challenge):
            self.write(step.encode())
            return
        mech = self._sasl.mechanism if self._sasl else "?"
        self._sasl = None
        if isinstance(step, sasl.Failure):
            self._bad(step.reply)
            return
        await self._login(step.username, step.password, f"AUTH {mech}")

    async def _lock_maildrop(self, account_id: int) -> bool:
        """One session per maildrop (RFC 1939 §8): in this process first, then
        for every process and node sharing the database (a `leases` row)."""
        if not self.registry.acquire(account_id, self):
            return False
        try:
            got = await self.store.leases.acquire(f"pop3:{account_id}")
        except BaseException:  # the database's trouble: a temporary error for the client
            self.registry.release(account_id, self)
            raise
        if not got:
            self.registry.release(account_id, self)
        return got

    def _unlock_maildrop(self, account_id: int) -> None:
        if self.registry.holder(account_id) is self:
            self.registry.release(account_id, self)
            self.store.leases.release_soon(f"pop3:{account_id}")

    async def _login(self, user: str, password: str, method: str) -> None:
        d = await self.app.logins.login(user, password, protocol="pop3", ip=self.remote)
        if not d.ok:
            self.metrics.login("pop3", "failure" if d.kind == "bad" else "refused")
            log.warn("pop3 login failed: user={user}, method={method}, rip={rip}, "
                     "reason={reason}", user=user, method=method, rip=self.remote,
                     reason=d.reason)
            if self.closed:
                return
            if d.kind in ("throttled", "unavailable"):
                self.reply(r.err(d.text or "Login temporarily unavailable, try again later",
                                 r.Code.SYS_TEMP))
                return
            self._auth_failures += 1
            if self._auth_failures >= MAX_AUTH_FAILURES:
                self._end_reason = "too many failed logins"
                self.reply(r.TOO_MANY_AUTH_FAILURES)
                self.close()
            elif d.kind == "must_change":
                self.reply(r.err(MustChangePassword.TEXT, r.Code.AUTH))
            elif d.code == "protocol":
                self.reply(r.POP_DISABLED)
            elif d.kind == "refused":
                self.reply(r.err(d.text, r.Code.AUTH))
            else:
                self.reply(r.AUTH_FAILED)
            return
        acct = d.account
        assert acct is not None
        now = self.app.reactor.seconds()
        wait = self.registry.login_wait(acct.id, self.cfg.limits.pop3_login_delay, now)
        if wait:
            self.reply(r.LOGIN_DELAY.format(seconds=wait))
            return
        if self.closed:
            return
        if not await self._lock_maildrop(acct.id):
            self.metrics.login("pop3", "refused")
            log.info("pop3 login refused: user={user}, rip={rip}, reason=maildrop in use",
                     user=acct.address, rip=self.remote)
            self.reply(r.IN_USE)
            return
        try:
            drop = await load_maildrop(self.store, acct, now)
        except BaseException:
            self._unlock_maildrop(acct.id)
            raise
        if self.closed:
            self._unlock_maildrop(acct.id)
            return
        self.registry.logged_in(acct.id, now)
        self.account, self.maildrop, self.state = acct, drop, TRANSACTION
        self._auth_failures = 0
        self._reader = MessageReader(self.store, drop)
        self.ticket.authenticated()
        self.metrics.login("pop3", "success")
        self.setTimeout(self.cfg.limits.pop3_idle_timeout)
        log.info("pop3 login: user={user}, method={method}, rip={rip}, tls={tls}, "
                 "messages={count}, size={size}", user=acct.address, method=method,
                 rip=self.remote, tls=self.tls_active, count=drop.count, size=drop.size)
        self.reply(r.LOGGED_IN.format(count=drop.count, size=drop.size))

REFUSAL = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"


class POP3Factory(protocol.ServerFactory):
    def __init__(self, app: Any, *, implicit_tls: bool) -> None:
        self.app = app
        self.implicit_tls = implicit_tls
        self.listener = "pop3s" if implicit_tls else "pop3"  # its [listen] key
        self.registry = registry_for(app.store)

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        ticket = connlimits.admit(self, addr, REFUSAL, self.listener)
        if not isinstance(ticket, connlimits.Ticket):
            return ticket
        p = POP3Server(self.app, self.registry, implicit_tls=self.implicit_tls)
        p.factory = self
        p.ticket = ticket
        return p
