"""SASL PLAIN (RFC 4616) and LOGIN for SMTP AUTH (RFC 4954), without I/O.

`start()` with the optional initial response, then `step()` with each client
line; each returns either a `Reply` (a 334 challenge to send and wait, or the
error that ends the exchange) or the `Credentials` to check.
"""

from __future__ import annotations

from dataclasses import dataclass

from exmaild.protocols.smtp import replies as R
from exmaild.protocols.smtp.commands import SMTPSyntaxError, decode_sasl_response
from exmaild.protocols.smtp.replies import Reply

MECHANISMS = ("PLAIN", "LOGIN")
BAD_RESPONSE = R.AUTH_CANNOT_DECODE


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


Step = Reply | Credentials


def is_challenge(step: Step) -> bool:
    return isinstance(step, Reply) and step.code == 334


class SaslExchange:
    def __init__(self, mechanism: str) -> None:
        if mechanism not in MECHANISMS:
            raise ValueError(mechanism)
        self.mechanism = mechanism
        self._username: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return R.auth_challenge(b"" if self.mechanism == "PLAIN" else b"Username:")
        return self._feed(initial, initial=True)

    def step(self, line: bytes) -> Step:
        return self._feed(line, initial=False)

    def _feed(self, line: str | bytes, *, initial: bool) -> Step:
        try:
            data = decode_sasl_response(line.strip(), initial=initial)
        except SMTPSyntaxError as e:
            return e.reply
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return BAD_RESPONSE
        return self._plain(text) if self.mechanism == "PLAIN" else self._login(text)

    def _plain(self, text: str) -> Step:
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return BAD_RESPONSE
        authzid, user, password = parts
        if authzid and authzid.lower() != user.lower():
            return R.AUTH_FAILED  # acting as another user is not offered
        return Credentials(user, password)

    def _login(self, text: str) -> Step:
        if self._username is None:
            if not text:
                return BAD_RESPONSE
            self._username = text
            return R.auth_challenge(b"Password:")
        if not text:
            return BAD_RESPONSE
        return Credentials(self._username, text)
