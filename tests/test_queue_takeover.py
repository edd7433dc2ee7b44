"""Queue claims across nodes, in process on the real store: a node that
stops renewing (dead, as far as the database can tell) loses its claims
when their lease runs out and another node's runner delivers them once, on
its own periodic scan; a live node's renewed claims are never taken. On
PostgreSQL a runner hears at once when a full node has mail queued or
another process asks for a retry (store/pgnotify.py's queue channel), with
a scan interval far too long to find it otherwise."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from twisted.internet import reactor

from exmaild.config import Config
from exmaild.mailstore.service import MailStore
from exmaild.queue import admin
from exmaild.queue import runner as runner_mod
from exmaild.store import model as m
from exmaild.store.connector import Store
from exmaild.store.pgnotify import QUEUE_CHANNEL, conninfo

from .queuelab import Behaviour, queue_mail, sleep, statuses, wait_for
from .test_queue_delivery import lab, runner_factory  # noqa: F401  (fixtures)

WAIT = 15.0  # a bound for a busy machine, not a speed claim
LEASE = 3  # seconds; renewed every second while held


def holder(store: Store, qid: str) -> tuple[str | None, int]:
    r, q = m.queue_recipients.c, m.queue_messages.c
    with store.engine.connect() as c:
        row = c.execute(sa.select(r.locked_by, r.locked_until).join(
            m.queue_messages, q.id == r.message_id).where(q.queue_id == qid)).one()
    return row.locked_by, row.locked_until


@pytest_twisted.ensureDeferred
async def test_dead_nodes_claim_is_taken_over_after_its_lease(
        store: Store, lab: Any, runner_factory: Any) -> None:  # noqa: F811
    silent = lab.smtp(Behaviour(greeting=""))  # node1's delivery hangs here
    good = lab.smtp()
    node1 = await runner_factory(silent.port, node="node1", claim_lease=LEASE,
                                 command_timeout=120.0)
    qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
    node1.kick()
    await wait_for(lambda: silent.connections == 1 and holder(store, qid)[0] == "node1")
    # node2 scans five times a second, right from the start, and finds nothing
    # it may take while node1 renews: over two leases nothing moves.
    node2 = await runner_factory(good.port, node="node2", claim_lease=LEASE, scan_interval=0.2)
    first_until = holder(store, qid)[1]
    await sleep(2 * LEASE)
    assert holder(store, qid)[0] == "node1" and holder(store, qid)[1] > first_until
    assert good.connections == 0 and statuses(store, qid)["bob@remote.test"][0] == "queued"

    # node1 dies: it stops renewing, its connection stays open and silent.
    node1.stopService()
    assert holder(store, qid)[0] == "node1"
    # No kick, no retry asked: node2's periodic scan takes it once the lease lapsed.
    await wait_for(lambda: statuses(store, qid)["bob@remote.test"][0] == "sent", WAIT)
    assert holder(store, qid) == (None, 0)
    assert len(good.txns) == 1 and "<bob@remote.test>" in good.txns[0].rcpts[0]
    assert silent.txns == []
    # And once only: more scans, no second delivery.
    await sleep(1.0)
    assert len(good.txns) == 1
    silent.drop_all()
    await node2.run_once()


# -- queue kicks through LISTEN/NOTIFY (PostgreSQL) -----------------------------------------------
def _pg_only(cfg: Config) -> None:
    if not cfg.database_url.startswith("postgresql"):
        pytest.skip("queue kicks between processes travel by PostgreSQL NOTIFY")


async def _other_process(cfg: Config) -> MailStore:
    """A second store on the same database: another node, or exmailctl."""
    other = MailStore(cfg, reactor)
    other.open(create_schema=False)
    other.startService()
    return other


def _queue_kicks(cfg: Config) -> Any:
    """A connection of the test's own counting kicks on the queue channel."""
    import psycopg

    conn = psycopg.connect(conninfo(cfg.database_url), autocommit=True)
    conn.execute(f"LISTEN {QUEUE_CHANNEL}")
    return conn


@pytest_twisted.ensureDeferred
async def test_a_full_runner_hands_mail_queued_on_its_node_to_an_idle_one(
        store: Store, cfg: Config, lab: Any, runner_factory: Any,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    _pg_only(cfg)
    monkeypatch.setattr(runner_mod, "CLAIM_LIMIT", 1)  # node1 is full with one recipient
    silent = lab.smtp(Behaviour(greeting=""))
    good = lab.smtp()
    other = await _other_process(cfg)  # node1's store: a process of its own
    try:
        node1 = await runner_factory(silent.port, node="node1", on=other, command_timeout=120.0)
        await runner_factory(good.port, node="node2")  # scans every hour
        assert store.relay is not None and other.relay is not None
        await wait_for(lambda: store.relay.connected.is_set() and other.relay.connected.is_set())
        first = await queue_mail(other, "alice@example.test", ["bob@remote.test"])
        node1.kick()  # as node1's SMTP server does after queueing
        await wait_for(lambda: silent.connections == 1 and holder(store, first)[0] == "node1")
        kicks = _queue_kicks(cfg)
        try:
            second = await queue_mail(other, "alice@example.test", ["carol@remote.test"])
            node1.kick()  # full: it asks the other nodes instead
            await wait_for(lambda: statuses(store, second)["carol@remote.test"][0] == "sent",
                           WAIT)
            assert len(good.txns) == 1 and holder(store, first)[0] == "node1"
            # node2 (full too while it delivered) scanned when asked from
            # elsewhere, and asked nobody in turn: one kick in all.
            await sleep(0.5)
            assert len(list(kicks.notifies(timeout=0.5))) == 1
        finally:
            kicks.close()
    finally:
        silent.drop_all()
        other.stopService()


@pytest_twisted.ensureDeferred
async def test_retry_asked_elsewhere_wakes_an_idle_runner(
        store: Store, cfg: Config, lab: Any, runner_factory: Any) -> None:  # noqa: F811
    _pg_only(cfg)
    answer = {"rcpt": "450 4.2.0 try again later"}
    srv = lab.smtp(Behaviour(rcpt=lambda _a: answer["rcpt"]))
    runner = await runner_factory(srv.port, node="node2")  # retries after 300 s
    assert store.relay is not None
    await wait_for(store.relay.connected.is_set)
    other = await _other_process(cfg)
    try:
        qid = await queue_mail(store, "alice@example.test", ["bob@remote.test"])
        runner.kick()  # as the SMTP server does after queueing
        await wait_for(lambda: statuses(store, qid)["bob@remote.test"][0] == "deferred", WAIT)
        await runner.run_once()
        assert srv.txns == []
        answer["rcpt"] = "250 2.1.5 Ok"
        assert await admin.retry(other, qid) == 1  # what `exmailctl queue retry` does
        await wait_for(lambda: len(srv.txns) == 1, WAIT)
        await runner.run_once()
        assert statuses(store, qid)["bob@remote.test"][0] == "sent"
    finally:
        other.stopService()
