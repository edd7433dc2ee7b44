"""STARTTLS, LOGIN and AUTHENTICATE PLAIN / LOGIN with SASL-IR (RFC 4959).

Passwords travel only over TLS, except from loopback when
``[auth] allow_plaintext_loopback`` says so; elsewhere the greeting says
LOGINDISABLED and LOGIN is answered ``NO [PRIVACYREQUIRED]``. An account whose
IMAP switch is off (manual §6.2.2) gets ``NO [ALERT]`` with the reason.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

from twisted.logger import Logger

from exmaild.auth.checker import MustChangePassword

from . import responses as r
from .commands import AuthenticateArgs, Command, LoginArgs
from .errors import ParseError
from .framing import FramingError
from .parser import decode_sasl_response
from .session import State

if TYPE_CHECKING:
    from .server import IMAPServer

log = Logger(namespace="exmaild.imap")

MAX_AUTH_FAILURES = 3
MECHANISMS = ("PLAIN", "LOGIN")


async def starttls(c: IMAPServer, cmd: Command) -> r.Result:
    if c.tls:
        return r.bad("TLS is already active")
    c.send(r.ok("Begin TLS negotiation now").line(cmd.tag))
    # Anything pipelined after STARTTLS came in the clear: drop it (CVE-2011-0411).
    c.framer.discard_buffered()
    c.transport.startTLS(c.app.tls.for_service("imap"))
    c.tls = True
    return r.SENT


async def login(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, LoginArgs)
    from .cmd_misc import plaintext_ok

    if not plaintext_ok(c):
        return r.PRIVACY_REQUIRED
    return await _authenticate(c, cmd.args.username, cmd.args.password, "LOGIN")


async def authenticate(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, AuthenticateArgs)
    from .cmd_misc import plaintext_ok

    mech = cmd.args.mechanism
    if mech not in MECHANISMS:
        return r.no(f"Unsupported authentication mechanism {mech[:20]}", "CANNOT")
    if not plaintext_ok(c):
        return r.PRIVACY_REQUIRED
    try:
        if mech == "PLAIN":
            data = cmd.args.initial_response
            if data is None:
                data = await _challenge(c, b"")
            user, password = _plain(data)
        else:
            user_b = cmd.args.initial_response
            if user_b is None:
                user_b = await _challenge(c, b"Username:")
            password_b = await _challenge(c, b"Password:")
            user = user_b.decode("utf-8", "surrogateescape")
            password = password_b.decode("utf-8", "surrogateescape")
    except _Cancelled as e:
        return r.bad(str(e))
    except ParseError as e:
        return r.bad(e.message)
    return await _authenticate(c, user, password, f"AUTHENTICATE {mech}")


class _Cancelled(Exception):
    pass


async def _challenge(c: IMAPServer, text: bytes) -> bytes:
    c.send(b"+ " + base64.b64encode(text) + b"\r\n")
    event = await c.wait_raw_line()
    if isinstance(event, FramingError):
        raise _Cancelled("Authentication line too long")
    data = decode_sasl_response(event.data)
    if data is None:
        raise _Cancelled("Authentication cancelled")
    return data


def _plain(data: bytes) -> tuple[str, str]:
    parts = data.split(b"\x00")
    if len(parts) != 3:
        raise ParseError("Malformed PLAIN response")
    authzid, authcid, password = parts
    if authzid and authzid != authcid:
        raise ParseError("Logging in as another user is not supported")
    return (
        authcid.decode("utf-8", "surrogateescape"),
        password.decode("utf-8", "surrogateescape"),
    )


async def _authenticate(c: IMAPServer, user: str, password: str, how: str) -> r.Result:
    s = c.session
    s.user = user[:320]
    client = next((v or "" for k, v in s.client_id.items() if k.lower() == "name"), "")
    d = await c.app.logins.login(user, password, protocol="imap", ip=c.remote, client=client)
    if not d.ok:
        c.metrics.login("imap", "failure" if d.kind == "bad" else "refused")
        log.info("imap login failed: user={user}, rip={rip}, method={method}, reason={reason}",
                 user=s.user, rip=c.remote, method=how, reason=d.reason)
        if d.kind in ("bad", "must_change", "refused"):
            c.failures += 1
            if c.failures >= MAX_AUTH_FAILURES:
                c.hang_up_after("too many failed logins", "Too many failed logins")
        if d.kind == "throttled" or d.kind == "unavailable":
            return r.no(d.text or "Login temporarily unavailable; try again later",
                        "UNAVAILABLE")
        if d.kind == "must_change":
            return r.no(MustChangePassword.TEXT, "EXPIRED")  # RFC 5530
        if d.code == "protocol":
            return r.IMAP_DISABLED
        if d.kind == "refused":
            return r.no(d.text, "AUTHORIZATIONFAILED" if d.code == "ip" else "ALERT")
        return r.AUTH_FAILED
    account = d.account
    assert account is not None
    s.account = account
    s.state = State.AUTHENTICATED
    c.authenticated()
    c.metrics.login("imap", "success")
    log.info("imap login: user={user}, rip={rip}, method={method}, auth={auth}, tls={tls}",
             user=account.address, rip=c.remote, method=how, auth=d.method, tls=c.tls)
    from .cmd_misc import capabilities

    return r.ok("Logged in", "CAPABILITY " + " ".join(capabilities(c)))
