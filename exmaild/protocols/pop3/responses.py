"""Every POP3 status line exmaild sends, as named constants.

RFC 1939 gives the shape (`+OK text` / `-ERR text`); RFC 2449 §8 and RFC 3206
add the bracketed response codes a client can act on without parsing prose:
[IN-USE] and [LOGIN-DELAY] (try later), [SYS/TEMP] (our trouble, try later),
[SYS/PERM] (our trouble, do not retry), [AUTH] (the credentials, or the
account's permission to use POP3, are the problem). Texts with `{}` fields are
filled with `Reply.format()`.
"""

from __future__ import annotations

from dataclasses import dataclass


class Code:
    """RFC 2449 / RFC 3206 response codes."""

    AUTH = "AUTH"
    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"


@dataclass(frozen=True)
class Reply:
    ok: bool
    text: str = ""
    code: str | None = None

    def format(self, **fields: object) -> Reply:
        return Reply(self.ok, self.text.format(**fields), self.code)

    def encode(self) -> bytes:
        parts = ["+OK" if self.ok else "-ERR"]
        if self.code:
            parts.append(f"[{self.code}]")
        if self.text:
            # Echoed input must never forge a second line.
            parts.append(self.text.replace("\r", " ").replace("\n", " "))
        return (" ".join(parts) + "\r\n").encode("utf-8", "replace")


def err(text: str, code: str | None = None) -> Reply:
    return Reply(False, text, code)


# --- greeting, capabilities, TLS ---------------------------------------------------
GREETING = Reply(True, "{hostname} POP3 server ready")
CAPA_FOLLOWS = Reply(True, "Capability list follows")
SASL_MECHS_FOLLOW = Reply(True, "SASL mechanisms follow")
STLS_BEGIN = Reply(True, "Begin TLS negotiation now")
TLS_ACTIVE = err("This connection is already encrypted")

# --- authorization -----------------------------------------------------------------
USER_OK = Reply(True, "Now send the password with PASS")
LOGGED_IN = Reply(True, "Logged in, {count} messages ({size} octets)")
SASL_CHALLENGE = b"+ "  # followed by base64 text and CRLF (RFC 5034 §4)
NEED_USER = err("Send USER first")
ALREADY_LOGGED_IN = err("Already logged in")
NEED_LOGIN = err("Log in first")
PLAINTEXT_REFUSED = err(
    "Plaintext passwords are refused on an unencrypted connection; use STLS first", Code.AUTH
)
AUTH_FAILED = err("Authentication failed", Code.AUTH)
POP_DISABLED = err(
    "POP3 access is switched off for this account; turn on the POP/SMTP service "
    "in the mailbox's client settings",
    Code.AUTH,
)
IN_USE = err("The maildrop is in use by another POP3 session; try again later", Code.IN_USE)
LOGIN_DELAY = err("Logged in too recently; wait {seconds} seconds", Code.LOGIN_DELAY)
TOO_MANY_AUTH_FAILURES = err("Too many failed logins, closing connection", Code.AUTH)
AUTH_CANCELLED = err("Authentication cancelled")
UNKNOWN_MECHANISM = err("Unsupported SASL mechanism {mech}; use PLAIN or LOGIN")
BAD_BASE64 = err("Malformed base64 in SASL response", Code.AUTH)
BAD_SASL_RESPONSE = err("Malformed SASL response: {reason}", Code.AUTH)

# --- transaction -------------------------------------------------------------------
STAT = Reply(True, "{count} {size}")
LIST_FOLLOWS = Reply(True, "{count} messages ({size} octets)")
SCAN_LISTING = Reply(True, "{number} {size}")
UIDL_FOLLOWS = Reply(True, "Unique-ID listing follows")
UIDL_ONE = Reply(True, "{number} {uidl}")
RETR_FOLLOWS = Reply(True, "{size} octets")
TOP_FOLLOWS = Reply(True, "Top of message follows")
DELE_OK = Reply(True, "Message {number} marked for deletion")
RSET_OK = Reply(True, "Maildrop has {count} messages ({size} octets)")
NOOP_OK = Reply(True)
NO_SUCH_MESSAGE = err("No message {number}")
ALREADY_DELETED = err("Message {number} is already marked for deletion")
MESSAGE_GONE = err("Message {number} was removed by another session")

# --- closing -----------------------------------------------------------------------
BYE = Reply(True, "{hostname} closing connection")
BYE_DELETED = Reply(True, "{hostname} closing connection, {deleted} deleted")
UPDATE_FAILED = err(
    "Could not apply deletions, no message was removed; try again later", Code.SYS_TEMP
)

# --- trouble -----------------------------------------------------------------------
SYS_TEMP = err("Temporary server failure, try again later", Code.SYS_TEMP)
LINE_TOO_LONG = err("Line too long, closing connection")
IDLE_TIMEOUT = err("Idle for too long, closing connection")
TOO_MANY_BAD_COMMANDS = err("Too many bad commands, closing connection")
NOT_IN_TRANSACTION = err("{command} is only valid after login")
NOT_IN_AUTHORIZATION = err("{command} is only valid before login")
