"""The IMAP4rev1 server protocol and its factory.

Bytes go through the sans-IO ``Framer`` (lines with their literals); each
command unit is parsed by ``parser.parse_command`` and dispatched to the
command family modules (``cmd_*.py``). Commands run strictly one after the
other from a per-connection queue: a command that waits for the database
holds the ones pipelined behind it, so responses always come in order.
After each command the selected mailbox's view is synchronised (EXISTS,
EXPUNGE where allowed, FETCH FLAGS) before the tagged completion.
"""

from __future__ import annotations

import contextlib
import socket
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from exmaild import __version__, connlimits
from exmaild.protocols.flow import OutputGate

from . import (
    cmd_append,
    cmd_auth,
    cmd_copy,
    cmd_fetch,
    cmd_idle,
    cmd_mailbox,
    cmd_misc,
    cmd_search,
    cmd_select,
    cmd_sort,
    cmd_store,
    compress,
    notify,
    searchres,
)
from . import responses as r
from .commands import Command
from .errors import ParseError
from .framing import (
    PAUSING_COMMANDS,
    CommandUnit,
    ContinuationRequest,
    FrameEvent,
    Framer,
    FramerLimits,
    FramingError,
    RawLine,
)
from .parser import parse_command
from .session import Session, State

log = Logger(namespace="exmaild.imap")

MAX_BAD_COMMANDS = 20  # consecutive, then the connection is closed
MAX_QUEUED = 64  # pipelined commands held before we stop reading
# RFC 2971's largest ID (30 pairs of 30-octet fields and 1,024-octet values,
# as quoted strings) is one ~32 KB line, and clients send ID before login.
PREAUTH_LINE = 40 * 1024
PREAUTH_LITERAL = 64 * 1024
CLOSE_GRACE = 30  # seconds a closing connection may take to send its last words

Handler = Callable[[Any, Command], Awaitable[r.Result]]
ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})


@dataclass(frozen=True)
class Spec:
    handler: Handler
    states: frozenset[State]
    expunge_ok: bool = True  # EXPUNGE responses may follow (not FETCH/STORE/SEARCH)


COMMANDS: dict[str, Spec] = {
    "CAPABILITY": Spec(cmd_misc.capability, ANY),
    "NOOP": Spec(cmd_misc.noop, ANY),
    "LOGOUT": Spec(cmd_misc.logout, ANY),
    "ID": Spec(cmd_misc.id_, ANY),
    "STARTTLS": Spec(cmd_auth.starttls, NOT_AUTH),
    "LOGIN": Spec(cmd_auth.login, NOT_AUTH),
    "AUTHENTICATE": Spec(cmd_auth.authenticate, NOT_AUTH),
    "ENABLE": Spec(cmd_misc.enable, AUTH),
    "NAMESPACE": Spec(cmd_misc.namespace, AUTH),
    "GETQUOTA": Spec(cmd_misc.getquota, AUTH),
    "GETQUOTAROOT": Spec(cmd_misc.getquotaroot, AUTH),
    "SELECT": Spec(cmd_select.select, AUTH),
    "EXAMINE": Spec(cmd_select.select, AUTH),
    "CREATE": Spec(cmd_mailbox.create, AUTH),
    "DELETE": Spec(cmd_mailbox.delete, AUTH),
    "RENAME": Spec(cmd_mailbox.rename, AUTH),
    "SUBSCRIBE": Spec(cmd_mailbox.subscribe, AUTH),
    "UNSUBSCRIBE": Spec(cmd_mailbox.subscribe, AUTH),
    "LIST": Spec(cmd_mailbox.list_, AUTH),
    "LSUB": Spec(cmd_mailbox.list_, AUTH),
    "XLIST": Spec(cmd_mailbox.list_, AUTH),
    "STATUS": Spec(cmd_mailbox.status, AUTH),
    "APPEND": Spec(cmd_append.append, AUTH),
    "IDLE": Spec(cmd_idle.idle, AUTH),
    "CHECK": Spec(cmd_select.check, SELECTED),
    "CLOSE": Spec(cmd_select.close, SELECTED),
    "UNSELECT": Spec(cmd_select.unselect, SELECTED),
    "EXPUNGE": Spec(cmd_select.expunge, SELECTED),
    "FETCH": Spec(cmd_fetch.fetch, SELECTED, expunge_ok=False),
    "STORE": Spec(cmd_store.store, SELECTED, expunge_ok=False),
    "SEARCH": Spec(cmd_search.search, SELECTED, expunge_ok=False),
    "SORT": Spec(cmd_sort.sort, SELECTED, expunge_ok=False),
    "THREAD": Spec(cmd_sort.thread, SELECTED, expunge_ok=False),
    "COPY": Spec(cmd_copy.copy, SELECTED),
    "MOVE": Spec(cmd_copy.copy, SELECTED),
    "COMPRESS": Spec(compress.compress, AUTH),
    "NOTIFY": Spec(notify.notify, AUTH),
}


_QUICKACK = getattr(socket, "TCP_QUICKACK", 0)


def _tcp_socket(transport: Any) -> socket.socket | None:
    handle = getattr(transport, "getHandle", None)
    try:
        sock = handle() if handle is not None else None
    except Exception:
        return None
    return sock if isinstance(sock, socket.socket) else None


class IMAPServer(protocol.Protocol):
    def __init__(self, app: Any, *, implicit_tls: bool) -> None:
        self.app = app
        self.store = app.store
        self.metrics = app.store.metrics
        self.cfg = app.cfg
        self.reactor = app.reactor
        self.tls = implicit_tls
        self.session = Session()
        limits = self.cfg.limits
        literal = limits.imap_literal_size or limits.message_size
        # Input held unprocessed (framed commands queued, bytes not framed yet)
        # before reading stops; always room for a whole line, or framing
        # could not go on.
        self.input_limit = max(limits.input_buffer, 2 * limits.imap_line_length)
        self.full_limits = FramerLimits(
            max_line_length=limits.imap_line_length,
            max_literal_size=literal,
            max_append_size=limits.message_size,
            max_command_size=max(literal, limits.message_size) + limits.imap_line_length * 4,
            # Only APPEND carries a message; any other command is small.
            max_other_command_size=max(self.input_limit, literal + limits.imap_line_length),
        )
        self.framer = Framer(
            FramerLimits(
                max_line_length=min(PREAUTH_LINE, limits.imap_line_length),
                max_literal_size=PREAUTH_LITERAL,
                max_append_size=PREAUTH_LITERAL,
                max_command_size=PREAUTH_LITERAL * 2,
            )
        )
        # APPEND literals go to a spool as they arrive (mailstore/spool.py).
        spooler = self.store.ingestor.spooler
        self.framer.literal_sink = lambda size: spooler.new(expected=size)
        self.gate = OutputGate(self._flow_changed)
        self.ticket = connlimits.Ticket()
        self._queued_bytes = 0  # sizes of the units in _queue
        self.remote = "?"
        self.closed = False
        self.idling = False
        self._queue: deque[CommandUnit | FramingError] = deque()
        self._running = False
        self._pumping = False
        self._continuation: ContinuationRequest | None = None
        self._raw_waiter: defer.Deferred[RawLine | FramingError] | None = None
        self._reading_paused = False
        self.inflater: compress.Inflater | None = None  # COMPRESS=DEFLATE is on
        self._inflating = False
        self._bad = 0
        self.failures = 0  # failed logins
        self._hangup: str | None = None
        self._timer: Any = None
        self._abort_call: Any = None
        self._grace_used = False
        self._socket: socket.socket | None = None
        self.started = time.monotonic()
        self.stats = {"commands": 0, "in": 0, "out": 0}
        self.end_reason = "disconnected"

    # -- connection -------------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.remote = getattr(peer, "host", str(peer))
        self._socket = _tcp_socket(self.transport)
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gate.attach(self.transport)
        self._timer = self.reactor.callLater(self._timeout_seconds(), self._timed_out)
        caps = " ".join(cmd_misc.capabilities(self))
        self.send(r.untagged_ok(f"exmaild {__version__} ready", f"CAPABILITY {caps}"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.ticket.release()
        self.gate.stopProducing()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        if self._raw_waiter is not None:
            waiter, self._raw_waiter = self._raw_waiter, None
            waiter.cancel()
        notify.forget(self)
        cmd_select.deselect(self)
        cmd_idle.forget(self)
        self.framer.close()
        for item in self._queue:
            if isinstance(item, CommandUnit):
                item.close_literals()
        s = self.session
        if s.account is not None:
            log.info(
                "imap session end: user={user}, rip={rip}, {reason}: {commands} commands, "
                "in={bytes_in}, out={bytes_out}, {seconds:.0f}s",
                user=s.account.address, rip=self.remote, reason=self.end_reason,
                commands=self.stats["commands"], bytes_in=self.stats["in"],
                bytes_out=self.stats["out"], seconds=time.monotonic() - self.started,
            )

    def _timed_out(self) -> None:
        self._timer = None
        if self._running and not self.idling and not self.closed and not self._grace_used:
            # A command still at work (a login waiting for its turn at argon2
            # after a restart) is not idleness: one more period, then it is.
            self._grace_used = True
            self._timer = self.reactor.callLater(self._timeout_seconds(), self._timed_out)
            return
        self.end_reason = "autologout"
        self.send(r.bye("Autologout; idle for too long"))
        self.close()

    def _timeout_seconds(self) -> float:
        autologout = self.cfg.limits.imap_autologout
        if self.session.state is State.NOT_AUTHENTICATED:
            return min(self.cfg.limits.preauth_timeout, autologout)
        return autologout

    def reset_timeout(self) -> None:
        self._grace_used = False
        if self._timer is None or self.closed:
            return
        self._timer.reset(self._timeout_seconds())

    def close(self) -> None:
        """Close after what was written is sent (or after CLOSE_GRACE seconds
        if the client does not read it)."""
        self.session.state = State.LOGOUT
        if not self.closed:
            self.closed = True
            self.gate.detach()  # a paused producer would keep the connection open
            self.transport.loseConnection()
            self._abort_call = self.reactor.callLater(CLOSE_GRACE, self._abort)

    def _abort(self) -> None:
        self._abort_call = None
        self.transport.abortConnection()

    def hang_up_after(self, reason: str, bye: str) -> None:
        """Close the connection once the current command is answered."""
        self.end_reason = reason
        self._hangup = bye

    def authenticated(self) -> None:
        """Called once a login succeeded: lift the pre-login limits."""
        self.framer.limits = self.full_limits
        self.ticket.authenticated()
        self.reset_timeout()

    # -- output ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if data and not self.closed:
            self.stats["out"] += len(data)
            self.transport.write(data)

    def send_all(self, chunks: list[bytes]) -> None:
        if chunks:
            self.send(b"".join(chunks))

    def sync(self, *, allow_expunge: bool = True) -> None:
        """Tell the client what changed in its selected mailbox."""
        self.send_all(self.updates(allow_expunge=allow_expunge))

    def updates(self, *, allow_expunge: bool = True) -> list[bytes]:
        """The untagged responses ``sync`` would send (for the caller to send)."""
        sel = self.session.selected
        if sel is None or self.closed:
            return []
        if sel.index.gone:
            self.end_reason = "mailbox deleted"
            self.send(r.bye("The selected mailbox was deleted or renamed"))
            self.close()
            return []
        return sel.view.sync(allow_expunge=allow_expunge, condstore=self.session.condstore)

    # -- input ------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self.stats["in"] += len(data)
        self.reset_timeout()
        if self.inflater is not None:
            self.compressed_input(data)
            return
        self._handle(self.framer.feed(data))
        if self.framer.in_command and self._socket is not None and _QUICKACK:
            # Part of a command (typically a literal) is in and the client may
            # be holding the rest back under Nagle until it sees our ACK; a
            # delayed ACK would cost it 40 ms per APPEND. ACK now.
            with contextlib.suppress(OSError):
                self._socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def compressed_input(self, data: bytes) -> None:
        assert self.inflater is not None
        self.inflater.add(data)
        self._inflate_more()

    def _inflate_more(self) -> None:
        """Inflate and frame input while reading is on (compress.py)."""
        if self._inflating or self.inflater is None:
            return
        self._inflating = True
        try:
            while not self.closed and not self._reading_paused:
                try:
                    piece = self.inflater.piece()
                except zlib.error:
                    self.end_reason = "bad compressed data"
                    self.send(r.bye("Invalid compressed data"))
                    self.close()
                    return
                if not piece:
                    break
                self._handle(self.framer.feed(piece))
        finally:
            self._inflating = False

    def refeed(self) -> None:
        """Frame bytes buffered while the framer was paused."""
        if not self.closed and not self.framer.paused:
            self._handle(self.framer.feed(b""))

    def _handle(self, events: list[FrameEvent]) -> None:
        for event in events:
            if isinstance(event, RawLine) or (
                isinstance(event, FramingError) and self._raw_waiter is not None
            ):
                waiter, self._raw_waiter = self._raw_waiter, None
                if waiter is not None:
                    waiter.callback(event)
            elif isinstance(event, ContinuationRequest):
                self._continuation = event
            else:
                self._queue.append(event)
                if isinstance(event, CommandUnit):
                    self._queued_bytes += event.size
        self._update_reading()
        self._pump()

    def _update_reading(self) -> None:
        """Read from the client only while what it sent and we have not acted on
        yet is under [limits] input_buffer. (While our output waits, commands
        wait, so the input soon fills up too; reading goes on until then, as
        a TLS handshake needs it with the greeting held back.)"""
        if self.closed:
            return
        stop = (
            len(self._queue) > MAX_QUEUED
            or self.framer.buffered + self._queued_bytes > self.input_limit
        )
        if stop != self._reading_paused:
            self._reading_paused = stop
            if stop:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()
                if self.inflater is not None and self.inflater.pending:
                    self.reactor.callLater(0, self._inflate_more)

    def _flow_changed(self) -> None:
        """The output gate paused or resumed."""
        self._update_reading()
        if not self.gate.paused:
            self._pump()

    def wait_raw_line(self) -> defer.Deferred[RawLine | FramingError]:
        """The next raw line (IDLE's DONE, a SASL response)."""
        self._raw_waiter = defer.Deferred()
        d = self._raw_waiter
        self.framer.expect_raw_line()
        self.refeed()
        return d

    # -- the command queue ----------------------------------------------------------
    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._running and not self.closed and not self.gate.paused:
                if self._queue:
                    item = self._queue.popleft()
                    if isinstance(item, CommandUnit):
                        self._queued_bytes -= item.size
                    coro = self._execute(item)
                elif self._continuation is not None:
                    cont, self._continuation = self._continuation, None
                    coro = cmd_append.continuation(self, cont)
                else:
                    break
                self._running = True
                d = defer.Deferred.fromCoroutine(coro)
                d.addErrback(self._crashed)
                d.addBoth(self._done)
            self._update_reading()
        finally:
            self._pumping = False

    @property
    def busy(self) -> bool:
        """A command is running (its responses are being written)."""
        return self._running

    def _done(self, _: object) -> None:
        self._running = False
        if self.session.notify is not None:
            notify.kick(self)  # NOTIFY's news waited for the command to end
        self._pump()

    def _crashed(self, f: Failure) -> None:
        if f.check(defer.CancelledError):
            return
        log.failure("imap: connection handler failed (user={user}, rip={rip})", f,
                    user=self.session.user, rip=self.remote)
        self.transport.abortConnection()

    async def _execute(self, item: CommandUnit | FramingError) -> None:
        if isinstance(item, FramingError):
            self._framing_error(item)
            return
        try:
            await self._execute_unit(item)
        finally:
            item.close_literals()  # a spooled APPEND message: stored or not, done

    async def _execute_unit(self, item: CommandUnit) -> None:
        try:
            cmd = parse_command(item, max_depth=self.cfg.limits.imap_nesting_depth,
                                utf8=self.session.utf8)
        except ParseError as e:
            if item.name in PAUSING_COMMANDS:
                self.framer.resume()
                self.refeed()
            if e.status == r.BAD:
                self._count_bad()
            self.metrics.command("imap", "unknown")
            self.send((e.response() + "\r\n").encode("utf-8", "replace"))
            self._maybe_hang_up()
            return
        self.stats["commands"] += 1
        spec = COMMANDS.get(cmd.name)
        self.metrics.command("imap", cmd.name, spec is not None)
        result = self._state_error(cmd, spec)
        if result is None:
            assert spec is not None
            cmd = searchres.resolve(self.session.selected, cmd)  # "$" (RFC 5182)
            result = await self._call(spec, cmd)
        if cmd.name in PAUSING_COMMANDS and not self.closed:
            self.framer.resume()
        if result.status == r.BAD:
            self._count_bad()
        else:
            self._bad = 0
        if self.closed:
            return
        out: list[bytes] = []
        if spec is not None:
            await cmd_select.claim_recent(self)
            out = self.updates(allow_expunge=spec.expunge_ok)
        if result is not r.SENT:
            out.append(result.line(cmd.tag))
        self.send_all(out)  # one write (one send(2)) for the updates and the tagged line
        if self._maybe_hang_up():
            return
        if cmd.name in PAUSING_COMMANDS:
            self.refeed()

    def _state_error(self, cmd: Command, spec: Spec | None) -> r.Result | None:
        if spec is None:
            return r.bad(f"Unknown command {cmd.name}")
        state = self.session.state
        if state in spec.states:
            return None
        if state is State.NOT_AUTHENTICATED:
            return r.NOT_AUTHENTICATED
        if spec.states is NOT_AUTH:
            return r.ALREADY_AUTHENTICATED
        return r.NO_MAILBOX_SELECTED

    async def _call(self, spec: Spec, cmd: Command) -> r.Result:
        try:
            return await spec.handler(self, cmd)
        except ParseError as e:
            return r.Result(e.status, e.message, e.code)
        except defer.CancelledError:
            raise
        except sa.exc.OperationalError:
            log.failure("imap {command}: database unavailable (user={user})",
                        command=cmd.name, user=self.session.user)
            return r.UNAVAILABLE
        except Exception:
            log.failure("imap {command} failed (user={user}, rip={rip})",
                        command=cmd.name, user=self.session.user, rip=self.remote)
            return r.SERVER_BUG

    def _framing_error(self, err: FramingError) -> None:
        self._count_bad()
        if not err.sync:
            # A LITERAL+ we refused is on its way regardless: rather than read
            # (and skip) what may be gigabytes, end the connection (RFC 7888 §4).
            self.hang_up_after("literal too big", "Non-synchronizing literal too big")
        text = err.message
        if err.tag is None:
            self.send(r.untagged_bad(f"[{err.code}] {text}"))
        elif err.name == "APPEND":
            self.send(r.no(text, err.code).line(err.tag))
        else:
            self.send(r.bad(text, err.code).line(err.tag))
        if self._maybe_hang_up():
            return
        if self.framer.paused and self._raw_waiter is None:
            self.framer.resume()
            self.refeed()

    def _count_bad(self) -> None:
        self._bad += 1
        if self._bad >= MAX_BAD_COMMANDS:
            self.hang_up_after("too many bad commands", "Too many invalid commands")

    def _maybe_hang_up(self) -> bool:
        if self._hangup is None:
            return False
        if not self.closed:
            self.send(r.bye(self._hangup))
            self.close()
        return True


REFUSAL = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"


class IMAPFactory(protocol.Factory):
    def __init__(self, app: Any, *, implicit_tls: bool) -> None:
        self.app = app
        self.implicit_tls = implicit_tls
        self.listener = "imaps" if implicit_tls else "imap"  # its [listen] key

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        ticket = connlimits.admit(self, addr, REFUSAL, self.listener)
        if not isinstance(ticket, connlimits.Ticket):
            return ticket
        p = IMAPServer(self.app, implicit_tls=self.implicit_tls)
        p.factory = self
        p.ticket = ticket
        return p
