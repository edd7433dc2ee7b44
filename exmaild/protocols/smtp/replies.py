"""Every SMTP reply exmaild sends, as named constants.

Codes follow RFC 5321 and the enhanced codes RFC 3463 (plus RFC 3207 STARTTLS,
RFC 4954 AUTH, RFC 1870 SIZE, RFC 3461 DSN, RFC 6531 SMTPUTF8).  Where the
RFCs leave a choice open we answer as Postfix does, so that clients and
log-watching tools that know Postfix see familiar replies.  Texts that carry
a host name or an address are built with `prefixed()` or the small factory
functions at the end.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Reply:
    """One (possibly multi-line) SMTP reply; `text` lines are separated by "\\n"."""

    code: int
    enhanced: str | None
    text: str

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        # RFC 3463 §2: the enhanced class must agree with the reply's class.
        if self.enhanced is not None and (
            not _ENHANCED.fullmatch(self.enhanced) or self.enhanced[0] != str(self.code)[0]
        ):
            raise ValueError(f"bad enhanced status code {self.enhanced!r} for {self.code}")

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def with_text(self, text: str) -> Reply:
        return dataclasses.replace(self, text=text)

    def prefixed(self, prefix: str) -> Reply:
        """Postfix style "<addr>: reason" / "host reason" texts."""
        return dataclasses.replace(self, text=f"{prefix} {self.text}")

    def encode(self) -> bytes:
        # A stray CR or LF in text would let echoed input forge extra reply
        # lines, so lines are split on LF and CRs dropped.
        lines = self.text.replace("\r", "").split("\n")
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            body = " ".join(part for part in (self.enhanced, line) if part)
            out.append(f"{self.code}{sep}{body}\r\n")
        return "".join(out).encode("utf-8")


# --- 2xx / 3xx: success and continuation ------------------------------------------------------
BYE = Reply(221, "2.0.0", "Bye")
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
# RFC 5321 §3.5.3: a server that will not verify but will try to deliver says 252.
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
)
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_SUCCEEDED = Reply(235, "2.7.0", "Authentication successful")
# RFC 4954: a 334 carries only base64 text, no enhanced code.
AUTH_CONTINUE = Reply(334, None, "")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# --- 421: closing the connection --------------------------------------------------------------
# RFC 5321 §4.2.3 wants the server's name first in a 421: use .prefixed(hostname).
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing transmission channel")

# --- 45x: try again later ---------------------------------------------------------------------
LOCAL_ERROR = Reply(451, "4.3.0", "Error: local error in processing")
TEMPORARY_LOOKUP_FAILURE = Reply(451, "4.3.0", "Temporary lookup failure")
INSUFFICIENT_STORAGE = Reply(452, "4.3.1", "Insufficient system storage")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
# Over quota is temporary for us (the sender's queue retries); RFC 3463 X.2.2.
MAILBOX_FULL = Reply(452, "4.2.2", "Mailbox full")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available due to local problem")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")

# --- 500/501: syntax --------------------------------------------------------------------------
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
BAD_UTF8 = Reply(500, "5.5.2", "Error: bad UTF-8 syntax")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
# RFC 4954 §4: X.5.6 is reserved for over-long AUTH exchange lines.
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: HELO hostname")
SYNTAX_EHLO = Reply(501, "5.5.4", "Syntax: EHLO hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_DATA = Reply(501, "5.5.4", "Syntax: DATA")
SYNTAX_RSET = Reply(501, "5.5.4", "Syntax: RSET")
SYNTAX_STARTTLS = Reply(501, "5.5.4", "Syntax: STARTTLS")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY address")
SYNTAX_EXPN = Reply(501, "5.5.4", "Syntax: EXPN mailing-list")
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism")
# Postfix answers bad envelope addresses with 501 and the RFC 3463 address codes.
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
BAD_SIZE = Reply(501, "5.5.4", "Bad message size syntax")
BAD_RET = Reply(501, "5.5.4", "Bad RET parameter syntax")
BAD_ENVID = Reply(501, "5.5.4", "Bad ENVID parameter syntax")
BAD_NOTIFY = Reply(501, "5.5.4", "Error: Bad NOTIFY parameter syntax")
BAD_ORCPT = Reply(501, "5.5.4", "Error: Bad ORCPT parameter syntax")
BAD_AUTH_PARAM = Reply(501, "5.5.4", "Error: Bad AUTH parameter syntax")
DUPLICATE_PARAMETER = Reply(501, "5.5.4", "Error: duplicate parameter")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_CANNOT_DECODE = Reply(501, "5.5.2", "Cannot decode response")

# --- 502-504: not implemented / out of sequence -----------------------------------------------
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
NOT_RECOGNIZED = Reply(502, "5.5.2", "Error: command not recognized")
VRFY_DISABLED = Reply(502, "5.5.1", "VRFY command is disabled")
EXPN_DISABLED = Reply(502, "5.5.1", "EXPN command is disabled")
BAD_SEQUENCE = Reply(503, "5.5.1", "Error: bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
PARAMETER_NOT_IMPLEMENTED = Reply(504, "5.5.4", "Command parameter not implemented")
AUTH_MECHANISM_UNKNOWN = Reply(504, "5.5.4", "Unrecognized authentication type")

# --- 53x: security ----------------------------------------------------------------------------
STARTTLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_MECHANISM_TOO_WEAK = Reply(534, "5.7.9", "Authentication mechanism is too weak")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
ENCRYPTION_REQUIRED_FOR_AUTH = Reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)

# --- 55x: permanent refusals ------------------------------------------------------------------
USER_UNKNOWN = Reply(550, "5.1.1", "Recipient address rejected: User unknown")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Recipient address rejected: Mailbox disabled")
GROUP_REFUSED = Reply(550, "5.7.1", "Recipient address rejected: not allowed to send to this group")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
SIZE_OVERFLOW = Reply(552, "5.3.4", "Message size exceeds file system imposed limit")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")
# RFC 6531 §3.5: UTF-8 envelope addresses need the SMTPUTF8 parameter.
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Must declare SMTPUTF8 to send unicode address")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
TLS_ALREADY_ACTIVE = Reply(554, "5.5.1", "Error: TLS already active")
# RFC 5321 §4.1.1.11: MAIL/RCPT parameters we do not know or cannot honour.
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported option")


# --- replies that carry data ------------------------------------------------------------------
def greeting(hostname: str) -> Reply:
    return Reply(220, None, f"{hostname} ESMTP exmaild")


def helo(hostname: str) -> Reply:
    return Reply(250, None, hostname)


def ehlo(hostname: str, keywords: Iterable[str]) -> Reply:
    # EHLO replies carry no enhanced code: the lines are the capability list.
    return Reply(250, None, "\n".join([hostname, *keywords]))


def queued(queue_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {queue_id}")


def auth_challenge(challenge: bytes) -> Reply:
    return Reply(334, None, base64.b64encode(challenge).decode("ascii"))


def _printable(text: str, limit: int = 64) -> str:
    # Client input echoed in a reply: ASCII graphic only, bounded.
    clean = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def unsupported_option(param: str) -> Reply:
    return UNSUPPORTED_PARAMETER.with_text(f"Unsupported option: {_printable(param)}")


def duplicate_parameter(keyword: str) -> Reply:
    return DUPLICATE_PARAMETER.with_text(f"Error: duplicate {_printable(keyword)} parameter")
