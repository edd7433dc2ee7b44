"""What a NOTIFY inside a busy transaction costs: commits per second of many
concurrent small write transactions on PostgreSQL, with and without a
`pg_notify` in each (what a queue kick inside every mail transaction would
do; exmaild/store/pgnotify.py explains why mail transactions never NOTIFY).

    python bench/notify_commit.py --threads 16 --seconds 5 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test

The database given is used for a scratch database of its own (created and
dropped). Prints one line per mode: transactions per second and p50/p99
commit latency in ms.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid

import psycopg
import sqlalchemy as sa


def run(dsn: str, threads: int, seconds: float, notify: bool) -> tuple[int, list[float]]:
    stop = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def worker(i: int) -> None:
        with psycopg.connect(dsn) as conn:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                conn.execute("INSERT INTO bench_rows (worker, body) VALUES (%s, %s)",
                             (i, "x" * 200))
                if notify:
                    conn.execute("SELECT pg_notify('bench_kick', '')")
                conn.commit()
                latencies[i].append(time.perf_counter() - t0)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    flat = [x for part in latencies for x in part]
    return len(flat), flat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--database", required=True, help="a PostgreSQL SQLAlchemy URL")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    name = f"exmaild_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(a.database, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        u = sa.engine.make_url(a.database).set(database=name)
        dsn = (f"host={u.host or 'localhost'} port={u.port or 5432} "
               f"user={u.username or 'postgres'} dbname={name}"
               + (f" password={u.password}" if u.password else ""))
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, "
                         "worker int, body text)")
            listener = psycopg.connect(dsn, autocommit=True)
            listener.execute("LISTEN bench_kick")  # a real listener, as every node has
        try:
            for notify in (False, True, False, True):
                n, lat = run(dsn, a.threads, a.seconds, notify)
                q = statistics.quantiles(lat, n=100)
                print(f"{'with NOTIFY   ' if notify else 'without NOTIFY'}  "
                      f"{n / a.seconds:8.0f} commits/s  p50 {q[49] * 1000:6.2f} ms  "
                      f"p99 {q[98] * 1000:6.2f} ms  ({a.threads} threads)")
                for _ in listener.notifies(timeout=0.01):
                    pass
        finally:
            listener.close()
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
