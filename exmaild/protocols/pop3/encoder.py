"""A stored message to the bytes of a RETR or TOP response, chunk by chunk.

`MessageEncoder` is fed the message as it is read from its blob, in chunks of
any size, and returns what goes on the wire: lines that begin with "." get a
second "." (RFC 1939 §3 byte-stuffing), a bare LF becomes CRLF (so a client
that splits on LF and one that splits on CRLF see the same lines, and a stored
"\\n.\\n" cannot end the response early), a message that does not end in CRLF
gets one, and `close()` adds the terminating ".\\r\\n". Only one chunk is held
at a time, so memory stays flat whatever the message size.

RETR works on whole chunks with `bytes.count`/`bytes.replace` (C loops); TOP
walks lines, since it must count them, and says `done` once it has enough.
"""

from __future__ import annotations

import re

_BARE_LF = re.compile(rb"(?<!\r)\n")
_CRLF = b"\r\n"
_STUFF_FROM = b"\r\n."
_STUFF_TO = b"\r\n.."
_END = b".\r\n"


class MessageEncoder:
    def __init__(self, body_lines: int | None = None) -> None:
        """`body_lines` None: the whole message (RETR); n: headers plus n body lines (TOP)."""
        self.body_lines = body_lines
        self.done = False
        self.octets = 0  # message octets passed through (before stuffing)
        self._carry = b""  # a trailing CR held back until we see whether LF follows
        self._bol = True  # the next byte starts a line
        self._in_body = False

    def _normalise(self, chunk: bytes) -> bytes:
        data = self._carry + chunk if self._carry else chunk
        self._carry = b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        if data.count(b"\n") != data.count(_CRLF):
            data = _BARE_LF.sub(_CRLF, data)
        return data

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return b""
        data = self._normalise(chunk)
        if not data:
            return b""
        if self.body_lines is not None:
            return self._feed_top(data)
        self.octets += len(data)
        out = data.replace(_STUFF_FROM, _STUFF_TO)
        if self._bol and data[0] == 0x2E:  # "."
            out = b"." + out
        self._bol = data[-1] == 0x0A
        return out

    def _feed_top(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, n = 0, len(data)
        while pos < n and not self.done:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            piece = data[pos:end]
            if self._bol and piece[0] == 0x2E:
                out.append(b".")
            out.append(piece)
            self.octets += len(piece)
            if nl >= 0:
                if self._in_body:
                    self._count_body_line()
                elif self._bol and piece == _CRLF:
                    self._in_body = True
                    if self.body_lines == 0:
                        self.done = True
            self._bol = nl >= 0
            pos = end
        return b"".join(out)

    def _count_body_line(self) -> None:
        assert self.body_lines is not None
        self.body_lines -= 1
        if self.body_lines <= 0:
            self.done = True

    def close(self) -> bytes:
        """The end of the response: a missing final CRLF, then ".\\r\\n"."""
        tail = b""
        if self._carry and not self.done:
            self.octets += 1
            tail = self._carry
        self._carry = b""
        if tail or not self._bol:
            tail += b"\n" if tail else _CRLF
        return tail + _END
