"""Directory speed bench (issue #10): import, listing, a 10,000-member group.

    python3 bench/directory.py [--members 10000] [--database-url URL]

Against the real daemon (twistd, as deployed) on a fresh data directory:

1. importing the first 1,000 members as one CSV through
   `POST /api/v1/members/import` (no passwords: argon2 per row would be the
   whole cost), the second 1,000 as a job (`POST /api/v1/imports/members`,
   polled, with the slowest other request answered meanwhile), then the rest
   in CSVs of 1,000;
2. listing every member page by page (`GET /api/v1/members?limit=500`);
3. one message over SMTP (the MX port) to an "all staff" group of every
   member: the time from the end of DATA to the `250`, and until every
   INBOX holds it (polling the database for its copies).

Prints one line per figure; docs/groups-tags-quotas.md keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from exmaild.store import model as m  # noqa: E402
from tests.daemon import Daemon, exmailctl, write_config  # noqa: E402


def call(port: int, method: str, path: str, token: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data,
                                 method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=600) as r:
        text = r.read()
    return json.loads(text) if text.strip() else None


def ctl(config: Path, *args: str) -> str:
    r = exmailctl(config, *args)
    if r.returncode != 0:
        raise SystemExit(f"exmailctl {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--database-url", default="")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="exmaild-dirbench-") as tmp:
        work = Path(tmp)
        config, ports = write_config(work, a.database_url,
                                     directory={"import_max_rows": max(a.members, 1000)})
        ctl(config, "enterprise", "add", "Bench", "--member-limit", str(a.members + 10))
        ctl(config, "domain", "add", "bench.test")
        token = ctl(config, "token", "create", "--name", "bench").strip()
        d = Daemon(config, ports, work)
        d.start(wait=120)
        try:
            run(a, d, ports, token, work)
        finally:
            d.stop()


def import_as_job(port: int, token: str, csv: str, rows: int) -> None:
    """The second thousand as a job: time to the 202, to done, and the slowest
    other request (GET /departments) answered meanwhile."""
    t0 = time.perf_counter()
    job = call(port, "POST", "/imports/members", token, {"csv": csv})
    accepted = time.perf_counter() - t0
    slowest, polls = 0.0, 0
    while job["state"] not in ("done", "failed"):
        t1 = time.perf_counter()
        call(port, "GET", "/departments", token)
        slowest = max(slowest, time.perf_counter() - t1)
        polls += 1
        job = call(port, "GET", f"/jobs/{job['id']}", token)
        time.sleep(0.1)
    if job["state"] != "done":
        raise SystemExit(f"import job failed: {job['error']}")
    print(f"import {rows} members as a job (POST /imports/members): 202 after "
          f"{accepted * 1000:.0f} ms, done after {time.perf_counter() - t0:.2f} s; "
          f"{polls} other requests meanwhile, the slowest {slowest * 1000:.0f} ms")


def run(a: argparse.Namespace, d: Daemon, ports: dict[str, int], token: str,
        work: Path) -> None:
    port = ports["admin"]
    addrs = [f"m{i:05d}@bench.test" for i in range(a.members)]
    chunks = [addrs[i:i + 1000] for i in range(0, len(addrs), 1000)]
    for n, chunk in enumerate(chunks):
        csv = "address,name\n" + "".join(f"{x},Member {x[1:6]}\n" for x in chunk)
        t0 = time.perf_counter()
        if n == 1:
            import_as_job(port, token, csv, len(chunk))
            continue
        call(port, "POST", "/members/import", token, {"csv": csv})
        if n == 0:
            print(f"import {len(chunk)} members (one CSV, API): "
                  f"{time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    seen, offset, pages = 0, 0, 0
    while offset is not None:
        page = call(port, "GET", f"/members?limit=500&offset={offset}", token)
        seen += len(page["items"])
        offset = page["next_offset"]
        pages += 1
    took = time.perf_counter() - t0
    print(f"list {seen} members in {pages} pages of 500 (API): {took:.2f} s "
          f"({took / pages * 1000:.0f} ms a page)")
    call(port, "POST", "/groups", token, {"address": "all@bench.test", "all_staff": True})
    msg = (b"From: boss@remote.test\r\nTo: all@bench.test\r\nSubject: all hands\r\n"
           b"Message-ID: <allhands@remote.test>\r\n\r\n" + b"Hello everyone.\r\n" * 100)
    with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=600) as s:
        s.ehlo("bench.test")
        s.mail("boss@remote.test")
        s.rcpt("all@bench.test")
        t0 = time.perf_counter()
        s.data(msg)  # returns after the 250 to the end of DATA
        to_250 = time.perf_counter() - t0
    url = a.database_url or f"sqlite:///{work / 'var' / 'exmaild.sqlite'}"
    eng = sa.create_engine(url)
    q = (sa.select(sa.func.count()).select_from(m.messages.join(m.contents))
         .where(m.contents.c.message_id == "<allhands@remote.test>"))
    while True:
        with eng.connect() as c:
            n = c.execute(q).scalar_one()
            contents = c.execute(sa.select(sa.func.count()).select_from(m.contents).where(
                m.contents.c.message_id == "<allhands@remote.test>")).scalar_one()
        if n >= a.members:
            break
        if time.perf_counter() - t0 > 600:
            raise SystemExit(f"only {n} of {a.members} INBOXes hold the message after 600 s")
        time.sleep(0.05)
    in_all = time.perf_counter() - t0
    eng.dispose()
    print(f"message to an all-staff group of {a.members}: 250 after {to_250:.2f} s, "
          f"in every INBOX after {in_all:.2f} s ({contents} content row)")


if __name__ == "__main__":
    main()
