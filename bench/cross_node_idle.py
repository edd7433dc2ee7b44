"""Cross-node IDLE push: two exmaild daemons on one PostgreSQL.

IDLE sessions (on one mailbox) are spread over node A and node B; messages
are sent one at a time by SMTP to node B. For each message the time from
node B's `250` to the `* n EXISTS` line is taken at every idling session; the
figures are p50/p99 over all (message, session) pairs, split by the node the
session is on (same node as the delivery, or the other one).

    python bench/cross_node_idle.py --sessions 1000 --messages 50 \\
        --database postgresql+psycopg://postgres@127.0.0.1:5432/test

The database given is used for a scratch database of its own (created and
dropped), so any reachable PostgreSQL with a role that may create databases
will do.
"""

from __future__ import annotations

import argparse
import asyncio
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO)]

from tests.daemon import Daemon, env, write_config  # noqa: E402
from tests.imapcrowd import raise_nofile  # noqa: E402

USER, PASSWORD = "idle@example.test", "Bench2Pass"


async def idler(port: int, node: str, arrivals: list[tuple[str, int, float]],
                ready: asyncio.Event, count: list[int], total: int) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await r.readline()
    for line in (f"a LOGIN {USER} {PASSWORD}", "b SELECT INBOX", "c IDLE"):
        w.write(line.encode() + b"\r\n")
        await w.drain()
        tag = line.split()[0].encode()
        while True:
            got = await r.readline()
            if not got:
                raise EOFError("server closed")
            if got.startswith(tag + b" ") or (tag == b"c" and got.startswith(b"+")):
                break
    count[0] += 1
    if count[0] == total:
        ready.set()
    while True:
        got = await r.readline()
        if not got:
            return
        if got.endswith(b" EXISTS\r\n"):
            arrivals.append((node, int(got.split()[1]), time.monotonic()))


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def run(a: Daemon, b: Daemon, sessions: int, messages: int) -> None:
    arrivals: list[tuple[str, int, float]] = []
    ready = asyncio.Event()
    count = [0]
    tasks = []
    t0 = time.monotonic()
    for i in range(sessions):
        node, d = ("A", a) if i % 2 == 0 else ("B", b)
        tasks.append(asyncio.create_task(
            idler(d.ports["imap"], node, arrivals, ready, count, sessions)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # let logins through the argon2 threads
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait([waiter, *tasks], timeout=600,
                                 return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        for t in done:
            t.result()  # an idler that failed says why
        raise SystemExit(f"only {count[0]} of {sessions} sessions reached IDLE in 600 s")
    print(f"{sessions} sessions idling ({sessions - sessions // 2} on A, {sessions // 2} on B)"
          f" {time.monotonic() - t0:.1f} s after the first connected")
    acked: dict[int, float] = {}
    smtp = smtplib.SMTP("127.0.0.1", b.ports["smtp"], timeout=60)
    for n in range(1, messages + 1):
        await asyncio.to_thread(
            smtp.sendmail, "x@outside.test", [USER], f"Subject: m{n}\r\n\r\nhi\r\n".encode())
        acked[n] = time.monotonic()
        want = sessions
        deadline = time.monotonic() + 30
        while sum(1 for _, k, _ in arrivals if k == n) < want and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
    smtp.quit()
    lat: dict[str, list[float]] = {"A": [], "B": []}
    for node, k, t in arrivals:
        if k in acked:
            lat[node].append((t - acked[k]) * 1000)
    missing = sessions * messages - len(lat["A"]) - len(lat["B"])
    for node, label in (("A", "other node (A)"), ("B", "same node (B)")):
        v = lat[node]
        print(f"{label:16s} n={len(v):6d}  p50={pct(v, 50):7.1f} ms  p99={pct(v, 99):7.1f} ms"
              f"  max={max(v) if v else float('nan'):7.1f} ms"
              f"  mean={statistics.fmean(v) if v else float('nan'):7.1f} ms")
    print(f"EXISTS not seen within 30 s: {missing}")
    for t in tasks:
        t.cancel()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--messages", type=int, default=50)
    ap.add_argument("--database", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    raise_nofile(args.sessions + 256)
    name = f"exmaild_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(args.database, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(args.database).set(database=name).render_as_string(
        hide_password=False)
    tmp = Path(tempfile.mkdtemp(prefix="xnode-"))
    daemons = []
    try:
        for node in ("node-a", "node-b"):
            home = tmp / node
            home.mkdir()
            config, ports = write_config(
                home, url, server={"node_id": node}, paths={"data": str(tmp / "shared")},
                log={"json_file": "-", "level": "warn"},
                limits={"max_connections_per_ip": 10000, "max_preauth_connections": 10000})
            if node == "node-a":
                subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config),
                                PASSWORD, USER], check=True, cwd=REPO, env=env(), timeout=120)
            d = Daemon(config, ports, home)
            d.start(wait=120)
            daemons.append(d)
        asyncio.run(run(daemons[0], daemons[1], args.sessions, args.messages))
    finally:
        for d in daemons:
            d.kill()
        sa.create_engine(url).dispose()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
