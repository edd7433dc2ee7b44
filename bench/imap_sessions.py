"""Many IMAP sessions arriving at once: LOGIN, SELECT INBOX, IDLE.

One daemon (SQLite in a temp dir, or a scratch PostgreSQL database) and N
asyncio sessions that all connect at the same moment, log in as the same
user, select INBOX and start IDLE. Reported: how many reached each step, how
many got a refusal instead (with the server's words), how many got no answer
at all, and the time from the start to each step (p50/p99/max).

    python bench/imap_sessions.py --sessions 500 [--database URL] [--timeout 60]
                                  [--limits-default]

By default the per-address and pre-login connection caps are raised out of
the way (all sessions come from 127.0.0.1); --limits-default keeps them, so
the sessions over `max_connections_per_ip` are refused. The daemon's log stays
in the printed directory.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO)]

from tests.daemon import Daemon, env, write_config  # noqa: E402
from tests.imapcrowd import STEPS, crowd  # noqa: E402

USER, PASSWORD = "many@example.test", "Bench2Pass"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(port: int, sessions: int, timeout: float) -> int:
    c = asyncio.run(crowd(port, USER, PASSWORD, sessions, timeout))
    print(f"{sessions} sessions, {c.elapsed:.1f} s")
    for step in STEPS:
        v = c.reached[step]
        line = f"  {step:9s} {len(v):5d}"
        if v:
            line += (f"   p50 {pct(v, 50) * 1000:8.1f} ms  p99 {pct(v, 99) * 1000:8.1f} ms"
                     f"  max {max(v) * 1000:8.1f} ms")
        print(line)
    for why, n in c.refused.most_common():
        print(f"  refused   {n:5d}   {why}")
    print(f"  stuck     {c.stuck:5d}   (no answer within {timeout:.0f} s)")
    return c.stuck


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--database", default="",
                    help="PostgreSQL URL for a scratch database (default: SQLite in a temp dir)")
    ap.add_argument("--limits-default", action="store_true",
                    help="keep the default per-address and pre-login connection caps")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="imapsessions-"))
    url, admin, name = f"sqlite:///{tmp / 'exmaild.db'}", None, ""
    if args.database:
        name = f"exmaild_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.database, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = sa.engine.make_url(args.database).set(database=name).render_as_string(
            hide_password=False)
    limits = {} if args.limits_default else {
        "max_connections_per_ip": 100_000, "max_preauth_connections": 100_000}
    config, ports = write_config(tmp, url, log={"json_file": "-"}, limits=limits)
    d = Daemon(config, ports, tmp)
    try:
        subprocess.run([sys.executable, "-m", "tests.smtp_accounts", str(config), PASSWORD,
                        USER], check=True, cwd=REPO, env=env(), timeout=120)
        d.start(wait=120)
        print(f"daemon pid {d.proc.pid}, log {d.log}")
        stuck = report(ports["imap"], args.sessions, args.timeout)
    finally:
        d.kill()
        if admin is not None:
            sa.create_engine(url).dispose()
            with admin.connect() as c:
                c.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            admin.dispose()
    return 1 if stuck else 0


if __name__ == "__main__":
    raise SystemExit(main())
