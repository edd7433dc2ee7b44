"""COMPRESS=DEFLATE (RFC 4978): raw deflate (RFC 1951) both ways after the
tagged OK.

Output: the connection's transport is replaced by ``DeflateTransport``, which
compresses each write and flushes it (Z_SYNC_FLUSH) so the client can act on
every response at once; producers (the OutputGate, FETCH's ChunkProducer)
register through it with the real transport, so flow control still sees
the bytes that wait on the socket.

Input: ``Inflater`` hands out the inflated stream in pieces of at most
``PIECE`` octets and only while the server reads (``IMAPServer`` stops asking
when its input limits pause reading), so a small compressed burst cannot
become a large buffer: what is not inflated yet stays compressed.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

from . import responses as r
from .commands import Command, CompressArgs

if TYPE_CHECKING:
    from .server import IMAPServer

PIECE = 64 * 1024
LEVEL = 6  # zlib's default: most of the gain for a fraction of level 9's CPU


class DeflateTransport:
    """The transport, with writes compressed; everything else passes through."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        if data:
            z = self._deflate
            self._transport.write(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq: list[bytes]) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Inflater:
    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(-15)
        self._pending = b""  # compressed, not inflated yet

    def add(self, data: bytes) -> None:
        self._pending += data

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def piece(self) -> bytes:
        """Up to PIECE inflated octets (b"" when more input is needed);
        raises zlib.error on a corrupt stream."""
        while self._pending:
            out = self._inflate.decompress(self._pending, PIECE)
            self._pending = self._inflate.unconsumed_tail
            if self._inflate.eof:
                raise zlib.error("the client ended its deflate stream")
            if out:
                return out
        return b""


async def compress(c: IMAPServer, cmd: Command) -> r.Result:
    assert isinstance(cmd.args, CompressArgs)
    if c.inflater is not None:
        return r.no("Compression is already active", "COMPRESSIONACTIVE")
    # Whatever the client sent after the command was compressed already.
    rest = c.framer.take_buffered()
    c.send(r.ok("DEFLATE active").line(cmd.tag))
    c.transport = DeflateTransport(c.transport)  # the gate stays registered underneath
    c.inflater = Inflater()
    c.compressed_input(rest)
    return r.SENT
