"""One message to a mail group of N members (default 10,000), every member
with an active Sieve script, beside the same group without scripts.

    python3 bench/sieve_group.py [--members 10000] [--database-url URL]

The daemon runs under twistd; members, the group and the scripts are written
straight into the database first (setup is not timed). The figure is the time
from the end of DATA to the 250 reply: group expansion, the scripts of all
members (each files the message into INBOX with a flag and tests header,
body and size) and the one ingest transaction that places every copy.
"""

from __future__ import annotations

import argparse
import shutil
import smtplib
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

SCRIPT = """require ["fileinto", "imap4flags", "body"];
if header :contains "subject" "urgent" { addflag "\\\\Flagged"; }
if body :contains "unsubscribe" { fileinto "Junk"; stop; }
if size :over 1M { addflag "big"; }
if address :domain :is "from" "example.test" { addflag "internal"; }
"""


def populate(url: str, n: int) -> None:
    import sqlalchemy as sa

    from exmaild.store import model as m
    from exmaild.store.directory import insert_account

    eng = sa.create_engine(url)
    with eng.begin() as c:
        did = c.execute(sa.select(m.domains.c.id).where(m.domains.c.name == "example.test")
                        ).scalar_one()
        gid = insert_account(c, did, "all@example.test", None, kind="group")
        c.execute(m.mail_groups.insert().values(account_id=gid, allow="anyone", allow_list=[]))
        now = int(time.time())
        for i in range(n):
            aid = insert_account(c, did, f"m{i}@example.test", None)
            c.execute(m.group_members.insert().values(group_id=gid, kind="member",
                                                      account_id=aid))
            c.execute(m.sieve_scripts.insert().values(account_id=aid, name="rules",
                                                      script=SCRIPT, active=False,
                                                      updated=now))
    eng.dispose()


def set_active(url: str, active: bool) -> None:
    import sqlalchemy as sa

    from exmaild.store import model as m

    eng = sa.create_engine(url)
    with eng.begin() as c:
        c.execute(m.sieve_scripts.update().values(active=active))
    eng.dispose()


def send(port: int, subject: str) -> float:
    msg = (f"From: <boss@example.test>\r\nTo: <all@example.test>\r\nSubject: {subject}\r\n"
           f"\r\nHello everyone.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as c:
        c.ehlo("bench")
        c.mail("boss@example.test")
        c.rcpt("all@example.test")
        c.putcmd("data")
        c.getreply()
        t0 = time.perf_counter()
        c.send(msg.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        code, text = c.getreply()
        dt = time.perf_counter() - t0
        if code != 250:
            raise RuntimeError(f"{code} {text!r}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from smtp_ingest import Exmaild

    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-sieve-group-"))
    try:
        ex = Exmaild(work, args.database_url)
        populate(ex.database_url, args.members)
        with ex:
            send(ex.port, "warm-up")
            for r in range(args.rounds):
                for active in (False, True):
                    set_active(ex.database_url, active)
                    time.sleep(6)  # another process's change: seen after lookup_cache_ttl
                    dt = send(ex.port, f"round {r}")
                    print(f"round {r + 1}: {args.members} members, scripts "
                          f"{'on ' if active else 'off'}: {dt:.2f} s to the 250", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
