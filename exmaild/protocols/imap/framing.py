"""Sans-IO framer: splits the IMAP client byte stream into command units.

A *unit* is one command line together with the literals embedded in it
(``A1 LOGIN {5}\\r\\nalice {6}\\r\\nsecret\\r\\n`` is one unit made of three
lines and two literals).  The framer knows nothing about command semantics
beyond the tag and command word, which it peeks at to label errors and to
pause after commands that change how the following bytes must be read.

Driving it (see ``Framer`` for the full contract)::

    events = framer.feed(data)        # also feed(b"") after a mode change
    for event in events:
        match event:
            case ContinuationRequest(): send(b"+ Ready for literal data\\r\\n")
                                        (or NO, then framer.reject_literal())
            case FramingError(): send(tagged or untagged BAD/NO [TOOBIG])
            case RawLine(): handle IDLE's DONE or a SASL response, then
                            call framer.resume() or framer.expect_raw_line()
            case CommandUnit(): parse_command(event) and dispatch; after
                            IDLE/AUTHENTICATE/STARTTLS the framer is paused
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "CommandUnit",
    "ContinuationRequest",
    "FrameEvent",
    "Framer",
    "FramerLimits",
    "FramingError",
    "FramingErrorKind",
    "LiteralSink",
    "PAUSING_COMMANDS",
    "RawLine",
]

# Commands after which the bytes that follow must not be framed as commands
# until the server has reacted: IDLE and AUTHENTICATE switch to raw lines and
# STARTTLS switches to TLS (buffered plaintext must then be discarded, or a
# client-side attacker gets command injection, cf. CVE-2011-0411).
PAUSING_COMMANDS = frozenset({"IDLE", "AUTHENTICATE", "STARTTLS", "COMPRESS"})

# A literal announcement must end the line: "{123}" or "{123+}".
_LITERAL_AT_END = re.compile(rb"\{([0-9]+)(\+?)\}\Z")
# Enough of a discarded line's tail to recognise a literal announcement.
_TAIL_KEEP = 32
# Longer digit strings are "too big" anyway; also keeps int() cheap.
_MAX_DIGITS = 12
_TAG_CHARS = re.compile(rb"[^\x00-\x20\x7f-\xff(){%*\"\\+]+\Z")


@dataclass(frozen=True)
class FramerLimits:
    """Limits enforced while framing; all sizes in bytes."""

    max_line_length: int = 64 * 1024  # one line, without its CRLF
    max_literal_size: int = 50 * 1024 * 1024  # one literal outside APPEND
    max_append_size: int = 50 * 1024 * 1024  # one literal of an APPEND command
    max_command_size: int = 51 * 1024 * 1024  # all lines and literals of a unit
    # All lines and literals of a unit other than APPEND; 0: max_command_size.
    max_other_command_size: int = 0

    def literal_limit(self, command: str | None) -> int:
        return self.max_append_size if command == "APPEND" else self.max_literal_size

    def command_limit(self, command: str | None) -> int:
        if command == "APPEND" or not self.max_other_command_size:
            return self.max_command_size
        return min(self.max_command_size, self.max_other_command_size)


class LiteralSink(Protocol):
    """Where an APPEND literal goes as it arrives (a spool: mailstore/spool.py);
    it stands for the literal in the ``CommandUnit``."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class CommandUnit:
    """A complete command: ``lines[i]`` ends with the ``{n}`` / ``{n+}`` that
    announces ``literals[i]``; the last line ends the command.  Lines carry
    no CRLF.  ``len(lines) == len(literals) + 1``.  An APPEND literal is a
    ``LiteralSink`` when the framer has one: whoever takes the unit closes it
    (``close_literals``)."""

    lines: tuple[bytes, ...]
    literals: tuple[bytes | LiteralSink, ...] = ()

    def close_literals(self) -> None:
        for lit in self.literals:
            if not isinstance(lit, bytes):
                lit.close()

    @property
    def tag(self) -> str | None:
        return _peek_tag_and_name(self.lines[0] if self.lines else b"")[0]

    @property
    def name(self) -> str | None:
        """Upper-cased command word (the one after ``UID`` for UID commands)."""
        return _peek_tag_and_name(self.lines[0] if self.lines else b"")[1]

    @property
    def size(self) -> int:
        return sum(map(len, self.lines)) + sum(map(len, self.literals))


@dataclass(frozen=True)
class ContinuationRequest:
    """A synchronising literal of ``size`` bytes is announced: the server
    sends ``+ Ready for literal data`` (or refuses it: ``Framer.reject_literal``)
    and only then will the client send it."""

    size: int
    tag: str | None = None
    name: str | None = None


class FramingErrorKind(enum.Enum):
    LINE_TOO_LONG = "line-too-long"
    LITERAL_TOO_BIG = "literal-too-big"
    COMMAND_TOO_BIG = "command-too-big"


@dataclass(frozen=True)
class FramingError:
    """A limit was exceeded; the command is dropped (its remaining bytes are
    discarded by the framer).  The server answers ``tag BAD [TOOBIG] message``
    (``NO`` is customary for APPEND, RFC 7889), or ``* BAD`` when ``tag`` is
    unknown.  ``size`` is the announced literal size, when there was one."""

    kind: FramingErrorKind
    message: str
    tag: str | None = None
    name: str | None = None
    size: int | None = None
    # False for a refused LITERAL+ (its bytes are on their way regardless).
    sync: bool = field(default=True, compare=False)

    @property
    def code(self) -> str:
        return "TOOBIG"


@dataclass(frozen=True)
class RawLine:
    """A line read in raw mode (IDLE's ``DONE``, a SASL response), no CRLF."""

    data: bytes

    @property
    def is_done(self) -> bool:
        """True when this line ends IDLE: exactly ``DONE``, any case."""
        return self.data.upper() == b"DONE"


FrameEvent = CommandUnit | ContinuationRequest | FramingError | RawLine


class _State(enum.Enum):
    LINE = enum.auto()  # reading a command line
    LITERAL = enum.auto()  # collecting literal bytes
    RAW = enum.auto()  # reading one raw line
    DISCARD_LINE = enum.auto()  # skipping to end of line after an error
    DISCARD_LITERAL = enum.auto()  # skipping an oversized {n+} literal


class Framer:
    """Incremental framer; feed it bytes in chunks of any size.

    Contract for the server:

    * Handle the events of each ``feed`` in order.
    * After a ``CommandUnit`` whose ``name`` is in ``pausing_commands`` and
      after every ``RawLine`` the framer *pauses*: later bytes are buffered,
      not framed.  The server reacts, then calls ``expect_raw_line()`` (IDLE
      accepted, SASL challenge sent), or ``resume()`` (command rejected, IDLE
      or authentication finished) — after ``discard_buffered()`` for STARTTLS —
      and then ``feed(b"")`` to frame what was buffered meanwhile.  A unit
      that fails to parse still paused the framer: ``resume()``.
    * A ``FramingError`` in raw mode also pauses: end the IDLE/AUTHENTICATE
      exchange, then ``resume()`` (the rest of the long line is skipped).
    * A ``FramingError`` for an oversized ``{n+}`` means the next ``n`` bytes
      are skipped; for an absurd ``size`` the server may rather disconnect.
    * ``limits`` may be replaced at any time (e.g. tighter before login).
    * With ``literal_sink`` set, an APPEND literal is written to
      ``literal_sink(size)`` as it arrives instead of being gathered in
      memory; ``close()`` closes one that is still being filled.
    """

    literal_sink: Callable[[int], LiteralSink] | None = None

    def __init__(
        self,
        limits: FramerLimits | None = None,
        pausing_commands: frozenset[str] = PAUSING_COMMANDS,
    ) -> None:
        self.limits = limits or FramerLimits()
        self._pausing = pausing_commands
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf already searched for LF
        self._state = _State.LINE
        self._paused = False
        self._reset_command()
        self._remaining = 0  # literal bytes still to collect or discard
        self._tail = b""  # end of the line being discarded
        self._check_literal = True  # whether a discarded line may announce one
        self._awaiting_plus = False  # a sync literal is announced, none of it sent

    # -- public API -------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def buffered(self) -> int:
        """Bytes received but not framed yet (grows while paused)."""
        return len(self._buf)

    @property
    def in_command(self) -> bool:
        """True while part of a command has been received."""
        return bool(self._lines) or self._state is not _State.LINE or bool(self._buf)

    def feed(self, data: bytes) -> list[FrameEvent]:
        """Add received bytes; return the events they complete, in order.
        While paused nothing is framed (``feed(b"")`` after resuming)."""
        if data:
            self._awaiting_plus = False
        self._buf += data
        events: list[FrameEvent] = []
        while not self._paused and self._step(events):
            pass
        return events

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        """Continue framing commands (leaves raw mode if it was requested)."""
        self._paused = False
        if self._state is _State.RAW:
            self._state = _State.LINE

    def expect_raw_line(self) -> None:
        """Deliver the next line as a ``RawLine``, then pause."""
        self._paused = False
        self._reset_command()
        self._state = _State.RAW

    def reject_literal(self) -> bool:
        """Refuse the literal of the last ``ContinuationRequest``: the server
        sends a tagged NO/BAD instead of ``+`` (e.g. APPEND over quota) and
        the command is dropped.  False if the client already started sending
        it, in which case the server must let it arrive."""
        if not self._awaiting_plus:
            return False
        self._awaiting_plus = False
        self._reset_command()
        self._remaining = 0
        self._state = _State.LINE
        return True

    def close(self) -> None:
        """The connection is gone: drop a command being received."""
        self._reset_command()

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not framed yet (they came compressed,
        after COMPRESS: RFC 4978)."""
        data = bytes(self._buf)
        self._buf.clear()
        self._scanned = 0
        return data

    def discard_buffered(self) -> int:
        """Drop bytes not framed yet (plaintext pipelined after STARTTLS)."""
        dropped = len(self._buf)
        self._buf.clear()
        self._scanned = 0
        return dropped

    # -- state machine ----------------------------------------------------

    def _reset_command(self) -> None:
        """Forget the command being received (closing its literal sinks)."""
        for lit in getattr(self, "_literals", ()):
            if not isinstance(lit, bytes):
                lit.close()
        if getattr(self, "_sink", None) is not None:
            self._sink.close()
        self._lines: list[bytes] = []
        self._literals: list[bytes | LiteralSink] = []
        self._chunks: list[bytes] = []
        self._sink: LiteralSink | None = None  # the literal being received goes here
        self._total = 0

    def _step(self, events: list[FrameEvent]) -> bool:
        """Make progress on the buffer; False when more input is needed."""
        state = self._state
        if state is _State.LITERAL:
            return self._collect_literal(events)
        if state is _State.DISCARD_LITERAL:
            return self._discard_literal()
        if state is _State.DISCARD_LINE:
            return self._discard_line()
        line = self._take_line(events)
        if line is None:
            # An over-long line that did end is left buffered for discarding.
            return self._state is _State.DISCARD_LINE and bool(self._buf)
        if state is _State.RAW:
            self._state = _State.LINE
            self._paused = True
            events.append(RawLine(line))
        else:
            self._on_line(line, events)
        return True

    def _take_line(self, events: list[FrameEvent]) -> bytes | None:
        """Pop a complete line (CRLF or bare LF stripped) from the buffer."""
        buf = self._buf
        lf = buf.find(b"\n", self._scanned)
        limit = self.limits.max_line_length
        if lf < 0:
            self._scanned = len(buf)
            if len(buf) > limit + 1:  # +1: a CR may still be followed by LF
                self._line_too_long(bytes(buf[:limit]), bytes(buf[-_TAIL_KEEP:]), events)
                buf.clear()
                self._scanned = 0
            return None
        end = lf - 1 if lf > 0 and buf[lf - 1] == 0x0D else lf
        self._scanned = 0
        if end > limit:
            self._line_too_long(bytes(buf[:limit]), b"", events)
            return None
        line = bytes(buf[:end])
        del buf[: lf + 1]
        return line

    def _line_too_long(self, head: bytes, tail: bytes, events: list[FrameEvent]) -> None:
        raw = self._state is _State.RAW
        first = self._lines[0] if self._lines else head
        tag, name = (None, None) if raw else _peek_tag_and_name(first)
        events.append(
            FramingError(
                FramingErrorKind.LINE_TOO_LONG,
                f"Line longer than {self.limits.max_line_length} bytes",
                tag,
                name,
            )
        )
        self._reset_command()
        self._check_literal = not raw
        self._tail = tail
        self._state = _State.DISCARD_LINE
        if raw:
            self._paused = True

    def _on_line(self, line: bytes, events: list[FrameEvent]) -> None:
        if not line and not self._lines:
            return  # stray blank line between commands: ignore it
        self._total += len(line)
        first = self._lines[0] if self._lines else line
        match = _LITERAL_AT_END.search(line)
        if match is None:
            if self._total > self.limits.command_limit(_peek_tag_and_name(first)[1]):
                self._command_error(first, None, events)
                return
            self._lines.append(line)
            self._emit_unit(events)
            return
        digits, plus = match.groups()
        size = int(digits) if len(digits) <= _MAX_DIGITS else 1 << 62
        sync = not plus
        if size > self.limits.literal_limit(_peek_tag_and_name(first)[1]):
            self._oversized(first, size, sync, FramingErrorKind.LITERAL_TOO_BIG, events)
        elif self._total + size > self.limits.command_limit(_peek_tag_and_name(first)[1]):
            self._oversized(first, size, sync, FramingErrorKind.COMMAND_TOO_BIG, events)
        else:
            self._lines.append(line)
            self._total += size
            self._remaining = size
            self._state = _State.LITERAL
            if self.literal_sink is not None and _peek_tag_and_name(first)[1] == "APPEND":
                self._sink = self.literal_sink(size)
            if sync:
                # A well-behaved client has sent nothing more: it waits for "+".
                self._awaiting_plus = not self._buf
                events.append(ContinuationRequest(size, *_peek_tag_and_name(first)))

    def _emit_unit(self, events: list[FrameEvent]) -> None:
        unit = CommandUnit(tuple(self._lines), tuple(self._literals))
        self._literals = []  # the unit's now
        self._reset_command()
        events.append(unit)
        if unit.name in self._pausing:
            self._paused = True

    def _command_error(
        self, first: bytes, size: int | None, events: list[FrameEvent], sync: bool = True
    ) -> None:
        tag, name = _peek_tag_and_name(first)
        message = f"Command larger than {self.limits.command_limit(name)} bytes"
        events.append(
            FramingError(FramingErrorKind.COMMAND_TOO_BIG, message, tag, name, size, sync)
        )
        self._reset_command()

    def _oversized(
        self,
        first: bytes,
        size: int,
        sync: bool,
        kind: FramingErrorKind,
        events: list[FrameEvent],
    ) -> None:
        if kind is FramingErrorKind.COMMAND_TOO_BIG:
            self._command_error(first, size, events, sync)
        else:
            tag, name = _peek_tag_and_name(first)
            message = f"Literal larger than {self.limits.literal_limit(name)} bytes"
            events.append(FramingError(kind, message, tag, name, size, sync))
            self._reset_command()
        if sync:
            # No "+" is sent, so the client will not send the literal and
            # treats our tagged reply as the end of this command.
            self._state = _State.LINE
        else:
            # LITERAL+: the bytes are on their way; skip them unbuffered, then
            # skip whatever is left of the command.
            self._remaining = size
            self._state = _State.DISCARD_LITERAL

    def _collect_literal(self, events: list[FrameEvent]) -> bool:
        if self._remaining:
            if not self._buf:
                return False
            take = min(self._remaining, len(self._buf))
            if self._sink is not None:
                self._sink.write(bytes(self._buf[:take]))
            else:
                self._chunks.append(bytes(self._buf[:take]))
            del self._buf[:take]
            self._remaining -= take
            if self._remaining:
                return False
        if self._sink is not None:
            self._literals.append(self._sink)
            self._sink = None
        else:
            self._literals.append(b"".join(self._chunks))
        self._chunks = []
        self._state = _State.LINE
        return True

    def _discard_literal(self) -> bool:
        take = min(self._remaining, len(self._buf))
        del self._buf[:take]
        self._remaining -= take
        if self._remaining:
            return False
        self._tail = b""
        self._check_literal = True
        self._state = _State.DISCARD_LINE
        return True

    def _discard_line(self) -> bool:
        lf = self._buf.find(b"\n")
        if lf < 0:
            self._tail = (self._tail + bytes(self._buf[-_TAIL_KEEP:]))[-_TAIL_KEEP:]
            self._buf.clear()
            return False
        end = lf - 1 if lf > 0 and self._buf[lf - 1] == 0x0D else lf
        self._tail = (self._tail + bytes(self._buf[max(0, end - _TAIL_KEEP) : end]))[-_TAIL_KEEP:]
        if lf == 0 and self._tail.endswith(b"\r"):
            self._tail = self._tail[:-1]  # CR arrived in the previous chunk
        del self._buf[: lf + 1]
        self._end_discarded_line()
        return True

    def _end_discarded_line(self) -> None:
        """The discarded line ended: skip a LITERAL+ it announced, if any."""
        match = _LITERAL_AT_END.search(self._tail) if self._check_literal else None
        self._tail = b""
        if match is not None and match.group(2):
            digits = match.group(1)
            self._remaining = int(digits) if len(digits) <= _MAX_DIGITS else 1 << 62
            self._state = _State.DISCARD_LITERAL
        else:
            self._state = _State.LINE


def _peek_tag_and_name(line: bytes) -> tuple[str | None, str | None]:
    """Best-effort tag and command word, for labelling and pausing only."""
    parts = line.split(b" ", 3)
    tag = parts[0].decode("ascii") if _TAG_CHARS.match(parts[0]) else None
    if tag is None or len(parts) < 2:
        return tag, None
    name = parts[1]
    if name.upper() == b"UID" and len(parts) > 2:
        name = parts[2]
    name = _strip_literal(name)
    return tag, name.decode("ascii", "replace").upper() or None


def _strip_literal(word: bytes) -> bytes:
    return word[: word.index(b"{")] if b"{" in word else word
