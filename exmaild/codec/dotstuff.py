"""DATA transparency (RFC 5321 §4.5.2), both directions, on whole chunks.

Inbound, `Unstuffer` takes chunks exactly as the transport delivers them and
handles each with bytes.find (for the terminator) and bytes.replace (for
stuffed dots): no Python code runs per line, however many lines are dotted.
Only CR LF "." CR LF ends the data: a bare LF never does, so "\\n.\\r\\n" or
"\\r\\n.\\n" cannot end a message early (the SMTP smuggling attacks of 2023).
Bare LFs are stored as received; `DataResult.bare_lf` tells whoever wants to
refuse them.

Outbound (queue, POP3 RETR), `DotStuffer` / `dot_stuff_chunks` double each
line-leading dot and end the data with the terminator.  They also turn bare
CR or LF into CR LF, as RFC 5321 §2.3.8 requires of what we send; that way a
stored message with bare LFs cannot smuggle commands into a lax next hop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol

_LINE_DOT = b"\r\n."
_TERMINATOR = b"\r\n.\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")


class Sink(Protocol):
    """Where unstuffed message octets go as they arrive (a spool file)."""

    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class DataResult:
    # The unstuffed message, ending in CRLF unless empty; b"" when oversized
    # or when it went to the Unstuffer's sink.
    message: bytes
    size: int  # octets of unstuffed message received, counted on past the limit
    oversized: bool  # size > max_size: answer 552 5.3.4; nothing was kept
    rest: bytes  # what followed the terminator: pipelined commands

    @cached_property
    def bare_lf(self) -> bool:
        """An LF not preceded by CR is in the message (computed only when asked:
        it costs two more passes over the data).  Removing a line-leading dot
        cannot make or break a CR LF pair, so the stored message tells exactly."""
        return self.message.count(b"\n") != self.message.count(b"\r\n")


class Unstuffer:
    """Incremental DATA reader: `feed()` raw chunks until it returns a DataResult.

    With a `sink`, the unstuffed octets are written to it as they come and
    not kept; past `max_size` nothing more is written (the sink then holds a
    truncated message, which the caller throws away)."""

    def __init__(self, max_size: int | None = None, sink: Sink | None = None) -> None:
        self.max_size = max_size
        self.size = 0
        self._sink = sink
        # Copied while the chunk is still hot in the cache; faster than keeping
        # the chunks and joining them at the end.
        self._out = bytearray()
        self._storing = True
        # Pretend a CRLF came before the data, so a dot on the very first line
        # (".\r\n" empty message, "..x" stuffed) is found like any other; the
        # two pretend octets are dropped from the output.
        self._held = b"\r\n"
        self._skip = 2
        self._result: DataResult | None = None

    @property
    def done(self) -> bool:
        return self._result is not None

    def _store(self, raw: bytes, dotted: bool) -> None:
        # Every CRLF "." in `raw` is a line-leading dot that is not the
        # terminator, so it goes (§4.5.2: "..x" -> ".x", and a lone ".x" -> "x").
        data = raw.replace(_LINE_DOT, b"\r\n") if dotted else raw
        if self._skip:
            cut = min(self._skip, len(data))
            data, self._skip = data[cut:], self._skip - cut
        self.size += len(data)
        if not self._storing or not data:
            return
        if self.max_size is not None and self.size > self.max_size:
            # Keep counting for the log, but free the memory: the message is refused.
            self._storing = False
            self._out = bytearray()
        elif self._sink is not None:
            self._sink.write(data)
        else:
            self._out += data

    def feed(self, chunk: bytes) -> DataResult | None:
        """Consume received bytes; return the result once the terminator is seen."""
        if self._result is not None:
            raise RuntimeError("DATA already complete")
        buf = self._held + chunk if self._held else bytes(chunk)
        # Most chunks hold no line-leading dot: then one scan is all they cost.
        first_dot = buf.find(_LINE_DOT)
        end = buf.find(_TERMINATOR, first_dot) if first_dot >= 0 else -1
        if end >= 0:
            self._store(buf[: end + 2], first_dot < end)  # the last line keeps its CRLF
            self._result = DataResult(
                message=bytes(self._out),
                size=self.size,
                oversized=not self._storing,
                rest=buf[end + 5 :],
            )
            self._out = bytearray()
            return self._result
        # Hold back a tail that may begin the terminator ("\r", "\r\n", "\r\n.",
        # "\r\n.\r"): what is stored then never ends in an undecided dot.
        keep = len(buf) - next((k for k in (4, 3, 2, 1) if buf.endswith(_TERMINATOR[:k])), 0)
        self._store(buf[:keep], 0 <= first_dot < keep)
        self._held = buf[keep:]
        return None


class DotStuffer:
    """Streaming stuffer: `feed()` chunks of a message, then `end()` once."""

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        data = b"\r" + chunk if self._pending_cr else bytes(chunk)
        # A CR at the end may be half of a CRLF split across chunks.
        self._pending_cr = data.endswith(b"\r")
        if self._pending_cr:
            data = data[:-1]
        if not data:
            return b""
        if not data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
            data = _LINE_END.sub(b"\r\n", data)
        data = data.replace(_LINE_DOT, b"\r\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\r\n")
        return data

    def end(self) -> bytes:
        """The terminator, preceded by the CRLF the last line may lack."""
        if self._pending_cr:
            self._pending_cr = False
            self._line_start = True
            return b"\r\n.\r\n"
        return b".\r\n" if self._line_start else b"\r\n.\r\n"


def dot_stuff_chunks(data: bytes) -> bytes:
    """A whole message as it goes on the wire after DATA (or RETR's +OK):
    line endings made CRLF, leading dots doubled, terminator appended."""
    stuffer = DotStuffer()
    return stuffer.feed(data) + stuffer.end()


def unstuff(data: bytes, max_size: int | None = None) -> DataResult | None:
    """One-shot convenience: None if `data` holds no terminator."""
    return Unstuffer(max_size).feed(data)
