"""IMAP SEARCH in the database: time ``search_uids`` on a 100,000-message mailbox.

    python3 bench/search.py [--messages 100000] [--data DIR] [--database-url URL]
                            [--rounds 7] [--ingest] [--mmap BYTES] [--no-text]
                            [--imap] [--ingest-cost N]

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

Whole-text search: ``BODY 交货日期`` and ``TEXT escalated`` (both in about
half of the pooled bodies) and ``TEXT offsite`` (about 1%, in subjects) go
through the text index (``content_text``: FTS5 trigram on SQLite, pg_trgm on
PostgreSQL). The fill stores that text as ingest does; ``--no-text`` fills a
mailbox the old way (16,384-character excerpt, no index), for comparison.
``--imap`` then runs the daemon (twistd, on the same data) beside Dovecot 2.3
(bench/lab.py, loaded with the same messages; its default search scans the
bodies) and times the same UID SEARCHes over IMAP on both, hits compared
(needs root). ``--ingest-cost N`` measures instead what the index costs at
ingest: N realistic messages through ``store.ingestor.ingest`` with and
without the whole text ([search] max_text_chars = 0), and the parse CPU per
message, and the database growth.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import sqlalchemy as sa  # noqa: E402
from mailgen import SEARCH_WORD, iter_messages, search_hits  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from exmaild.config import (  # noqa: E402
    DatabaseConfig,
    PathsConfig,
    SearchConfig,
    load_config,
)
from exmaild.mailstore.ingest import TEXT_CHARS, IngestRequest, Target  # noqa: E402
from exmaild.mailstore.parse import parse_message  # noqa: E402
from exmaild.mailstore.searchtext import message_text  # noqa: E402
from exmaild.mailstore.service import MailStore  # noqa: E402
from exmaild.protocols.imap.parser import parse_bytes  # noqa: E402
from exmaild.store import model as m  # noqa: E402
from exmaild.store.connector import Store  # noqa: E402
from exmaild.store.search import build_query, run_search, search_uids  # noqa: E402

ADDRESS = "user2@example.test"  # a lab user, so Dovecot can hold the same mailbox
PASSWORD = "Bench2Pass"
CHUNK = 2000  # a multiple of mailgen.SEARCH_PERIOD, so hits add up exactly
CN_WORD, EN_WORD, RARE_WORD = "交货日期", "escalated", "offsite"


def chunk_messages(chunk: int) -> Any:
    """The messages of one fill chunk (the same for the Dovecot copy)."""
    return iter_messages(CHUNK, seed=chunk + 1, pool=120)


def _rows(chunk: int, text: bool = True) -> list[dict[str, Any]]:
    """Parsed content rows of one chunk, as ingest would store them (worker);
    with ``text``, the whole decoded text goes along (and no excerpt)."""
    out = []
    for raw in chunk_messages(chunk):
        p = parse_message(raw, excerpt_chars=0 if text else 16384)
        sent = int(p.sent_date.timestamp()) if p.sent_date else None
        out.append({
            "digest": hashlib.sha256(raw).hexdigest(), "segment": "bench-unstored",
            "offset": 0, "size": p.size, "refcount": 1, "header_len": p.header_len,
            "envelope": p.envelope, "bodystructure": p.bodystructure, "body": p.body,
            "sent_date": sent, "subject": p.subject, "from_addr": p.from_, "to_addr": p.to,
            "cc_addr": p.cc, "bcc_addr": p.bcc, "message_id": p.message_id,
            "headers_text": p.headers_text, "attachment_names": "\n".join(p.attachment_names),
            "excerpt": p.excerpt, "sent_day": p.sent_day,
            "text": message_text(raw, TEXT_CHARS) if text else None,
        })
    return out


def bulk_fill(store: Store, account_id: int, mailbox_id: int, n: int, text: bool) -> None:
    def insert(conn: sa.Connection, rows: list[dict[str, Any]], uid: int) -> None:
        first = (conn.execute(sa.select(sa.func.max(m.contents.c.id))).scalar() or 0) + 1
        texts = [row.pop("text") for row in rows]
        for i, row in enumerate(rows):
            row["id"] = first + i
        conn.execute(m.contents.insert(), rows)
        if text:
            conn.execute(m.content_text.insert(), [
                {"content_id": first + i, "text": t} for i, t in enumerate(texts)])
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
        for rows in workers.imap(functools.partial(_rows, text=text), range(n // CHUNK)):
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


def bench_config(data: Path, database_url: str, text: bool = True) -> Any:
    return dataclasses.replace(
        load_config(None), paths=PathsConfig(data=str(data.resolve())),
        database=DatabaseConfig(url=database_url, pool_size=4),
        search=SearchConfig(max_text_chars=TEXT_CHARS if text else 0),
    )


async def run(reactor: Any, args: argparse.Namespace) -> None:
    if args.ingest_cost:
        await ingest_cost(reactor, args)
        if args.smtp:
            smtp_cost(args)
        return
    cfg = bench_config(Path(args.data) / "var", args.database_url, not args.no_text)
    store = MailStore(cfg, reactor)
    if args.mmap and store.pool.is_sqlite:  # what-if for a pragma the store does not set

        @sa.event.listens_for(store.engine, "connect")
        def _mmap(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA mmap_size={args.mmap}")

    store.open()
    store.startService()
    if await store.directory.get_domain("bench.test") is None:
        await store.directory.add_domain("bench.test")
    if await store.directory.get_domain("example.test") is None:
        await store.directory.add_domain("example.test")
    acct = await store.directory.get_account(ADDRESS)
    if acct is None:
        from exmaild.auth.passwords import hash_password

        acct = await store.directory.add_account(ADDRESS, hash_password(PASSWORD))
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
            await store.pool.call(bulk_fill, store, acct.id, box.id, args.messages,
                                  not args.no_text)
        print(f"  filled in {time.perf_counter() - t0:.1f} s")
        if not store.pool.is_sqlite:  # as autovacuum would: without stats, loops nest
            await store.pool.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))
        have = await store.pool.do(count)
    view = await store.pool.do(lambda conn: list(conn.execute(
        sa.select(c.uid).where(c.mailbox_id == box.id).order_by(c.uid)).scalars()))
    mmap = f", mmap_size={args.mmap}" if args.mmap else ""
    text = "no text index (excerpt)" if args.no_text else "text index"
    print(f"mailbox: {have:,} messages, database {store.engine.dialect.name}{mmap}, {text}")
    searches = SEARCHES
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
    if args.imap:
        await imap_beside_dovecot(reactor, args, have)


def _literal(key: str, word: str) -> bytes:
    data = word.encode()
    return b"CHARSET UTF-8 %s {%d}\r\n" % (key.encode(), len(data)) + data


SEARCHES = {
    f"SUBJECT {SEARCH_WORD}": _literal("SUBJECT", SEARCH_WORD),
    "FROM wang": b"FROM wang",
    "UNSEEN": b"UNSEEN",
    "1:* NOT DELETED SINCE 1-Oct-2024": b"1:* NOT DELETED SINCE 1-Oct-2024",
    f"TEXT {SEARCH_WORD}": _literal("TEXT", SEARCH_WORD),
    f"BODY {CN_WORD}": _literal("BODY", CN_WORD),
    f"TEXT {EN_WORD}": b"TEXT " + EN_WORD.encode(),
    f"TEXT {RARE_WORD}": b"TEXT " + RARE_WORD.encode(),
}
IMAP_SEARCHES = [f"SUBJECT {SEARCH_WORD}", f"BODY {CN_WORD}", f"TEXT {EN_WORD}",
                 f"TEXT {RARE_WORD}"]


async def imap_beside_dovecot(reactor: Any, args: argparse.Namespace, n: int) -> None:
    """The daemon on this data and Dovecot on the same messages, over IMAP."""
    from imap import RawTimer, free_port
    from lab import Lab

    from tests.daemon import Daemon, write_config

    data = Path(args.data).resolve()
    config, ports = write_config(data, db_url=args.database_url,
                                 log={"json_file": "-", "level": "warn"},
                                 search={"max_text_chars": 0 if args.no_text else TEXT_CHARS})
    daemon = Daemon(config, ports, data)
    with Lab(users=[ADDRESS], imap_port=free_port(), pop3_port=free_port(),
             smtp_port=free_port(), services=("dovecot",)) as lab:
        print(f"loading {n:,} messages into Dovecot's Maildir ...", flush=True)
        t0 = time.perf_counter()
        lab.load_maildir(ADDRESS, (raw for c in range(n // CHUNK) for raw in chunk_messages(c)),
                         flags="S")
        print(f"  loaded in {time.perf_counter() - t0:.0f} s; indexed in "
              f"{lab.warm(ADDRESS):.0f} s", flush=True)
        daemon.start(wait=120)
        try:
            servers = {"exmaild": (ports["imap"], PASSWORD),
                       "dovecot": (lab.imap_port, lab.password)}
            timers = {}
            for name, (port, pw) in servers.items():
                timers[name] = RawTimer(port, ADDRESS, pw)
                timers[name].run("SELECT INBOX")
            print(f"{'UID SEARCH over IMAP':36} {'server':>8} {'hits':>7} {'first':>8} "
                  f"{'median':>8} {'best':>8}")
            for label in IMAP_SEARCHES:
                for name, timer in timers.items():
                    times, hits = [], -1
                    for _ in range(args.imap_rounds):
                        dt, reply = timer.run(b"UID SEARCH " + SEARCHES[label].replace(
                            b"}\r\n", b"+}\r\n"))
                        times.append(dt)
                        # Dovecot may first send "* OK Searched 12% of the mailbox".
                        line = next(x for x in reply.split(b"\r\n") if x.startswith(b"* SEARCH"))
                        hits = len(line.split()[2:])
                    print(f"{label:36} {name:>8} {hits:7,} {times[0] * 1000:7.0f}ms "
                          f"{statistics.median(times) * 1000:7.0f}ms "
                          f"{min(times) * 1000:7.0f}ms", flush=True)
            for timer in timers.values():
                timer.close()
        finally:
            daemon.stop()


async def ingest_cost(reactor: Any, args: argparse.Namespace) -> None:
    """Ingest with and without the whole text: msg/s, parse CPU, database growth."""
    from mailgen import generate

    messages = generate(args.ingest_cost, seed=7)
    mb = sum(map(len, messages)) / 1e6
    print(f"{len(messages):,} messages ({mb:.1f} MB), database "
          f"{'PostgreSQL' if args.database_url else 'SQLite'}")
    t0 = time.thread_time()
    for raw in messages:
        parse_message(raw)
    t1 = time.thread_time()
    chars = 0
    for raw in messages:
        parse_message(raw, excerpt_chars=0)
        chars += len(message_text(raw, TEXT_CHARS))
    t2 = time.thread_time()
    n = len(messages)
    print(f"parse CPU per message: {(t1 - t0) / n * 1000:.3f} ms with the excerpt, "
          f"{(t2 - t1) / n * 1000:.3f} ms with the whole text "
          f"(avg {chars / n:,.0f} characters of text)")
    # Rounds alternate, so a change in the machine's load hits both alike.
    for attempt in range(args.rounds_ingest):
        for label, text in (("without the text index", False), ("with the text index", True)):
            work = Path(tempfile.mkdtemp(prefix="exmaild-bench-ingest-", dir=args.data))
            try:
                if args.database_url:
                    _wipe(args.database_url)
                store = MailStore(bench_config(work, args.database_url, text), reactor)
                store.open()
                store.startService()
                try:
                    cpu0 = time.process_time()
                    dt, grown = await _ingest_all(store, messages)
                    cpu = time.process_time() - cpu0
                finally:
                    store.stopService()
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"  {label:24} round {attempt + 1}: {n / dt:7.1f} msg/s "
                  f"({dt / n * 1000:.2f} ms per message, CPU {cpu / n * 1000:.2f} ms), "
                  f"database +{grown / 1e6:.1f} MB", flush=True)


def smtp_cost(args: argparse.Namespace) -> None:
    """exmaild under twistd, with and without the text index: Postfix's
    smtp-source (10 sessions, 4 KB plain-text messages), msg/s and daemon CPU."""
    from smtp_ingest import Exmaild

    print(f"SMTP ingest, smtp-source -s 10 -m {args.smtp} -l 4096 (rounds alternate):")
    for attempt in range(args.rounds_ingest):
        for label, chars in (("without the text index", 0), ("with the text index", TEXT_CHARS)):
            work = Path(tempfile.mkdtemp(prefix="exmaild-bench-smtp-", dir=args.data))
            try:
                if args.database_url:
                    _wipe(args.database_url)
                ex = Exmaild(work, args.database_url, search={"max_text_chars": chars},
                             log={"json_file": "-", "level": "warn"})
                with ex:
                    res = ex.run(args.smtp, 10, 4096)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(f"  {label:24} round {attempt + 1}: {res['msg_per_s']:7.1f} msg/s, "
                  f"daemon CPU {res['cpu_ms_per_msg']:.2f} ms per message", flush=True)


def _wipe(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as c:
        tables = sa.inspect(c).get_table_names()
        if tables:
            c.execute(sa.text("DROP TABLE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))
    eng.dispose()


async def _ingest_all(store: Store, messages: list[bytes]) -> tuple[float, int]:
    if await store.directory.get_domain("bench.test") is None:
        await store.directory.add_domain("bench.test")
    acct = await store.directory.add_account("ingest@bench.test", None)

    def size(conn: sa.Connection) -> int:
        if conn.dialect.name == "sqlite":
            return conn.exec_driver_sql(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size"
            ).scalar_one()
        return conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()

    before = await store.pool.do(size)
    sem = defer.DeferredSemaphore(256)
    target = [Target(acct.id, "INBOX")]
    t0 = time.perf_counter()
    await defer.gatherResults(
        [sem.run(lambda r=raw: defer.Deferred.fromCoroutine(
            store.ingestor.ingest(IngestRequest(r, target, check_quota=False))))
         for raw in messages], consumeErrors=True)
    dt = time.perf_counter() - t0
    if store.pool.is_sqlite:  # the WAL holds the new pages until a checkpoint
        await store.pool.transaction(
            lambda conn: conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)"))
    return dt, await store.pool.do(size) - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--data", default="var/bench-search", help="reused between runs")
    ap.add_argument("--database-url", default="", help="default: SQLite under --data")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--ingest", action="store_true", help="fill through the ingest path")
    ap.add_argument("--mmap", type=int, default=0, help="SQLite: PRAGMA mmap_size to try")
    ap.add_argument("--no-text", action="store_true",
                    help="fill without the whole-text index (the old excerpt)")
    ap.add_argument("--imap", action="store_true",
                    help="also time the searches over IMAP, exmaild beside Dovecot (root)")
    ap.add_argument("--imap-rounds", type=int, default=3)
    ap.add_argument("--ingest-cost", type=int, default=0, metavar="N",
                    help="measure ingest of N messages with and without the text index")
    ap.add_argument("--rounds-ingest", type=int, default=2)
    ap.add_argument("--smtp", type=int, default=0, metavar="N",
                    help="with --ingest-cost: also N messages over SMTP (smtp-source) per round")
    args = ap.parse_args()
    Path(args.data).mkdir(parents=True, exist_ok=True)
    if args.imap and os.geteuid() != 0:
        ap.error("--imap needs root (the Dovecot lab)")
    if args.messages % CHUNK and not args.ingest:
        ap.error(f"--messages must be a multiple of {CHUNK} for the bulk fill")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
