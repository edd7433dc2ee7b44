"""SASL PLAIN (RFC 4616) and LOGIN for POP3 AUTH (RFC 5034), without I/O.

An exchange is started with the mechanism and the optional initial response
and then stepped with each client line; every call returns what to do next:
send a `Challenge`, check `Credentials`, or answer with a `Failure` reply.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from exmaild.protocols.pop3 import responses as r
from exmaild.protocols.pop3.responses import Reply

MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class Challenge:
    data: bytes  # sent base64-encoded after "+ "

    def encode(self) -> bytes:
        return r.SASL_CHALLENGE + base64.b64encode(self.data) + b"\r\n"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Failure:
    reply: Reply


Step = Challenge | Credentials | Failure


def _decode(line: str) -> bytes | Failure:
    if line == "*":
        return Failure(r.AUTH_CANCELLED)
    if line == "=":  # RFC 5034 §4: an empty initial response
        return b""
    try:
        return base64.b64decode(line.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return Failure(r.BAD_BASE64)


def _text(data: bytes, what: str) -> str | Failure:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Failure(r.BAD_SASL_RESPONSE.format(reason=f"{what} is not UTF-8"))


class Exchange:
    """One AUTH exchange; `start()` once, then `step()` per client line."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism.upper()
        self._username: str | None = None

    @staticmethod
    def supported(mechanism: str) -> bool:
        return mechanism.upper() in MECHANISMS

    def start(self, initial: str | None) -> Step:
        if self.mechanism == "PLAIN":
            return Challenge(b"") if initial is None else self.step(initial)
        if initial is None:
            return Challenge(b"Username:")
        return self.step(initial)

    def step(self, line: str) -> Step:
        data = _decode(line.strip())
        if isinstance(data, Failure):
            return data
        if self.mechanism == "PLAIN":
            return self._plain(data)
        return self._login(data)

    def _plain(self, data: bytes) -> Step:
        parts = data.split(b"\0")
        if len(parts) != 3:
            reason = "expected authzid NUL user NUL password"
            return Failure(r.BAD_SASL_RESPONSE.format(reason=reason))
        authzid, user, password = (_text(p, w) for p, w in zip(
            parts, ("authorization identity", "user name", "password"), strict=True))
        for v in (authzid, user, password):
            if isinstance(v, Failure):
                return v
        assert isinstance(authzid, str) and isinstance(user, str) and isinstance(password, str)
        if not user or not password:
            return Failure(r.BAD_SASL_RESPONSE.format(reason="empty user name or password"))
        if authzid and authzid.lower() != user.lower():
            # Acting as another user (proxy authorisation) is not offered.
            return Failure(r.AUTH_FAILED)
        return Credentials(user, password)

    def _login(self, data: bytes) -> Step:
        text = _text(data, "user name" if self._username is None else "password")
        if isinstance(text, Failure):
            return text
        if self._username is None:
            if not text:
                return Failure(r.BAD_SASL_RESPONSE.format(reason="empty user name"))
            self._username = text
            return Challenge(b"Password:")
        if not text:
            return Failure(r.BAD_SASL_RESPONSE.format(reason="empty password"))
        return Credentials(self._username, text)
