"""Message bodies in append-only segment files.

Why segments: a batch of messages appended to one file costs one fdatasync,
where a file per message costs a create, a write and an fsync each (plus the
directory). On these machines that is ~2,200 vs ~935 durable msg/s.

Crash safety comes from ordering, not from the files themselves: bytes are
appended and fdatasync'd *before* the database row that points at them is
committed. A crash in between leaves unreferenced bytes in a segment (dead
space, reclaimed by compaction), never a row pointing at missing bytes.

Ownership: every process writes segments of its own, named
`<node_id>-<pid>.<random>-<seq>` (the CLI and the daemon share a node id),
and opens one only when it first writes (commands that only read create
none). The segment's database row is claimed before the file exists and its
lease renewed while the process writes; it is sealed on roll, on clean close
and after any failed write or sync, and only sealed segments are compacted
(see store/segmentlease.py). A sealed segment is never written again.

Failure rules: after a failed write the file is cut back to its last good
size (or, if that cannot be verified, sealed), so a recorded offset is
always the file's true end. After a failed fdatasync the segment is sealed
and no later sync of it is trusted ("fsyncgate": the kernel reports a lost
page once, and may drop it). Each sync runs on a file description of its own
opened before its write, so every writeback error after that reaches it.

Reading: descriptors are reference counted, so one is never closed (and its
number reused for another file) while a read uses it; those of segments
another process removed are dropped (`drop_unlinked`) so the space is freed.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from twisted.logger import Logger

log = Logger()

# `<node>-<seq>` (before segment ownership) and `<node>-<pid>.<random>-<seq>`.
_NAME = re.compile(r"^[A-Za-z0-9_.-]+-\d{8}$")
READ_CHUNK = 256 * 1024
_IOV_MAX = 1024
# Write errors after which the segment is cut back and written on: the disk
# had no room; once it has, the same file is fine. Anything else seals it.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True)
class BlobRef:
    segment: str
    offset: int
    size: int


class Leases(Protocol):
    """The database side of ownership (store/segmentlease.py)."""

    def claim(self, name: str, owner: str, until: int) -> bool: ...
    def renew(self, name: str, owner: str, until: int) -> bool: ...
    def seal(self, name: str) -> None: ...
    def forget(self, name: str) -> None: ...


class _Segment:
    """The segment this process appends to."""

    def __init__(self, name: str, path: Path, fd: int, renewed: float) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.pos = 0
        self.renewed = renewed  # time.monotonic() of the last lease renewal
        self.sealed = False
        self.sync_failed = False


class PendingSync:
    """The fdatasync that makes one write durable; sync() is idempotent."""

    def __init__(self, segment: _Segment, fd: int) -> None:
        self._segment = segment
        self._fd: int | None = fd

    def sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        seg = self._segment
        try:
            os.fdatasync(fd)
        except OSError as e:
            # The writer thread seals it (in the database too) at its next
            # write: this thread may run inside a transaction's wait.
            seg.sync_failed = seg.sealed = True
            log.error(
                "fdatasync of blob segment {segment} failed ({error}): the segment is sealed "
                "and never written again; the messages of this batch are refused",
                segment=seg.name, error=str(e),
            )
            raise
        finally:
            os.close(fd)
        if seg.sync_failed:
            raise OSError(errno.EIO, f"an fdatasync of blob segment {seg.name} failed; "
                                     "no later write to it is trusted")


class _Reader:
    __slots__ = ("fd", "users", "retired")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.retired = False


class SegmentStore:
    def __init__(
        self,
        root: Path,
        node_id: str,
        segment_size: int,
        leases: Leases | None = None,
        *,
        lease_seconds: int = 300,
        max_open: int = 256,
    ) -> None:
        self.root = root
        self.node_id = node_id
        self.segment_size = segment_size
        self.leases = leases
        self.lease_seconds = lease_seconds
        self.max_open = max_open
        self._writer_id = f"{os.getpid()}.{secrets.token_hex(3)}"
        self.owner = f"{node_id}:{socket.gethostname()}:{os.getpid()}"[:128]
        self._seq = 0
        self._lock = threading.Lock()
        self._seg: _Segment | None = None
        self._open = False
        self._readers: dict[str, _Reader] = {}
        self._read_lock = threading.Lock()

    # -- writing ---------------------------------------------------------
    def open(self) -> None:
        """Ready to write; the first segment is created by the first write."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._open = True

    def close(self) -> None:
        with self._lock:
            self._open = False
            seg, self._seg = self._seg, None
            if seg is not None:
                if seg.pos == 0 and not seg.sealed:
                    self._discard(seg)
                else:
                    self._seal(seg, "closed")
        with self._read_lock:
            for r in self._readers.values():
                r.retired = True
                if not r.users:
                    os.close(r.fd)
            self._readers.clear()

    @property
    def active_segment(self) -> str:
        seg = self._seg
        return seg.name if seg is not None else ""

    def path(self, name: str) -> Path:
        return self.root / f"{name}.seg"

    def _until(self) -> int:
        return int(time.time()) + self.lease_seconds

    def _new_segment(self) -> _Segment:
        for _ in range(100):
            self._seq += 1
            name = f"{self.node_id}-{self._writer_id}-{self._seq:08d}"
            renewed = time.monotonic()
            if self.leases is not None and not self.leases.claim(name, self.owner, self._until()):
                continue
            path = self.path(name)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
                             | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                self._seal_row(name)
                continue
            except OSError:
                self._seal_row(name)
                raise
            seg = _Segment(name, path, fd, renewed)
            try:
                # The new name must survive a crash too.
                dfd = os.open(self.root, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                self._seal(seg, "its directory entry could not be synced")
                raise
            return seg
        raise RuntimeError(f"no free segment name for {self.node_id} in {self.root}")

    def _seal_row(self, name: str) -> None:
        if self.leases is None:
            return
        try:
            self.leases.seal(name)
        except Exception as e:
            # Its lease runs out; compaction seals it then.
            log.warn("could not mark blob segment {segment} sealed: {error}",
                     segment=name, error=str(e))

    def _seal(self, seg: _Segment, why: str) -> None:
        """Never write this segment again (the lock is held)."""
        seg.sealed = True
        if self._seg is seg:
            self._seg = None
        if seg.fd >= 0:
            os.close(seg.fd)
            seg.fd = -1
        self._seal_row(seg.name)
        log.debug("blob segment {segment} sealed: {why}", segment=seg.name, why=why)

    def _discard(self, seg: _Segment) -> None:
        """Remove a segment nothing was written to (clean close)."""
        os.close(seg.fd)
        seg.fd = -1
        seg.sealed = True
        try:
            if self.leases is not None:
                self.leases.forget(seg.name)
            seg.path.unlink(missing_ok=True)
        except Exception as e:
            self._seal_row(seg.name)
            log.warn("could not remove empty blob segment {segment}: {error}",
                     segment=seg.name, error=str(e))

    def _renew(self, seg: _Segment) -> None:
        if self.leases is None:
            return
        now = time.monotonic()
        try:
            held = self.leases.renew(seg.name, self.owner, self._until())
        except Exception:
            # The database is away: go on while the lease surely holds.
            if now - seg.renewed < self.lease_seconds / 2:
                return
            raise
        if held:
            seg.renewed = now
        else:
            log.warn("blob segment {segment} is no longer ours (sealed by another process); "
                     "starting a new one", segment=seg.name)
            self._seal(seg, "lease lost")

    def _writable(self) -> _Segment:
        if not self._open:
            raise RuntimeError("segment store is not open")
        seg = self._seg
        if seg is not None:
            if seg.sealed:
                self._seal(seg, "an earlier sync failed")
            elif seg.pos >= self.segment_size:
                self._seal(seg, "full")
            elif time.monotonic() - seg.renewed >= self.lease_seconds / 4:
                self._renew(seg)
        if self._seg is not None and self._seg is seg:
            # Appends start at the file's true end, never at an assumed one.
            size = os.fstat(seg.fd).st_size
            if size != seg.pos:
                log.error("blob segment {segment} is {size} bytes where {pos} were written; "
                          "sealing it", segment=seg.name, size=size, pos=seg.pos)
                self._seal(seg, "size mismatch")
        if self._seg is None:
            self._seg = self._new_segment()
        return self._seg

    def roll(self) -> None:
        """Seal the active segment; the next write starts a new one."""
        with self._lock:
            if self._seg is not None:
                self._seal(self._seg, "rolled")

    def renew(self) -> None:
        """Keep the active segment's lease while idle (periodic; blocking)."""
        with self._lock:
            seg = self._seg
            if seg is not None and not seg.sealed:
                self._renew(seg)

    def append(self, bodies: Sequence[Any]) -> list[BlobRef]:
        """Append all bodies and make them durable with one fdatasync.

        Blocking: call it on a worker thread.
        """
        refs, pending = self.write(bodies)
        pending.sync()
        return refs

    def write(self, bodies: Sequence[Any]) -> tuple[list[BlobRef], PendingSync]:
        """Append all bodies; they are durable once the returned sync() is done.

        A body is any buffer (bytes, memoryview, mmap): each is written as it
        is, never joined into one copy. Only the write holds the lock. The
        fdatasync runs on a file description of its own, so it can run beside
        other appenders' syncs, which the file system then often completes
        with one journal commit, or beside the database work of the batch it
        belongs to (see mailstore/ingest.py). On failure nothing is recorded
        and the segment is cut back (or sealed) before the error is raised.
        """
        views = [memoryview(b).cast("B") for b in bodies]
        total = sum(v.nbytes for v in views)
        with self._lock:
            seg = self._writable()
            start = seg.pos
            sync_fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _write_all(seg.fd, views)
                end = os.fstat(seg.fd).st_size
                if end != start + total:
                    raise OSError(errno.EIO, f"blob segment {seg.name} is {end} bytes after "
                                             f"appending {total} at {start}")
            except BaseException as e:
                os.close(sync_fd)
                self._rewind(seg, start, e)
                raise
            refs = []
            pos = start
            for v in views:
                refs.append(BlobRef(seg.name, pos, v.nbytes))
                pos += v.nbytes
            seg.pos = pos
            return refs, PendingSync(seg, sync_fd)

    def _rewind(self, seg: _Segment, start: int, exc: BaseException) -> None:
        """Cut the segment back to `start` after a failed append (lock held)."""
        try:
            os.ftruncate(seg.fd, start)
            cut = os.fstat(seg.fd).st_size == start
        except OSError:
            cut = False
        if cut and isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            log.warn("appending to blob segment {segment} failed ({error}); cut back to "
                     "{size} bytes", segment=seg.name, error=str(exc), size=start)
            return
        log.error("appending to blob segment {segment} failed ({error}); {what}",
                  segment=seg.name, error=str(exc),
                  what="sealed it" if cut else "could not cut it back either; sealed it")
        self._seal(seg, "write failed")

    # -- reading ---------------------------------------------------------
    def _acquire(self, segment: str) -> _Reader:
        with self._read_lock:
            r = self._readers.pop(segment, None)
            if r is None:
                r = _Reader(os.open(self.path(segment), os.O_RDONLY | os.O_CLOEXEC))
                while len(self._readers) >= self.max_open:  # least recently used first
                    self._retire(next(iter(self._readers)))
            self._readers[segment] = r  # most recently used last
            r.users += 1
            return r

    def _release(self, r: _Reader) -> None:
        with self._read_lock:
            r.users -= 1
            if r.retired and not r.users:
                os.close(r.fd)

    def _retire(self, segment: str) -> None:
        """Close a cached descriptor once no read uses it (read lock held)."""
        r = self._readers.pop(segment, None)
        if r is not None:
            r.retired = True
            if not r.users:
                os.close(r.fd)

    def read(self, ref: BlobRef, start: int = 0, length: int | None = None) -> bytes:
        """Bytes [start, start+length) of one blob; blocking."""
        end = ref.size if length is None else min(ref.size, start + length)
        if start >= end:
            return b""
        r = self._acquire(ref.segment)
        try:
            return os.pread(r.fd, end - start, ref.offset + start)
        finally:
            self._release(r)

    def iter_chunks(self, ref: BlobRef, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The blob in chunks, all from one descriptor held until the end: a
        compaction that removes the segment meanwhile does not cut it short."""
        r = self._acquire(ref.segment)
        try:
            done = 0
            while done < ref.size:
                n = min(chunk, ref.size - done)
                yield os.pread(r.fd, n, ref.offset + done)
                done += n
        finally:
            self._release(r)

    def drop_unlinked(self) -> int:
        """Close cached descriptors of segments removed (by any process); blocking."""
        with self._read_lock:
            gone = [name for name, r in self._readers.items() if os.fstat(r.fd).st_nlink == 0]
            for name in gone:
                self._retire(name)
        return len(gone)

    # -- maintenance -----------------------------------------------------
    def segment_names(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.seg") if _NAME.match(p.stem))

    def file_size(self, name: str) -> int:
        try:
            return self.path(name).stat().st_size
        except FileNotFoundError:
            return 0

    def remove(self, name: str) -> None:
        """Remove a sealed segment's file (compaction decided it may go)."""
        if name == self.active_segment:
            raise ValueError("refusing to remove the active segment")
        with self._read_lock:
            self._retire(name)
        self.path(name).unlink(missing_ok=True)


def _write_all(fd: int, views: list[memoryview]) -> None:
    """writev until every byte is written (short writes continue, errors raise)."""
    pending = [v for v in views if v.nbytes]
    i = 0
    while i < len(pending):
        n = os.writev(fd, pending[i:i + _IOV_MAX])
        while n:
            head = pending[i]
            if n >= head.nbytes:
                n -= head.nbytes
                i += 1
            else:
                pending[i] = head[n:]
                n = 0
