"""Blob segment integrity (issue 9 items 1-4): ownership across processes,
failed writes, failed fdatasync, read descriptors. Through the real daemon
and exmailctl where processes matter, else through the real store."""

from __future__ import annotations

import dataclasses
import errno
import imaplib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.logger import globalLogPublisher

from exmaild.config import BlobsConfig, Config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.store import model as m
from exmaild.store.compaction import compact
from exmaild.store.connector import Store

from .blobutil import (
    deleted_segments_open,
    delivered,
    imap_delete,
    imap_fetch_all,
    message,
    pop3_all,
    segment_rows,
    setup,
    smtp_send,
)
from .daemon import REPO, Daemon, env, exmailctl
from .imaputil import start_server, stop_server
from .smtputil import PASSWORD, SmtpLab, blocking, lab_fixture

lab = lab_fixture()


def _with_blobs(cfg: Config, **values: Any) -> Config:
    return dataclasses.replace(cfg, blobs=dataclasses.replace(BlobsConfig(), **values))


async def _user(store: Store, address: str = "bob@example.test") -> int:
    if await store.directory.get_domain("example.test") is None:
        await store.directory.add_domain("example.test")
    return (await store.directory.add_account(address, None)).id


# -- 1. ownership across processes ---------------------------------------------


def test_compaction_beside_the_daemon_touches_only_sealed_segments(
    cfg: Config, tmp_path: Path
) -> None:
    # Small segments: the daemon rolls (and seals) one every few messages. A
    # short lease: the daemon renews it, and looks for removed segments,
    # every 2 s.
    config, ports = setup(tmp_path, cfg.database.url,
                          blobs={"segment_size": 16384, "segment_lease": 10})
    data = tmp_path / "var"
    blobs = data / "blobs"
    for args in (("domain", "list"), ("user", "list"), ("queue", "list")):
        r = exmailctl(config, *args)
        assert r.returncode == 0, r.stderr
    assert sorted(blobs.glob("*.seg")) == []  # commands that only read write no segment

    d = Daemon(config, ports, tmp_path)
    d.start()
    try:
        sent = [message(i, 5000) for i in range(24)]
        for raw in sent:
            code, text = smtp_send(ports["smtp"], raw)
            assert code == 250, text
        # Read them all: the daemon now holds read descriptors of its segments.
        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == 24 and all(map(delivered, fetched, sent))
        imap_delete(ports["imap"], keep_every=4)
        kept = [raw for i, raw in enumerate(sent, 1) if i % 4 == 0]

        live = {n for n, (sealed, _) in segment_rows(cfg.database.url, data).items() if not sealed}
        assert len(live) == 1  # the daemon's active segment
        r = exmailctl(config, "blobs", "compact")
        assert r.returncode == 0, r.stderr
        removed = int(r.stdout.split()[1])
        assert removed >= 4, r.stdout
        rows = segment_rows(cfg.database.url, data)
        # The daemon's segment is untouched and still its own; the CLI's
        # (where it moved the live blobs) was sealed when it exited.
        assert {n for n, (sealed, _) in rows.items() if not sealed} == live
        assert all((blobs / f"{n}.seg").exists() for n in rows)
        assert sorted(p.stem for p in blobs.glob("*.seg")) == sorted(rows)

        more = [message(i, 5000) for i in range(24, 30)]
        for raw in more:
            code, text = smtp_send(ports["smtp"], raw)
            assert code == 250, text
        kept += more
        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == len(kept) and all(map(delivered, fetched, kept))

        # Segments the CLI removed are let go, so their space is freed.
        deadline = time.monotonic() + 20
        while deleted_segments_open(d.proc.pid) and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.2)
        assert deleted_segments_open(d.proc.pid) == []  # type: ignore[union-attr]

        d.stop()
        assert "Traceback" not in d.output()
        d.start()
        fetched = imap_fetch_all(ports["imap"])
        assert len(fetched) == len(kept) and all(map(delivered, fetched, kept))
        popped = pop3_all(ports["pop3"])
        assert len(popped) == len(kept) and all(map(delivered, popped, kept))
        r = exmailctl(config, "blobs", "compact")
        assert r.returncode == 0, r.stderr
        assert all(map(delivered, imap_fetch_all(ports["imap"]), kept))
        # A clean stop seals the daemon's segment.
        d.stop()
        assert all(sealed for sealed, _ in segment_rows(cfg.database.url, data).values())
    finally:
        d.kill()


def test_a_dead_writers_segment_is_sealed_only_after_its_lease(cfg: Config) -> None:
    cfg = _with_blobs(cfg, segment_lease=10)
    writer, other = Store(cfg), Store(cfg)
    writer.open()
    other.open()
    try:
        first = writer.segments.append([b"x" * 1000])[0]
        assert other.segments.active_segment == ""  # nothing written: no segment
        # Same node id, another process: its segment is not the other's to take.
        compact(other.pool, other.segments, 0.5)
        assert writer.segments.path(first.segment).exists()
        assert writer.segments.append([b"y" * 10])[0].segment == first.segment

        # The writer stops renewing (as a crashed process would): once the
        # lease has run out, compaction seals the segment and reclaims it.
        with writer.engine.begin() as c:
            c.execute(m.segments.update().where(m.segments.c.name == first.segment)
                      .values(lease_until=int(time.time()) - 1))
        stats = compact(other.pool, other.segments, 0.5)
        assert stats.segments_removed == 1
        assert not writer.segments.path(first.segment).exists()

        # Had it been alive after all, it finds out at its next renewal (a
        # quarter of the lease) and writes to a new segment of its own.
        time.sleep(2.6)
        ref = writer.segments.append([b"z" * 10])[0]
        assert ref.segment != first.segment
        assert writer.segments.read(ref) == b"z" * 10
        with writer.engine.connect() as c:
            row = c.execute(sa.select(m.segments).where(m.segments.c.name == ref.segment)).one()
        assert not row.sealed and row.owner == writer.segments.owner
    finally:
        for s in (writer, other):
            s.segments.close()
            s.engine.dispose()


# -- 2. failed writes -----------------------------------------------------------

_PARTIAL = r"""
import json, mmap, resource, sys
from exmaild.config import load_config
import dataclasses
from exmaild.config import DatabaseConfig, PathsConfig
from exmaild.store.connector import Store

data, url = sys.argv[1], sys.argv[2]
base = load_config(None)
cfg = dataclasses.replace(base, paths=PathsConfig(data=data), database=DatabaseConfig(url=url))
s = Store(cfg)
s.open()
seg = s.segments
a = b"a" * 100_000
ra = seg.append([a])[0]
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
# The file size limit stands in for a full disk: the next append stops part-way.
resource.setrlimit(resource.RLIMIT_FSIZE, (ra.offset + ra.size + 50_000, hard))
try:
    seg.append([b"b" * 200_000])
    failed = None
except OSError as e:
    failed = e.errno
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
# Space is back. Bodies of any buffer type, written as they are.
with open(data + "/c.bin", "w+b") as f:
    f.write(b"c" * 70_000)
    f.flush()
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    rc, rd = seg.append([mm, memoryview(b"d" * 5_000)])
    mm.close()
out = {
    "failed": failed,
    "a": seg.read(ra) == a,
    "c": seg.read(rc) == b"c" * 70_000,
    "d": seg.read(rd) == b"d" * 5_000,
    "segments": [ra.segment, rc.segment, rd.segment],
    "offsets": [rc.offset, rd.offset],
    "size": seg.file_size(rd.segment),
}
s.segments.close()
print(json.dumps(out))
"""


def test_a_write_that_fails_part_way_leaves_later_offsets_true(cfg: Config) -> None:
    data = cfg.data_dir
    Store(cfg).open()  # the schema, before the file size limit applies
    r = subprocess.run([sys.executable, "-c", _PARTIAL, str(data), cfg.database.url],
                       capture_output=True, text=True, env=env(), cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["failed"] == errno.EFBIG
    assert out["a"] and out["c"] and out["d"]
    # Cut back and written on: the next blob starts where the last good one ended.
    assert out["segments"][0] == out["segments"][1] == out["segments"][2]
    assert out["offsets"] == [100_000, 170_000] and out["size"] == 175_000


# -- 3. failed fdatasync --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_failed_fdatasync_seals_the_segment_and_refuses_the_batch(
    lab: SmtpLab, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    real = os.fdatasync
    failures = {"left": 0}

    def fdatasync(fd: int) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    segs = lab.store.segments
    srv = await start_server(lab.app.cfg, lab.store)
    try:
        def send(n: int) -> bytes:
            r = lab.raw()
            r.cmd("EHLO disk.test")
            r.cmd("MAIL FROM:<carol@remote.test>")
            r.cmd("RCPT TO:<bob@example.test>")
            r.cmd("DATA")
            reply = r.cmd(message(n) + b".")
            r.close()
            return reply

        def append(n: int) -> tuple[str, Any]:
            c = imaplib.IMAP4("127.0.0.1", srv.port, timeout=20)
            c.login("alice@example.test", PASSWORD)
            try:
                return c.append("INBOX", None, None, message(n, tag="imap"))
            finally:
                c.logout()

        assert (await blocking(send, 1)).startswith(b"250 ")
        first = segs.active_segment
        size = segs.file_size(first)
        failures["left"] = 1
        assert await blocking(send, 2) == b"451 4.3.0 Error: local error in processing\r\n"
        size_after = segs.file_size(first)
        assert size_after > size  # message 2's bytes, never synced: dead space
        # Never written again: the next message goes to a new segment.
        assert (await blocking(send, 3)).startswith(b"250 ")
        second = segs.active_segment
        assert second != first
        assert segs.file_size(first) == size_after
        with lab.store.engine.connect() as c:
            sealed = c.execute(sa.select(m.segments.c.sealed)
                               .where(m.segments.c.name == first)).scalar_one()
        assert sealed

        failures["left"] = 1
        typ, data = await blocking(append, 4)
        assert typ == "NO", data
        typ, data = await blocking(append, 5)
        assert typ == "OK", data
        assert segs.active_segment not in (first, second)
        assert segs.file_size(first) == size_after
    finally:
        await stop_server(srv)
        globalLogPublisher.removeObserver(events.append)
    said = [e for e in events if "fdatasync of blob segment" in e.get("log_format", "")]
    assert [e["segment"] for e in said] == [first, second]
    assert all("never written again" in e["log_format"] for e in said)
    stored = lab.entries("bob@example.test")
    assert [s.endswith(message(n)) for s, n in zip(stored, (1, 3), strict=True)] == [True, True]


# -- 4. read descriptors --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_read_in_progress_survives_compaction_of_its_segment(store: Store) -> None:
    aid = await _user(store)
    for i in range(1, 6):
        await store.ingestor.ingest(IngestRequest(message(i, 300_000), [Target(aid)]))
    big = message(0, 900_000)  # four read chunks, not at the start of the segment
    res = await store.ingestor.ingest(IngestRequest(big, [Target(aid)]))
    inbox = await store.mailboxes.get(aid, "INBOX")
    entries = await store.mailboxes.messages([inbox.id])
    await store.mailboxes.expunge_ids([e.id for e in entries[:-1]])
    store.segments.roll()
    ref = (await store.blob_refs([res.content_id]))[res.content_id]

    chunks = store.segments.iter_chunks(ref)
    first = next(chunks)  # a FETCH or RETR streaming the message
    stats = await store.compact()
    assert stats.segments_removed == 1 and stats.blobs_moved == 1
    assert not store.segments.path(ref.segment).exists()
    # Descriptors opened meanwhile may get the number compaction freed.
    other = await store.ingestor.ingest(IngestRequest(message(9, 300_000), [Target(aid)]))
    assert await store.read_message(other.content_id) == message(9, 300_000)
    assert first + b"".join(chunks) == big
    assert await store.read_message(res.content_id) == big


def test_descriptors_of_segments_removed_elsewhere_are_closed(cfg: Config) -> None:
    reader, remover = Store(cfg), Store(cfg)
    reader.open()
    remover.open()
    try:
        refs = remover.segments.append([b"q" * 4096, b"r" * 4096])
        remover.segments.roll()
        assert reader.segments.read(refs[0]) == b"q" * 4096  # cached descriptor
        stats = compact(remover.pool, remover.segments, 0.5)  # nothing references them
        assert stats.segments_removed == 1
        assert [p for p in deleted_segments_open(os.getpid()) if refs[0].segment in p]
        assert reader.segments.drop_unlinked() == 1
        assert not [p for p in deleted_segments_open(os.getpid()) if refs[0].segment in p]
        # Bounded: the least recently used descriptor is closed beyond the limit.
        small = Store(_with_blobs(cfg, max_open_segments=2))
        small.open()
        try:
            many = []
            for i in range(4):
                many.append(small.segments.append([bytes([65 + i]) * 10])[0])
                small.segments.roll()
            for ref in many:
                assert small.segments.read(ref) == bytes([65 + many.index(ref)]) * 10
            seg_fds = [fd for fd in Path("/proc/self/fd").iterdir()
                       if any(r.segment in _link(fd) for r in many)]
            assert len(seg_fds) == 2
        finally:
            small.segments.close()
            small.engine.dispose()
    finally:
        for s in (reader, remover):
            s.segments.close()
            s.engine.dispose()


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""

