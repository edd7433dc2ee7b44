"""COMPRESS=DEFLATE (RFC 4978) over a real socket, the client side done with
zlib as RFC 4978 describes: commands pipelined behind COMPRESS, a large
FETCH streamed through the compressor, APPEND through the inflater, NO
[COMPRESSIONACTIVE], a client that does not read (flow control), and a
compression bomb that must not take the daemon down."""

from __future__ import annotations

import base64
import os
import socket
import time
import zlib
from typing import Any

import pytest_twisted

from .conftest import *  # noqa: F403 (fixtures)
from .imaputil import Raw, Server, blocking, imap_server_fixture, mail, on_reactor  # noqa: F401


async def _commands(server: Any) -> int:
    return int(server.stats["commands"])


async def _small_sndbuf(server: Any) -> None:
    server._socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)


class ZSock:
    """A socket speaking raw deflate both ways."""

    def __init__(self, sock: socket.socket, already: bytes = b"") -> None:
        self.sock = sock
        self.z = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.d = zlib.decompressobj(-15)
        self.early = self.d.decompress(already)

    def deflate(self, data: bytes) -> bytes:
        return self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.deflate(data))

    def recv(self, n: int) -> bytes:
        if self.early:
            out, self.early = self.early, b""
            return out
        while True:
            raw = self.sock.recv(n)
            if not raw:
                return b""
            out = self.d.decompress(raw)
            if out:
                return out

    def close(self) -> None:
        self.sock.close()


def compressed(r: Raw, pipelined: bytes = b"") -> ZSock:
    """COMPRESS DEFLATE, with ``pipelined`` commands sent compressed in the
    same write; the Raw client then speaks deflate."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    extra = z.compress(pipelined) + z.flush(zlib.Z_SYNC_FLUSH) if pipelined else b""
    r.send(b"z COMPRESS DEFLATE\r\n" + extra)
    assert r.line() == b"z OK DEFLATE active"
    zs = ZSock(r.sock, r.buf)
    zs.z = z
    r.buf = b""
    r.sock = zs  # type: ignore[assignment]
    return zs


@pytest_twisted.ensureDeferred
async def test_compress_deflate(imap_server: Server) -> None:
    acct = await imap_server.account()
    big = mail("big", body="".join(f"line {i} of a long body\r\n" for i in range(4000)))
    await imap_server.deliver(acct.id, big)
    # Random base64 barely compresses: each FETCH of it is ~200 KB on the wire.
    dense = mail("dense", body=base64.encodebytes(os.urandom(150_000)).decode())
    await imap_server.deliver(acct.id, dense)
    sessions: list[Any] = []
    build = imap_server.factory.buildProtocol

    def recording(addr: Any) -> Any:  # to look at the server side of the session
        p = build(addr)
        sessions.append(p)
        return p

    imap_server.factory.buildProtocol = recording  # type: ignore[method-assign]

    def run() -> None:
        r = Raw(imap_server.port)
        assert r.cmd("a", "COMPRESS DEFLATE")[-1].startswith(b"a BAD")  # not logged in
        r.login()
        assert b" COMPRESS=DEFLATE" in r.cmd("c", "CAPABILITY")[0]
        assert r.cmd("b", "COMPRESS GZIP")[-1].startswith(b"b BAD")
        zs = compressed(r, b"n1 NOOP\r\n")
        assert r.response("n1") == [b"n1 OK NOOP completed"]
        assert r.cmd("z2", "COMPRESS DEFLATE")[-1].startswith(b"z2 NO [COMPRESSIONACTIVE]")
        r.cmd("s", "SELECT INBOX")
        out = r.cmd("f", "FETCH 1 BODY.PEEK[]")
        assert out[0] == b"* 1 FETCH (BODY[] {%d}\r\n%b)" % (len(big), big)
        # A text body this repetitive travels in a small fraction of its size.
        sent_raw = zs.d.unused_data  # nothing after the stream's end
        assert sent_raw == b""
        msg = mail("up", body="z" * 200000 + "\r\n")
        r.send(b"p APPEND INBOX {%d}\r\n" % len(msg))
        assert r.line().startswith(b"+")
        r.send(msg + b"\r\n")
        assert r.response("p")[-1].startswith(b"p OK [APPENDUID")
        out = r.cmd("g", "FETCH 3 BODY.PEEK[]")
        assert out[0] == b"* 3 FETCH (BODY[] {%d}\r\n%b)" % (len(msg), msg)

        # A client that asks for much and reads nothing: the server stops
        # taking its commands instead of buffering every answer; once it
        # reads, all answers come, in order.
        n = 12
        server = sessions[-1]
        # Small kernel buffers on both ends, so what waits is the server's.
        zs.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        on_reactor(_small_sndbuf, server)
        before = on_reactor(_commands, server)
        r.send(b"".join(b"q%d FETCH 2 BODY.PEEK[]\r\n" % i for i in range(n)))
        done = -1
        for _ in range(200):  # until the server has stopped (at most ~20 s)
            time.sleep(0.1)
            now = on_reactor(_commands, server)
            if now == done:
                break
            done = now
        assert server.gate.paused or server._running
        ran = done - before
        assert ran <= n // 2, f"{ran} of {n} FETCHes ran for a client that reads nothing"
        for i in range(n):
            out = r.response(f"q{i}")
            assert out[0] == b"* 2 FETCH (BODY[] {%d}\r\n%b)" % (len(dense), dense), i
        assert r.cmd("l", "LOGOUT")[-1] == b"l OK Logout completed"
        r.close()

        # A bomb: 16 MB of one endless line in ~16 KB of deflate. The line
        # limit stops it; the daemon answers and lives on.
        b = Raw(imap_server.port)
        b.login()
        zb = compressed(b)
        zb.sock.sendall(zb.deflate(b"x NOOP " + b"a" * (16 << 20)))
        got = b""
        try:
            while b"BAD" not in got and b"BYE" not in got:
                chunk = zb.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        assert got.startswith(b"x BAD [TOOBIG]"), got[:200]
        b.close()
        again = Raw(imap_server.port)
        again.login()
        assert again.cmd("n", "NOOP")[-1] == b"n OK NOOP completed"
        again.close()

        # Over implicit TLS, and IDLE: updates reach a compressed session.
        t = Raw(imap_server.tls_port, tls=True)
        t.login()
        compressed(t)
        t.cmd("s", "SELECT INBOX")
        t.send(b"i IDLE\r\n")
        assert t.line().startswith(b"+ ")
        other = Raw(imap_server.port)
        other.login()
        m4 = mail("four")
        other.send(b"a APPEND INBOX {%d+}\r\n%b\r\n" % (len(m4), m4))
        assert other.response("a")[-1].startswith(b"a OK")
        other.close()
        assert t.line() == b"* 4 EXISTS"
        t.send(b"DONE\r\n")
        assert t.response("i")[-1] == b"i OK Idle completed"
        t.close()

    await blocking(run)
