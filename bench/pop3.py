"""POP3 benchmark: exmaild beside Dovecot 2.3 on the same 1,000 messages, same run.

    python3 bench/pop3.py [--messages 1000] [--rounds 5] [--database-url URL]

Both servers run as their own processes on loopback (exmaild through twistd,
exactly as deployed; Dovecot from ../shared/lab via bench/lab.py) and hold the
same realistic messages (bench/mailgen.py: multipart, attachments, CJK
headers, ~7.6 MB). The client is bench/reference.py's poplib workload: after
an untimed login it times STAT, LIST, UIDL and a RETR of every message, then
QUITs without deleting. Rounds alternate between the servers; the table shows
the median round and the best, and the machine's load average (the figures
move with it: other work on these 2 cores slows both servers).
Needs root (Dovecot's lab runs mail processes as the `mail` user).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

import reference  # noqa: E402
from lab import Lab  # noqa: E402
from mailgen import generate  # noqa: E402

USER = "user1@example.test"
EXMAILD_PASSWORD = "Bench2Pass"
OPS = ("STAT", "LIST", "UIDL", "RETR")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pop3_round(port: int, user: str, password: str, messages: list[bytes]) -> dict[str, float]:
    """One timed session (bench/reference.py's client); seconds per operation.

    It checks STAT against the messages and that RETR's octets (as poplib
    counts them) add up to STAT's: the octet counts must be exact.
    """
    res = reference.time_pop3_workload(
        "127.0.0.1", port, user, password, expect_messages=len(messages),
        expect_bytes=sum(map(len, messages)), rounds=1)
    return {op: res[f"{op.lower()}_s"] for op in OPS}


# ---------------------------------------------------------------- exmaild
def fill_exmaild(config: Path, messages: list[bytes]) -> None:
    """Create the account and ingest the messages through the one ingest path."""
    from twisted.internet import defer, task

    from exmaild.auth.passwords import hash_password
    from exmaild.config import load_config
    from exmaild.mailstore.ingest import IngestRequest, Target
    from exmaild.mailstore.service import MailStore

    async def fill(reactor: object) -> None:
        store = MailStore(load_config(str(config)), reactor)
        store.open()
        store.startService()
        try:
            await store.directory.add_domain("example.test")
            acct = await store.directory.add_account(USER, hash_password(EXMAILD_PASSWORD))
            base = int(time.time()) - len(messages)
            pending = [
                defer.Deferred.fromCoroutine(store.ingestor.ingest(
                    IngestRequest(raw, [Target(acct.id, "INBOX")], internal_date=base + i)))
                for i, raw in enumerate(messages)
            ]
            await defer.gatherResults(pending, consumeErrors=True)
        finally:
            store.stopService()

    task.react(lambda reactor: defer.Deferred.fromCoroutine(fill(reactor)))


class Exmaild:
    def __init__(self, workdir: Path, messages: list[bytes], database_url: str) -> None:
        from tests.daemon import Daemon, write_config

        self.config, ports = write_config(workdir, db_url=database_url,
                                          log={"json_file": "-"})
        self.port = ports["pop3"]
        self.daemon = Daemon(self.config, ports, workdir)
        # Twisted's reactor runs once per process: fill the store in a child process.
        subprocess.run([sys.executable, __file__, "--fill", str(self.config)],
                       input=pickle.dumps(messages), check=True, cwd=workdir)

    def __enter__(self) -> Exmaild:
        self.daemon.start(wait=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--database-url", default="", help="empty: embedded SQLite")
    args = ap.parse_args()
    messages = generate(args.messages, seed=1)
    mb = sum(map(len, messages)) / 1e6
    print(f"workload: {args.messages} messages, {mb:.1f} MB (bench/mailgen.py seed 1); "
          f"{args.rounds} rounds each, alternating; poplib on loopback")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-pop3-"))
    results: dict[str, list[dict[str, float]]] = {"exmaild": [], "dovecot": []}
    try:
        with Lab(users=[USER], imap_port=free_port(), pop3_port=free_port(),
                 smtp_port=free_port()) as lab, \
                Exmaild(work, messages, args.database_url) as ex:
            lab.load_maildir(USER, messages)
            # No lab.warm(): the untimed warm-up round below lets Dovecot index the
            # maildir and cache the virtual sizes POP3 needs.
            runs: dict[str, Callable[[], dict[str, float]]] = {
                "exmaild": lambda: pop3_round(ex.port, USER, EXMAILD_PASSWORD, messages),
                "dovecot": lambda: pop3_round(lab.pop3_port, USER, lab.password, messages),
            }
            for run in runs.values():  # warm-up, untimed
                run()
            for _ in range(args.rounds):
                for name, run in runs.items():
                    results[name].append(run())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'operation':<10}{'exmaild median':>16}{'dovecot median':>16}"
          f"{'exmaild best':>14}{'dovecot best':>14}{'ratio':>8}")
    for op in OPS:
        ex = [r[op] for r in results["exmaild"]]
        dv = [r[op] for r in results["dovecot"]]
        em, dm = statistics.median(ex), statistics.median(dv)
        print(f"{op:<10}{em * 1000:>14.2f}ms{dm * 1000:>14.2f}ms"
              f"{min(ex) * 1000:>12.2f}ms{min(dv) * 1000:>12.2f}ms{em / dm:>7.2f}x")
    print("\nratio = exmaild median / Dovecot median (below 1: exmaild faster)")
    print(f"load average (1 min) before/after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fill"]:
        fill_exmaild(Path(sys.argv[2]), pickle.load(sys.stdin.buffer))
        sys.exit(0)
    if os.geteuid() != 0:
        sys.exit("bench/pop3.py must run as root (the Dovecot lab needs it)")
    sys.exit(main())
