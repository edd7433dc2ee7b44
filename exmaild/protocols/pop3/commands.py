"""POP3 command lines to commands, without I/O (RFC 1939, 2449, 2595, 5034).

`parse(line)` takes one line with its line ending removed and returns either a
`Command` whose arguments are already checked and converted (message numbers
are ints) or a `BadCommand` carrying the `-ERR` reply that says what is wrong.
It never raises, whatever the bytes: the property tests feed it garbage.

Which commands are valid in which session state is the server's business
(`AUTHORIZATION_COMMANDS`, `TRANSACTION_COMMANDS` are here so both agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exmaild.protocols.pop3 import responses as r
from exmaild.protocols.pop3.responses import Reply

# RFC 2449 §4: keywords are 3-4 characters; we accept any short alphabetic
# keyword so that unknown ones get "unknown command" rather than "bad syntax".
_KEYWORD = re.compile(r"[A-Za-z]{1,20}")
_NUMBER = re.compile(r"[0-9]{1,10}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Message numbers beyond this cannot exist (and keep the ints small).
MAX_NUMBER = 2**31 - 1
MAX_ECHO = 40

AUTHORIZATION_COMMANDS = frozenset({"USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT", "APOP"})
TRANSACTION_COMMANDS = frozenset(
    {"STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "CAPA", "QUIT"}
)
ALL_COMMANDS = AUTHORIZATION_COMMANDS | TRANSACTION_COMMANDS


@dataclass(frozen=True)
class Command:
    name: str  # upper case
    args: tuple[str | int, ...] = ()


@dataclass(frozen=True)
class BadCommand:
    reply: Reply


def echo(text: str) -> str:
    """Client input made safe to quote in a reply: printable ASCII, truncated."""
    safe = "".join(c if " " <= c <= "~" else "?" for c in text[:MAX_ECHO])
    return safe + ("..." if len(text) > MAX_ECHO else "")


def _bad(text: str) -> BadCommand:
    return BadCommand(r.err(text))


def _number(word: str, what: str = "message number") -> int | BadCommand:
    if not _NUMBER.fullmatch(word):
        return _bad(f"Invalid {what}: {echo(word)}")
    n = int(word)
    if n > MAX_NUMBER:
        return _bad(f"The {what} is too large: {echo(word)}")
    return n


def parse(line: bytes) -> Command | BadCommand:
    """One command line (without CRLF) to a Command or the reason it is bad."""
    if not line.strip():
        return _bad("Empty command line")
    if b"\0" in line:
        return _bad("NUL characters are not allowed in commands")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return _bad("Command line is not valid UTF-8")
    if _CONTROL.search(text):
        return _bad("Control characters are not allowed in commands")
    keyword, _, rest = text.partition(" ")
    if not _KEYWORD.fullmatch(keyword):
        return _bad(f"Unknown command: {echo(keyword)}")
    name = keyword.upper()
    if name not in ALL_COMMANDS:
        return _bad(f"Unknown command: {echo(keyword)}")
    if name == "PASS":
        # RFC 1939 §7: the password is the rest of the line, spaces and all.
        if not rest:
            return _bad("PASS needs a password")
        return Command(name, (rest,))
    if name == "APOP":
        return _bad("APOP is not supported; use USER/PASS or AUTH over TLS")
    args = rest.split()
    return _ARGS[name](name, args)


def _no_args(name: str, args: list[str]) -> Command | BadCommand:
    if args:
        return _bad(f"{name} takes no arguments")
    return Command(name)


def _user(name: str, args: list[str]) -> Command | BadCommand:
    if len(args) != 1:
        return _bad("USER needs exactly one user name")
    if len(args[0]) > 320:
        return _bad("User name is too long")
    return Command(name, (args[0],))


def _auth(name: str, args: list[str]) -> Command | BadCommand:
    if len(args) > 2:
        return _bad("AUTH takes a mechanism and at most one initial response")
    if args:
        mech = args[0].upper()
        if not re.fullmatch(r"[A-Z0-9_-]{1,20}", mech):
            return _bad(f"Invalid SASL mechanism name: {echo(args[0])}")
        return Command(name, (mech, *args[1:]))
    return Command(name)


def _optional_number(name: str, args: list[str]) -> Command | BadCommand:
    if len(args) > 1:
        return _bad(f"{name} takes at most one message number")
    if not args:
        return Command(name)
    n = _number(args[0])
    return n if isinstance(n, BadCommand) else Command(name, (n,))


def _one_number(name: str, args: list[str]) -> Command | BadCommand:
    if len(args) != 1:
        return _bad(f"{name} needs exactly one message number")
    n = _number(args[0])
    return n if isinstance(n, BadCommand) else Command(name, (n,))


def _top(name: str, args: list[str]) -> Command | BadCommand:
    if len(args) != 2:
        return _bad("TOP needs a message number and a line count")
    n = _number(args[0])
    if isinstance(n, BadCommand):
        return n
    lines = _number(args[1], "line count")
    if isinstance(lines, BadCommand):
        return lines
    return Command(name, (n, lines))


_ARGS = {
    "USER": _user,
    "AUTH": _auth,
    "STLS": _no_args,
    "CAPA": _no_args,
    "QUIT": _no_args,
    "STAT": _no_args,
    "NOOP": _no_args,
    "RSET": _no_args,
    "LIST": _optional_number,
    "UIDL": _optional_number,
    "RETR": _one_number,
    "DELE": _one_number,
    "TOP": _top,
}
