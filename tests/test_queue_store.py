"""Queue rows written in the ingest transaction, and their content references."""

from __future__ import annotations

import pytest_twisted
import sqlalchemy as sa

from exmaild.mailstore.ingest import IngestRequest, Target
from exmaild.queue import records
from exmaild.queue import store as qstore
from exmaild.store import model as m
from exmaild.store.connector import Store

from .test_store import mail, user


@pytest_twisted.ensureDeferred
async def test_enqueue_in_ingest_transaction_holds_one_reference(store: Store) -> None:
    aid = await user(store)
    qid = records.new_queue_id()

    def extra(conn: sa.Connection, content_id: int) -> int:
        return qstore.enqueue(
            conn, queue_id=qid, content_id=content_id, sender="bob@example.test",
            recipients=[
                records.QueuedRecipient("x@remote.test", notify="FAILURE,DELAY"),
                records.QueuedRecipient("y@other.test"),
                records.QueuedRecipient("bob@example.test", status=records.DELIVERED),
            ],
            account_id=aid,
        )

    res = await store.ingestor.ingest(IngestRequest(mail(), [Target(aid)], extra=extra))
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 2
        [entry] = qstore.load_entries(c, m.queue_messages.c.id == res.extra)
    assert entry.queue_id == qid and entry.content_id == res.content_id
    assert [(r.recipient, r.status) for r in entry.recipients] == [
        ("x@remote.test", "queued"), ("y@other.test", "queued"), ("bob@example.test", "delivered")
    ]

    # Remote recipients become final: the queue's reference goes.
    def finish(conn: sa.Connection) -> bool:
        conn.execute(
            m.queue_recipients.update()
            .where(m.queue_recipients.c.status == "queued")
            .values(status=records.SENT)
        )
        return qstore.finish_if_done(conn, res.extra)

    assert await store.pool.transaction(finish)
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 1


@pytest_twisted.ensureDeferred
async def test_queue_only_message_keeps_its_content(store: Store) -> None:
    """A message for remote recipients only: no mailbox entry, still stored."""
    await user(store)

    def extra(conn: sa.Connection, content_id: int) -> int:
        return qstore.enqueue(
            conn, queue_id=records.new_queue_id(), content_id=content_id, sender="",
            recipients=[records.QueuedRecipient("x@remote.test")],
        )

    res = await store.ingestor.ingest(IngestRequest(mail("q"), [], extra=extra))
    assert not res.delivered
    assert await store.read_message(res.content_id) == mail("q")


@pytest_twisted.ensureDeferred
async def test_last_reference_released_without_breaking_the_foreign_key(store: Store) -> None:
    """The queue may hold a content's only reference: finishing deletes the
    content and clears the row's content_id (kept for status display)."""
    qid = records.new_queue_id()

    def extra(conn: sa.Connection, content_id: int) -> int:
        return qstore.enqueue(conn, queue_id=qid, content_id=content_id, sender="a@x.test",
                              recipients=[records.QueuedRecipient("x@remote.test")])

    res = await store.ingestor.ingest(IngestRequest(mail("only"), [], extra=extra))

    def finish(conn: sa.Connection) -> bool:
        conn.execute(m.queue_recipients.update().values(status=records.BOUNCED))
        return qstore.finish_if_done(conn, res.extra)

    assert await store.pool.transaction(finish)
    with store.engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(m.contents)).scalar_one() == 0
        [entry] = qstore.load_entries(c, m.queue_messages.c.queue_id == qid)
    assert (entry.content_id, entry.body_offset) == (None, -1)
    assert entry.recipients[0].status == records.BOUNCED


@pytest_twisted.ensureDeferred
async def test_status_only_entry_holds_no_reference(store: Store) -> None:
    """All recipients local (recorded for the sender's status view): the queue
    row takes no reference, so deleting it cannot drop the mailbox's."""
    from exmaild.queue import admin

    aid = await user(store)
    qid = records.new_queue_id()

    def extra(conn: sa.Connection, content_id: int) -> int:
        return qstore.enqueue(
            conn, queue_id=qid, content_id=content_id, sender="bob@example.test",
            recipients=[records.QueuedRecipient("bob@example.test", status=records.DELIVERED)])

    await store.ingestor.ingest(IngestRequest(mail("local"), [Target(aid)], extra=extra))
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 1
        row = c.execute(sa.select(m.queue_messages)).one()
    assert (row.content_id, row.body_offset) == (None, -1)
    assert await admin.delete(store, qid)
    with store.engine.connect() as c:
        assert c.execute(sa.select(m.contents.c.refcount)).scalar_one() == 1
