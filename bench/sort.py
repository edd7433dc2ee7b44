"""SORT and THREAD in the database: time them on a 100,000-message mailbox.

    python3 bench/sort.py [--messages 100000] [--data DIR] [--database-url URL]
                          [--rounds 5]

Uses bench/search.py's mailbox (same --data directory, filled once by its
bulk fill: realistic mail from bench/mailgen.py) and times, in the server's
own code path (store/sortkeys.py and protocols/imap/thread.py, thread hop
included, no IMAP framing): making the mailbox's sort keys (what the first
SORT / THREAD of a mailbox pays once), the check later SORTs make, SORT by
several keys, and THREAD=ORDEREDSUBJECT / REFERENCES.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import sqlalchemy as sa  # noqa: E402
from search import ADDRESS, PASSWORD, bench_config, bulk_fill  # noqa: E402
from twisted.internet import defer, task  # noqa: E402

from exmaild.mailstore.service import MailStore  # noqa: E402
from exmaild.protocols.imap import thread as th  # noqa: E402
from exmaild.protocols.imap.parser import parse_bytes  # noqa: E402
from exmaild.store import model as m  # noqa: E402
from exmaild.store import sortkeys  # noqa: E402

SORTS = [
    b"(SUBJECT) UTF-8 ALL",
    b"(DATE) UTF-8 ALL",
    b"(REVERSE ARRIVAL) UTF-8 ALL",
    b"(FROM DATE) UTF-8 ALL",
    b"(DISPLAYFROM) UTF-8 ALL",
    b"(SIZE) UTF-8 UNSEEN",
    b"(SUBJECT) UTF-8 SINCE 1-Oct-2024",
]


async def _timed(rounds: int, fn: Callable[[], Any]) -> tuple[Any, list[float]]:
    times, out = [], None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = await fn()
        times.append(time.perf_counter() - t0)
    return out, times


def _cpu(fn: Callable[[sa.Connection], Any]) -> Callable[[sa.Connection], tuple[Any, float]]:
    """``fn`` on the DB thread, with that thread's CPU time (what it costs on
    an idle machine: this one is shared, so wall times vary)."""

    def run(conn: sa.Connection) -> tuple[Any, float]:
        t0 = time.thread_time()
        out = fn(conn)
        return out, time.thread_time() - t0

    return run


async def run(reactor: Any, args: argparse.Namespace) -> None:
    cfg = bench_config(Path(args.data) / "var", args.database_url)
    store = MailStore(cfg, reactor)
    store.open()
    store.startService()
    for domain in ("bench.test", "example.test"):
        if await store.directory.get_domain(domain) is None:
            await store.directory.add_domain(domain)
    acct = await store.directory.get_account(ADDRESS)
    if acct is None:
        from exmaild.auth.passwords import hash_password

        acct = await store.directory.add_account(ADDRESS, hash_password(PASSWORD))
    box = await store.mailboxes.get(acct.id, "INBOX")
    assert box is not None
    c = m.messages.c
    mid = box.id
    have = await store.pool.do(lambda conn: conn.execute(
        sa.select(sa.func.count()).where(c.mailbox_id == mid)).scalar_one())
    if have == 0:
        print(f"filling {args.messages:,} messages (bulk) ...")
        await store.pool.call(bulk_fill, store, acct.id, mid, args.messages, True)
        if not store.pool.is_sqlite:
            await store.pool.transaction(lambda conn: conn.exec_driver_sql("ANALYZE"))
    view = await store.pool.do(lambda conn: list(conn.execute(
        sa.select(c.uid).where(c.mailbox_id == mid).order_by(c.uid)).scalars()))
    print(f"mailbox: {len(view):,} messages, database {store.engine.dialect.name}")
    await store.pool.transaction(lambda conn: conn.execute(m.content_sort.delete()))
    t0, c0 = time.perf_counter(), time.process_time()
    made = 0
    while rows := await store.pool.do(lambda conn: sortkeys.missing_keys(conn, mid)):
        await store.pool.transaction(lambda conn, b=rows: sortkeys.insert_keys(conn, b))
        made += len(rows)
    print(f"sort keys made (first SORT/THREAD): {made:,} rows in "
          f"{time.perf_counter() - t0:.2f} s, cpu {time.process_time() - c0:.2f} s")
    got, times = await _timed(args.rounds, lambda: store.pool.do(_cpu(
        lambda conn: sortkeys.missing_keys(conn, mid))))
    print(f"{'keys check after new mail':40} {'':>7} {statistics.median(times) * 1000:7.0f}ms "
          f"{'':>8} {got[1] * 1000:7.0f}ms")
    print(f"{'command':40} {'hits':>7} {'median':>9} {'best':>8} {'cpu':>8}")
    for text in SORTS:
        args_ = parse_bytes(b"a UID SORT " + text).args
        got, times = await _timed(args.rounds, lambda a=args_: store.pool.do(_cpu(
            lambda conn: sortkeys.sorted_uids(conn, mid, a.sort, a.key, view))))
        cpu = got[1]
        print(f"{'SORT ' + text.decode():40} {len(got[0]):7,} "
              f"{statistics.median(times) * 1000:7.0f}ms {min(times) * 1000:7.0f}ms "
              f"{cpu * 1000:7.0f}ms")
    for algorithm in ("ORDEREDSUBJECT", "REFERENCES"):
        key = parse_bytes(b"a UID THREAD " + algorithm.encode() + b" UTF-8 ALL").args.key

        async def one(alg: str = algorithm, k: Any = key) -> tuple[int, float]:
            rows, cpu = await store.pool.do(_cpu(
                lambda conn: sortkeys.thread_rows(conn, mid, k, view)))
            t0 = time.thread_time()
            roots = th.ordered_subject(rows) if alg == "ORDEREDSUBJECT" else th.references(rows)
            th.render(roots, lambda uid: uid)
            return len(roots), cpu + time.thread_time() - t0

        (threads, cpu), times = await _timed(args.rounds, one)
        print(f"{'THREAD ' + algorithm + ' UTF-8 ALL':40} {threads:7,} "
              f"{statistics.median(times) * 1000:7.0f}ms {min(times) * 1000:7.0f}ms "
              f"{cpu * 1000:7.0f}ms  (threads)")
    store.stopService()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--data", default="var/bench-search", help="shared with bench/search.py")
    ap.add_argument("--database-url", default="", help="default: SQLite under --data")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor, args)))


if __name__ == "__main__":
    main()
