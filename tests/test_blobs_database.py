"""Contents held in the database ([blobs] backend = "postgresql"): the store on
the real PostgreSQL, and `blobs migrate` between the two backends."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
import sqlalchemy as sa

from exmaild.config import BlobsConfig, Config, ConfigError, load_config
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.mailstore.service import MailStore
from exmaild.ops import blobmigrate
from exmaild.store import model as m
from exmaild.store.blobs import BlobRef
from exmaild.store.contents import release_messages
from exmaild.store.dbblobs import CHUNK, DB_SEGMENT, address, chunks_of

from .conftest import PG_URL, _wipe_pg, table_count
from .test_store import mail, user


def _backend(cfg: Config, backend: str) -> Config:
    return dataclasses.replace(cfg, blobs=dataclasses.replace(BlobsConfig(), backend=backend))


@pytest.fixture
def pg_cfg(tmp_path: Path, request: pytest.FixtureRequest) -> Config:
    if not PG_URL:
        pytest.skip("EXMAILD_TEST_DATABASE_URL is not set (contents in the database need it)")
    url = request.getfixturevalue("pg_database")
    _wipe_pg(url)
    cfg = request.getfixturevalue("sqlite_cfg")
    return _backend(dataclasses.replace(
        cfg, database=dataclasses.replace(cfg.database, url=url, pool_size=4)), "postgresql")


async def _open(cfg: Config) -> MailStore:
    from twisted.internet import reactor

    s = MailStore(cfg, reactor)
    s.open()
    s.startService()
    return s


@pytest_twisted.async_yield_fixture
async def dbstore(pg_cfg: Config) -> AsyncIterator[MailStore]:
    s = await _open(pg_cfg)
    yield s
    s.stopService()


def big(n: int, size: int) -> bytes:
    """A message of `size` bytes that no other `n` repeats."""
    head = mail(f"big {n}", "")
    line = hashlib.sha256(str(n).encode()).hexdigest().encode() + b"\r\n"
    return head + (line * (size // len(line) + 1))[: size - len(head)]


def _chunks(s: MailStore) -> dict[int, int]:
    with s.engine.connect() as c:
        return dict(c.execute(sa.select(m.blob_chunks.c.content_id, sa.func.count())
                              .group_by(m.blob_chunks.c.content_id)).all())


def _digests(s: MailStore) -> dict[int, tuple[str, str]]:
    with s.engine.connect() as c:
        return {r.id: (r.digest, r.segment) for r in c.execute(
            sa.select(m.contents.c.id, m.contents.c.digest, m.contents.c.segment))}


def test_chunks_of_cuts_pieces_into_fixed_chunks() -> None:
    head, body = b"H" * 1000, bytes(range(256)) * (3 * CHUNK // 256 + 7)
    got = list(chunks_of([head, memoryview(body)]))
    assert [seq for seq, _ in got] == list(range(len(got)))
    assert all(len(bytes(d)) == CHUNK for _, d in got[:-1]) and 0 < len(bytes(got[-1][1])) <= CHUNK
    assert b"".join(bytes(d) for _, d in got) == head + body
    assert [(s, bytes(d)) for s, d in chunks_of([b""])] == [(0, b"")]
    assert [bytes(d) for _, d in chunks_of([b"a" * CHUNK])] == [b"a" * CHUNK]


def test_backend_postgresql_needs_a_postgresql_url(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[blobs]\nbackend = "postgresql"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert any("blobs.backend" in err and "PostgreSQL URL" in err for err in e.value.errors)
    cfg.write_text('[blobs]\nbackend = "s3"\n')
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert any("blobs.backend: must be" in err for err in e.value.errors)


@pytest_twisted.ensureDeferred
async def test_ingest_stores_chunks_in_the_transaction_and_reads_any_range(
        dbstore: MailStore) -> None:
    aid = await user(dbstore)
    raw = big(1, 3 * CHUNK + 12345)
    res = await dbstore.ingestor.ingest(IngestRequest(raw, [Target(aid)]))
    assert await dbstore.read_message(res.content_id) == raw
    ref = (await dbstore.blob_refs([res.content_id]))[res.content_id]
    assert ref == BlobRef(DB_SEGMENT, address(res.content_id), len(raw))
    assert _chunks(dbstore) == {res.content_id: 4}
    assert list((dbstore.cfg.data_dir / "blobs").glob("*.seg")) == []  # no file written
    for start, length in ((0, 10), (CHUNK - 5, 10), (CHUNK, CHUNK), (100, 2 * CHUNK + 7),
                          (len(raw) - 3, 100), (len(raw), 5)):
        assert dbstore.blobs.read(ref, start, length) == raw[start : start + length]
    # A ref derived the way FETCH derives one (offset + start) means the same.
    part = BlobRef(ref.segment, ref.offset + CHUNK + 1, 50)
    assert dbstore.blobs.read(part) == raw[CHUNK + 1 : CHUNK + 51]
    assert b"".join(dbstore.blobs.iter_chunks(ref)) == raw
    # FETCH's batched read: several ranges of several contents at once.
    small = b"x" * 100 + mail("small")
    sref = (await dbstore.blob_refs([(await dbstore.ingestor.ingest(
        IngestRequest(small, [Target(aid)]))).content_id])).popitem()[1]
    spans = [(ref, 0, len(raw)), (sref, 0, len(small)), (ref, CHUNK - 7, 20), (sref, 5, 0),
             (ref, 2 * CHUNK, CHUNK + 9)]
    got = dbstore.blobs.database.read_many(
        [BlobRef(r.segment, r.offset + lo, n) for r, lo, n in spans])
    assert got == [(raw if r is ref else small)[lo : lo + n] for r, lo, n in spans]
    with pytest.raises(FileNotFoundError):
        dbstore.blobs.database.read_many([BlobRef(DB_SEGMENT, address(10**6), 5)])


@pytest_twisted.ensureDeferred
async def test_dedup_and_deletes_free_chunks(dbstore: MailStore) -> None:
    a, b = await user(dbstore, "a@example.test"), await user(dbstore, "b@example.test")
    raw = big(2, CHUNK + 1)
    res = await dbstore.ingestor.ingest(IngestRequest(raw, [Target(a), Target(b)]))
    again = await dbstore.ingestor.ingest(IngestRequest(raw, [Target(a)]))
    assert again.content_id == res.content_id
    assert table_count(dbstore, m.contents) == 1 and _chunks(dbstore) == {res.content_id: 2}
    ids = await dbstore.pool.do(lambda c: list(c.execute(sa.select(m.messages.c.id)).scalars()))
    await dbstore.pool.transaction(lambda c: release_messages(c, ids[:2]))
    assert _chunks(dbstore) == {res.content_id: 2}  # one reference left
    await dbstore.pool.transaction(lambda c: release_messages(c, ids[2:]))
    assert table_count(dbstore, m.contents) == 0 and _chunks(dbstore) == {}

    # Every target refused: the content and its chunks go in the same transaction.
    small = await user(dbstore, "c@example.test", quota=100)
    res = await dbstore.ingestor.ingest(IngestRequest(raw, [Target(small)]))
    assert res.refused and table_count(dbstore, m.contents) == 0 and _chunks(dbstore) == {}


@pytest_twisted.ensureDeferred
async def test_migrate_both_ways_keeps_every_byte(pg_cfg: Config) -> None:
    # Written to segments, moved into the database, read, moved back.
    s = await _open(_backend(pg_cfg, "segments"))
    try:
        aid = await user(s)
        sent = [big(10 + i, size) for i, size in enumerate((500, CHUNK, 2 * CHUNK + 3, 40000))]
        ids = [(await s.ingestor.ingest(IngestRequest(r, [Target(aid)]))).content_id
               for r in sent]
        before = _digests(s)
        assert {seg for _, seg in before.values()} != {DB_SEGMENT}
        said: list[str] = []
        stats = await s.pool.call(blobmigrate.migrate, s, "postgresql", said.append)
        assert (stats.moved, stats.skipped, stats.bad) == (4, 0, [])
        assert said[0].startswith("4 content(s)") and "moved 4 content(s)" in said[-1]
        after = _digests(s)
        assert {k: d for k, (d, _) in after.items()} == {k: d for k, (d, _) in before.items()}
        assert {seg for _, seg in after.values()} == {DB_SEGMENT}
        for cid, raw in zip(ids, sent, strict=True):
            assert await s.read_message(cid) == raw
        # The segment bytes are dead now: compaction removes the files (once
        # the writer's active segment is sealed).
        await s.pool.call(s.segments.roll)
        assert (await s.compact()).segments_removed >= 1
        assert list((pg_cfg.data_dir / "blobs").glob("*.seg")) == []
        # Run again: nothing left to do.
        again = await s.pool.call(blobmigrate.migrate, s, "postgresql", said.append)
        assert again.moved == 0

        stats = await s.pool.call(blobmigrate.migrate, s, "segments", said.append)
        assert (stats.moved, stats.bad) == (4, [])
        assert _chunks(s) == {}
        back = _digests(s)
        assert DB_SEGMENT not in {seg for _, seg in back.values()}
        for cid, raw in zip(ids, sent, strict=True):
            assert await s.read_message(cid) == raw
            assert hashlib.sha256(raw).hexdigest() == back[cid][0]
    finally:
        s.stopService()


@pytest_twisted.ensureDeferred
async def test_migrate_refuses_sqlite(sqlite_cfg: Config) -> None:
    s = await _open(sqlite_cfg)
    try:
        with pytest.raises(blobmigrate.MigrateError, match="PostgreSQL"):
            await s.pool.call(blobmigrate.migrate, s, "postgresql", print)
        stats = await s.pool.call(blobmigrate.migrate, s, "segments", lambda _: None)
        assert stats.moved == 0
    finally:
        s.stopService()


@pytest_twisted.ensureDeferred
async def test_migrate_leaves_damaged_and_missing_bytes_where_they_are(pg_cfg: Config) -> None:
    s = await _open(_backend(pg_cfg, "segments"))
    try:
        aid = await user(s)
        sent = [big(30 + i, 3000) for i in range(3)]
        ids = [(await s.ingestor.ingest(IngestRequest(r, [Target(aid)]))).content_id
               for r in sent]
        refs = await s.blob_refs(ids)
        await s.pool.call(s.segments.roll)
        # One flipped byte in the first; the second's segment row points
        # into a file that does not exist.
        with open(s.segments.path(refs[ids[0]].segment), "r+b") as f:
            f.seek(refs[ids[0]].offset + 100)
            byte = f.read(1)
            f.seek(refs[ids[0]].offset + 100)
            f.write(bytes([byte[0] ^ 1]))
        await s.pool.transaction(lambda c: c.execute(
            m.contents.update().where(m.contents.c.id == ids[1]).values(segment="gone-00000001")))
        stats = await s.pool.call(blobmigrate.migrate, s, "postgresql", lambda _: None)
        digests = _digests(s)
        assert stats.moved == 1 and stats.bad == [digests[ids[0]][0], f"content-{ids[1]}"]
        assert digests[ids[2]][1] == DB_SEGMENT and await s.read_message(ids[2]) == sent[2]
        assert {digests[i][1] for i in ids[:2]} == {refs[ids[0]].segment, "gone-00000001"}
        assert _chunks(s) == {ids[2]: 1}  # nothing left behind by the failed ones
    finally:
        s.stopService()
