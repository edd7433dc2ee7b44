"""Streaming multi-line responses: messages from their blobs, and long listings.

A message is read from its blob segment in chunks of `CHUNK` bytes on the
store's thread pool (the reads are blocking preads, never run on the reactor
thread), each chunk is dot-stuffed by a `MessageEncoder` and written at once.
Before each write we wait on the connection's `OutputGate`, the push producer registered with
the transport: Twisted pauses it when its send buffer fills and resumes it when
the buffer drains, so at most one chunk plus the transport's buffer is held
per session, whatever the message size or the client's speed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from exmaild.protocols.flow import ConnectionGone as ConnectionGone  # re-exported
from exmaild.protocols.flow import OutputGate
from exmaild.protocols.pop3.encoder import MessageEncoder
from exmaild.protocols.pop3.maildrop import Maildrop
from exmaild.store.blobs import BlobRef
from exmaild.store.records import MessageEntry

CHUNK = 256 * 1024
LISTING_PIECE = 64 * 1024  # bytes of a LIST/UIDL response per write


class MessageGone(Exception):
    """The message's content no longer exists (expunged by another session)."""


async def send_listing(write: Callable[[bytes], None], gate: OutputGate, body: bytes) -> None:
    """Write a scan listing (already ending in ".\\r\\n") in pieces the client can take."""
    view = memoryview(body)
    for start in range(0, len(body), LISTING_PIECE):
        await gate.wait()
        write(bytes(view[start:start + LISTING_PIECE]))


async def _read(store: Any, drop: Maildrop, entry: MessageEntry, offset: int) -> bytes:
    """Bytes of a message from `offset`; follows a blob that compaction moved."""
    ref: BlobRef = drop.refs[entry.content_id]
    try:
        return await store.pool.call(store.blobs.read, ref, offset, CHUNK)
    except FileNotFoundError:
        fresh = await store.blob_refs([entry.content_id])
        if entry.content_id not in fresh:
            raise MessageGone() from None
        drop.refs[entry.content_id] = fresh[entry.content_id]
        return await store.pool.call(store.blobs.read, fresh[entry.content_id], offset, CHUNK)


def _read_many(blobs: Any, refs: list[tuple[int, BlobRef]]) -> dict[int, bytes]:
    """Whole small blobs in one trip to the pool; a moved one is simply left out."""
    out: dict[int, bytes] = {}
    for i, ref in refs:
        try:
            out[i] = blobs.read(ref)
        except OSError:
            continue
    return out


class MessageReader:
    """Reads a session's messages, reading ahead of a client that RETRs in order.

    Clients fetch 1, 2, 3, ... one at a time, and each read is a trip to the
    thread pool and back. So after serving message i, the next few small
    messages (each at most one CHUNK, READ_AHEAD bytes in all) are read in a
    single pool call while the client is still busy with message i, and the
    next RETR is answered without waiting. Larger messages are never read
    ahead: they are streamed chunk by chunk when asked for.
    """

    READ_AHEAD = 256 * 1024
    MAX_AHEAD = 64  # messages per read-ahead call

    def __init__(self, store: Any, drop: Maildrop) -> None:
        self.store = store
        self.drop = drop
        self._ahead: dict[int, bytes] = {}
        self._ahead_bytes = 0
        self._inflight: defer.Deferred[None] | None = None
        self._inflight_ids: set[int] = set()
        self._last = -1  # the message asked for last

    def ready(self, i: int) -> bytes | None:
        """Message i whole, if it was read ahead (and reads further ahead); else None."""
        if i not in self._ahead:
            return None
        data = self._take(i)
        self._plan(i)
        return data

    async def first_chunk(self, i: int) -> bytes:
        entry = self.drop.entries[i]
        if i not in self._ahead and i in self._inflight_ids and self._inflight is not None:
            await self._inflight
        data = self._take(i)
        if data is None:
            data = await _read(self.store, self.drop, entry, 0)
        self._plan(i)
        return data

    def _take(self, i: int) -> bytes | None:
        data = self._ahead.pop(i, None)
        if data is not None:
            self._ahead_bytes -= len(data)
        # Whatever lies behind the client's position will not be asked for again soon.
        for j in [j for j in self._ahead if j < i]:
            self._ahead_bytes -= len(self._ahead.pop(j))
        return data

    def _plan(self, i: int) -> None:
        sequential, self._last = i == self._last + 1, i
        if (not sequential or self._inflight is not None
                or self._ahead_bytes >= self.READ_AHEAD // 2):
            return
        drop, budget = self.drop, self.READ_AHEAD - self._ahead_bytes
        want: list[tuple[int, BlobRef]] = []
        j = i + 1
        while j < len(drop.entries) and len(want) < self.MAX_AHEAD:
            if j not in drop.deleted and j not in self._ahead and j not in drop.retrieved:
                ref = drop.refs[drop.entries[j].content_id]
                if ref.size > CHUNK or ref.size > budget:
                    break
                budget -= ref.size
                want.append((j, ref))
            j += 1
        if not want:
            return
        self._inflight_ids = {j for j, _ in want}
        d = defer.ensureDeferred(self.store.pool.call(_read_many, self.store.blobs, want))
        self._inflight = d
        d.addCallbacks(self._arrived, self._missed)  # may fire at once

    def _arrived(self, got: dict[int, bytes]) -> None:
        self._inflight, self._inflight_ids = None, set()
        for j, data in got.items():
            self._ahead[j] = data
            self._ahead_bytes += len(data)

    def _missed(self, f: Any) -> None:
        # Read-ahead is only a guess: on any trouble the normal read path takes over.
        self._inflight, self._inflight_ids = None, set()

    def discard(self) -> None:
        self._ahead.clear()
        self._ahead_bytes = 0


async def send_message(
    reader: MessageReader,
    i: int,
    body_lines: int | None,
    begin: Callable[[], None],
    write: Callable[[bytes], None],
    gate: OutputGate,
    progress: Callable[[], None],
) -> int:
    """Send one message (RETR) or its top (TOP); returns the message octets sent.

    `begin()` writes the +OK line; it is called only once the first chunk has
    been read, so a message that cannot be read still gets a clean -ERR.
    """
    store, drop = reader.store, reader.drop
    entry = drop.entries[i]
    enc = MessageEncoder(body_lines)
    await gate.wait()
    chunk = await reader.first_chunk(i)
    size = drop.refs[entry.content_id].size
    begin()
    offset = len(chunk)
    write(enc.feed(chunk))
    while offset < size and not enc.done:
        await gate.wait()
        progress()
        chunk = await _read(store, drop, entry, offset)
        if not chunk:
            raise OSError(f"blob of content {entry.content_id} ends at {offset} of {size} bytes")
        offset += len(chunk)
        write(enc.feed(chunk))
    write(enc.close())
    return enc.octets
