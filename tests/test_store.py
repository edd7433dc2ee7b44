"""The store on a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from twisted.internet import defer

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.store import flags, imapfolders, imapmessages, schema, textindex
from exmaild.store import model as m
from exmaild.store.connector import Store
from exmaild.store.directory import DirectoryError
from exmaild.store.records import SYSTEM_FOLDERS

from .conftest import table_count


def mail(subject: str = "hello", body: str = "Hi there.\r\n", extra: str = "") -> bytes:
    return (
        f"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{abs(hash((subject, body, extra)))}@x>\r\n"
        f"Date: Fri, 27 Nov 2026 10:00:00 +0800\r\n{extra}\r\n{body}"
    ).encode()


async def user(store: Store, address: str = "bob@example.test", quota: int = 0) -> int:
    domain = address.split("@")[1]
    if await store.directory.get_domain(domain) is None:
        await store.directory.add_domain(domain)
    acct = await store.directory.add_account(address, None, quota_bytes=quota)
    return acct.id


async def ingest(store: Store, raw: bytes, *targets: Target, **kw):  # type: ignore[no-untyped-def]
    return await store.ingestor.ingest(IngestRequest(raw, list(targets), **kw))


async def copy(store: Store, src: int, uids: list[int], dst: int,
               move: bool = False) -> list[tuple[int, int]]:
    res = await store.pool.transaction(lambda conn: imapmessages.copy_messages(
        conn, src, uids, dst, move=move, check_quota=False))
    return res.pairs


def aw(coro):  # type: ignore[no-untyped-def]
    return defer.Deferred.fromCoroutine(coro)


def test_fresh_upgrade_matches_model(cfg) -> None:  # type: ignore[no-untyped-def]
    s = Store(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    assert s.open() == "created"
    assert schema.current_revision(s.engine) == schema.head_revision()
    with s.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"include_name": textindex.include_name})
        diff = compare_metadata(ctx, m.metadata)
    assert diff == []
    s.segments.close()
    s.engine.dispose()


def test_out_of_date_schema_is_refused(sqlite_cfg) -> None:  # type: ignore[no-untyped-def]
    s = Store(sqlite_cfg)
    sqlite_cfg.data_dir.mkdir(parents=True)
    s.open()
    with s.engine.begin() as c:
        c.execute(sa.text("UPDATE alembic_version SET version_num = '0000'"))
    with pytest.raises(schema.SchemaError, match="exmailctl --config FILE db upgrade"):
        Store(sqlite_cfg).open()


@pytest_twisted.ensureDeferred
async def test_domains_and_accounts(store: Store) -> None:
    await store.directory.add_domain("Example.TEST.")
    assert [d.name for d in await store.directory.list_domains()] == ["example.test"]
    with pytest.raises(DirectoryError, match="already exists"):
        await store.directory.add_domain("example.test")
    with pytest.raises(DirectoryError, match="malformed domain"):
        await store.directory.add_domain("bad..domain")
    with pytest.raises(DirectoryError, match="unknown domain"):
        await store.directory.add_account("x@nowhere.test", None)
    with pytest.raises(DirectoryError, match="malformed address"):
        await store.directory.add_account("no-at-sign", None)
    acct = await store.directory.add_account("Bob@Example.test", "h", vip=True)
    assert acct.address == "bob@example.test" and acct.vip
    with pytest.raises(DirectoryError, match="already in use"):
        await store.directory.add_account("bob@example.test", None)
    boxes = await store.mailboxes.list(acct.id)
    assert {(b.name, b.special_use) for b in boxes} == set(SYSTEM_FOLDERS)
    await store.directory.add_alias("robert@example.test", "bob@example.test")
    assert (await store.directory.get_account("ROBERT@example.test")).id == acct.id
    with pytest.raises(DirectoryError, match="still has 1 account"):
        await store.directory.remove_domain("example.test")
    assert await store.directory.remove_domain("example.test", with_accounts=True) == 1
    assert await store.directory.get_account("bob@example.test") is None


@pytest_twisted.ensureDeferred
async def test_ingest_is_byte_exact_and_counts_quota(store: Store) -> None:
    aid = await user(store)
    raw = mail("=?UTF-8?B?5a2j5bqm5oql5ZGK?=", "Body text\r\n")
    res = await ingest(store, raw, Target(aid))
    assert [d.uid for d in res.delivered] == [1]
    assert await store.read_message(res.content_id) == raw
    inbox = await store.mailboxes.get(aid, "inbox")
    entries = await store.mailboxes.messages([inbox.id])
    assert [(e.uid, e.size) for e in entries] == [(1, len(raw))]
    assert inbox.uidnext == 2 and entries[0].modseq == inbox.highestmodseq
    acct = await store.directory.get_account_by_id(aid)
    assert (acct.used_bytes, acct.message_count) == (len(raw), 1)
    with store.engine.connect() as c:
        subject = c.execute(sa.select(m.contents.c.subject)).scalar_one()
    assert subject == "季度报告"


@pytest_twisted.ensureDeferred
async def test_one_blob_for_many_recipients(store: Store) -> None:
    ids = [await user(store, f"u{i}@example.test") for i in range(30)]
    res = await ingest(store, mail("all hands"), *(Target(i) for i in ids))
    assert len(res.delivered) == 30
    assert table_count(store, m.contents) == 1
    assert table_count(store, m.messages) == 30
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 30


@pytest_twisted.ensureDeferred
async def test_group_commit_batches_concurrent_ingests(store: Store) -> None:
    aid = await user(store)
    before = store.ingestor.batches
    results = await defer.gatherResults(
        [aw(ingest(store, mail(f"m{i}"), Target(aid))) for i in range(120)]
    )
    uids = sorted(r.delivered[0].uid for r in results)
    assert uids == list(range(1, 121))
    assert store.ingestor.batches - before < 60  # batched, not one commit each
    inbox = await store.mailboxes.get(aid, "INBOX")
    assert inbox.uidnext == 121


@pytest_twisted.ensureDeferred
async def test_two_batches_in_flight_with_the_same_content(store: Store) -> None:
    if store.blobs_in_database:
        pytest.skip("segment accounting: contents are in the database (EXMAILD_TEST_BLOBS_BACKEND)")
    # Two transactions at once inserting one digest (on PostgreSQL the second
    # waits for the first, then finds its row): both messages are placed on
    # one content row, the second copy's bytes counted as dead space.
    aid = await user(store)
    raw = mail("same bytes twice")
    from twisted.internet import threads

    batches = [
        threads.deferToThreadPool(
            store.reactor, store.pool._pool, store.ingestor._commit_batch,
            [IngestRequest(raw, [Target(aid)])],
        )
        for _ in range(2)
    ]
    results = [r[0] for r in await defer.gatherResults(batches)]
    assert all(len(r.delivered) == 1 for r in results)
    assert results[0].content_id == results[1].content_id
    assert sorted(r.delivered[0].uid for r in results) == [1, 2]
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 2
        seg = c.execute(sa.select(m.segments.c.size, m.segments.c.dead_bytes)).one()
    assert seg.size == 2 * len(raw) and seg.dead_bytes == len(raw)


@pytest_twisted.ensureDeferred
async def test_quota_refuses_without_side_effects(store: Store) -> None:
    raw = mail("big", "x" * 2000 + "\r\n")
    aid = await user(store, quota=len(raw) + 10)
    first = await ingest(store, raw, Target(aid))
    assert first.delivered
    second = await ingest(store, mail("big2", "y" * 2000 + "\r\n"), Target(aid))
    assert [r.reason for r in second.refused] == ["overquota"] and not second.delivered
    acct = await store.directory.get_account_by_id(aid)
    assert acct.message_count == 1 and acct.used_bytes == len(raw)
    assert table_count(store, m.contents) == 1  # the refused body left no row
    # APPEND-style callers may skip the check (e.g. moving to Deleted).
    third = await ingest(store, mail("x"), Target(aid), check_quota=False)
    assert third.delivered


@pytest_twisted.ensureDeferred
async def test_targets_by_special_use_flags_and_missing(store: Store) -> None:
    aid = await user(store)
    res = await ingest(
        store, mail(), Target(aid, "\\Sent", flags.SEEN, ("$Label1",)), Target(aid, "Nope")
    )
    assert [r.reason for r in res.refused] == ["nomailbox"]
    sent = await store.mailboxes.get(aid, "Sent")
    [e] = await store.mailboxes.messages([sent.id])
    assert e.flags == flags.SEEN and e.keywords == "$Label1"


@pytest_twisted.ensureDeferred
async def test_copy_move_expunge_and_refcounts(store: Store) -> None:
    aid = await user(store)
    inbox = await store.mailboxes.get(aid, "INBOX")
    junk = await store.mailboxes.get(aid, "Junk")
    for i in range(3):
        await ingest(store, mail(f"c{i}"), Target(aid))
    pairs = await copy(store, inbox.id, [1, 2], junk.id)
    assert pairs == [(1, 1), (2, 2)]
    moved = await copy(store, inbox.id, [3], junk.id, move=True)
    assert moved == [(3, 3)]
    assert [e.uid for e in await store.mailboxes.messages([inbox.id])] == [1, 2]
    acct = await store.directory.get_account_by_id(aid)
    assert acct.message_count == 5
    changed = await store.mailboxes.set_flags(inbox.id, [1, 2], add=flags.DELETED)
    assert len(changed) == 2 and len({c.modseq for c in changed}) == 1
    ids = [e.id for e in await store.mailboxes.messages([inbox.id])]
    gone = await store.mailboxes.expunge_ids(ids)
    assert sorted(gone[inbox.id]) == [1, 2]
    assert table_count(store, m.contents) == 3  # still referenced from Junk
    await store.pool.transaction(lambda c: imapfolders.delete(c, junk.id))
    assert table_count(store, m.contents) == 0
    acct = await store.directory.get_account_by_id(aid)
    assert (acct.message_count, acct.used_bytes) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_malformed_mime_is_stored_as_received(store: Store) -> None:
    aid = await user(store)
    raw = (
        b"Subject: broken\r\nContent-Type: multipart/mixed; boundary=\"nope\r\n\r\n"
        b"--x\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64\x00\xff\r\n"
    )
    res = await ingest(store, raw, Target(aid))
    assert res.delivered and await store.read_message(res.content_id) == raw
    assert len(await store.mailboxes.messages([res.delivered[0].mailbox_id])) == 1


@pytest_twisted.ensureDeferred
async def test_compaction_reclaims_and_keeps_live_mail(store: Store) -> None:
    if store.blobs_in_database:
        pytest.skip("segment accounting: contents are in the database (EXMAILD_TEST_BLOBS_BACKEND)")
    aid = await user(store)
    raws = [mail(f"k{i}", "z" * 3000 + "\r\n") for i in range(10)]
    results = [await ingest(store, r, Target(aid)) for r in raws]
    # A crash between blob append and commit leaves bytes nobody references.
    store.segments.append([b"orphan" * 1000])
    old = store.segments.active_segment
    store.segments.roll()  # as a restart would
    inbox = await store.mailboxes.get(aid, "INBOX")
    entries = await store.mailboxes.messages([inbox.id])
    await store.mailboxes.expunge_ids([e.id for e in entries[:8]])
    stats = await store.compact()
    assert stats.segments_removed == 1 and stats.blobs_moved == 2
    assert old not in store.segments.segment_names()
    for r, raw in zip(results[8:], raws[8:], strict=True):
        assert await store.read_message(r.content_id) == raw
    with store.engine.connect() as c:
        segs = c.execute(sa.select(m.segments.c.name)).scalars().all()
    assert old not in segs


@pytest_twisted.ensureDeferred
async def test_retention_sweeps_deleted_and_junk_after_30_days(store: Store) -> None:
    from exmaild.mailstore import retention

    aid = await user(store)
    old_mail = mail("ancient", extra="X-Old: yes\r\n")
    # Received long ago, deleted today: kept, because age counts from the move.
    await ingest(store, old_mail, Target(aid), internal_date=1_000_000)
    inbox = await store.mailboxes.get(aid, "INBOX")
    trash = await store.mailboxes.get(aid, "Deleted")
    await copy(store, inbox.id, [1], trash.id, move=True)
    await ingest(store, mail("junk"), Target(aid, "\\Junk"))
    await ingest(store, mail("keep"), Target(aid))
    seen = []
    store.notifier.subscribe(trash.id, seen.append)
    assert await retention.sweep(store) == 0
    later = time.time() + 31 * 86400
    assert await retention.sweep(store, now=later) == 2
    assert [e.uid for e in await store.mailboxes.messages([inbox.id])] == [2]
    assert seen and seen[0].kind == "expunge" and seen[0].uids == (1,)


def test_sqlite_connections_read_through_mmap(sqlite_cfg) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from exmaild.config import DatabaseConfig

    for size in (1 << 20, 0):
        cfg = dataclasses.replace(sqlite_cfg, database=DatabaseConfig(sqlite_mmap_size=size))
        s = Store(cfg)
        s.open()
        try:
            with s.engine.connect() as c:
                assert c.exec_driver_sql("PRAGMA mmap_size").scalar() == size
        finally:
            s.segments.close()
            s.engine.dispose()


@pytest_twisted.ensureDeferred
async def test_flag_changes_commit_unsynced_and_durable_writes_stay_full(store: Store) -> None:
    # STORE's transactions (durable=False) skip the fsync on SQLite; every other
    # transaction, interleaved on the same pooled connections, must still run
    # with synchronous=FULL. Both kinds commit what they wrote.
    aid = await user(store)
    res = await ingest(store, mail("flags"), Target(aid))
    box = await store.mailboxes.get(aid, "INBOX")
    uid = res.delivered[0].uid
    seen: dict[bool, set[int]] = {True: set(), False: set()}

    def thd(durable: bool, i: int):  # type: ignore[no-untyped-def]
        def run(conn: sa.Connection) -> None:
            if store.pool.is_sqlite:
                seen[durable].add(conn.exec_driver_sql("PRAGMA synchronous").scalar())
            mode = imapmessages.ADD if i % 2 else imapmessages.REMOVE
            imapmessages.store_flags(conn, box.id, [uid], mode, flags.FLAGGED)
        return run

    await defer.gatherResults([
        aw(store.pool.transaction(thd(i % 3 != 0, i), durable=i % 3 != 0)) for i in range(30)
    ])
    if store.pool.is_sqlite:
        assert seen == {True: {2}, False: {1}}  # FULL / NORMAL
    for mode, want in ((imapmessages.REMOVE, 0), (imapmessages.ADD, flags.FLAGGED)):
        done = await store.pool.transaction(lambda c, mode=mode: imapmessages.store_flags(
            c, box.id, [uid], mode, flags.FLAGGED), durable=False)
        with store.engine.connect() as c:  # another connection sees it committed
            row = c.execute(sa.select(m.messages.c.flags, m.messages.c.modseq)
                            .where(m.messages.c.mailbox_id == box.id)).one()
        assert row.flags & flags.FLAGGED == want
        assert done.modseq is None or row.modseq == done.modseq
