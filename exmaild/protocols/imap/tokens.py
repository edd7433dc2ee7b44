"""Tokeniser over one framed command unit, plus RFC 3501 value syntaxes.

The ``Reader`` walks the unit's lines; when it reaches a ``{n}`` literal
announcement it yields the next literal and continues on the next line, so
callers never see framing.  Every failure is a ``ParseError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from typing import TypeVar

import twisted.mail.imap4  # noqa: F401  (registers the "imap4-utf-7" codec)

from .errors import InvalidMailboxName, ParseError

__all__ = [
    "MAX_MODSEQ",
    "MAX_NUMBER",
    "MONTHS",
    "Reader",
    "canonical_flag",
    "decode_mailbox",
    "parse_date",
    "parse_date_time",
]

T = TypeVar("T")

MAX_NUMBER = 2**32 - 1  # RFC 3501 number
MAX_MODSEQ = 2**63 - 1  # RFC 7162 mod-sequence-value
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBER = {m.upper(): i for i, m in enumerate(MONTHS, 1)}

# 8-bit bytes are tolerated in atoms and strings: clients do send raw UTF-8.
_ATOM = re.compile(rb'[^\x00-\x20\x7f(){%*"\\\]]+')
_ASTRING_CHARS = re.compile(rb'[^\x00-\x20\x7f(){%*"\\]+')  # ATOM-CHAR + "]"
_LIST_CHARS = re.compile(rb'[^\x00-\x20\x7f(){"\\]+')  # + list-wildcards
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_DIGITS = re.compile(rb"[0-9]+")
_NOT_SPACE = re.compile(rb"[^ ]*")
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb"\\(.)")
_LITERAL = re.compile(rb"\{([0-9]{1,12})\+?\}")
_MUTF7_SHIFT = re.compile(rb"&[A-Za-z0-9+,]*-")

_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}


class Reader:
    """Cursor over a command unit (``lines[i]`` announces ``literals[i]``)."""

    def __init__(self, lines: tuple[bytes, ...], literals: tuple[bytes, ...] = ()) -> None:
        if not lines:
            raise ParseError("Empty command")
        self._lines = lines
        self._literals = literals
        self._index = 0
        self.line = lines[0]
        self.pos = 0
        self.utf8 = False  # UTF8=ACCEPT enabled: mailbox names are plain UTF-8

    # -- position ----------------------------------------------------------

    def peek(self) -> int:
        """Next byte value, or -1 at the end of the current line."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self._index == len(self._lines) - 1

    def expect_end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def take(self, char: bytes) -> bool:
        """Consume ``char`` if it comes next."""
        if self.line.startswith(char, self.pos):
            self.pos += len(char)
            return True
        return False

    def expect(self, char: bytes, what: str) -> None:
        if not self.take(char):
            raise ParseError(f"Expected {what}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def _match(self, pattern: re.Pattern[bytes]) -> bytes:
        match = pattern.match(self.line, self.pos)
        if match is None:
            return b""
        self.pos = match.end()
        return match.group()

    # -- tokens ------------------------------------------------------------

    def tag(self) -> str:
        raw = self._match(_NOT_SPACE)
        if _TAG.fullmatch(raw) is None:  # echoing part of a bad tag would mislead
            raise ParseError("Missing or invalid tag")
        return raw.decode("ascii")

    def atom(self, what: str) -> bytes:
        raw = self._match(_ATOM)
        if not raw:
            raise ParseError(f"Expected {what}")
        return raw

    def keyword(self, what: str) -> str:
        """An ASCII atom, upper-cased (command names, options, items)."""
        return ascii_text(self.atom(what), what).upper()

    def run(self, pattern: re.Pattern[bytes]) -> bytes:
        """Consume a (possibly empty) run matching ``pattern``."""
        return self._match(pattern)

    def quoted(self) -> bytes:
        match = _QUOTED.match(self.line, self.pos)
        if match is None:
            raise ParseError("Invalid quoted string")
        self.pos = match.end()
        return _UNESCAPE.sub(rb"\1", match.group(1))

    def literal(self, *, spooled: bool = False) -> bytes:
        """The next literal's octets. Every literal of an APPEND arrives in a
        spool (the framer cannot tell the message from a mailbox name sent as
        a literal); only the message is taken as the spool (`spooled`), any
        other is read back as bytes, as for any other command."""
        match = _LITERAL.match(self.line, self.pos)
        if match is None or match.end() != len(self.line):
            raise ParseError("Invalid literal")
        if self._index >= len(self._literals) or self._index + 1 >= len(self._lines):
            raise ParseError("Missing literal data")
        data = self._literals[self._index]
        if int(match.group(1)) != len(data):
            raise ParseError("Literal size mismatch")
        self._index += 1
        self.line = self._lines[self._index]
        self.pos = 0
        if not spooled and not isinstance(data, bytes | bytearray):
            try:
                return bytes(data.buffer())
            except (OSError, ValueError):  # the spool could not be written
                raise ParseError("Literal could not be stored") from None
        return data

    def string(self, what: str) -> bytes:
        """RFC 3501 string: quoted or literal."""
        char = self.peek()
        if char == 0x22:
            return self.quoted()
        if char == 0x7B:
            return self.literal()
        raise ParseError(f"Expected {what} (a string)")

    def astring(self, what: str) -> bytes:
        char = self.peek()
        if char in (0x22, 0x7B):
            return self.string(what)
        raw = self._match(_ASTRING_CHARS)
        if not raw:
            raise ParseError(f"Expected {what}")
        return raw

    def nstring(self, what: str) -> bytes | None:
        if self.peek() not in (0x22, 0x7B):
            if self.atom(what).upper() != b"NIL":
                raise ParseError(f"Expected {what} (a string or NIL)")
            return None
        return self.string(what)

    def list_mailbox(self) -> bytes:
        """LIST pattern: like astring but ``%`` and ``*`` are allowed."""
        if self.peek() in (0x22, 0x7B):
            return self.string("mailbox pattern")
        raw = self._match(_LIST_CHARS)
        if not raw:
            raise ParseError("Expected mailbox pattern")
        return raw

    def number(self, what: str, *, maximum: int = MAX_NUMBER, nonzero: bool = False) -> int:
        raw = self._match(_DIGITS)
        if not raw:
            raise ParseError(f"Expected {what} (a number)")
        if len(raw) > len(str(maximum)) or int(raw) > maximum:
            raise ParseError(f"{what.capitalize()} out of range")
        value = int(raw)
        if nonzero and value == 0:
            raise ParseError(f"{what.capitalize()} must not be zero")
        return value

    def paren_list(self, item: Callable[[], T], *, allow_empty: bool = True) -> list[T]:
        """``"(" [item *(SP item)] ")"``."""
        self.expect(b"(", "(")
        items: list[T] = []
        if self.take(b")"):
            if not allow_empty:
                raise ParseError("Empty list")
            return items
        items.append(item())
        while self.take(b" "):
            items.append(item())
        self.expect(b")", ")")
        return items

    # -- composite values --------------------------------------------------

    def mailbox(self) -> str:
        return decode_mailbox(self.astring("mailbox name"), utf8=self.utf8)

    def flag(self) -> str:
        if self.take(b"\\"):
            name = ascii_text(self.atom("flag name"), "flag")
            return canonical_flag("\\" + name)
        return ascii_text(self.atom("flag"), "flag")

    def flag_list(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.paren_list(self.flag)))


def ascii_text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise ParseError(f"Non-ASCII {what}") from None


def canonical_flag(flag: str) -> str:
    """System flags are case-insensitive: give them their canonical case."""
    return _SYSTEM_FLAGS.get(flag.upper(), flag)


def decode_mailbox(raw: bytes, *, utf8: bool = False) -> str:
    """Decode a mailbox name from modified UTF-7; INBOX is case-insensitive.

    Raw 8-bit names are accepted when they are valid UTF-8 (clients that
    ignore RFC 3501 send those), and then taken literally; with ``utf8``
    (UTF8=ACCEPT enabled, RFC 6855 §3) every name is UTF-8, "&" included.
    """
    if utf8 or any(b > 0x7F for b in raw):
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMailboxName("Mailbox name is neither modified UTF-7 nor UTF-8") from None
    else:
        # Twisted's decoder accepts some malformed input (a lone "&"): check
        # that every shift sequence is terminated before handing it over.
        if raw.count(b"&") != len(_MUTF7_SHIFT.findall(raw)):
            raise InvalidMailboxName("Invalid modified UTF-7 in mailbox name")
        try:
            name = raw.decode("imap4-utf-7")
        except Exception:  # third-party codec: any failure means bad input
            raise InvalidMailboxName("Invalid modified UTF-7 in mailbox name") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InvalidMailboxName("Control character in mailbox name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogate from a broken UTF-16 shift
        raise InvalidMailboxName("Invalid modified UTF-7 in mailbox name") from None
    return "INBOX" if name.upper() == "INBOX" else name


_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})\Z")
_DATE_TIME = re.compile(
    rb" ?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) "
    rb"([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})\Z"
)


def _month(raw: bytes) -> int:
    month = _MONTH_NUMBER.get(raw.decode("ascii").upper())
    if month is None:
        raise ParseError("Invalid month name")
    return month


def parse_date(raw: bytes) -> date:
    """RFC 3501 search date: ``1-Feb-1994``."""
    match = _DATE.match(raw)
    if match is None:
        raise ParseError("Invalid date, expected e.g. 1-Feb-1994")
    day, month, year = match.groups()
    try:
        return date(int(year), _month(month), int(day))
    except ValueError:
        raise ParseError("Invalid date") from None


def parse_date_time(raw: bytes) -> datetime:
    """RFC 3501 date-time (without its quotes): ``17-Jul-1996 02:44:25 -0700``."""
    match = _DATE_TIME.match(raw)
    if match is None:
        raise ParseError("Invalid date-time, expected e.g. 17-Jul-1996 02:44:25 -0700")
    day, month, year, hour, minute, second, sign, zh, zm = match.groups()
    if int(zm) >= 60:
        raise ParseError("Invalid time zone")
    offset = timedelta(hours=int(zh), minutes=int(zm))
    try:
        zone = timezone(-offset if sign == b"-" else offset)
        return datetime(
            int(year), _month(month), int(day), int(hour), int(minute), int(second), tzinfo=zone
        )
    except ValueError:
        raise ParseError("Invalid date-time") from None
