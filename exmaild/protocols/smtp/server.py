"""The ESMTP server protocol: MX (25) and submission (587 STARTTLS, 465 TLS).

Framing is Twisted's LineReceiver; the command grammar is the sans-IO
`commands.parse_command`, and the message is taken in raw mode: every chunk
the transport delivers goes whole to the `dotstuff.Unstuffer`, so no Python
runs per line of DATA.

Replies come strictly in order, also under PIPELINING (RFC 2920): a command
that has to wait (a directory lookup not in the cache, AUTH, storing the
message) pauses line processing, so later commands stay in the line buffer
until its reply has been written (the socket itself is paused only if a client
sends more than [limits] input_buffer meanwhile). Likewise no command is taken
while more than [limits] output_buffer of replies waits for a client that
does not read them (the connection's OutputGate). STARTTLS drops whatever was buffered
after it (CVE-2011-0411 plaintext injection), and the session forgets HELO,
AUTH and the transaction (RFC 3207 §4.2).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from exmaild import connlimits
from exmaild.auth.checker import MustChangePassword
from exmaild.codec.dotstuff import DataResult, Unstuffer
from exmaild.logsetup import maillog
from exmaild.mailauth import entpolicy, inbound
from exmaild.mailstore.spool import SpooledMessage
from exmaild.netutil import is_loopback
from exmaild.protocols.flow import OutputGate
from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.auth import MECHANISMS, Credentials, SaslExchange, Step, is_challenge
from exmaild.protocols.smtp.commands import (
    MAX_AUTH_LINE,
    AuthCommand,
    Command,
    MailCommand,
    RcptCommand,
    SMTPSyntaxError,
    Verb,
    parse_command,
)
from exmaild.protocols.smtp.delivery import Delivery, mail_line, tls_description
from exmaild.protocols.smtp.policy import MISS, Policy, check_sender
from exmaild.protocols.smtp.replies import Reply
from exmaild.protocols.smtp.session import (
    Flavour,
    Recipient,
    Session,
    Transaction,
    new_queue_id,
)
from exmaild.spam import smtp as spamcheck

log = Logger(namespace="exmaild.smtp")

Pending = Coroutine[Any, Any, None] | None
CLOSE_GRACE = 30  # seconds a closing connection may take to send its last words
# The constant replies, encoded once.
_WIRE: dict[Reply, bytes] = {r: r.encode() for r in vars(R).values() if isinstance(r, Reply)}


class SMTPServer(LineReceiver, TimeoutMixin):
    delimiter = b"\n"  # a trailing CR is removed below; DATA is framed strictly

    def __init__(self, app: Any, policy: Policy, flavour: Flavour) -> None:
        self.app = app
        self.cfg = app.cfg
        self.policy = policy
        self.flavour = flavour
        self.hostname = self.cfg.server.hostname
        limits = self.cfg.limits
        self.max_size = limits.message_size
        # Framing limit; longer lines drop the connection. AUTH lines may be
        # 12288 octets (RFC 4954 §4) whatever the command line limit is.
        self.MAX_LENGTH = max(limits.line_length, MAX_AUTH_LINE) + 1
        self.session = Session("?", flavour)
        self.closed = False
        self.busy = False
        self._unstuffer: Unstuffer | None = None
        self._delivery: Delivery | None = None
        self._spool: SpooledMessage | None = None
        self._transport_paused = False
        self.gate = OutputGate(self._flow_changed)
        self.ticket = connlimits.Ticket()
        # Input held while no line is taken, before reading stops.
        self.input_limit = max(limits.input_buffer, 2 * self.MAX_LENGTH)
        self._abort_call: Any = None
        self._sasl: SaslExchange | None = None
        self._verb = ""
        self._counts: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self.metrics = app.store.metrics

    # -- connection ---------------------------------------------------------
    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.session = Session(getattr(peer, "host", "?"), self.flavour)
        self.callLater = self.app.reactor.callLater
        self.setTimeout(self.cfg.limits.smtp_idle_timeout)
        self.gate.attach(self.transport)
        self.transport.write(self.factory.greeting)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        self.ticket.release()
        self.gate.stopProducing()
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        s = self.session
        if self._unstuffer is not None and s.txn is not None:
            mail_line(s.txn.queue_id, f"lost connection after DATA ({self._unstuffer.size} "
                      f"bytes) from {s.client}")
        if self._unstuffer is not None and self._spool is not None:
            self._spool.close()  # cut off mid-DATA (once DATA ended, ingest closes it)
        if s.errors:  # Postfix's summary, for sessions that had trouble only
            stats = " ".join(
                f"{v.lower()}={n - self._failed[v]}" + (f"/{n}" if self._failed[v] else "")
                for v, n in self._counts.items()
            )
            log.info("disconnect from {client} {stats}", client=s.client, stats=stats)

    def timeoutConnection(self) -> None:
        if self.busy:  # storing the message or checking a password: not idle
            self.resetTimeout()
            return
        self.reply(R.TIMEOUT.prefixed(self.hostname))
        self.hang_up()

    def hang_up(self) -> None:
        """Close once what is written has been sent (or after CLOSE_GRACE seconds
        if the client does not read it)."""
        self.gate.detach()  # a paused producer would keep the connection open
        self.transport.loseConnection()
        if self._abort_call is None and not self.closed:
            self._abort_call = self.callLater(CLOSE_GRACE, self.transport.abortConnection)

    # -- output -------------------------------------------------------------
    def reply(self, rep: Reply) -> None:
        if not self.closed:
            self.transport.write(_WIRE.get(rep) or rep.encode())

    def error(self, rep: Reply) -> None:
        """An error reply; too many in one session end it (Postfix's hard limit)."""
        self.reply(rep)
        self._failed[self._verb] += 1
        s = self.session
        s.errors += 1
        if s.errors >= self.cfg.limits.smtp_errors and not self.closed:
            self.reply(R.TOO_MANY_ERRORS.prefixed(self.hostname))
            self.hang_up()

    def reject(self, verb: str, rep: Reply, **fields: str | None) -> None:
        """An error reply for a refused envelope, logged as Postfix does."""
        s = self.session
        qid = s.txn.queue_id if s.txn is not None and s.txn.recipients else "NOQUEUE"
        extra = "".join(f" {k}=<{v}>" for k, v in fields.items() if v is not None)
        mail_line(qid, f"reject: {verb} from {s.client}: {rep.encode().decode().rstrip()};"
                       f"{extra} proto={'ESMTP' if s.esmtp else 'SMTP'} helo=<{s.helo}>")
        if rep.code >= 500 and verb in ("RCPT", "END-OF-MESSAGE"):
            self._log_refused(verb, fields)
        self.error(rep)

    def _log_refused(self, verb: str, fields: dict[str, str | None]) -> None:
        """Mail log rows (mailstore/mail_log.py) for recipients refused for good."""
        from exmaild.mailstore.mail_log import writer_of

        s = self.session
        txn = s.txn
        if verb == "RCPT":
            rcpts = [fields.get("to") or ""]
        else:
            rcpts = [r.address for r in txn.recipients] if txn is not None else []
        w = writer_of(self.app.store)
        for rcpt in rcpts:
            w.add(direction="in", sender=fields.get("from") or "", recipient=rcpt,
                  status="refused", queue_id=txn.queue_id if txn is not None and
                  txn.recipients else "", client=s.ip)

    # -- input --------------------------------------------------------------
    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply(R.LINE_TOO_LONG)
        self.hang_up()

    def lineReceived(self, line: bytes) -> None:
        if self.closed:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl is not None:
            self._sasl_next(self._sasl.step(line))
            return
        s = self.session
        try:
            if len(line) > self.cfg.limits.line_length and not line[:5].upper() == b"AUTH ":
                raise SMTPSyntaxError(R.LINE_TOO_LONG)
            cmd = parse_command(line, smtputf8=s.txn is not None and s.txn.params.smtputf8)
        except SMTPSyntaxError as e:
            self._verb = "unknown"
            self._counts["unknown"] += 1
            self.metrics.command("smtp", "unknown")
            self.error(e.reply)
            return
        self._verb = cmd.verb.value
        self._counts[self._verb] += 1
        self.metrics.command("smtp", self._verb)
        pending = _HANDLERS[cmd.verb](self, cmd)
        if pending is not None:
            self._run(pending)

    def rawDataReceived(self, data: bytes) -> None:
        assert self._unstuffer is not None
        result = self._unstuffer.feed(data)
        if result is None:
            return
        self._unstuffer = None
        # What followed the terminator is pipelined commands: back to lines,
        # taken once the message is stored and its reply written.
        self.setLineMode(result.rest)
        self._run(self._end_of_data(result))

    def _run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a command that may wait; later input waits until it has replied."""
        d = defer.Deferred.fromCoroutine(work)
        d.addErrback(self._crashed)
        if d.called:  # answered at once (e.g. a cached RCPT lookup)
            return
        # Stop taking lines: LineReceiver keeps what arrives in its buffer.
        # The socket stays readable (pausing it costs two epoll changes per
        # message) unless a client sends more than a pipelined group's worth.
        self.busy = True
        self.paused = True
        d.addBoth(self._resume)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)
        if self.paused and len(self._buffer) > self.input_limit and not self._transport_paused:
            self._transport_paused = True
            self.transport.pauseProducing()

    def _resume(self, _: object) -> None:
        self.busy = False
        if self.closed:
            return
        if self.gate.paused:
            return  # the lines wait for the client to read our replies
        self.paused = False
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()
        self.dataReceived(b"")  # the lines that waited

    def _flow_changed(self) -> None:
        """The output gate paused (take no further line) or resumed."""
        if self.closed:
            return
        if self.gate.paused:
            self.paused = True
        elif not self.busy and self.paused and not self.transport.disconnecting:
            self._resume(None)

    def _crashed(self, failure: Failure) -> None:
        log.failure("SMTP command failed for {client}", failure, client=self.session.client)
        self._sasl = None
        self.error(R.LOCAL_ERROR)

    # -- session commands ---------------------------------------------------
    def _extensions(self) -> list[str]:
        s = self.session
        ext = ["PIPELINING", f"SIZE {self.max_size}"]
        if not s.tls:
            ext.append("STARTTLS")
        if self._auth_offered() and self._plaintext_ok() and s.account is None:
            ext.append("AUTH " + " ".join(MECHANISMS))
        ext += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        return ext

    def do_EHLO(self, cmd: Command) -> None:
        s = self.session
        s.helo, s.esmtp, s.txn = cmd.arg, True, None
        self.reply(R.ehlo(self.hostname, self._extensions()))

    def do_HELO(self, cmd: Command) -> None:
        s = self.session
        s.helo, s.esmtp, s.txn = cmd.arg, False, None
        self.transport.write(self.factory.helo)

    def do_RSET(self, cmd: Command) -> None:
        self.session.txn = None
        self.reply(R.OK)

    def do_NOOP(self, cmd: Command) -> None:
        self.reply(R.OK)

    def do_QUIT(self, cmd: Command) -> None:
        self.reply(R.BYE)
        self.hang_up()

    def do_VRFY(self, cmd: Command) -> None:
        self.reply(R.CANNOT_VRFY)  # RFC 5321 §3.5.3; says nothing about who exists

    def do_EXPN(self, cmd: Command) -> None:
        self.error(R.EXPN_DISABLED)

    def do_HELP(self, cmd: Command) -> None:
        self.reply(R.HELP)

    def do_STARTTLS(self, cmd: Command) -> None:
        s = self.session
        if s.tls:
            return self.error(R.TLS_ALREADY_ACTIVE)
        if s.helo is None:
            return self.error(R.NEED_HELO)
        if s.txn is not None:
            return self.error(R.BAD_SEQUENCE)
        self.reply(R.READY_FOR_TLS)
        # Bytes after the STARTTLS line came in the clear, before the handshake:
        # a man in the middle may have put them there. They are not commands.
        dropped = self.clearLineBuffer()
        if dropped:
            log.warn("{client}: discarded {n} bytes sent after STARTTLS in the clear",
                     client=s.client, n=len(dropped))
        self.transport.startTLS(self.app.tls.for_service("smtp"))
        s.tls_started()

    # -- AUTH -----------------------------------------------------------------
    def _auth_offered(self) -> bool:
        return self.flavour.offer_auth or self.cfg.smtp.mx_auth

    def _plaintext_ok(self) -> bool:
        s = self.session
        return s.tls or (self.cfg.auth.allow_plaintext_loopback and is_loopback(s.ip))

    def do_AUTH(self, cmd: AuthCommand) -> Pending:
        s = self.session
        if not self._auth_offered():
            return self.error(R.AUTH_NOT_ENABLED)
        if s.helo is None:
            return self.error(R.NEED_HELO)
        if s.account is not None:
            return self.error(R.ALREADY_AUTHENTICATED)
        if s.txn is not None:
            return self.error(R.AUTH_IN_TRANSACTION)
        if not self._plaintext_ok():
            return self.error(R.ENCRYPTION_REQUIRED_FOR_AUTH)
        if cmd.mechanism not in MECHANISMS:
            return self.error(R.AUTH_MECHANISM_UNKNOWN)
        self._sasl = SaslExchange(cmd.mechanism)
        return self._sasl_next(self._sasl.start(cmd.initial_response))

    def _sasl_next(self, step: Step) -> Pending:
        if isinstance(step, Credentials):
            assert self._sasl is not None
            mechanism, self._sasl = self._sasl.mechanism, None
            self._run(self._login(step, mechanism))
            return None
        if is_challenge(step):
            self.reply(step)
            return None
        self._sasl = None
        self.error(step)
        return None

    async def _login(self, creds: Credentials, mechanism: str) -> None:
        s = self.session
        try:
            d = await self.app.logins.login(creds.username, creds.password, protocol="smtp",
                                            ip=s.ip)
            if d.ok:
                account = d.account
                assert account is not None
                from exmaild.directory.groups import represented_groups
                from exmaild.directory.shared import send_as_addresses

                # Its own addresses, those of the business mailboxes assigned to
                # it and of the mail groups it represents.
                owned = frozenset(a.lower() for a in [
                    *await self.app.store.directory.addresses_of(account.id),
                    *await send_as_addresses(self.app.store.pool, account.id),
                    *await represented_groups(self.app.store.pool, account.id)])
        except Exception:
            log.failure("{client}: SASL authentication could not be checked", client=s.client)
            self.error(R.AUTH_TEMPORARY_FAILURE)
            return
        if not d.ok:
            log.warn("{client}: SASL {mechanism} authentication failed: {reason}, "
                     "sasl_username={user}", client=s.client, mechanism=mechanism,
                     reason=d.reason, user=creds.username)
            self.metrics.login("smtp", "failure" if d.kind == "bad" else "refused")
            if d.kind in ("throttled", "unavailable"):
                self.error(R.Reply(454, "4.7.0", d.text) if d.text
                           else R.AUTH_TEMPORARY_FAILURE)
                return
            s.auth_failures += 1
            if d.kind == "must_change":
                self.error(R.Reply(535, "5.7.8", MustChangePassword.TEXT))
            elif d.kind == "refused":
                self.error(R.Reply(535, "5.7.8", d.text))
            else:
                self.error(R.AUTH_FAILED)
            if s.auth_failures >= self.cfg.smtp.max_auth_failures and not self.closed:
                self.reply(R.TOO_MANY_ERRORS.prefixed(self.hostname))
                self.hang_up()
            return
        s.account, s.owned, s.sasl_method = account, owned, mechanism
        self.ticket.authenticated()
        self.metrics.login("smtp", "success")
        self.reply(R.AUTH_SUCCEEDED)

    # -- the mail transaction -------------------------------------------------
    def do_MAIL(self, cmd: MailCommand) -> None:
        s = self.session
        if s.helo is None:
            return self.error(R.NEED_HELO)
        if s.txn is not None:
            return self.error(R.NESTED_MAIL)
        if self.flavour.require_auth and s.account is None:
            if not self._plaintext_ok():
                return self.error(R.STARTTLS_REQUIRED)
            return self.error(R.AUTH_REQUIRED)
        sender = cmd.sender.normalised().text if cmd.sender is not None else ""
        size = cmd.params.size
        if size is not None and size > self.max_size:
            return self.reject("MAIL", R.MESSAGE_TOO_BIG, **{"from": sender})
        if s.account is not None:
            refusal = check_sender(cmd.sender, s.owned, s.account.address)
            if refusal is not None:
                return self.reject("MAIL", refusal, **{"from": sender})
        s.txn = Transaction(new_queue_id(), sender, cmd.params, self.app.reactor.seconds())
        s.txn.checks = inbound.start(self.app, s, sender)  # SPF, iprev run meanwhile
        spamcheck.on_mail(self.app, s)  # the DNSBL lookup, once per connection
        self.reply(R.SENDER_OK)

    def do_RCPT(self, cmd: RcptCommand) -> Pending:
        s = self.session
        if s.txn is None:
            return self.error(R.NEED_MAIL)
        if len(s.txn.recipients) >= self.cfg.limits.recipients:
            # Not an error towards the limit: a big list pipelined is not abuse.
            self.reply(R.TOO_MANY_RECIPIENTS)
            return None
        if spamcheck.wants_rcpt_wait(self.app, s):
            return self._rcpt_lookup(cmd, s.txn, MISS)
        decision = self.policy.check_cached(
            cmd.recipient, relay_permitted=s.account is not None, size=s.txn.params.size
        )
        if decision is MISS or _is_group(decision):
            return self._rcpt_lookup(cmd, s.txn, decision)
        self._rcpt_decided(cmd, s.txn, decision)
        return None

    async def _rcpt_lookup(self, cmd: RcptCommand, txn: Transaction, decision: Any) -> None:
        s = self.session
        try:
            decision = await spamcheck.rcpt_refusal(self.app, s) or decision
            if decision is MISS:
                decision = await self.policy.check_recipient(
                    cmd.recipient, relay_permitted=s.account is not None, size=txn.params.size
                )
            if _is_group(decision):
                # Who may write to a mail group is decided here, before DATA.
                from exmaild.directory.groups import group_permits

                if not await group_permits(self.app.store.pool, decision.account.id,
                                           txn.sender):
                    decision = R.GROUP_REFUSED.prefixed(f"<{decision.address}>:")
        except Exception:
            log.failure("{client}: recipient lookup failed", client=s.client)
            return self.error(R.TEMPORARY_LOOKUP_FAILURE)
        self._rcpt_decided(cmd, txn, decision)

    def _rcpt_decided(self, cmd: RcptCommand, txn: Transaction, decision: Any) -> None:
        s = self.session
        if isinstance(decision, Reply):
            return self.reject("RCPT", decision, **{"from": txn.sender,
                                                    "to": cmd.recipient.text})
        aid = decision.account.id if decision.account is not None else None
        first = not txn.recipients
        rcpt = Recipient.from_params(decision.address, aid, cmd.params)
        rcpt.group = _is_group(decision)
        rcpt.catchall = getattr(decision, "catchall", False)
        txn.add(rcpt)
        if first:
            maillog(txn.queue_id, client=s.client, listener=self.flavour.service,
                    sasl_method=s.sasl_method,
                    sasl_username=s.account.address if s.account is not None else None)
        self.reply(R.RECIPIENT_OK)

    def do_DATA(self, cmd: Command) -> None:
        s = self.session
        if s.txn is None:
            return self.error(R.NEED_MAIL)
        if not s.txn.recipients:
            return self.error(R.NO_VALID_RECIPIENTS)
        self.reply(R.START_DATA)
        # The message goes to a spool as it arrives, never whole into memory.
        self._delivery = Delivery(self.app, s, s.txn, tls=tls_description(self.transport)
                                  if s.tls else None)
        self._spool = self._delivery.spool()
        self._unstuffer = Unstuffer(self.max_size, self._spool)
        self.setRawMode()

    async def _end_of_data(self, result: DataResult) -> None:
        s = self.session
        txn = s.txn
        assert txn is not None
        delivery, spool = self._delivery, self._spool
        self._delivery = self._spool = None
        assert delivery is not None and spool is not None
        try:
            if result.oversized:
                s.txn = None
                return self.reject("END-OF-MESSAGE", R.MESSAGE_TOO_BIG.with_text(
                    f"{R.MESSAGE_TOO_BIG.text} ({result.size} > {self.max_size} bytes)"),
                    **{"from": txn.sender})
            spam = spamcheck.enabled(self.app, s)
            if (txn.checks is not None or spam) and spool.failed is None:
                # dkimpy and rspamd read the message whole: a copy, only while checks are on.
                whole = bytes(spool.buffer())
                verdict = None
                if txn.checks is not None:  # exmaild/mailauth
                    verdict = await txn.checks.finish(
                        whole, await self.policy.cache.domains(),
                        await entpolicy.recipient_policies(
                            self.app, [r.account_id for r in txn.local]))
                if spam and (verdict is None or verdict.refusal is None):  # exmaild/spam
                    verdict = await spamcheck.end_of_data(self.app, s, txn, whole, verdict)
                if verdict.refusal is not None:
                    maillog(txn.queue_id, **verdict.log_fields)
                    return self.reject("END-OF-MESSAGE", Reply(*verdict.refusal),
                                       **{"from": txn.sender})
                delivery.auth = verdict
            rep = await delivery.deliver(spool)
        finally:
            spool.close()
            s.txn = None
        if rep.is_error:
            return self.error(rep)
        self.reply(rep)


def _is_group(decision: Any) -> bool:
    account = getattr(decision, "account", None)
    return account is not None and account.kind == "group"


_HANDLERS: dict[Verb, Callable[[SMTPServer, Any], Pending]] = {
    Verb.EHLO: SMTPServer.do_EHLO,
    Verb.HELO: SMTPServer.do_HELO,
    Verb.MAIL: SMTPServer.do_MAIL,
    Verb.RCPT: SMTPServer.do_RCPT,
    Verb.DATA: SMTPServer.do_DATA,
    Verb.RSET: SMTPServer.do_RSET,
    Verb.NOOP: SMTPServer.do_NOOP,
    Verb.QUIT: SMTPServer.do_QUIT,
    Verb.VRFY: SMTPServer.do_VRFY,
    Verb.EXPN: SMTPServer.do_EXPN,
    Verb.HELP: SMTPServer.do_HELP,
    Verb.STARTTLS: SMTPServer.do_STARTTLS,
    Verb.AUTH: SMTPServer.do_AUTH,
}


class SMTPFactory(protocol.ServerFactory):
    def __init__(self, app: Any, policy: Policy, flavour: Flavour) -> None:
        self.app = app
        self.policy = policy
        self.flavour = flavour
        hostname = app.cfg.server.hostname
        self.greeting = R.greeting(hostname).encode()
        self.helo = R.helo(hostname).encode()
        self.refusal = f"421 4.7.0 {hostname} Too many connections, try again later\r\n".encode()

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        ticket = connlimits.admit(self, addr, self.refusal, self.flavour.service)
        if not isinstance(ticket, connlimits.Ticket):
            return ticket
        p = SMTPServer(self.app, self.policy, self.flavour)
        p.factory = self
        p.ticket = ticket
        return p
