"""ManageSieve (RFC 5804 §4) framing: commands from a byte buffer, and the
strings of responses.

A command is an atom followed by strings (quoted, or literals `{N+}` /
`{N}` then CRLF and N octets) and numbers, ended by CRLF. `take_command`
returns None until the buffer holds a whole command, so a literal may span
any number of reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ATOM = re.compile(rb"[A-Za-z]+")
_NUMBER = re.compile(rb"[0-9]{1,18}")
_LITERAL = re.compile(rb"\{([0-9]{1,10})(\+?)\}\r?\n")


class WireError(Exception):
    """A malformed command: answered NO, the connection stays."""


class TooLarge(Exception):
    """A literal beyond the limit: the connection is closed (BYE)."""


@dataclass(frozen=True)
class Command:
    name: str  # upper-cased
    args: list[str | int]


def take_command(buf: bytearray, max_line: int, max_literal: int) -> Command | None:
    """Remove and return one command from `buf`, or None if incomplete."""
    pos = 0
    n = len(buf)
    # Skip the blank lines some clients send between commands.
    while pos < n and buf[pos] in b"\r\n":
        pos += 1
    m = _ATOM.match(buf, pos)
    if m is None:
        if pos < n:
            line_end = buf.find(b"\n", pos)
            if line_end < 0:
                if n - pos > max_line:
                    raise TooLarge("line too long")
                return None
            del buf[: line_end + 1]
            raise WireError("expected a command name")
        del buf[:pos]
        return None
    name = m.group().decode().upper()
    pos = m.end()
    args: list[str | int] = []
    while True:
        while pos < n and buf[pos] in b" \t":
            pos += 1
        if pos >= n:
            if n > max_line + max_literal:
                raise TooLarge("command too long")
            return None
        c = buf[pos]
        if c in b"\r\n":
            if c == 13:
                if pos + 1 >= n:
                    return None
                if buf[pos + 1] != 10:
                    _discard_line(buf, pos)
                    raise WireError("bare CR")
                pos += 1
            del buf[: pos + 1]
            return Command(name, args)
        if c == 34:  # '"'
            try:
                got = _quoted(buf, pos)
            except WireError:
                _discard_line(buf, pos)
                raise
            if got is None:
                if n - pos > max_line:
                    raise TooLarge("string too long")
                return None
            value, pos = got
            args.append(value)
        elif c == 123:  # '{'
            lm = _LITERAL.match(buf, pos)
            if lm is None:
                if buf.find(b"\n", pos) >= 0 or n - pos > 20:
                    _discard_line(buf, pos)
                    raise WireError("malformed literal")
                return None
            size = int(lm.group(1))
            if size > max_literal:
                raise TooLarge(f"literal of {size} octets is too large")
            start = lm.end()
            if n < start + size:
                return None
            args.append(bytes(buf[start : start + size]).decode("utf-8", "surrogateescape"))
            pos = start + size
        elif (nm := _NUMBER.match(buf, pos)) is not None:
            args.append(int(nm.group()))
            pos = nm.end()
        else:
            _discard_line(buf, pos)
            raise WireError("unexpected character in arguments")


def _discard_line(buf: bytearray, pos: int) -> None:
    end = buf.find(b"\n", pos)
    del buf[: (end + 1) if end >= 0 else len(buf)]


def _quoted(buf: bytearray, pos: int) -> tuple[str, int] | None:
    out = bytearray()
    i = pos + 1
    n = len(buf)
    while i < n:
        c = buf[i]
        if c == 34:
            return out.decode("utf-8", "surrogateescape"), i + 1
        if c == 92:  # backslash: only \" and \\ are allowed
            if i + 1 >= n:
                return None
            out.append(buf[i + 1])
            i += 2
            continue
        if c in b"\r\n":
            raise WireError("line break in a quoted string")
        out.append(c)
        i += 1
    return None


def quote(s: str) -> bytes:
    """A response string: quoted when it can be, else a literal."""
    data = s.encode("utf-8", "surrogateescape")
    if len(data) < 1024 and not any(c in data for c in b"\r\n\x00"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data
