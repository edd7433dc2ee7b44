"""IMAP SEARCH in the database: time ``search_uids`` on a 100,000-message mailbox.

    python3 bench/search.py [--messages 100000] [--data DIR] [--database-url URL]
                            [--rounds 7] [--ingest] [--mmap BYTES]

Fills one INBOX with realistic mail (bench/mailgen.py: CJK and English
subjects in UTF-8 and GB2312 encoded-words, multipart bodies, attachments;
one subject in 100 holds 季度报告) and times, in the server's own code path
(``exmaild.store.search.search_uids``, thread hop included, no IMAP framing),
``UID SEARCH CHARSET UTF-8 SUBJECT 季度报告`` and a few other searches.

The fill runs once per --data directory and is reused afterwards. By default
it is a bulk insert done by this script only: worker processes generate and
parse the messages with the ingest parser (``parse_message``, so the
``contents`` rows are exactly what ingest writes) and the rows go in with
executemany; message bodies are not written to blob segments, which SEARCH
never reads. ``--ingest`` fills through ``store.ingestor.ingest`` instead
(group commit, 256 requests in flight; slower, a fully usable mailbox).
``--mmap BYTES`` sets SQLite's ``PRAGMA mmap_size`` on the bench's connections,
to measure that setting before the store adopts it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import sqlalchemy as sa  # noqa: E402
from mailgen import SEARCH_WORD, iter_messages, search_hits  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from exmaild.config import DatabaseConfig, PathsConfig, load_config  # noqa: E402
from exmaild.mailstore.ingest import IngestRequest, Target  # noqa: E402
from exmaild.mailstore.parse import parse_message  # noqa: E402
from exmaild.mailstore.service import MailStore  # noqa: E402
from exmaild.protocols.imap.parser import parse_bytes  # noqa: E402
from exmaild.store import model as m  # noqa: E402
from exmaild.store.connector import Store  # noqa: E402
from exmaild.store.search import build_query, run_search, search_uids  # noqa: E402

ADDRESS = "search@bench.test"
CHUNK = 2000  # a multiple of mailgen.SEARCH_PERIOD, so hits add up exactly


def _rows(chunk: int) -> list[dict[str, Any]]:
    """Parsed content rows of one chunk, as ingest would store them (worker)."""
    out = []
    for raw in iter_messages(CHUNK, seed=chunk + 1, pool=120):
        p = parse_message(raw)
        sent = int(p.sent_date.timestamp()) if p.sent_date else None
        out.append({
            "digest": hashlib.sha256(raw).hexdigest(), "segment": "bench-unstored",
            "offset": 0, "size": p.size, "refcount": 1, "header_len": p.header_len,
            "envelope": p.envelope, "bodystructure": p.bodystructure, "body": p.body,
            "sent_date": sent, "subject": p.subject, "from_addr": p.from_, "to_addr": p.to,
            "cc_addr": p.cc, "bcc_addr": p.bcc, "message_id": p.message_id,
            "headers_text": p.headers_text, "attachment_names": "\n".join(p.attachment_names),
            "excerpt": p.excerpt,
        })
    return out


def bulk_fill(store: Store, account_id: int, mailbox_id: int, n: int) -> None:
    def insert(conn: sa.Connection, rows: list[dict[str, Any]], uid: int) -> None:
        first = (conn.execute(sa.select(sa.func.max(m.contents.c.id))).scalar() or 0) + 1
        for i, row in enumerate(rows):
            row["id"] = first + i
        conn.execute(m.contents.insert(), rows)
        conn.execute(m.messages.insert(), [
            {"mailbox_id": mailbox_id, "uid": uid + i, "content_id": first + i,
             "size": row["size"], "flags": 1 if i % 3 else 0, "keywords": "",
             # One arrival every 5 minutes: a year of mail.
             "internal_date": 1704153600 + 300 * (uid + i), "added": int(time.time()),
             "modseq": 2 + (uid + i) // CHUNK}
            for i, row in enumerate(rows)
        ])

    uid, size = 1, 0
    # Spawned, not forked: this runs on a DB thread of a process with a reactor.
    workers = multiprocessing.get_context("spawn").Pool(2)
    try:
        for rows in workers.imap(_rows, range(n // CHUNK)):
            store.pool.transaction_sync(lambda conn, rows=rows, uid=uid: insert(conn, rows, uid))
            uid += len(rows)
            size += sum(r["size"] for r in rows)
            print(f"\r  {uid - 1:,} messages", end="", flush=True)
    finally:
        workers.close()
        workers.join()
    print()
    def finish(conn: sa.Connection) -> None:
        conn.execute(m.mailboxes.update().where(m.mailboxes.c.id == mailbox_id)
                     .values(uidnext=uid, highestmodseq=2 + uid // CHUNK))
        conn.execute(m.accounts.update().where(m.accounts.c.id == account_id)
                     .values(used_bytes=size, message_count=uid - 1))
        if conn.dialect.name == "postgresql":  # ids were given explicitly
            conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('contents', 'id'), max(id)) FROM contents")

    store.pool.transaction_sync(finish)


async def ingest_fill(store: Store, account_id: int, n: int) -> None:
    sem = defer.DeferredSemaphore(256)
    target = [Target(account_id, "INBOX")]
    done = 0

    async def one(raw: bytes) -> None:
        nonlocal done
        await store.ingestor.ingest(IngestRequest(raw, target, check_quota=False))
        done += 1
        if done % 1000 == 0:
            print(f"\r  {done:,} messages", end="", flush=True)

    await defer.gatherResults(
        [sem.run(lambda r=raw: defer.Deferred.fromCoroutine(one(r)))
         for raw in iter_messages(n, seed=1, pool=300)], consumeErrors=True)
    print()


def _cpu(conn: sa.Connection, mailbox_id: int, key: Any, view: list[int]) -> float:
    t0 = time.thread_time()
    run_search(conn, mailbox_id, key, view)
    return time.thread_time() - t0


async def run(reactor: Any, args: argparse.Namespace) -> None:
    base = load_config(None)
    cfg = dataclasses.replace(
        base, paths=PathsConfig(data=str(Path(args.data).resolve())),
        database=DatabaseConfig(url=args.database_url, pool_size=4),
    )
    store = MailStore(cfg, reactor)
    if args.mmap and store.pool.is_sqlite:  # what-if for a pragma the store does not set

        @sa.event.listens_for(store.engine, "connect")
        def _mmap(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA mmap_size={args.mmap}")

    store.open()
    store.startService()
    if await store.directory.get_domain("bench.test") is None:
        await store.directory.add_domain("bench.test")
    acct = await store.directory.get_account(ADDRESS) or await store.directory.add_account(
        ADDRESS, None)
    box = await store.mailboxes.get(acct.id, "INBOX")
    assert box is not None
    c = m.messages.c
    count = lambda conn: conn.execute(  # noqa: E731
        sa.select(sa.func.count()).where(c.mailbox_id == box.id)).scalar_one()
    have = await store.pool.do(count)
    if have == 0:
        print(f"filling {args.messages:,} messages ({'ingest' if args.ingest else 'bulk'}) ...")
        t0 = time.perf_counter()
        if args.ingest:
            await ingest_fill(store, acct.id, args.messages)
        else:
            await store.pool.call(bulk_fill, store, acct.id, box.id, args.messages)
        print(f"  filled in {time.perf_counter() - t0:.1f} s")
        if not store.pool.is_sqlite:  # as autovacuum would: without stats, loops nest
            await store.pool.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))
        have = await store.pool.do(count)
    view = await store.pool.do(lambda conn: list(conn.execute(
        sa.select(c.uid).where(c.mailbox_id == box.id).order_by(c.uid)).scalars()))
    mmap = f", mmap_size={args.mmap}" if args.mmap else ""
    print(f"mailbox: {have:,} messages, database {store.engine.dialect.name}{mmap}")

    word = SEARCH_WORD.encode()
    searches = {
        f"SUBJECT {SEARCH_WORD}": b"CHARSET UTF-8 SUBJECT {%d}\r\n" % len(word) + word,
        "FROM wang": b"FROM wang",
        "UNSEEN": b"UNSEEN",
        "1:* NOT DELETED SINCE 1-Oct-2024": b"1:* NOT DELETED SINCE 1-Oct-2024",
        f"TEXT {SEARCH_WORD}": b"CHARSET UTF-8 TEXT {%d}\r\n" % len(word) + word,
    }
    first_key = parse_bytes(b"a UID SEARCH " + searches[f"SUBJECT {SEARCH_WORD}"]).args.key
    if store.pool.is_sqlite:
        query, _ = build_query("sqlite", box.id, first_key, view)
        sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
        plan = await store.pool.do(lambda conn: [
            r[-1] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)])
        print("query plan:", " | ".join(plan))
    # Wall time of search_uids, and the DB thread's CPU time for the same
    # search (what it costs when the machine is not shared).
    print(f"{'search':36} {'hits':>7} {'first':>8} {'median':>8} {'best':>8} {'cpu':>8}")
    for name, criteria in searches.items():
        key = parse_bytes(b"a UID SEARCH " + criteria).args.key
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            res = await search_uids(store, box.id, key, view_uids=view)
            times.append(time.perf_counter() - t0)
        if name.startswith("SUBJECT") and have == args.messages:
            assert len(res.uids) == search_hits(args.messages), len(res.uids)
        cpu = min([await store.pool.do(lambda conn, k=key: _cpu(conn, box.id, k, view))
                   for _ in range(3)])
        print(f"{name:36} {len(res.uids):7,} {times[0] * 1000:7.0f}ms "
              f"{statistics.median(times) * 1000:7.0f}ms {min(times) * 1000:7.0f}ms "
              f"{cpu * 1000:7.0f}ms")
    store.stopService()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--data", default="var/bench-search", help="reused between runs")
    ap.add_argument("--database-url", default="", help="default: SQLite under --data")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ingest", action="store_true", help="fill through the ingest path")
    ap.add_argument("--mmap", type=int, default=0, help="SQLite: PRAGMA mmap_size to try")
    args = ap.parse_args()
    if args.messages % CHUNK and not args.ingest:
        ap.error(f"--messages must be a multiple of {CHUNK} for the bulk fill")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
