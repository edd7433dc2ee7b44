"""SMTP ingest benchmark: exmaild beside Postfix 3.7 on the same workload, same run.

    python3 bench/smtp_ingest.py [--messages 5000] [--sessions 10] [--size 4096]
                                 [--rounds 2] [--database-url URL] [--no-postfix]
                                 [--mailauth] [--rspamd] [--workers 1,2]

The workload is Postfix's own smtp-source (bench/reference.py `smtp_ingest`):
`--sessions` parallel sessions, one connection per message (HELO, MAIL, RCPT,
DATA, QUIT, no pipelining), `--size`-byte payloads, all to one mailbox. The
clock stops when smtp-source exits, i.e. after every DATA got its 250.

exmaild runs as deployed (twistd, default logging, the MX listener with every
check of issue #3 in place) and acknowledges only what is durable: blob
fdatasync'd and database committed (group commit). Postfix (../shared/lab,
smtpd + virtual(8) maildirs) acknowledges once its queue file is fsync'd and
delivers right after; its figure includes the wait until all messages are in
the maildir. Rounds alternate between the two servers; the table shows the
median and best round. Needs root (the Postfix lab does).

`--mailauth` turns on the MX's inbound checks ([mailauth], exmaild/mailauth):
SPF, iprev, DKIM, DMARC and ARC per message, DNS answered by a server on
127.0.0.1 (tests/dkimlab.py ThreadDNS) that publishes an SPF record passing
the sender's domain (it is hosted: the fake-boss rule needs the pass) with a
300 s TTL; the other names are NXDOMAIN (not cached: no SOA).

`--rspamd` runs exmaild a second time with `[spam] url` pointing at Debian's
rspamd (tests/rspamdlab.py: its minimal configuration, one Lua rule, no
network lookups) and reports both rates: the cost of the /checkv2 round trip
per message, not of rspamd's full default rule set. SQLite only.

`--workers 1,2` runs exmaild once per count (`[server] workers`, see
docs/workers.md) on the same database kind, one after the other, Postfix
beside the first. Its CPU figure is the supervisor's and every worker's.
The load average (1 minute) is printed before and after: the machine may be
shared, and a busy neighbour lowers every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from lab import Lab  # noqa: E402
from reference import postfix_smtp_ingest, smtp_ingest  # noqa: E402

USER = "user1@example.test"
SENDER = "bench@example.test"


def _stat(pid: int | str) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def postfix_cpu_seconds(lab: Lab) -> float:
    """CPU used so far by the lab's Postfix: the master, its live children, and
    (through the master's cutime/cstime) the children it has already reaped."""
    master = int((lab.dir / "postfix" / "spool" / "pid" / "master.pid").read_text().split()[0])
    ticks = sum(int(x) for x in _stat(master)[11:15])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat(entry.name)
            except OSError:
                continue
            if int(fields[1]) == master:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exmaild:
    """The daemon under twistd with example.test and one member."""

    def __init__(self, workdir: Path, database_url: str, **sections: dict) -> None:
        from tests.daemon import Daemon, exmailctl, write_config

        self.config, ports = write_config(workdir, db_url=database_url, **sections)
        self.port = ports["smtp"]
        self.database_url = database_url or f"sqlite:///{workdir / 'var' / 'exmaild.sqlite'}"
        for args in (("domain", "add", "example.test"),
                     ("user", "add", USER, "--password", "Bench2Pass")):
            r = exmailctl(self.config, *args)
            if r.returncode:
                raise RuntimeError(f"exmailctl {' '.join(args)}: {r.stderr}")
        self.daemon = Daemon(self.config, ports, workdir)
        self.workers = sections.get("server", {}).get("workers", 1)

    def __enter__(self) -> Exmaild:
        import re
        import time

        self.daemon.start(wait=30)
        # /healthz answers once one worker is up: wait for all of them.
        deadline = time.monotonic() + 60
        while self.workers > 1:
            up = set(re.findall(r"\[worker(\d+) exmaild\.service#info\] exmaild \S+ started",
                                self.daemon.output()))
            if len(up) == self.workers:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only workers {sorted(up)} started")
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()

    def inbox_count(self) -> int:
        import sqlalchemy as sa

        from exmaild.store import model as m

        eng = sa.create_engine(self.database_url)
        try:
            with eng.connect() as c:
                return c.execute(
                    sa.select(sa.func.count())
                    .select_from(m.messages.join(m.mailboxes).join(m.accounts))
                    .where(m.accounts.c.address == USER, m.mailboxes.c.name == "INBOX")
                ).scalar_one()
        finally:
            eng.dispose()

    def cpu_seconds(self) -> float:
        """User + system CPU the daemon (and its workers, if any) used so far."""
        from tests.workerutil import worker_pids

        assert self.daemon.proc is not None
        pids = [self.daemon.proc.pid, *worker_pids(self.daemon.proc.pid)]
        ticks = 0
        for pid in pids:
            fields = _stat(pid)
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def pg_position(self) -> tuple[int, int] | None:
        """(WAL position, database size) in bytes on PostgreSQL, else None. The
        WAL is the server's: other databases' writes meanwhile count too."""
        if not self.database_url.startswith("postgresql"):
            return None
        import sqlalchemy as sa

        eng = sa.create_engine(self.database_url)
        try:
            with eng.connect() as c:
                wal, size = c.execute(sa.text(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'), "
                    "pg_database_size(current_database())")).one()
                return int(wal), int(size)
        finally:
            eng.dispose()

    def run(self, n: int, sessions: int, size: int,
            message: bytes | None = None) -> dict[str, float]:
        before = self.inbox_count()
        cpu = self.cpu_seconds()
        pg = self.pg_position()
        res = smtp_ingest("127.0.0.1", self.port, n, sessions, size, USER, sender=SENDER,
                          message=message)
        res["cpu_ms_per_msg"] = (self.cpu_seconds() - cpu) * 1000 / n
        if pg is not None:
            wal, dbsize = self.pg_position() or pg
            res["wal_bytes_per_msg"] = (wal - pg[0]) / n
            res["db_bytes_per_msg"] = (dbsize - pg[1]) / n
        stored = self.inbox_count() - before
        if stored != n:  # every 250 must be a message in the mailbox, exactly once
            raise RuntimeError(f"exmaild acknowledged {n} messages but stored {stored}")
        return res


def random_attachment(size: int) -> bytes:
    """A message of about `size` bytes whose body is base64 of random bytes:
    what compresses as badly as real attachments (smtp-source's own payload
    repeats one phrase, which PostgreSQL's TOAST compression shrinks ~4x)."""
    import base64

    head = (f"From: <{SENDER}>\r\nTo: <{USER}>\r\nSubject: random body\r\n"
            "MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode()
    b64 = base64.b64encode(os.urandom(max(1, (size - len(head)) * 3 // 4)))
    lines = [b64[i:i + 76] for i in range(0, len(b64), 76)]
    return head + b"\r\n".join(lines) + b"\r\n"


def run_exmaild(work: Path, args: argparse.Namespace, sections: dict[str, dict],
                rates: list[float], name: str, lab: Lab | None,
                postfix_rates: list[float]) -> None:
    """Rounds of one exmaild configuration (and of Postfix, when given a lab)."""
    work.mkdir(parents=True, exist_ok=True)
    with Exmaild(work, args.database_url, **sections) as ex:
        # Warm-up, untimed: imports, caches, first segment.
        message = random_attachment(args.size) if args.random_body else None
        smtp_ingest("127.0.0.1", ex.port, 200, args.sessions, args.size, USER,
                    sender=SENDER, message=message)
        for r in range(args.rounds):
            res = ex.run(args.messages, args.sessions, args.size, message)
            rates.append(res["msg_per_s"])
            print(f"round {r + 1}: {name} {res['msg_per_s']:7.0f} msg/s "
                  f"({res['ingest_s']:.2f} s, {res['cpu_ms_per_msg']:.2f} ms CPU per "
                  f"message)", flush=True)
            if "wal_bytes_per_msg" in res:
                print(f"round {r + 1}: {name} PostgreSQL WAL {res['wal_bytes_per_msg']:.0f} "
                      f"bytes per message (server-wide), database "
                      f"+{res['db_bytes_per_msg']:.0f} bytes per message", flush=True)
            if lab is not None:
                cpu = postfix_cpu_seconds(lab)
                pres = postfix_smtp_ingest(lab, args.messages, args.sessions, args.size)
                cpu_ms = (postfix_cpu_seconds(lab) - cpu) * 1000 / args.messages
                rate = args.messages / pres["all_delivered_s"]
                postfix_rates.append(rate)
                print(f"round {r + 1}: postfix {rate:7.0f} msg/s "
                      f"({pres['msg_per_s']:.0f} msg/s acknowledged, all in the "
                      f"maildirs {pres['delivery_lag_s'] * 1000:.0f} ms later; "
                      f"{cpu_ms:.2f} ms CPU per message)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--database-url", default="", help="empty: embedded SQLite")
    ap.add_argument("--blobs-backend", choices=("segments", "postgresql"),
                    default="segments", help="[blobs] backend of the daemon")
    ap.add_argument("--random-body", action="store_true",
                    help="send a base64 body of random bytes (incompressible) instead of "
                         "smtp-source's repeated phrase")
    ap.add_argument("--no-postfix", action="store_true", help="exmaild only (no root needed)")
    ap.add_argument("--mailauth", action="store_true",
                    help="inbound SPF/DKIM/DMARC/iprev checks on, DNS from 127.0.0.1")
    ap.add_argument("--rspamd", action="store_true",
                    help="also run with rspamd (Debian's, started here) and show both rates")
    ap.add_argument("--workers", default="1",
                    help="[server] workers, or a comma list to run each (e.g. 1,2)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if args.rspamd and counts != [1]:
        sys.exit("--rspamd runs with one worker only")
    if args.rspamd and args.database_url:
        sys.exit("--rspamd runs two daemons one after the other: SQLite only")
    if not args.no_postfix and os.geteuid() != 0:
        sys.exit("bench/smtp_ingest.py must run as root for the Postfix lab (or --no-postfix)")
    print(f"workload: smtp-source -s {args.sessions} -m {args.messages} -l {args.size}, "
          f"one connection per message, to one mailbox; {os.cpu_count()} CPUs, "
          f"{args.rounds} round(s) each, alternating; exmaild on "
          f"{'PostgreSQL' if args.database_url else 'SQLite'}, "
          f"contents in {args.blobs_backend}; load average {_load()} before")
    results: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="exmaild-bench-smtp-"))
    lab = None
    try:
        if not args.no_postfix:
            lab = Lab(users=[USER], imap_port=free_port(), pop3_port=free_port(),
                      smtp_port=free_port(), services=["postfix"]).start()
        sections: dict[str, dict] = {}
        if args.blobs_backend != "segments":
            sections["blobs"] = {"backend": args.blobs_backend}
        if args.mailauth:
            from tests.dkimlab import ThreadDNS

            tdns = ThreadDNS()
            tdns.records["example.test"] = "v=spf1 ip4:127.0.0.1 -all"
            tdns.ttl = 300  # as published; resolvers cache it
            sections |= {"mailauth": {"enabled": True},
                         "queue": {"dns_servers": [tdns.server], "dns_timeout": 2.0}}
            print("inbound checks on (SPF, iprev, DKIM, DMARC, ARC; DNS on 127.0.0.1)")
        runs: list[tuple[str, dict[str, dict]]] = []
        for n in counts:
            name = "exmaild" if counts == [1] else f"exmaild w={n}"
            runs.append((name, {**sections, "server": {"workers": n}}))
            results[name] = []
        results["postfix"] = []
        rspamd = None
        if args.rspamd:
            from tests.rspamdlab import Rspamd

            rspamd = Rspamd(work / "rspamd")
            rspamd.start()
            runs.append(("exmaild+rspamd", {**sections, "spam": {"url": rspamd.url}}))
            results["exmaild+rspamd"] = []
        try:
            for i, (name, secs) in enumerate(runs):
                if i and args.database_url:  # each run on an empty database, as the first
                    from tests.conftest import _wipe_pg

                    _wipe_pg(args.database_url)
                run_exmaild(work / name, args, secs, results[name], name,
                            lab if i == 0 else None, results["postfix"])
        finally:
            if rspamd is not None:
                rspamd.stop()
    finally:
        if lab is not None:
            lab.stop()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["sync"], check=False)
    print(f"\nload average {_load()} after")
    print(f"\n{'server':<16}{'median msg/s':>14}{'best msg/s':>12}")
    for name, rates in results.items():
        if rates:
            print(f"{name:<16}{statistics.median(rates):>14.0f}{max(rates):>12.0f}")
    if results["postfix"]:
        for name, rates in results.items():
            if name.startswith("exmaild") and "rspamd" not in name and rates:
                ratio = statistics.median(rates) / statistics.median(results["postfix"])
                print(f"{name} / Postfix (medians): {ratio:.2f}x")
    return 0


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
