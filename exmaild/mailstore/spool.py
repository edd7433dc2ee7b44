"""Messages on their way in, written to disk as they arrive.

SMTP DATA and IMAP APPEND literals go chunk by chunk into a `SpooledMessage`:
its first `threshold` octets stay in memory (most mail is small), the rest of
a larger message goes to an unnamed temporary file in `<data>/spool`, and the
SHA-256 that names the content for deduplication is updated per chunk. At
ingest the message is parsed from an mmap of that file and written to its
blob segment from the same mapping, so a 45 MB message is not copied into the
daemon's own memory at all (the mapped pages are page cache, not ours).

All in-memory heads together stay within the `Spooler`'s budget
(`[limits] inflight_memory`): once it is taken, new messages go to disk from
their first octet. `[limits] spool_disk` can cap the octets in all spool
files together (messages past it fail as on a full disk). A failed disk
write (disk full) does not stop the
transfer: the message is read to its end, then refused with a temporary
error (`failed`), so the protocol stays in step.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import tempfile
import threading
from pathlib import Path

from twisted.logger import Logger

log = Logger()

Buffer = bytes | bytearray | memoryview


class Spooler:
    """Makes spooled messages and keeps their in-memory heads within budget."""

    def __init__(self, directory: Path, threshold: int, budget: int, disk_limit: int = 0) -> None:
        self.directory = directory
        self.threshold = max(0, threshold)
        self.budget = max(0, budget)
        self.disk_limit = max(0, disk_limit)  # octets in all spool files; 0: no limit
        self.in_memory = 0  # octets held by open spools' in-memory heads
        self.on_disk = 0  # spools currently backed by a file
        self.disk_used = 0  # octets in those files
        self._lock = threading.Lock()

    def open(self) -> None:
        """Create the directory; remove what a crashed process left there.

        Spool files have no name while in use (O_TMPFILE, or unlinked at
        once), so anything found here is a leftover."""
        self.directory.mkdir(parents=True, exist_ok=True)
        removed = 0
        for p in self.directory.iterdir():
            if p.is_file() or p.is_symlink():
                p.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("spool: removed {n} leftover files from {dir}", n=removed,
                     dir=str(self.directory))

    def new(self, *, head: bytes = b"", expected: int | None = None) -> SpooledMessage:
        """A new spool; `head` is hashed before the message (the header lines
        that will be stored in front of it), `expected` its announced size."""
        return SpooledMessage(self, head, expected)

    def _reserve(self, n: int) -> bool:
        with self._lock:
            if self.in_memory + n > self.budget:
                return False
            self.in_memory += n
            return True

    def _release(self, n: int) -> None:
        with self._lock:
            self.in_memory -= n

    def _take_disk(self, n: int) -> bool:
        with self._lock:
            if self.disk_limit and self.disk_used + n > self.disk_limit:
                return False
            self.disk_used += n
            return True


class SpooledMessage:
    """One message being received: `write()` chunks, then hand it to ingest
    (`buffer()`, `digest`), and `close()` it once the ingest is over."""

    def __init__(self, spooler: Spooler, head: bytes, expected: int | None) -> None:
        self.spooler = spooler
        self.hashed_head = head
        self.size = 0
        self.failed: OSError | None = None  # a write to the spool file failed
        self._hash = hashlib.sha256(head)
        self._mem: bytearray | bytes = bytearray()
        self._reserved = 0
        self._fd: int | None = None
        self._disk = 0  # octets counted against the spooler's disk limit
        self._file: object | None = None
        self._map: mmap.mmap | None = None
        self._closed = False
        t = spooler.threshold
        if expected is not None and expected > t:
            self._to_disk()  # it will not fit: no point in gathering it first
        elif spooler._reserve(t):
            self._reserved = t
        else:
            self._to_disk()

    def __len__(self) -> int:
        return self.size

    @property
    def on_disk(self) -> bool:
        return self._fd is not None or self.failed is not None

    # -- receiving -------------------------------------------------------
    def write(self, data: Buffer) -> None:
        if self._closed:
            raise ValueError("spool is closed")
        n = len(data)
        if not n:
            return
        self.size += n
        self._hash.update(data)
        if self.failed is not None:
            return
        if self._fd is None and len(self._mem) + n <= self._reserved:
            self._mem += data  # type: ignore[operator]  # a bytearray until buffer()
            return
        if self._fd is None:
            self._to_disk()
        if self._fd is not None:
            self._write_all(data)

    def _to_disk(self) -> None:
        try:
            f = tempfile.TemporaryFile(dir=self.spooler.directory, prefix="msg-", buffering=0)
        except OSError as e:
            self._fail(e)
            return
        self._file = f
        self._fd = f.fileno()
        with self.spooler._lock:
            self.spooler.on_disk += 1
        mem, self._mem = self._mem, bytearray()
        if self._reserved:
            self.spooler._release(self._reserved)
            self._reserved = 0
        if mem:
            self._write_all(mem)

    def _write_all(self, data: Buffer) -> None:
        assert self._fd is not None
        view = memoryview(data)
        if not self.spooler._take_disk(len(view)):
            self._fail(OSError(errno.ENOSPC, "[limits] spool_disk is all taken"))
            return
        self._disk += len(view)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._fail(e)

    def _fail(self, e: OSError) -> None:
        if self.failed is None:
            log.error("spool: cannot write a message being received to {dir}: {error}",
                      dir=str(self.spooler.directory), error=str(e))
        self.failed = e
        self._mem = bytearray()
        self._drop_file()

    # -- handing over ----------------------------------------------------
    @property
    def digest(self) -> str:
        """SHA-256 (hex) of `hashed_head` + the message."""
        return self._hash.hexdigest()

    def buffer(self) -> bytes | mmap.mmap:
        """The whole message, without copying it: the in-memory bytes, or a
        read-only mmap of the spool file (valid until `close()`)."""
        if self._closed:
            raise ValueError("spool is closed")
        if self.failed is not None:
            raise self.failed
        if self._fd is None:
            if isinstance(self._mem, bytearray):  # at most `threshold` octets
                self._mem = bytes(self._mem)
            return self._mem
        if self._map is None:
            if self.size == 0:
                return b""
            self._map = mmap.mmap(self._fd, self.size, access=mmap.ACCESS_READ)
        return self._map

    def read(self, start: int, length: int) -> bytes:
        """A copy of message octets [start, start+length)."""
        return bytes(self.buffer()[start : start + length])

    # -- the end ---------------------------------------------------------
    def close(self) -> None:
        """Free the memory and the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._mem = bytearray()
        if self._reserved:
            self.spooler._release(self._reserved)
            self._reserved = 0
        self._drop_file()

    def _drop_file(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a view of it is still alive; it goes with the view
                pass
            self._map = None
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
            self._fd = None
            with self.spooler._lock:
                self.spooler.on_disk -= 1
                self.spooler.disk_used -= self._disk
            self._disk = 0

    def __del__(self) -> None:
        # A safety net: a spool dropped without close() gives back its budget.
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __enter__(self) -> SpooledMessage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
