"""Maintenance jobs write in bounded batches: the retention sweep and the
queue's status purge commit many small transactions, never one long one
that holds SQLite's only writer (and so SMTP's replies). Real store, SQLite
and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest_twisted
import sqlalchemy as sa
from twisted.internet import defer

from exmaild.mailstore import mail_log, retention
from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.maintenance import sweep_mail_log
from exmaild.store import model as m
from exmaild.store.connector import Store

from .conftest import table_count

N = 1100  # default batch 500: at least three transactions


def _mail(i: int) -> bytes:
    return (
        f"From: a@example.test\r\nTo: b@example.test\r\nSubject: old {i}\r\n"
        f"Message-ID: <old{i}@example.test>\r\n\r\nbody {i}\r\n"
    ).encode()


@contextmanager
def commits(store: Store) -> Iterator[list[int]]:
    seen: list[int] = []
    listener = lambda conn: seen.append(1)  # noqa: E731
    sa.event.listen(store.engine, "commit", listener)
    try:
        yield seen
    finally:
        sa.event.remove(store.engine, "commit", listener)


@pytest_twisted.ensureDeferred
async def test_retention_sweep_commits_in_batches(store: Store) -> None:
    assert store.cfg.database.maintenance_batch == 500
    await store.directory.add_domain("example.test")
    acct = await store.directory.add_account("b@example.test", None)
    await defer.gatherResults([
        defer.Deferred.fromCoroutine(store.ingestor.ingest(
            IngestRequest(_mail(i), [Target(acct.id, "\\Trash" if i % 2 else "\\Junk")])))
        for i in range(N)
    ], consumeErrors=True)
    await store.ingestor.ingest(IngestRequest(_mail(-1), [Target(acct.id)]))
    assert table_count(store, m.messages) == N + 1

    with commits(store) as seen:
        n = await retention.sweep(store, now=time.time() + 31 * 86400)
    assert n == N
    assert len(seen) >= 3  # 500 + 500 + 100, each its own transaction
    assert table_count(store, m.messages) == 1  # the inbox message stays
    after = await store.directory.get_account_by_id(acct.id)
    assert after is not None and after.message_count == 1


@pytest_twisted.ensureDeferred
async def test_queue_status_purge_commits_in_batches(store: Store) -> None:
    from exmaild.queue.runner import QueueRunner

    with store.engine.begin() as c:
        mids = [
            c.execute(m.queue_messages.insert().values(
                queue_id=f"Q{i}", body_offset=-1, sender="", created=1000 + i,
            )).inserted_primary_key[0]
            for i in range(N)
        ]
        c.execute(m.queue_recipients.insert(), [
            {"message_id": mid, "recipient": "x@example.test", "domain": "example.test",
             "status": "sent", "next_attempt": 0, "updated": 0}
            for mid in mids
        ])
    runner = QueueRunner(store.cfg, store)
    with commits(store) as seen:
        n = await runner.purge(int(time.time()))
    assert n == N
    assert len(seen) >= 3
    assert table_count(store, m.queue_messages) == 0
    assert table_count(store, m.queue_recipients) == 0


@pytest_twisted.ensureDeferred
async def test_mail_log_sweep_in_batches(store: Store) -> None:
    old = int(time.time()) - 200 * 86400
    rows = [{"created": old + i, "direction": "in", "sender": "a@x.test",
             "recipient": f"r{i}@y.test", "status": "delivered"} for i in range(7)]
    rows.append({**rows[0], "created": int(time.time()), "recipient": "new@y.test"})
    await store.pool.transaction(lambda c: c.execute(m.mail_log.insert(), rows))
    assert await store.pool.transaction(lambda c: mail_log.sweep(c, old + 3, 2)) == 2
    assert await sweep_mail_log(store) == "5 mail log row(s) removed"
    left = await store.pool.do(lambda c: c.execute(sa.select(m.mail_log.c.recipient)).all())
    assert [r for (r,) in left] == ["new@y.test"]
